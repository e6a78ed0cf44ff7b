//! `dynkv dev-cluster`: starts a local cluster of real `dynkv` processes for newcomers to
//! see replication, prints how to reach each node, and stops them all on Ctrl-C. Must not
//! be used for production: every node runs on this machine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use thiserror::Error;

/// Why the local cluster could not run.
#[derive(Debug, Error)]
pub enum DevClusterError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The arguments do not describe a cluster that fits on this machine's ports.
    #[error("{0}")]
    Invalid(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DevClusterError {
    let what = what.into();
    move |source| DevClusterError::Io { what, source }
}

/// The cluster secret kept in `dir`, created on first use so a restarted dev cluster
/// finds its members again.
fn secret(dir: &Path) -> Result<String, DevClusterError> {
    let path = dir.join("cluster-secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        if !s.trim().is_empty() {
            return Ok(s.trim().to_string());
        }
    }
    let s: String = (0..32).map(|_| format!("{:x}", rand::random_range(0..16u8))).collect();
    std::fs::write(&path, &s).map_err(io(format!("cannot write {}", path.display())))?;
    Ok(s)
}

/// Starts `nodes` nodes on 127.0.0.1 with client ports from `base_port` (internode ports
/// 10000 above), data under `dir/node-<i>`, runs until Ctrl-C or SIGTERM, then stops them.
pub async fn run(nodes: usize, base_port: u16, dir: PathBuf, extra: Vec<String>) -> Result<(), DevClusterError> {
    if nodes == 0 || nodes > 64 {
        return Err(DevClusterError::Invalid("--nodes must be between 1 and 64".into()));
    }
    if usize::from(base_port) + nodes + 10000 > 65535 {
        return Err(DevClusterError::Invalid(
            "--base-port too high: internode ports are 10000 above".into(),
        ));
    }
    std::fs::create_dir_all(&dir).map_err(io(format!("cannot create {}", dir.display())))?;
    let secret = secret(&dir)?;
    let exe = std::env::current_exe().map_err(io("cannot find the dynkv executable"))?;
    let ports: Vec<u16> = (0..nodes as u16).map(|i| base_port + i).collect();
    let seeds = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut children: Vec<(u16, Child)> = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        let data = dir.join(format!("node-{}", i + 1));
        let log = std::fs::File::create(dir.join(format!("node-{}.log", i + 1))).map_err(io("cannot create a log"))?;
        let child = Command::new(&exe)
            .arg("server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--cluster-port", &(port + 10000).to_string()])
            .args(["--metrics-addr", &format!("127.0.0.1:{}", u32::from(port) + 2378)])
            .arg("--data-dir")
            .arg(&data)
            .args(["--seeds", &seeds, "--cluster-secret", &secret])
            .args(&extra)
            .stdout(log.try_clone().map_err(io("cannot open a log"))?)
            .stderr(log)
            .spawn()
            .map_err(io(format!("cannot start node {}", i + 1)))?;
        children.push((port, child));
    }
    println!("dynkv dev cluster: {nodes} nodes, data and logs in {}", dir.display());
    for (i, (port, child)) in children.iter().enumerate() {
        println!(
            "  node {}: redis-cli -p {port}   (internode port {}, metrics http://127.0.0.1:{}/metrics, pid {})",
            i + 1,
            port + 10000,
            u32::from(*port) + 2378,
            child.id()
        );
    }
    println!(
        "Every key is stored on N of them; try `redis-cli -p {base_port} set k v` then `redis-cli -p {} dynkv.local k`.",
        base_port + 1
    );
    println!("Ctrl-C stops the cluster.");
    wait_for_stop(&mut children).await;
    for (_, child) in &children {
        // SIGTERM: each node finishes what is in flight and closes its store.
        // SAFETY: kill() with a pid we started; no memory is involved.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    for (port, child) in &mut children {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    println!("node on port {port} stopped ({status})");
                    break;
                }
                Ok(None) if std::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    println!("node on port {port} killed after 15 s");
                    break;
                }
            }
        }
    }
    Ok(())
}

async fn wait_for_stop(children: &mut [(u16, Child)]) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return;
    };
    loop {
        tokio::select! {
            _ = int.recv() => return,
            _ = term.recv() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                for (port, child) in children.iter_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        println!("node on port {port} exited ({status}); stopping the cluster");
                        return;
                    }
                }
            }
        }
    }
}

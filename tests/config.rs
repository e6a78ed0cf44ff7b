//! Configuration: the TOML file, flags overriding it, and refusal of invalid settings
//! (the binary exits non-zero naming the setting).

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{PortMode, Resp, Server, Setup, free_port, info, info_field, write_temp_file};

#[test]
fn config_file_sets_the_port_and_more() {
    let port = free_port();
    let (_dir, path) = write_temp_file(
        "dynkv.toml",
        &format!(
            "# dynkv test config\nport = {port}\nfsync = \"no\"\nmax-clients = 77\n\
             requirepass = \"filepw\"\n"
        ),
    );
    let s = Server::start_with(Setup {
        port: PortMode::Given(port),
        password: Some("filepw".into()),
        ..Setup::args(&["--config", path.to_str().expect("utf-8")])
    });
    assert_eq!(s.port(), port);
    let mut r = s.raw();
    let text = info(&mut r, "persistence");
    assert_eq!(info_field(&text, "fsync").as_deref(), Some("no"), "{text}");
    let text = info(&mut r, "clients");
    assert_eq!(info_field(&text, "maxclients").as_deref(), Some("77"));
    let text = info(&mut r, "server");
    assert_eq!(
        info_field(&text, "tcp_port").as_deref(),
        Some(port.to_string().as_str())
    );
}

#[test]
fn flags_override_the_file() {
    let file_port = free_port();
    let (_dir, path) = write_temp_file(
        "dynkv.toml",
        &format!("port = {file_port}\nfsync = \"no\"\nmax-clients = 77\n"),
    );
    let s = Server::start(&[
        "--config",
        path.to_str().expect("utf-8"),
        "--fsync",
        "everysec",
        "--max-clients",
        "88",
    ]);
    assert_ne!(s.port(), file_port);
    let mut r = s.raw();
    match r.cmd(&[b"CONFIG", b"GET", b"port"]) {
        Resp::Array(v) => assert_eq!(v[1], Resp::bulk(s.port().to_string())),
        other => panic!("{other:?}"),
    }
    let text = info(&mut r, "persistence");
    assert_eq!(info_field(&text, "fsync").as_deref(), Some("everysec"));
    let text = info(&mut r, "clients");
    assert_eq!(info_field(&text, "maxclients").as_deref(), Some("88"));
    // Nothing listens on the file's port.
    let file_addr = SocketAddr::from(([127, 0, 0, 1], file_port));
    assert!(
        TcpStream::connect_timeout(&file_addr, Duration::from_millis(500)).is_err(),
        "the file's port {file_port} is served although --port overrides it"
    );
}

/// Runs `dynkv server` with these arguments, expecting it to refuse to start; returns its
/// stderr. Fails (killing it) if it is still running after 10 s.
fn refused(extra: &[&str]) -> String {
    let data = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(common::bin())
        .args(["server", "--bind", "127.0.0.1", "--port", "0", "--data-dir"])
        .arg(data.path())
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dynkv");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            let out = child.wait_with_output().expect("output");
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(!st.success(), "dynkv {extra:?} exited 0; stderr:\n{stderr}");
            return stderr;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "dynkv {extra:?} started although the configuration is invalid:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn refused_file(content: &str) -> String {
    let (_dir, path) = write_temp_file("dynkv.toml", content);
    refused(&["--config", path.to_str().expect("utf-8")])
}

#[test]
fn invalid_configs_are_refused_naming_the_setting() {
    let e = refused_file("prot = 7000\n");
    assert!(e.contains("prot"), "unknown key not named:\n{e}");
    let e = refused_file("max-clients = 0\n");
    assert!(e.contains("max-clients"), "max-clients not named:\n{e}");
    let e = refused(&["--max-clients", "0"]);
    assert!(e.contains("max-clients"), "max-clients flag not named:\n{e}");
    let e = refused_file("port = \"abc\"\n");
    assert!(e.contains("port"), "port not named:\n{e}");
    let e = refused_file("fsync = \"sometimes\"\n");
    assert!(e.contains("fsync") || e.contains("sometimes"), "{e}");
    let e = refused_file("requirepass = \"\"\n");
    assert!(e.contains("requirepass"), "{e}");
    let e = refused(&["--initial-map-size", "1000"]);
    assert!(e.contains("initial-map-size"), "{e}");
    let e = refused_file("expire-sweep-interval-ms = 0\n");
    assert!(e.contains("expire-sweep"), "{e}");
    let e = refused_file("max-bulk-len = 0\n");
    assert!(e.contains("max-bulk-len"), "{e}");
    let e = refused_file("this is not toml\n");
    assert!(e.contains("dynkv.toml"), "bad TOML: file not named:\n{e}");
    let e = refused(&["--config", "/nonexistent/dynkv.toml"]);
    assert!(e.contains("/nonexistent/dynkv.toml"), "{e}");
    let e = refused(&["--fsync", "sometimes"]);
    assert!(e.contains("fsync") || e.contains("sometimes"), "{e}");
    let e = refused(&["--no-such-flag"]);
    assert!(e.contains("no-such-flag"), "{e}");
}

/// The harness's readiness check must not take another process on the port for the node
/// it started (a parallel test's node that took a just-freed port answered PING for a
/// node that had failed to bind, and a cluster test then waited on a dead member).
#[test]
fn a_node_whose_port_is_taken_is_not_reported_ready() {
    let first = Server::start(&[]);
    let port = first.port();
    let second = Server::try_start_with(Setup {
        port: PortMode::Given(port),
        ..Setup::args(&["--port", &port.to_string()])
    });
    let err = match second {
        Ok(_) => panic!("a node that could not bind port {port} was reported ready"),
        Err(e) => e,
    };
    assert!(err.contains("cannot listen"), "{err}");
    assert_eq!(first.raw().cmd(&[b"PING"]), Resp::Simple("PONG".into()));
}

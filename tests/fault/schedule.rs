//! Bounded random fault schedules from a seed, and injecting/repairing one fault.

use super::cluster::FaultCluster;
use super::history::FaultKind;

/// splitmix64: small, seedable, the same everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `k` distinct values of `0..n` not in `taken`.
    pub fn pick(&mut self, n: usize, k: usize, taken: &[usize]) -> Vec<usize> {
        let mut free: Vec<usize> = (0..n).filter(|i| !taken.contains(i)).collect();
        let mut out = Vec::new();
        for _ in 0..k.min(free.len()) {
            out.push(free.swap_remove(self.below(free.len() as u64) as usize));
        }
        out
    }
}

/// Faults injected together, held for `hold_ms`, then all repaired.
#[derive(Debug, Clone)]
pub struct Step {
    /// The faults (on disjoint nodes).
    pub faults: Vec<FaultKind>,
    /// How long they stay.
    pub hold_ms: u64,
}

/// Nodes a fault touches.
pub fn touched(f: &FaultKind) -> Vec<usize> {
    match f {
        FaultKind::Kill(i) | FaultKind::Wipe(i) | FaultKind::Pause(i) | FaultKind::Isolate(i) => vec![*i],
        FaultKind::Split(side) => side.clone(),
        FaultKind::OneWay { to, from } => vec![*to, *from],
    }
}

/// `steps` steps of one or two faults (disjoint nodes, never more than two nodes cut
/// away at once, so a majority of a 5-node cluster always stays together) held 1.5–3.5 s.
pub fn plan(seed: u64, steps: usize, nodes: usize) -> Vec<Step> {
    let mut rng = Rng::new(seed);
    (0..steps)
        .map(|_| {
            let want = if rng.below(10) < 3 { 2 } else { 1 };
            let mut faults = Vec::new();
            let mut taken: Vec<usize> = Vec::new();
            let mut cut = 0;
            for _ in 0..want {
                let kind = rng.below(5);
                let f = match kind {
                    0..=2 => {
                        let Some(&i) = rng.pick(nodes, 1, &taken).first() else {
                            break;
                        };
                        [FaultKind::Kill(i), FaultKind::Pause(i), FaultKind::Isolate(i)][kind as usize].clone()
                    }
                    3 => {
                        let side = rng.pick(nodes, 2, &taken);
                        if side.len() < 2 || cut + 2 > nodes.saturating_sub(1) / 2 {
                            continue;
                        }
                        FaultKind::Split(side)
                    }
                    _ => {
                        let p = rng.pick(nodes, 2, &taken);
                        if p.len() < 2 {
                            continue;
                        }
                        FaultKind::OneWay { to: p[0], from: p[1] }
                    }
                };
                let c = match &f {
                    FaultKind::Split(s) => s.len(),
                    FaultKind::OneWay { .. } => 0,
                    _ => 1,
                };
                if cut + c > nodes.saturating_sub(1) / 2 {
                    continue;
                }
                cut += c;
                taken.extend(touched(&f));
                faults.push(f);
            }
            if faults.is_empty() {
                let i = rng.below(nodes as u64) as usize;
                faults.push(FaultKind::Isolate(i));
            }
            Step {
                faults,
                hold_ms: 1500 + rng.below(2001),
            }
        })
        .collect()
}

/// Injects one fault (a wipe reads the node's id first, to give it back on restart).
pub fn inject(c: &mut FaultCluster, f: &FaultKind) {
    match f {
        FaultKind::Kill(i) => c.nodes[*i].kill9(),
        FaultKind::Wipe(i) => {
            let id = c.node_id(*i);
            eprintln!("node {i}: node_id {id}; SIGKILL and delete its data directory");
            c.nodes[*i].wipe(&id);
        }
        FaultKind::Pause(i) => c.nodes[*i].pause(),
        FaultKind::Isolate(i) => c.net.isolate(*i),
        FaultKind::Split(side) => {
            let rest: Vec<usize> = c.members().into_iter().filter(|i| !side.contains(i)).collect();
            c.net.split(side, &rest);
        }
        FaultKind::OneWay { to, from } => c.net.drop_from(*to, *from),
    }
}

/// Repairs one fault (a killed node restarts on its data directory, a wiped one on an
/// empty directory with its old node id, which it must then report).
pub fn repair(c: &mut FaultCluster, f: &FaultKind) {
    match f {
        FaultKind::Kill(i) => c.nodes[*i].restart(),
        FaultKind::Wipe(i) => {
            let want = c.nodes[*i]
                .wiped_as()
                .expect("a wiped node has a node id to take")
                .to_string();
            c.nodes[*i].restart();
            let id = c.node_id(*i);
            assert_eq!(
                id, want,
                "node {i} restarted on an empty directory with --node-id {want}"
            );
        }
        FaultKind::Pause(i) => c.nodes[*i].resume(),
        FaultKind::Isolate(i) => c.net.heal(*i),
        FaultKind::Split(side) => {
            for &a in side {
                for b in c.members().into_iter().filter(|b| !side.contains(b)) {
                    c.net.undrop(a, b);
                    c.net.undrop(b, a);
                }
            }
        }
        FaultKind::OneWay { to, from } => c.net.undrop(*to, *from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_reproducible_bounded_and_keep_a_majority() {
        let a = plan(42, 50, 5);
        let b = plan(42, 50, 5);
        assert_eq!(format!("{a:?}"), format!("{b:?}"), "same seed, same plan");
        assert_ne!(format!("{a:?}"), format!("{:?}", plan(43, 50, 5)));
        for s in &a {
            assert!((1500..=3500).contains(&s.hold_ms));
            assert!(!s.faults.is_empty() && s.faults.len() <= 2);
            let nodes: Vec<usize> = s.faults.iter().flat_map(touched).collect();
            let mut dedup = nodes.clone();
            dedup.sort();
            dedup.dedup();
            assert_eq!(nodes.len(), dedup.len(), "faults on disjoint nodes: {s:?}");
            let cut: usize = s
                .faults
                .iter()
                .map(|f| match f {
                    FaultKind::Split(x) => x.len(),
                    FaultKind::OneWay { .. } => 0,
                    _ => 1,
                })
                .sum();
            assert!(cut <= 2, "at most a minority cut: {s:?}");
        }
        let kinds: std::collections::BTreeSet<String> = a
            .iter()
            .flat_map(|s| &s.faults)
            .map(|f| {
                format!("{f:?}")
                    .split('(')
                    .next()
                    .unwrap()
                    .split(' ')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(kinds.len(), 5, "every kind appears in 50 steps: {kinds:?}");
    }
}

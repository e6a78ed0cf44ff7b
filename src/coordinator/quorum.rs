//! Quorum fan-out, written once: send one request to several replicas at the same time,
//! return as soon as enough of them succeeded, and leave the rest running for whoever
//! wants their answers (read repair). Must not know what the requests are.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::version::NodeId;

/// Answers of a fan-out, arriving in completion order.
pub struct FanOut<T> {
    rx: mpsc::UnboundedReceiver<(NodeId, Result<T, String>)>,
    outstanding: usize,
}

/// What [`FanOut::gather`] collected.
pub struct Gathered<T> {
    /// Successful answers, by replica.
    pub ok: Vec<(NodeId, T)>,
    /// Failed replicas with their causes.
    pub failed: Vec<(NodeId, String)>,
}

impl<T> Default for Gathered<T> {
    fn default() -> Self {
        Gathered {
            ok: Vec::new(),
            failed: Vec::new(),
        }
    }
}

impl<T: Send + 'static> FanOut<T> {
    /// Starts `call` for every target at once; each runs as its own task.
    pub fn start<F, Fut>(targets: &[NodeId], call: F) -> FanOut<T>
    where
        F: Fn(NodeId) -> Fut,
        Fut: Future<Output = Result<T, String>> + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        for &t in targets {
            let fut = call(t);
            let tx = tx.clone();
            tokio::spawn(async move {
                let r = fut.await;
                let _ = tx.send((t, r));
            });
        }
        FanOut {
            rx,
            outstanding: targets.len(),
        }
    }

    /// Adds answers to `into` until `need` successes are in, success has become
    /// impossible, every target answered, or `deadline` passed (unanswered targets are
    /// then recorded as timed out). Returns whether `need` successes were reached.
    pub async fn gather(&mut self, need: usize, deadline: Instant, into: &mut Gathered<T>) -> bool {
        while into.ok.len() < need && self.outstanding > 0 {
            if into.ok.len() + self.outstanding < need {
                break;
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((node, result))) => {
                    self.outstanding -= 1;
                    match result {
                        Ok(v) => into.ok.push((node, v)),
                        Err(e) => into.failed.push((node, e)),
                    }
                }
                Ok(None) => break,
                Err(_) => break,
            }
        }
        into.ok.len() >= need
    }

    /// Every remaining answer that arrives before `deadline`.
    pub async fn rest(mut self, deadline: Instant) -> Gathered<T> {
        let mut g = Gathered::default();
        while self.outstanding > 0 {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((node, result))) => {
                    self.outstanding -= 1;
                    match result {
                        Ok(v) => g.ok.push((node, v)),
                        Err(e) => g.failed.push((node, e)),
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        g
    }

    /// How many targets have not answered yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }
}

/// The deadline `timeout` from now.
pub fn deadline_in(timeout: Duration) -> Instant {
    Instant::now() + timeout
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_at_quorum_and_keeps_the_rest() {
        let mut f = FanOut::start(&[1, 2, 3], |n| async move {
            if n == 3 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if n == 2 { Err("down".to_string()) } else { Ok(n) }
        });
        let mut g = Gathered::default();
        let met = f.gather(2, deadline_in(Duration::from_secs(1)), &mut g).await;
        assert!(met);
        assert_eq!(g.ok.len(), 2);
        assert_eq!(g.failed, vec![(2, "down".to_string())]);
    }

    #[tokio::test]
    async fn stops_when_quorum_is_impossible() {
        let mut f = FanOut::start(&[1, 2, 3], |n| async move {
            if n == 1 {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Err::<u64, _>(format!("fail {n}"))
        });
        let mut g = Gathered::default();
        let started = Instant::now();
        assert!(!f.gather(2, deadline_in(Duration::from_secs(3)), &mut g).await);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(g.failed.len(), 2);
    }

    #[tokio::test]
    async fn rest_collects_late_answers_until_the_deadline() {
        let mut f = FanOut::start(&[1, 2, 3, 4], |n| async move {
            tokio::time::sleep(Duration::from_millis(20 * n)).await;
            if n == 4 {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Ok::<u64, String>(n)
        });
        let mut g = Gathered::default();
        assert!(f.gather(1, deadline_in(Duration::from_secs(1)), &mut g).await);
        assert_eq!(g.ok, vec![(1, 1)]);
        let started = Instant::now();
        let rest = f.rest(deadline_in(Duration::from_millis(500))).await;
        let mut late: Vec<u64> = rest.ok.iter().map(|(n, _)| *n).collect();
        late.sort();
        assert_eq!(late, vec![2, 3], "late answers are collected, the hung one is cut off");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn deadline_bounds_the_wait() {
        let mut f = FanOut::start(&[1], |_| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<u8, String>(1)
        });
        let mut g = Gathered::default();
        let started = Instant::now();
        assert!(!f.gather(1, deadline_in(Duration::from_millis(50)), &mut g).await);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(f.outstanding(), 1);
    }
}

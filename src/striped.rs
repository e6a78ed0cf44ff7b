//! State that every request touches, split into per-thread stripes so client threads do
//! not pass a cache line back and forth on every command: counters, and the read gate of
//! the store. A thread always uses the same stripe; readers of a total add the stripes.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Number of stripes (threads beyond it share stripes, which stays correct).
pub const STRIPES: usize = 8;

/// Aligned to two cache lines (adjacent-line prefetch), so stripes never share one.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// This thread's stripe.
pub fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    MINE.with(|s| *s)
}

/// A counter many threads add to.
#[derive(Debug, Default)]
pub struct Counter {
    stripes: [Padded<AtomicU64>; STRIPES],
}

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.stripes[stripe()].0.fetch_add(n, Ordering::Relaxed);
    }

    /// The total.
    pub fn get(&self) -> u64 {
        self.stripes.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

/// A reader-writer lock whose readers take only their stripe's lock; a writer takes all.
#[derive(Debug, Default)]
pub struct Gate {
    stripes: [Padded<RwLock<()>>; STRIPES],
}

impl Gate {
    /// Shared access.
    pub fn read(&self) -> RwLockReadGuard<'_, ()> {
        self.stripes[stripe()].0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Exclusive access: waits for every reader of every stripe.
    pub fn write(&self) -> Vec<RwLockWriteGuard<'_, ()>> {
        self.stripes
            .iter()
            .map(|s| s.0.write().unwrap_or_else(|p| p.into_inner()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counts_from_many_threads_add_up() {
        let c = Arc::new(Counter::default());
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.add(2);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(c.get(), 12 * 1000 * 2);
    }

    #[test]
    fn a_writer_waits_for_readers_of_every_stripe() {
        let gate = Arc::new(Gate::default());
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let g = gate.clone();
        let reader = std::thread::spawn(move || {
            let _r = g.read();
            held_tx.send(()).expect("send");
            release_rx.recv().expect("recv");
        });
        held_rx.recv().expect("reader holds the gate");
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let g = gate.clone();
        let writer = std::thread::spawn(move || {
            let _w = g.write();
            done_tx.send(()).expect("send");
        });
        assert!(
            done_rx.recv_timeout(std::time::Duration::from_millis(200)).is_err(),
            "the writer got in while a reader held its stripe"
        );
        release_tx.send(()).expect("release");
        done_rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the writer gets in once the reader is gone");
        reader.join().expect("reader");
        writer.join().expect("writer");
    }
}

//! Brief busy-polling of a client thread's event loop. Must not touch connections: it only
//! keeps the loop awake.
//!
//! On a virtual machine a thread that goes to sleep in `epoll_wait` halts its virtual CPU,
//! and the next request wakes it through the host: tens of microseconds in which neither
//! the server nor a client waiting for its reply does anything. Under a steady stream of
//! requests the next one usually comes within that time, so after each read the loop keeps
//! polling (each round a non-blocking `epoll_wait`) for up to [`WINDOW`] before it may
//! sleep. Spinning pays only when requests come that close together, so it is adaptive:
//! a thread spins after a read only if the read came within [`GATE`] of the moment the
//! spinner last stopped keeping the loop awake (from then on the thread may sleep). A
//! quiet or lightly loaded thread sleeps as before, and burns at most one window each
//! time the load picks up.

use std::cell::{Cell, RefCell};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// How long the loop keeps polling after the last read.
pub const WINDOW: Duration = Duration::from_micros(50);
/// A read that comes this soon after the spinner stopped turns spinning on.
/// Wider than the window: the time from the last reply of a round to the next round's
/// first request is itself tens of microseconds (the client's turn), and a window that
/// just missed it should still be tried again.
pub const GATE: Duration = Duration::from_micros(200);

thread_local! {
    /// Reads on this thread so far.
    static READS: Cell<u64> = const { Cell::new(0) };
    /// The spinner, while it waits for the next read.
    static PARKED: RefCell<Option<Waker>> = const { RefCell::new(None) };
}

/// Notes a read on this thread; wakes the thread's spinner if it waits for one.
pub fn note_read() {
    READS.with(|r| r.set(r.get().wrapping_add(1)));
    if let Some(w) = PARKED.with(|p| p.borrow_mut().take()) {
        w.wake();
    }
}

fn reads() -> u64 {
    READS.with(Cell::get)
}

/// Whether a read that came `gap` after the spinner last stopped is close enough to the
/// one before for spinning to pay.
fn worth_spinning(gap: Duration) -> bool {
    gap < GATE
}

/// The spinner: runs on a client thread for as long as its runtime does.
pub async fn run() {
    let mut seen = reads();
    loop {
        // Stop keeping the loop awake (the thread may sleep) until the next read.
        let parked = Instant::now();
        std::future::poll_fn(|cx| {
            if reads() != seen {
                Poll::Ready(())
            } else {
                PARKED.with(|p| *p.borrow_mut() = Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
        seen = reads();
        if !worth_spinning(parked.elapsed()) {
            continue;
        }
        // Each yield lets the runtime poll for I/O without blocking, then run what is ready.
        let mut last = Instant::now();
        loop {
            tokio::task::yield_now().await;
            let now = reads();
            if now != seen {
                seen = now;
                last = Instant::now();
            } else if last.elapsed() >= WINDOW {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads wake a waiting spinner; it spins only after a read that came soon after it
    /// let the thread sleep, and then keeps the loop busy until a window passes without
    /// reads.
    #[test]
    fn spins_only_while_reads_come_close_together() {
        assert!(worth_spinning(Duration::from_micros(10)));
        assert!(worth_spinning(WINDOW));
        assert!(!worth_spinning(GATE));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let spinner = tokio::spawn(run());
            // Let it park: nothing has been read yet.
            tokio::task::yield_now().await;
            assert!(PARKED.with(|p| p.borrow().is_some()), "the spinner waits for a read");
            // A read long after it parked: it parks again without spinning.
            tokio::time::sleep(Duration::from_millis(5)).await;
            note_read();
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
            assert!(PARKED.with(|p| p.borrow().is_some()), "no spin after a quiet spell");
            // A read right after it parked: it spins (not parked) until a window passes.
            // (A test thread preempted for a whole window between the two sees no spin;
            // it tries again.)
            let mut spun = false;
            let mut read_at = Instant::now();
            for _ in 0..1000 {
                read_at = Instant::now();
                note_read();
                tokio::task::yield_now().await;
                tokio::task::yield_now().await;
                if PARKED.with(|p| p.borrow().is_none()) {
                    spun = true;
                    break;
                }
            }
            assert!(spun, "spinning after a close read");
            let started = Instant::now();
            while PARKED.with(|p| p.borrow().is_none()) {
                tokio::task::yield_now().await;
                assert!(started.elapsed() < Duration::from_secs(5), "the spin never ended");
            }
            // It stops only a whole window after the last read it saw.
            assert!(
                read_at.elapsed() >= WINDOW,
                "it stopped {:?} after the read",
                read_at.elapsed()
            );
            spinner.abort();
        });
    }
}

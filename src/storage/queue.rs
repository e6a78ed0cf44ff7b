//! The writer's queue: a bounded, many-producer, one-consumer FIFO of write operations.
//!
//! Every write on a node passes through it, so its cost per operation counts. tokio's
//! bounded channel spends about eight atomic read-modify-writes per message (a semaphore
//! permit taken and given back under a lock, a slot claimed, a ready bit set, the
//! receiver's waker checked twice). Here a message costs one uncontended lock and
//! unlock, and the writer takes everything queued under one lock. Waking is done only
//! when someone waits: the writer when the queue was empty, a producer when it was full.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::Instant;

/// Makes a queue holding at most `capacity` messages (at least one).
pub(crate) fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            receiver: None,
            parked: false,
            want: 1,
            waiting: Vec::new(),
            senders: 1,
            closed: false,
        }),
        capacity: capacity.max(1),
        wake: Condvar::new(),
        gone: AtomicBool::new(false),
    });
    (Sender { shared: shared.clone() }, Receiver { shared })
}

struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    /// Wakes a receiver blocked in [`Receiver::blocking_recv`].
    wake: Condvar,
    /// The receiver is gone (as `State::closed`, readable without the lock).
    gone: AtomicBool,
}

struct State<T> {
    items: VecDeque<T>,
    /// The receiving task, when it waits for a message.
    receiver: Option<Waker>,
    /// Whether the receiving thread waits on the condition variable.
    parked: bool,
    /// How many queued messages the parked receiving thread waits for.
    want: usize,
    /// Producers waiting for room.
    waiting: Vec<Waker>,
    /// Live senders: none left and nothing queued ends the receiver's loop.
    senders: usize,
    /// The receiver is gone: sends fail.
    closed: bool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while the lock is held leaves the queue itself consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes whoever waits for a message, once the lock is released.
    fn wake_receiver(&self, mut state: MutexGuard<'_, State<T>>) {
        let task = state.receiver.take();
        let parked = std::mem::take(&mut state.parked);
        drop(state);
        if let Some(w) = task {
            w.wake();
        }
        if parked {
            self.wake.notify_one();
        }
    }
}

/// Why a message was not queued; the message comes back.
#[derive(Debug)]
pub(crate) enum TrySendError<T> {
    /// The queue is full.
    Full(T),
    /// The receiver is gone.
    Closed(T),
}

/// The receiver is gone; the message comes back.
#[derive(Debug)]
pub(crate) struct SendError<T>(pub T);

/// A producer's end. Clones share the queue.
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.senders -= 1;
        if state.senders == 0 {
            self.shared.wake_receiver(state);
        }
    }
}

impl<T> Sender<T> {
    /// Whether the receiver is gone, so that sends fail.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.gone.load(Ordering::Acquire)
    }

    /// Queues `msg` if there is room.
    pub(crate) fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(TrySendError::Closed(msg));
        }
        if state.items.len() >= self.shared.capacity {
            return Err(TrySendError::Full(msg));
        }
        state.items.push_back(msg);
        if state.receiver.is_some() || (state.parked && state.items.len() >= state.want) {
            self.shared.wake_receiver(state);
        }
        Ok(())
    }

    /// Queues `msg`, waiting for room.
    pub(crate) async fn send(&self, msg: T) -> Result<(), SendError<T>> {
        let mut msg = Some(msg);
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            let Some(m) = msg.take() else {
                return Poll::Ready(Ok(()));
            };
            if state.closed {
                return Poll::Ready(Err(SendError(m)));
            }
            if state.items.len() >= self.shared.capacity {
                msg = Some(m);
                state.waiting.push(cx.waker().clone());
                return Poll::Pending;
            }
            state.items.push_back(m);
            if state.receiver.is_some() || (state.parked && state.items.len() >= state.want) {
                self.shared.wake_receiver(state);
            }
            Poll::Ready(Ok(()))
        })
        .await
    }
}

/// The consumer's end (the writer).
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.closed = true;
        self.shared.gone.store(true, Ordering::Release);
        let queued = std::mem::take(&mut state.items);
        let waiting = std::mem::take(&mut state.waiting);
        drop(state);
        // Dropped outside the lock: a message's drop may reach this queue again.
        drop(queued);
        waiting.into_iter().for_each(Waker::wake);
    }
}

impl<T> Receiver<T> {
    /// Takes the oldest message from `state`, waking the producers waiting for room.
    fn take(&self, state: &mut State<T>) -> Option<T> {
        let msg = state.items.pop_front()?;
        if !state.waiting.is_empty() {
            state.waiting.drain(..).for_each(Waker::wake);
        }
        Some(msg)
    }

    /// Waits for the next message; `None` once every sender is gone and nothing is queued.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            if let Some(msg) = self.take(&mut state) {
                return Poll::Ready(Some(msg));
            }
            if state.senders == 0 {
                return Poll::Ready(None);
            }
            state.receiver = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// [`Receiver::recv`], blocking this thread (not for use on a runtime's thread).
    pub(crate) fn blocking_recv(&mut self) -> Option<T> {
        let mut state = self.shared.lock();
        loop {
            if let Some(msg) = self.take(&mut state) {
                return Some(msg);
            }
            if state.senders == 0 {
                return None;
            }
            state.parked = true;
            state.want = 1;
            state = self.shared.wake.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Moves queued messages into `into` (never past `max`) until it holds `n`, blocking
    /// this thread until `deadline` for the rest; returns early once every sender is gone.
    /// A producer wakes it only when the queue holds what it still waits for, not on
    /// every message.
    pub(crate) fn gather(&mut self, into: &mut Vec<T>, n: usize, max: usize, deadline: Instant) {
        let n = n.min(max);
        let mut state = self.shared.lock();
        loop {
            let k = max.saturating_sub(into.len()).min(state.items.len());
            into.extend(state.items.drain(..k));
            if k > 0 && !state.waiting.is_empty() {
                state.waiting.drain(..).for_each(Waker::wake);
            }
            let now = Instant::now();
            if into.len() >= n || now >= deadline || state.senders == 0 {
                state.parked = false;
                return;
            }
            state.parked = true;
            state.want = n - into.len();
            state = match self.shared.wake.wait_timeout(state, deadline - now) {
                Ok((s, _)) => s,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Moves queued messages into `into` until it holds `max`, under one lock; returns
    /// how many were moved.
    pub(crate) fn take_up_to(&mut self, into: &mut Vec<T>, max: usize) -> usize {
        let mut state = self.shared.lock();
        let n = max.saturating_sub(into.len()).min(state.items.len());
        into.extend(state.items.drain(..n));
        if n > 0 && !state.waiting.is_empty() {
            state.waiting.drain(..).for_each(Waker::wake);
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn messages_arrive_in_order_and_the_end_is_seen_after_the_last() {
        let (tx, mut rx) = channel(8);
        let tx2 = tx.clone();
        tx.try_send(1).unwrap();
        tx2.send(2).await.unwrap();
        tx.try_send(3).unwrap();
        assert_eq!(rx.recv().await, Some(1));
        let mut batch = Vec::new();
        assert_eq!(rx.take_up_to(&mut batch, 8), 2);
        assert_eq!(batch, vec![2, 3]);
        drop(tx);
        tx2.try_send(4).unwrap();
        drop(tx2);
        assert_eq!(rx.recv().await, Some(4));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_try_send_and_send_waits_for_room() {
        let (tx, mut rx) = channel(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        let tx2 = tx.clone();
        let blocked = tokio::spawn(async move { tx2.send(3).await.map_err(|e| e.0) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!blocked.is_finished(), "a send into a full queue must wait");
        assert_eq!(rx.recv().await, Some(1));
        blocked.await.unwrap().unwrap();
        let mut batch = Vec::new();
        assert_eq!(rx.take_up_to(&mut batch, 1), 1);
        assert_eq!(rx.take_up_to(&mut batch, 5), 1);
        assert_eq!(batch, vec![2, 3]);
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send_from_another_thread() {
        let (tx, mut rx) = channel(4);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.try_send(7).unwrap();
        });
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap(),
            Some(7)
        );
        t.join().unwrap();
    }

    #[test]
    fn a_blocked_thread_is_woken_by_a_send_and_by_the_last_sender_leaving() {
        let (tx, mut rx) = channel::<u32>(4);
        let t = std::thread::spawn(move || (rx.blocking_recv(), rx.blocking_recv()));
        std::thread::sleep(Duration::from_millis(50));
        tx.try_send(5).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        drop(tx);
        assert_eq!(t.join().unwrap(), (Some(5), None));
    }

    #[test]
    fn gather_waits_for_enough_messages_or_the_deadline() {
        let (tx, mut rx) = channel::<u32>(64);
        // Enough arrive, one at a time from another thread: it returns with them, long
        // before its deadline.
        let t = std::thread::spawn(move || {
            for i in 0..6 {
                std::thread::sleep(Duration::from_millis(10));
                tx.try_send(i).unwrap();
            }
            tx
        });
        let mut batch = vec![100];
        let started = Instant::now();
        rx.gather(&mut batch, 5, 64, started + Duration::from_secs(20));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "gather must return once it has enough"
        );
        assert_eq!(batch[..5], [100, 0, 1, 2, 3]);
        let tx = t.join().unwrap();
        // Too few arrive: it returns at the deadline with what came, in order.
        tx.try_send(9).unwrap();
        let started = Instant::now();
        rx.gather(&mut batch, 50, 64, started + Duration::from_millis(100));
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(batch, vec![100, 0, 1, 2, 3, 4, 5, 9]);
        // Never past `max`, with more queued; the rest stays queued.
        for i in 0..5 {
            tx.try_send(i).unwrap();
        }
        let mut batch = Vec::new();
        rx.gather(&mut batch, 10, 3, Instant::now() + Duration::from_secs(20));
        assert_eq!(batch, vec![0, 1, 2]);
        // The last sender leaving ends the wait.
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(tx);
        });
        let mut batch = Vec::new();
        let started = Instant::now();
        rx.gather(&mut batch, 10, 64, started + Duration::from_secs(20));
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(batch, vec![3, 4]);
        t.join().unwrap();
    }

    #[tokio::test]
    async fn sends_fail_once_the_receiver_is_gone_and_queued_messages_are_dropped() {
        let (tx, rx) = channel(4);
        let held = Arc::new(());
        tx.try_send(held.clone()).unwrap();
        let tx2 = tx.clone();
        tx.try_send(held.clone()).unwrap();
        drop(rx);
        assert_eq!(
            Arc::strong_count(&held),
            1,
            "queued messages are dropped with the receiver"
        );
        assert!(matches!(tx.try_send(held.clone()), Err(TrySendError::Closed(_))));
        assert!(tx2.send(held.clone()).await.is_err());
    }

    #[tokio::test]
    async fn a_sender_waiting_for_room_fails_when_the_receiver_goes() {
        let (tx, rx) = channel(1);
        tx.try_send(1).unwrap();
        let tx2 = tx.clone();
        let blocked = tokio::spawn(async move { tx2.send(2).await.map_err(|e| e.0) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(rx);
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), blocked)
                .await
                .unwrap()
                .unwrap(),
            Err(2)
        );
    }
}

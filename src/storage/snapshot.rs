//! Runs of reads that share one LMDB read transaction.
//!
//! A pipelined batch of reads (sixteen GETs in one packet, say) would otherwise begin and
//! end a read transaction per key, which costs about as much as the lookup itself. While a
//! [`ReadRun`] is alive, every read of its store on this thread goes through one
//! transaction, begun at the first read. Its snapshot is taken after the requests arrived,
//! so a read never misses a write acknowledged before it was received.
//!
//! The holder must end the run before it yields to other tasks: the transaction holds the
//! store's read gate (a map resize waits for it) and, with thread-local reader slots, is
//! the only read transaction this thread may have open. The connection ends its run before
//! every await that can suspend. Only the task that started a run reads through it, so
//! even a run left open by mistake never serves another connection an older snapshot.

use std::cell::RefCell;
use std::sync::RwLockReadGuard;

use heed::{RoTxn, WithTls};

use super::Inner;
use crate::error::StoreError;

/// The transaction of this thread's run, if one is open. Fields drop in order: the
/// transaction before the gate it was opened under.
struct Open {
    store: u64,
    /// The task that started the run (`None` outside a task, in tests).
    task: Option<tokio::task::Id>,
    txn: Option<(RoTxn<'static, WithTls>, RwLockReadGuard<'static, ()>)>,
    /// The wall-clock time of the run's reads (ms since the Unix epoch), read once, as
    /// its snapshot is taken once: expiries are judged as of one moment.
    now_ms: Option<u64>,
}

thread_local! {
    static RUN: RefCell<Option<Open>> = const { RefCell::new(None) };
}

/// A run of reads on this thread; it ends (closing its transaction) when dropped.
#[must_use = "the run ends when this is dropped"]
pub struct ReadRun {
    store: u64,
}

impl ReadRun {
    /// Starts a run for the store `store`, ending any run this thread still had.
    pub(super) fn start(store: u64) -> ReadRun {
        RUN.with(|r| {
            if let Ok(mut r) = r.try_borrow_mut() {
                *r = Some(Open {
                    store,
                    task: tokio::task::try_id(),
                    txn: None,
                    now_ms: None,
                });
            }
        });
        ReadRun { store }
    }
}

impl Drop for ReadRun {
    fn drop(&mut self) {
        RUN.with(|r| {
            if let Ok(mut r) = r.try_borrow_mut()
                && r.as_ref().is_some_and(|o| o.store == self.store)
            {
                *r = None;
            }
        });
    }
}

/// The time (ms since the Unix epoch) a read of store `store` judges expiries by: the
/// run's, read at its first call, when this thread's task has a run of that store open;
/// otherwise the clock now.
pub(super) fn time_ms(store: u64) -> u64 {
    RUN.with(|r| {
        let mut r = r.try_borrow_mut().ok()?;
        let open = r
            .as_mut()
            .filter(|o| o.store == store && o.task == tokio::task::try_id())?;
        Some(*open.now_ms.get_or_insert_with(crate::clock::now_ms))
    })
    .unwrap_or_else(crate::clock::now_ms)
}

/// Runs `f` in a read transaction of `inner`: the run's when this thread has one for
/// this store, otherwise a transaction of its own.
pub(super) fn read<T>(
    inner: &Inner,
    f: impl FnOnce(&RoTxn<'_, WithTls>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let f = RUN.with(|r| {
        let Ok(mut r) = r.try_borrow_mut() else {
            return Err(f);
        };
        let Some(open) = r
            .as_mut()
            .filter(|o| o.store == inner.id && o.task == tokio::task::try_id())
        else {
            return Err(f);
        };
        if open.txn.is_none() {
            let gate = inner.gate.read();
            match inner.env.clone().static_read_txn() {
                Ok(txn) => open.txn = Some((txn, gate)),
                Err(e) => return Ok(Err(e.into())),
            }
        }
        match &open.txn {
            Some((txn, _)) => Ok(f(txn)),
            None => Err(f),
        }
    });
    match f {
        Ok(result) => result,
        Err(f) => {
            let _gate = inner.gate.read();
            let rtxn = inner.env.read_txn()?;
            f(&rtxn)
        }
    }
}

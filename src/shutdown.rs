//! One shutdown signal that every loop takes. Must not know who triggers it (SIGTERM,
//! SIGINT, the SHUTDOWN command): they all call [`Shutdown::trigger`].

use tokio::sync::watch;

/// A cloneable handle on the node's shutdown state.
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A new, untriggered signal.
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(false);
        Shutdown { tx, rx }
    }

    /// Starts the shutdown; idempotent.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Whether shutdown has started.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// A ticker for a background loop: `ticker.next().await` waits for the next period
    /// and is false once shutdown has started (a late tick is delayed, never bunched).
    pub fn ticker(&self, period: std::time::Duration) -> Ticker {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticker {
            interval,
            shutdown: self.clone(),
        }
    }

    /// Resolves once shutdown has started.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        // An error means the sender is gone, which only happens when shutting down.
        let _ = rx.wait_for(|v| *v).await;
    }
}

/// The periodic wake-up of a background loop that stops with the node.
#[derive(Debug)]
pub struct Ticker {
    interval: tokio::time::Interval,
    shutdown: Shutdown,
}

impl Ticker {
    /// Waits for the next tick; false when the node is shutting down.
    pub async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.interval.tick() => !self.shutdown.is_triggered(),
            _ = self.shutdown.wait() => false,
        }
    }
}

//! The clock port: the engine reads the time and waits for it only through
//! a [`Clock`], so that timers (retry back-off, lease expiry, cancel grace)
//! can be tested on a clock that moves only when a test says so.
//!
//! [`SystemClock`] is the wall clock with tokio timers. [`ManualClock`] is
//! a paused clock: `now` stands still until [`ManualClock::advance`], which
//! wakes every sleeper whose time has come. (Tokio's own paused clock does
//! not serve here: it auto-advances whenever the runtime is idle, which
//! includes every wait for the database, so a test could not hold time
//! still across a commit.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::domain::ids::Timestamp;

/// Where the engine gets the time.
pub trait Clock: Send + Sync + 'static {
    /// Now, in milliseconds since the Unix epoch.
    fn now(&self) -> Timestamp;
    /// Resolves once `now()` has reached `at` (at once if it has).
    fn sleep_until(&self, at: Timestamp) -> BoxFuture<'static, ()>;
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp(chrono::Utc::now().timestamp_millis())
    }

    fn sleep_until(&self, at: Timestamp) -> BoxFuture<'static, ()> {
        let delay = u64::try_from(at.0.saturating_sub(self.now().0)).unwrap_or(0);
        Box::pin(tokio::time::sleep(Duration::from_millis(delay)))
    }
}

/// A clock that stands still until told to move (tests).
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<i64>>,
    moved: watch::Sender<i64>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn starting_at(start: Timestamp) -> Self {
        let (moved, _) = watch::channel(start.0);
        Self {
            now: Arc::new(Mutex::new(start.0)),
            moved,
        }
    }

    /// Moves the clock forward by `by`, waking every sleeper whose time
    /// has come.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now += i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.moved.send_replace(*now);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(*self.now.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn sleep_until(&self, at: Timestamp) -> BoxFuture<'static, ()> {
        let mut moved = self.moved.subscribe();
        Box::pin(async move {
            // The sender lives as long as the clock; if it is gone, nobody
            // will ever move time again.
            if moved.wait_for(|now| *now >= at.0).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_wakes_sleepers_only_when_advanced_past_their_time() {
        let clock = ManualClock::starting_at(Timestamp(1_000));
        let mut early = tokio::spawn(clock.sleep_until(Timestamp(1_500)));
        let mut late = tokio::spawn(clock.sleep_until(Timestamp(3_000)));
        tokio::task::yield_now().await;
        assert!(futures::poll!(&mut early).is_pending());
        clock.advance(Duration::from_millis(499));
        tokio::task::yield_now().await;
        assert!(futures::poll!(&mut early).is_pending());
        clock.advance(Duration::from_millis(1));
        early.await.unwrap();
        assert_eq!(clock.now(), Timestamp(1_500));
        assert!(futures::poll!(&mut late).is_pending());
        clock.advance(Duration::from_secs(10));
        late.await.unwrap();
        // A time already passed resolves at once.
        clock.sleep_until(Timestamp(0)).await;
    }
}

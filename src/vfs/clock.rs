//! The clock of the idle lock: "now" for stamping filesystem requests and
//! for measuring how long the mount has been idle.
//!
//! In a mount it is the monotonic clock plus an offset that starts at zero
//! and can only grow ([`Clock::advance`]). Tests move it forward to prove the
//! idle lock without waiting for real time (docs/SESSIONS.md, "Testing the
//! idle lock"). Moving it forward can only bring a lock sooner: idle time is
//! the difference of two readings, and a reading is never less than the real
//! time elapsed plus every advance made before it. Nothing moves it back.
//!
//! Unit tests use a clock that stands still until advanced
//! ([`Clock::manual`], compiled only for tests), so their idle times are
//! exact.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Monotonic "now" of one mount, with a forward-only offset.
#[derive(Debug)]
pub struct Clock {
    /// Real time counted from here; `None`: a test clock that stands still.
    origin: Option<Instant>,
    /// Milliseconds added by [`Clock::advance`]; only ever grows.
    ahead_ms: AtomicU64,
}

impl Clock {
    /// The monotonic clock (a mount's clock).
    pub fn system() -> Clock {
        Clock {
            origin: Some(Instant::now()),
            ahead_ms: AtomicU64::new(0),
        }
    }

    /// A clock that moves only when advanced: unit tests only, so no build
    /// that mounts can have a clock that stops.
    #[cfg(test)]
    pub fn manual() -> Clock {
        Clock {
            origin: None,
            ahead_ms: AtomicU64::new(0),
        }
    }

    /// Time since the clock started, plus every advance.
    pub fn now(&self) -> Duration {
        let real = self.origin.map(|o| o.elapsed()).unwrap_or_default();
        real.saturating_add(self.ahead())
    }

    /// Moves the clock forward by `by` (never back); returns how far it is
    /// now ahead of real time in total.
    pub fn advance(&self, by: Duration) -> Duration {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        let before = self
            .ahead_ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |a| {
                Some(a.saturating_add(by))
            })
            .unwrap_or_else(|a| a);
        Duration::from_millis(before.saturating_add(by))
    }

    /// How far the clock is ahead of real time.
    pub fn ahead(&self) -> Duration {
        Duration::from_millis(self.ahead_ms.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_only_forward() {
        let c = Clock::manual();
        assert_eq!(c.now(), Duration::ZERO);
        assert_eq!(c.advance(Duration::from_secs(90)), Duration::from_secs(90));
        assert_eq!(c.now(), Duration::from_secs(90));
        assert_eq!(
            c.advance(Duration::from_millis(500)),
            Duration::from_millis(90_500)
        );
        assert_eq!(c.ahead(), Duration::from_millis(90_500));
        // Saturates rather than wrapping round to the past.
        c.advance(Duration::MAX);
        assert_eq!(c.ahead(), Duration::from_millis(u64::MAX));
        assert!(c.now() >= Duration::from_millis(u64::MAX));
    }

    #[test]
    fn the_system_clock_is_real_time_plus_the_advances() {
        let c = Clock::system();
        let before = c.now();
        c.advance(Duration::from_secs(3600));
        // Monotonic real time under it: at least the advance on top.
        assert!(c.now() >= before + Duration::from_secs(3600));
        assert_eq!(c.ahead(), Duration::from_secs(3600));
    }
}

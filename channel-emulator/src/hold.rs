//! Holding a message for its emulated air time, to the microsecond and without a thread hand-off.
//!
//! tokio's timer ticks in milliseconds and fires on the tick after a deadline, so on its own it
//! held a 1.05 ms air time for about 2 ms (p50 overshoot 1.0 ms, measured). The emulator used to
//! give the last two milliseconds to a blocking-pool thread that slept them with the OS's
//! high-resolution timer. That was precise, but every held message then cost two thread wake-ups
//! (runtime → blocking thread → runtime), and on two cores those hand-offs alone added more than
//! the 100 µs the digital path is allowed (docs/link.md, "The emulator on the digital path").
//!
//! On Linux a [`Hold`] arms a `timerfd` (an hrtimer, which no timer slack delays) and registers it
//! with tokio's own reactor: the runtime thread that waits in `epoll_wait` wakes at the deadline
//! and runs the relay task itself. Elsewhere it falls back to the blocking-thread sleep.

use std::time::{Duration, Instant};

/// One relay direction's timer, reused for every message it holds.
pub struct Hold {
    #[cfg(target_os = "linux")]
    timer: Option<tokio::io::unix::AsyncFd<linux::Timer>>,
}

impl Default for Hold {
    fn default() -> Self {
        Self::new()
    }
}

impl Hold {
    pub fn new() -> Self {
        Self {
            #[cfg(target_os = "linux")]
            timer: match linux::Timer::new().and_then(linux::register) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(error = %e, "no timerfd; holding messages on a blocking thread instead");
                    None
                }
            },
        }
    }

    /// Holds a message for `delay`; returns how long it really was held (never less).
    pub async fn hold(&mut self, delay: Duration) -> Duration {
        let started = Instant::now();
        if delay.is_zero() {
            return started.elapsed();
        }
        #[cfg(target_os = "linux")]
        if let Some(timer) = &self.timer {
            match linux::wait(timer, delay).await {
                Ok(()) => {
                    // The timer's clock is the one `Instant` reads (CLOCK_MONOTONIC), so this
                    // only guards against an error path ending the wait early.
                    let rest = delay.saturating_sub(started.elapsed());
                    if rest.is_zero() {
                        return started.elapsed();
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "timerfd failed; holding messages on a blocking thread instead");
                    self.timer = None;
                }
            }
        }
        sleep_on_thread(started + delay).await;
        started.elapsed()
    }
}

/// The fallback, and what the emulator did before the timerfd: tokio's timer for all but the last
/// two milliseconds, the rest slept on a blocking-pool thread with the OS's high-resolution timer
/// (its slack set to 1 µs on Linux). Public for the benchmark that compares the two.
pub async fn sleep_on_thread(deadline: Instant) {
    const TICK: Duration = Duration::from_millis(1);
    let delay = deadline.saturating_duration_since(Instant::now());
    if delay > 2 * TICK {
        tokio::time::sleep(delay - 2 * TICK).await;
    }
    let rest = deadline.saturating_duration_since(Instant::now());
    if !rest.is_zero() {
        // The blocking pool only fails to run this if the runtime is shutting down.
        let _ = tokio::task::spawn_blocking(move || {
            #[cfg(target_os = "linux")]
            let _ = nix::sys::prctl::set_timerslack(1_000);
            std::thread::sleep(rest)
        })
        .await;
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::os::fd::{AsFd, AsRawFd, RawFd};
    use std::time::Duration;

    use nix::sys::time::TimeSpec;
    use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
    use tokio::io::unix::AsyncFd;

    /// A non-blocking monotonic `timerfd`; tokio's `AsyncFd` wants `AsRawFd`, which nix's type
    /// leaves to its owner.
    pub(super) struct Timer(TimerFd);

    impl Timer {
        pub(super) fn new() -> std::io::Result<Self> {
            Ok(Self(TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC)?))
        }
    }

    impl AsRawFd for Timer {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_fd().as_raw_fd()
        }
    }

    /// Registers the timer with the current runtime's reactor.
    pub(super) fn register(timer: Timer) -> std::io::Result<AsyncFd<Timer>> {
        // SAFETY: `Timer` owns its descriptor (an `OwnedFd` inside nix's `TimerFd`), which stays
        // open until the `AsyncFd` drops it, and `as_raw_fd` always returns that descriptor.
        #[allow(unsafe_code)]
        let registered = unsafe { AsyncFd::register(timer) };
        Ok(registered?)
    }

    /// Arms the timer for `delay` (not zero: a zero one-shot disarms) and waits for it to expire.
    pub(super) async fn wait(timer: &AsyncFd<Timer>, delay: Duration) -> std::io::Result<()> {
        timer.get_ref().0.set(Expiration::OneShot(TimeSpec::from_duration(delay)), TimerSetTimeFlags::empty())?;
        loop {
            let mut ready = timer.readable().await?;
            // Reading the expiry count clears the readiness; before expiry it is EAGAIN, which
            // `try_io` turns back into waiting.
            match ready.try_io(|t| t.get_ref().0.wait().map_err(std::io::Error::from)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hold_never_ends_early_and_is_not_rounded_up_to_a_timer_tick() {
        let mut hold = super::Hold::new();
        #[cfg(target_os = "linux")]
        assert!(hold.timer.is_some(), "a Linux runtime with I/O enabled has a timerfd");
        let mut over = Vec::new();
        for us in [0u64, 40, 300, 1_050, 2_000, 3_200] {
            let delay = Duration::from_micros(us);
            for _ in 0..20 {
                let held = hold.hold(delay).await;
                assert!(held >= delay, "held {held:?} for a delay of {delay:?}");
                over.push(held - delay);
            }
        }
        // A timer that rounds to its millisecond tick overshoots by ~1 ms at the median; this
        // bound only catches that, not scheduling noise on a loaded machine.
        over.sort();
        let median = over[over.len() / 2];
        assert!(median < Duration::from_micros(700), "median overshoot {median:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_blocking_thread_fallback_is_precise_too() {
        let mut over = Vec::new();
        for us in [40u64, 1_050, 3_200] {
            let delay = Duration::from_micros(us);
            for _ in 0..10 {
                let started = std::time::Instant::now();
                super::sleep_on_thread(started + delay).await;
                let held = started.elapsed();
                assert!(held >= delay, "held {held:?} for a delay of {delay:?}");
                over.push(held - delay);
            }
        }
        over.sort();
        let median = over[over.len() / 2];
        assert!(median < Duration::from_micros(700), "median overshoot {median:?}");
    }
}

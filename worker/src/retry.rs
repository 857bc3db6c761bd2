//! Retrying transient failures: capped exponential backoff with jitter, bounded both in
//! attempts and in total time, so a flapping server costs at most a known delay and a dead
//! one fails with its error instead of hanging.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often and how long to try one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The delay after the first failure; it doubles up to `max`.
    pub initial: Duration,
    pub max: Duration,
    /// No attempt starts after this much time has passed since the first.
    pub budget: Duration,
}

/// Milvus gRPC calls and connects: 6 attempts over about 8 to 12 s, for a dropped connection or
/// an overloaded Proxy. A longer outage fails the call; the operator then retries the whole
/// step on its own schedule (planning, commit), and a CLI user runs the command again.
pub const MILVUS: Backoff = Backoff {
    attempts: 6,
    initial: Duration::from_millis(250),
    max: Duration::from_secs(4),
    budget: Duration::from_secs(30),
};

/// The commit endpoint, 4 attempts over about 4 to 5 s: it commits idempotently (a `replace`
/// op), so a call whose answer was lost is sent again.
pub const COMMIT: Backoff = Backoff {
    attempts: 4,
    initial: Duration::from_millis(500),
    max: Duration::from_secs(4),
    budget: Duration::from_secs(60),
};

impl Backoff {
    /// The delay before attempt `attempt + 1` (`attempt` ≥ 1 failed already): the capped
    /// exponential step plus up to half of it again, drawn from `entropy`.
    pub fn delay(&self, attempt: u32, entropy: u64) -> Duration {
        let step = self
            .initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max);
        let half = step.as_millis() as u64 / 2;
        step + Duration::from_millis(entropy % (half + 1))
    }

    /// Runs `call` until it succeeds, fails with an error `transient` rejects, or the attempts
    /// or the time budget are spent; the last error is returned. `what` names the call in the
    /// warning logged before each retry.
    pub async fn run<T, E, F, Fut>(&self, what: &str, transient: impl Fn(&E) -> bool, mut call: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(e) if attempt < self.attempts && transient(&e) && started.elapsed() < self.budget => {
                    let pause = self.delay(attempt, entropy());
                    tracing::warn!(call = what, attempt, error = %e, retry_in_ms = pause.as_millis() as u64, "transient failure; retrying");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Jitter only needs to differ between processes and calls, not to be unpredictable.
fn entropy() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ u64::from(std::process::id()).rotate_left(32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    const FAST: Backoff = Backoff {
        attempts: 4,
        initial: Duration::from_millis(1),
        max: Duration::from_millis(4),
        budget: Duration::from_secs(10),
    };

    #[test]
    fn delays_double_up_to_the_cap_with_at_most_half_again_of_jitter() {
        let b = Backoff {
            attempts: 10,
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            budget: Duration::from_secs(60),
        };
        let steps: Vec<u64> = (1..=6).map(|a| b.delay(a, 0).as_millis() as u64).collect();
        assert_eq!(steps, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(1, 50).as_millis(), 150, "jitter up to half the step");
        assert_eq!(b.delay(1, 51).as_millis(), 100, "wraps within the half");
        assert_eq!(b.delay(40, 0).as_millis(), 1000, "a large attempt stays capped");
    }

    #[tokio::test]
    async fn a_transient_error_is_retried_until_the_call_succeeds() {
        let calls = Cell::new(0);
        let r: Result<u32, String> = FAST
            .run(
                "probe",
                |_| true,
                || {
                    calls.set(calls.get() + 1);
                    let n = calls.get();
                    async move {
                        if n < 3 {
                            Err(format!("down {n}"))
                        } else {
                            Ok(n)
                        }
                    }
                },
            )
            .await;
        assert_eq!(r, Ok(3));
    }

    #[tokio::test]
    async fn attempts_are_bounded_and_the_last_error_is_returned() {
        let calls = Cell::new(0);
        let r: Result<(), String> = FAST
            .run(
                "probe",
                |_| true,
                || {
                    calls.set(calls.get() + 1);
                    let n = calls.get();
                    async move { Err(format!("down {n}")) }
                },
            )
            .await;
        assert_eq!(r, Err("down 4".into()));
        assert_eq!(calls.get(), 4);
    }

    #[tokio::test]
    async fn a_permanent_error_fails_at_once() {
        let calls = Cell::new(0);
        let r: Result<(), String> = FAST
            .run(
                "probe",
                |e: &String| !e.contains("denied"),
                || {
                    calls.set(calls.get() + 1);
                    async { Err("access denied".to_owned()) }
                },
            )
            .await;
        assert!(r.is_err());
        assert_eq!(calls.get(), 1);
    }

    #[tokio::test]
    async fn the_time_budget_stops_retries_before_the_attempts_run_out() {
        let slow = Backoff {
            attempts: 100,
            budget: Duration::from_millis(30),
            ..FAST
        };
        let calls = Cell::new(0);
        let _: Result<(), String> = slow
            .run(
                "probe",
                |_| true,
                || {
                    calls.set(calls.get() + 1);
                    async { Err("down".to_owned()) }
                },
            )
            .await;
        assert!(calls.get() < 100, "{} calls", calls.get());
    }
}

//! Waiting for a condition with a deadline: the one way the lab and the tests wait.
//!
//! A check returns [`Poll::Ready`] with a value, [`Poll::Pending`] with what it saw (so a
//! timeout can say how far things got), or [`Poll::Failed`] when waiting longer cannot help
//! (a process died). Polling starts fast and backs off to half a second, which keeps short
//! waits short without burning the CPU the TCG guests need.

use std::time::{Duration, Instant};

/// The outcome of one check.
#[derive(Debug)]
pub enum Poll<T> {
    Ready(T),
    Pending(String),
    Failed(String),
}

/// Why a wait ended without the condition.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("timed out after {after:?} waiting for {what}; last seen: {last}")]
    Timeout {
        what: String,
        after: Duration,
        last: String,
    },
    #[error("gave up waiting for {what}: {reason}")]
    Failed { what: String, reason: String },
    #[error("interrupted while waiting for {what}")]
    Interrupted { what: String },
}

/// Calls `check` until it is ready, fails, or `timeout` passes.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Poll<T>,
) -> Result<T, WaitError> {
    let start = Instant::now();
    let mut interval = Duration::from_millis(25);
    loop {
        match check() {
            Poll::Ready(v) => return Ok(v),
            Poll::Failed(reason) => {
                return Err(WaitError::Failed {
                    what: what.to_owned(),
                    reason,
                })
            }
            Poll::Pending(last) => {
                if start.elapsed() >= timeout {
                    return Err(WaitError::Timeout {
                        what: what.to_owned(),
                        after: start.elapsed(),
                        last,
                    });
                }
            }
        }
        if crate::proc::interrupted() {
            return Err(WaitError::Interrupted {
                what: what.to_owned(),
            });
        }
        std::thread::sleep(interval.min(timeout.saturating_sub(start.elapsed())));
        interval = (interval * 2).min(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_value_once_ready() {
        let mut calls = 0;
        let v = wait_for("three calls", Duration::from_secs(5), || {
            calls += 1;
            if calls == 3 {
                Poll::Ready(calls * 10)
            } else {
                Poll::Pending(format!("{calls} calls"))
            }
        })
        .unwrap();
        assert_eq!(v, 30);
    }

    #[test]
    fn timeout_reports_the_last_observation() {
        let err = wait_for::<()>("never", Duration::from_millis(100), || {
            Poll::Pending("still 2 of 3".into())
        })
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("never") && text.contains("still 2 of 3"), "{text}");
    }

    #[test]
    fn failure_stops_at_once() {
        let start = Instant::now();
        let err = wait_for::<()>("doomed", Duration::from_secs(30), || {
            Poll::Failed("process exited".into())
        })
        .unwrap_err();
        assert!(matches!(err, WaitError::Failed { .. }));
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}

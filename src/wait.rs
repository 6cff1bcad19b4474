//! The one deadline-bounded wait helper: every "wait until" in envclone goes
//! through [`until`], so no code sleeps a magic amount and hopes.

use std::time::{Duration, Instant};

/// Why a wait ended without success.
#[derive(Debug, thiserror::Error)]
pub enum WaitError<E: std::error::Error + 'static> {
    #[error("gave up after {waited:?} waiting for {what}")]
    Timeout {
        what: String,
        waited: Duration,
        /// The error of the last attempt, when the probe returned one.
        #[source]
        last: Option<E>,
    },
}

/// Calls `probe` every `interval` until it returns `Ok(Some(v))` or
/// `deadline` passes. `Ok(None)` and `Err` both mean "not yet"; the last
/// error is kept so a timeout can say why the thing never became ready.
pub fn until<T, E, F>(what: &str, deadline: Duration, interval: Duration, mut probe: F) -> Result<T, WaitError<E>>
where
    E: std::error::Error + 'static,
    F: FnMut() -> Result<Option<T>, E>,
{
    let start = Instant::now();
    let mut last = None;
    loop {
        match probe() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = Some(e),
        }
        let waited = start.elapsed();
        if waited >= deadline {
            return Err(WaitError::Timeout { what: what.to_string(), waited, last });
        }
        std::thread::sleep(interval.min(deadline - waited));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("not ready")]
    struct NotReady;

    #[test]
    fn returns_value_once_probe_succeeds() {
        let mut n = 0;
        let v = until::<_, NotReady, _>("n to reach 3", Duration::from_secs(5), Duration::from_millis(1), || {
            n += 1;
            Ok((n >= 3).then_some(n))
        })
        .unwrap();
        assert_eq!(v, 3);
    }

    #[test]
    fn timeout_keeps_last_error() {
        let err = until::<(), _, _>("never", Duration::from_millis(20), Duration::from_millis(5), || Err(NotReady))
            .unwrap_err();
        let WaitError::Timeout { last, .. } = err;
        assert!(last.is_some());
    }
}

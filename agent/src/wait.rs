//! The agent's one deadline-bounded wait: every "wait until" in the agent
//! goes through [`until`], so nothing sleeps a magic amount and hopes.

use std::time::{Duration, Instant};

/// Calls `probe` every `interval` until it gives a value or `deadline`
/// (from now) has passed; `None` means it never did.
pub fn until<T>(deadline: Duration, interval: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        let waited = start.elapsed();
        if waited >= deadline {
            return None;
        }
        std::thread::sleep(interval.min(deadline - waited));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_value_or_gives_up_at_the_deadline() {
        let mut calls = 0;
        let value = until(Duration::from_secs(5), Duration::from_millis(1), || {
            calls += 1;
            (calls == 3).then_some(calls)
        });
        assert_eq!(value, Some(3));
        let start = Instant::now();
        assert_eq!(until(Duration::from_millis(30), Duration::from_millis(5), || None::<()>), None);
        assert!(start.elapsed() >= Duration::from_millis(30));
    }
}

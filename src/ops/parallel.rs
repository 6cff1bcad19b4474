//! One thread per item (per VM, in practice), all joined before going on:
//! a group stop, start, thaw or login takes as long as its slowest member,
//! not the sum of them.

/// Runs `work` on every item at once; the results come in the items'
/// order. A worker that panicked gives `Err` with its panic: a bug, which
/// each caller turns into its own error (so that the operation rolls back)
/// or carries on with `std::panic::resume_unwind`, never a result dropped.
pub fn each<T, R>(items: &[T], work: impl Fn(&T) -> R + Sync) -> Vec<std::thread::Result<R>>
where
    T: Sync,
    R: Send,
{
    std::thread::scope(|scope| {
        let work = &work;
        let handles: Vec<_> = items.iter().map(|item| scope.spawn(move || work(item))).collect();
        handles.into_iter().map(|handle| handle.join()).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    #[test]
    fn runs_everything_at_once_and_keeps_the_order() {
        // Each worker waits until all have started: run one after the
        // other, the first would give up.
        let started = AtomicUsize::new(0);
        let results = each(&[30u64, 10, 20], |n| {
            started.fetch_add(1, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(30);
            while started.load(Ordering::SeqCst) < 3 {
                if Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Some(*n)
        });
        let values: Vec<Option<u64>> = results.into_iter().map(Result::unwrap).collect();
        assert_eq!(values, [Some(30), Some(10), Some(20)]);
    }

    #[test]
    fn a_panic_is_a_result_of_its_own() {
        let results = each(&[1, 2], |n| if *n == 2 { panic!("worker {n}") } else { *n });
        assert_eq!(results[0].as_ref().ok(), Some(&1));
        assert!(results[1].is_err());
    }
}

//! Applying a schedule's retention after it took a snapshot: choose with
//! [`crate::retention::select_to_keep`] among the schedule's complete
//! snapshots, then delete the rest, oldest first, through whatever deletes
//! snapshots (`envclone delete-snapshot` for the real runner, a recording
//! fake in tests). Only the schedule's own snapshots are considered:
//! manual snapshots and other schedules' are never touched.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::RunError;
use crate::catalog::{RetentionTally, Snapshot, SnapshotState};
use crate::config::Retention;
use crate::retention::select_to_keep;

/// What deleting one snapshot did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    /// Nothing changed: a clone, standby or other snapshot still needs the
    /// snapshot's images. It stays listed and restorable; `prune` retries.
    Deferred {
        reason: String,
    },
}

/// What retention did, by snapshot name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetentionResult {
    /// Kept by the policy, newest first.
    pub kept: Vec<String>,
    /// Deleted, oldest first.
    pub deleted: Vec<String>,
    pub deferred: Vec<DeferredDelete>,
    /// Deletes that failed; the snapshots stay and the next run tries again.
    pub failed: Vec<FailedDelete>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeferredDelete {
    pub snapshot: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedDelete {
    pub snapshot: String,
    pub error: String,
}

impl RetentionResult {
    /// The counts the catalog keeps; failed deletes make an error.
    pub fn tally(&self) -> RetentionTally {
        let error = (!self.failed.is_empty()).then(|| {
            let list: Vec<String> = self.failed.iter().map(|f| format!("{}: {}", f.snapshot, f.error)).collect();
            format!("{} of {} deletes failed: {}", self.failed.len(), self.attempted(), list.join("; "))
        });
        RetentionTally { deleted: count(self.deleted.len()), deferred: count(self.deferred.len()), error }
    }

    fn attempted(&self) -> usize {
        self.deleted.len() + self.deferred.len() + self.failed.len()
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Applies `policy` to the complete snapshots of `schedule` among
/// `snapshots`, deleting what it does not keep through `delete`. A delete
/// that fails is recorded and the others still run; [`RunError::Unavailable`]
/// (no delete command at all) ends retention at once with that error.
pub fn apply(
    snapshots: &[Snapshot],
    schedule: &str,
    policy: &Retention,
    now: DateTime<Utc>,
    delete: &mut dyn FnMut(&Snapshot) -> Result<DeleteOutcome, RunError>,
) -> Result<RetentionResult, RunError> {
    let candidates: Vec<&Snapshot> = snapshots
        .iter()
        .filter(|s| s.state == SnapshotState::Complete && s.schedule.as_deref() == Some(schedule))
        .collect();
    let times: Vec<_> = candidates.iter().map(|s| (s.id, s.created_at)).collect();
    let plan = select_to_keep(&times, policy, now);
    let mut result = RetentionResult::default();
    let mut kept: Vec<&Snapshot> = candidates.iter().copied().filter(|s| plan.keep.contains(&s.id)).collect();
    kept.sort_by_key(|s| std::cmp::Reverse((s.created_at, s.id)));
    result.kept = kept.iter().map(|s| s.name.clone()).collect();
    for id in &plan.delete {
        let Some(snapshot) = candidates.iter().find(|s| s.id == *id) else { continue };
        match delete(snapshot) {
            Ok(DeleteOutcome::Deleted) => result.deleted.push(snapshot.name.clone()),
            Ok(DeleteOutcome::Deferred { reason }) => {
                result.deferred.push(DeferredDelete { snapshot: snapshot.name.clone(), reason })
            }
            Err(error) => {
                result.failed.push(FailedDelete { snapshot: snapshot.name.clone(), error: crate::error::chain(&error) })
            }
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::SnapshotId;
    use chrono::TimeZone;
    use std::collections::BTreeSet;

    fn snapshot(id: i64, schedule: Option<&str>, hour: u32, state: SnapshotState) -> Snapshot {
        Snapshot {
            id: SnapshotId(id),
            env: "prod".into(),
            name: format!("s{id}"),
            label: None,
            schedule: schedule.map(str::to_owned),
            created_at: Utc.with_ymd_and_hms(2024, 5, 1, hour, 0, 0).unwrap(),
            state,
            memory: false,
            freeze_window: None,
            size_bytes: 0,
            vms: vec![],
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, 23, 0, 0).unwrap()
    }

    /// A deleter that records what it was asked to delete and answers
    /// from a scenario.
    #[derive(Default)]
    struct RecordingDeleter {
        asked: Vec<String>,
        deferred: BTreeSet<String>,
        failing: BTreeSet<String>,
    }

    impl RecordingDeleter {
        fn deferring(names: &[&str]) -> Self {
            Self { deferred: names.iter().map(|n| n.to_string()).collect(), ..Self::default() }
        }

        fn failing_on(names: &[&str]) -> Self {
            Self { failing: names.iter().map(|n| n.to_string()).collect(), ..Self::default() }
        }

        fn delete(&mut self, snapshot: &Snapshot) -> Result<DeleteOutcome, RunError> {
            self.asked.push(snapshot.name.clone());
            if self.failing.contains(&snapshot.name) {
                Err(RunError::Busy { env: "prod".into(), detail: "busy: restore".into() })
            } else if self.deferred.contains(&snapshot.name) {
                Ok(DeleteOutcome::Deferred { reason: "clone 'c1' uses it".into() })
            } else {
                Ok(DeleteOutcome::Deleted)
            }
        }
    }

    fn nightly(ids_hours: &[(i64, u32)]) -> Vec<Snapshot> {
        ids_hours.iter().map(|&(id, hour)| snapshot(id, Some("nightly"), hour, SnapshotState::Complete)).collect()
    }

    #[test]
    fn deletes_exactly_what_select_to_keep_says_oldest_first() {
        let snapshots = nightly(&[(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]);
        let policy = Retention { last: Some(2), ..Retention::default() };
        let expected =
            select_to_keep(&snapshots.iter().map(|s| (s.id, s.created_at)).collect::<Vec<_>>(), &policy, now());
        let mut deleter = RecordingDeleter::default();

        let result = apply(&snapshots, "nightly", &policy, now(), &mut |s| deleter.delete(s)).unwrap();

        let expected_names: Vec<String> = expected.delete.iter().map(|id| format!("s{id}")).collect();
        assert_eq!(deleter.asked, expected_names);
        assert_eq!(deleter.asked, ["s1", "s2", "s3"]);
        assert_eq!(result.deleted, ["s1", "s2", "s3"]);
        assert_eq!(result.kept, ["s5", "s4"]);
        assert_eq!(result.tally(), RetentionTally { deleted: 3, deferred: 0, error: None });
    }

    #[test]
    fn only_the_schedules_complete_snapshots_are_candidates() {
        let snapshots = vec![
            snapshot(1, None, 1, SnapshotState::Complete),
            snapshot(2, Some("hourly"), 2, SnapshotState::Complete),
            snapshot(3, Some("nightly"), 3, SnapshotState::Failed),
            snapshot(4, Some("nightly"), 4, SnapshotState::Deleted),
            snapshot(5, Some("nightly"), 5, SnapshotState::Complete),
            snapshot(6, Some("nightly"), 6, SnapshotState::Complete),
        ];
        let mut deleter = RecordingDeleter::default();

        let result =
            apply(&snapshots, "nightly", &Retention { last: Some(1), ..Retention::default() }, now(), &mut |s| {
                deleter.delete(s)
            })
            .unwrap();

        assert_eq!(deleter.asked, ["s5"]);
        assert_eq!(result.kept, ["s6"]);
    }

    #[test]
    fn a_deferred_delete_is_counted() {
        let snapshots = nightly(&[(1, 1), (2, 2), (3, 3)]);
        let mut deleter = RecordingDeleter::deferring(&["s1"]);

        let result =
            apply(&snapshots, "nightly", &Retention { last: Some(1), ..Retention::default() }, now(), &mut |s| {
                deleter.delete(s)
            })
            .unwrap();

        assert_eq!(result.deleted, ["s2"]);
        assert_eq!(result.deferred, [DeferredDelete { snapshot: "s1".into(), reason: "clone 'c1' uses it".into() }]);
        assert_eq!(result.tally(), RetentionTally { deleted: 1, deferred: 1, error: None });
    }

    #[test]
    fn a_failed_delete_is_an_error_and_the_others_still_run() {
        let snapshots = nightly(&[(1, 1), (2, 2), (3, 3)]);
        let mut deleter = RecordingDeleter::failing_on(&["s1"]);

        let result =
            apply(&snapshots, "nightly", &Retention { last: Some(1), ..Retention::default() }, now(), &mut |s| {
                deleter.delete(s)
            })
            .unwrap();

        assert_eq!(deleter.asked, ["s1", "s2"]);
        assert_eq!(result.deleted, ["s2"]);
        assert_eq!(result.failed.len(), 1);
        assert!(result.tally().error.is_some());
    }

    #[test]
    fn an_empty_policy_deletes_nothing() {
        let snapshots = nightly(&[(1, 1), (2, 2)]);
        let mut deleter = RecordingDeleter::default();

        let result = apply(&snapshots, "nightly", &Retention::default(), now(), &mut |s| deleter.delete(s)).unwrap();

        assert!(deleter.asked.is_empty());
        assert_eq!(result.kept, ["s2", "s1"]);
    }
}

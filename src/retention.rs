//! Which snapshots a retention policy keeps: grandfather-father-son
//! rotation, as restic and borg do it.
//!
//! - `last = N` keeps the N newest snapshots.
//! - `hourly`/`daily`/`weekly`/`monthly = N` keep the newest snapshot of
//!   each of the N most recent hours / days / ISO weeks / months **that
//!   have a snapshot**. Periods without snapshots do not use up the count,
//!   so a daemon that was down for a week does not lose its dailies.
//! - A snapshot kept by any rule is kept; the reasons say which rules.
//! - A policy whose rules are all unset or 0 keeps everything: retention
//!   never deletes every snapshot.
//!
//! Periods are calendar periods in UTC. Snapshots dated after `now` (a
//! clock that went backwards) are kept and take no rule's place. Ties in
//! time are broken by id, so the result is deterministic.
//!
//! This only chooses: deleting (and deferring what clones, standbys or
//! other images still need) is the prune operation's job.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serialize;

use crate::catalog::SnapshotId;
use crate::config::Retention;

/// Why a snapshot is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeepReason {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    /// The policy has no rule, so it keeps everything.
    NoPolicy,
    /// Dated after `now`.
    Future,
}

impl KeepReason {
    pub fn as_str(self) -> &'static str {
        match self {
            KeepReason::Last => "last",
            KeepReason::Hourly => "hourly",
            KeepReason::Daily => "daily",
            KeepReason::Weekly => "weekly",
            KeepReason::Monthly => "monthly",
            KeepReason::NoPolicy => "no-policy",
            KeepReason::Future => "future",
        }
    }
}

impl std::fmt::Display for KeepReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of [`select_to_keep`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Keep {
    pub keep: BTreeSet<SnapshotId>,
    /// Oldest first: the order to delete in.
    pub delete: Vec<SnapshotId>,
    /// For every kept snapshot, each rule that keeps it.
    pub reasons: BTreeMap<SnapshotId, Vec<KeepReason>>,
}

/// Splits `snapshots` (id and creation time, in any order) into those
/// `policy` keeps and those it deletes. See the module docs.
pub fn select_to_keep(snapshots: &[(SnapshotId, DateTime<Utc>)], policy: &Retention, now: DateTime<Utc>) -> Keep {
    let mut newest_first: Vec<(SnapshotId, DateTime<Utc>)> = snapshots.to_vec();
    newest_first.sort_by_key(|&(id, time)| Reverse((time, id)));
    // An id listed twice counts once, at its newest time.
    let mut seen = BTreeSet::new();
    newest_first.retain(|(id, _)| seen.insert(*id));

    let mut reasons: BTreeMap<SnapshotId, Vec<KeepReason>> = BTreeMap::new();
    let mut keep = |id: SnapshotId, reason: KeepReason| {
        let list = reasons.entry(id).or_default();
        if !list.contains(&reason) {
            list.push(reason);
        }
    };
    let (future, past): (Vec<_>, Vec<_>) = newest_first.iter().partition(|(_, time)| *time > now);
    for (id, _) in &future {
        keep(*id, KeepReason::Future);
    }

    let count = |rule: Option<u32>| rule.unwrap_or(0) as usize;
    let rules: [(usize, KeepReason, PeriodOf); 4] = [
        (count(policy.hourly), KeepReason::Hourly, |t| (t.year(), t.ordinal(), t.hour())),
        (count(policy.daily), KeepReason::Daily, |t| (t.year(), t.ordinal(), 0)),
        (count(policy.weekly), KeepReason::Weekly, |t| (t.iso_week().year(), t.iso_week().week(), 0)),
        (count(policy.monthly), KeepReason::Monthly, |t| (t.year(), t.month(), 0)),
    ];
    let last = count(policy.last);
    if last == 0 && rules.iter().all(|(n, ..)| *n == 0) {
        for (id, _) in &past {
            keep(*id, KeepReason::NoPolicy);
        }
    } else {
        for (id, _) in past.iter().take(last) {
            keep(*id, KeepReason::Last);
        }
        for (limit, reason, period_of) in rules {
            let mut periods_seen = 0;
            let mut current = None;
            for (id, time) in &past {
                let period = period_of(*time);
                if current == Some(period) {
                    continue;
                }
                current = Some(period);
                if periods_seen == limit {
                    break;
                }
                periods_seen += 1;
                keep(*id, reason);
            }
        }
    }

    let keep_set: BTreeSet<SnapshotId> = reasons.keys().copied().collect();
    let delete = newest_first.iter().rev().map(|(id, _)| *id).filter(|id| !keep_set.contains(id)).collect();
    Keep { keep: keep_set, delete, reasons }
}

/// A calendar period: (year, number within the year, hour or 0).
type Period = (i32, u32, u32);

/// The period a time falls in, for one rule.
type PeriodOf = fn(DateTime<Utc>) -> Period;

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn utc(text: &str) -> DateTime<Utc> {
        chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M").unwrap().and_utc()
    }

    fn snapshots(times: &[&str]) -> Vec<(SnapshotId, DateTime<Utc>)> {
        times.iter().enumerate().map(|(i, t)| (SnapshotId(i as i64 + 1), utc(t))).collect()
    }

    fn ids(list: &[i64]) -> BTreeSet<SnapshotId> {
        list.iter().map(|id| SnapshotId(*id)).collect()
    }

    const NOW: &str = "2024-05-31 12:00";

    #[test]
    fn policies_keep_the_expected_snapshots() {
        // Ids 1..=8 in this order.
        let times = [
            "2024-05-31 11:50", // 1: this hour
            "2024-05-31 11:10", // 2: this hour, older
            "2024-05-31 09:00", // 3: earlier today
            "2024-05-30 23:00", // 4: yesterday (Thu), same ISO week
            "2024-05-26 08:00", // 5: Sunday: the previous ISO week
            "2024-05-01 00:00", // 6: start of May
            "2024-04-30 23:59", // 7: end of April
            "2024-01-15 10:00", // 8: January
        ];
        let policy = |last, hourly, daily, weekly, monthly| Retention { last, hourly, daily, weekly, monthly };
        let cases: [(&str, Retention, &[i64]); 8] = [
            ("empty keeps all", Retention::default(), &[1, 2, 3, 4, 5, 6, 7, 8]),
            ("zeros keep all", policy(Some(0), Some(0), None, None, Some(0)), &[1, 2, 3, 4, 5, 6, 7, 8]),
            ("last 3", policy(Some(3), None, None, None, None), &[1, 2, 3]),
            ("hourly 3", policy(None, Some(3), None, None, None), &[1, 3, 4]),
            ("daily 3", policy(None, None, Some(3), None, None), &[1, 4, 5]),
            ("weekly 2", policy(None, None, None, Some(2), None), &[1, 5]),
            ("monthly 12", policy(None, None, None, None, Some(12)), &[1, 7, 8]),
            ("combined", policy(Some(1), None, Some(2), Some(3), Some(2)), &[1, 4, 5, 6, 7]),
        ];
        for (name, policy, expected) in cases {
            let result = select_to_keep(&snapshots(&times), &policy, utc(NOW));
            assert_eq!(result.keep, ids(expected), "{name}");
        }
    }

    #[test]
    fn reasons_name_every_rule_that_keeps_a_snapshot() {
        let policy = Retention { last: Some(1), daily: Some(2), ..Retention::default() };

        let result = select_to_keep(
            &snapshots(&["2024-05-31 10:00", "2024-05-31 09:00", "2024-05-30 09:00"]),
            &policy,
            utc(NOW),
        );

        assert_eq!(result.reasons[&SnapshotId(1)], [KeepReason::Last, KeepReason::Daily]);
        assert_eq!(result.reasons[&SnapshotId(3)], [KeepReason::Daily]);
        assert_eq!(result.delete, [SnapshotId(2)]);
    }

    #[test]
    fn periods_without_snapshots_do_not_use_up_the_count() {
        let policy = Retention { daily: Some(2), ..Retention::default() };

        let result = select_to_keep(
            &snapshots(&["2024-05-01 02:00", "2024-04-01 02:00", "2024-03-01 02:00"]),
            &policy,
            utc(NOW),
        );

        assert_eq!(result.keep, ids(&[1, 2]));
    }

    #[test]
    fn iso_weeks_cross_the_year_boundary() {
        // 2024-12-30 (Mon) and 2025-01-02 (Thu) are both in ISO week 2025-W01.
        let policy = Retention { weekly: Some(2), ..Retention::default() };

        let result = select_to_keep(
            &snapshots(&["2025-01-02 00:00", "2024-12-30 00:00", "2024-12-29 00:00"]),
            &policy,
            utc("2025-01-05 00:00"),
        );

        assert_eq!(result.keep, ids(&[1, 3]));
        assert_eq!(result.delete, [SnapshotId(2)]);
    }

    #[test]
    fn delete_lists_oldest_first() {
        let policy = Retention { last: Some(1), ..Retention::default() };

        let result = select_to_keep(
            &snapshots(&["2024-05-02 00:00", "2024-05-03 00:00", "2024-05-01 00:00"]),
            &policy,
            utc(NOW),
        );

        assert_eq!(result.keep, ids(&[2]));
        assert_eq!(result.delete, [SnapshotId(3), SnapshotId(1)]);
    }

    #[test]
    fn future_snapshots_are_kept_without_taking_a_place() {
        let policy = Retention { last: Some(1), ..Retention::default() };

        let result = select_to_keep(
            &snapshots(&["2030-01-01 00:00", "2024-05-01 00:00", "2024-04-01 00:00"]),
            &policy,
            utc(NOW),
        );

        assert_eq!(result.keep, ids(&[1, 2]));
        assert_eq!(result.reasons[&SnapshotId(1)], [KeepReason::Future]);
    }

    #[test]
    fn no_snapshots_keep_nothing() {
        let result = select_to_keep(&[], &Retention { last: Some(3), ..Retention::default() }, utc(NOW));

        assert_eq!(result, Keep::default());
    }

    fn arb_policy() -> impl Strategy<Value = Retention> {
        let rule = proptest::option::of(0u32..5);
        (rule.clone(), rule.clone(), rule.clone(), rule.clone(), rule)
            .prop_map(|(last, hourly, daily, weekly, monthly)| Retention { last, hourly, daily, weekly, monthly })
    }

    fn arb_snapshots() -> impl Strategy<Value = Vec<(SnapshotId, DateTime<Utc>)>> {
        // Up to ~400 days before NOW, to the minute; ids unique.
        proptest::collection::vec(0i64..400 * 24 * 60, 0..40).prop_map(|offsets| {
            let now = Utc.with_ymd_and_hms(2024, 5, 31, 12, 0, 0).unwrap();
            offsets
                .into_iter()
                .enumerate()
                .map(|(i, minutes)| (SnapshotId(i as i64), now - chrono::Duration::minutes(minutes)))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn keep_and_delete_partition_the_input(snaps in arb_snapshots(), policy in arb_policy()) {
            let result = select_to_keep(&snaps, &policy, utc(NOW));
            let all: BTreeSet<SnapshotId> = snaps.iter().map(|(id, _)| *id).collect();
            let deleted: BTreeSet<SnapshotId> = result.delete.iter().copied().collect();
            prop_assert_eq!(deleted.len(), result.delete.len());
            prop_assert!(result.keep.is_disjoint(&deleted));
            prop_assert_eq!(result.keep.union(&deleted).copied().collect::<BTreeSet<_>>(), all);
            prop_assert_eq!(result.reasons.keys().copied().collect::<BTreeSet<_>>(), result.keep.clone());
        }

        #[test]
        fn the_last_n_newest_are_always_kept(snaps in arb_snapshots(), policy in arb_policy()) {
            let result = select_to_keep(&snaps, &policy, utc(NOW));
            let mut newest = snaps.clone();
            newest.sort_by_key(|&(id, time)| std::cmp::Reverse((time, id)));
            for (id, _) in newest.iter().take(policy.last.unwrap_or(0) as usize) {
                prop_assert!(result.keep.contains(id));
            }
        }

        #[test]
        fn never_deletes_everything(snaps in arb_snapshots(), policy in arb_policy()) {
            let result = select_to_keep(&snaps, &policy, utc(NOW));
            prop_assert_eq!(result.keep.is_empty(), snaps.is_empty());
            if let Some(newest) = snaps.iter().max_by_key(|(id, time)| (*time, *id)) {
                prop_assert!(result.keep.contains(&newest.0));
            }
        }

        #[test]
        fn order_of_the_input_does_not_matter(snaps in arb_snapshots(), policy in arb_policy()) {
            let mut reversed = snaps.clone();
            reversed.reverse();
            prop_assert_eq!(select_to_keep(&snaps, &policy, utc(NOW)), select_to_keep(&reversed, &policy, utc(NOW)));
        }
    }
}

//! The catalog: an embedded SQLite database in the state directory
//! (`<state_dir>/catalog.sqlite`) recording environments, snapshots, their
//! per-VM images and memory files, the backing relations between images,
//! which clones, standbys and snapshots need which image, and the journal of
//! every multi-step operation.
//!
//! - [`Catalog::open`] creates or opens it (WAL, foreign keys, a busy
//!   timeout so the daemon and a command can share it) and applies the
//!   schema migrations in [`schema`]; a catalog written by a newer envclone
//!   is refused rather than misread.
//! - `images.rs`: images, their backing chains and what needs them;
//!   [`Catalog::can_delete`] is the one rule that keeps an image alive
//!   ("never delete what something still needs, never delete a parent").
//! - `snapshots.rs`: environments and snapshots with their consistency.
//! - `journal.rs` and `operation.rs`: the operation journal and the state
//!   machines of operations and their steps.
//! - `schedule_runs.rs`: every run of a schedule and its counters.
//! - `clones.rs`: clone environments and what each made.
//! - `standbys.rs`: standbys, the snapshot each disk of one was last
//!   brought to, and their transfers.
//!
//! Every method takes `&self` and opens its own short transaction; writes
//! that read first use `BEGIN IMMEDIATE` so two processes never interleave
//! between the check and the change. Times are stored in UTC to the
//! millisecond, so what is read back is the time given, truncated to the
//! millisecond.

mod clones;
mod error;
mod failovers;
mod images;
pub use self::images::ImageMove;
mod journal;
mod merge;
mod model;
mod operation;
mod restore;
mod schedule_runs;
mod schema;
mod snapshots;
mod standbys;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, Transaction, TransactionBehavior};

pub use self::clones::{CloneRecord, CloneResources, ClonedDisk, ClonedNetwork};
pub use self::error::{CatalogError, Refusal, RefusalReason};
pub use self::failovers::{FailoverMode, FailoverRecord, FailoverState, FenceEvent, FenceKind, NewFailover};
pub use self::merge::{CommitMerge, DeleteRequest, PullMerge};
pub use self::model::{
    Consistency, Dependent, DependentKind, EnvId, Environment, Image, ImageFormat, ImageId, ImageKind, NewImage,
    NewSnapshot, Snapshot, SnapshotId, SnapshotState, VmConsistency,
};
pub use self::operation::{
    Operation, OperationId, OperationKind, OperationState, Owner, Step, StepId, StepRecord, StepState, UndoAction,
};
pub use self::restore::{RestoreRecord, UndoSnapshotRecord};
pub use self::schedule_runs::{
    Begun, NewRun, RetentionTally, RunEnd, RunOrigin, RunState, ScheduleCounters, ScheduleRun, ScheduleRunId,
    RUN_HISTORY,
};
pub use self::standbys::{
    NewStandbySync, StandbyDisk, StandbyDomain, StandbyRecord, StandbyResources, StandbySyncRecord, SyncedDisk,
};

/// The catalog's file name inside the state directory.
pub const CATALOG_FILE: &str = "catalog.sqlite";

/// How long a statement waits for another process's write to finish.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// An open catalog. Not `Sync`: one per thread, each with its own connection.
#[derive(Debug)]
pub struct Catalog {
    conn: Connection,
    path: PathBuf,
}

impl Catalog {
    /// Opens `<state_dir>/catalog.sqlite`, creating the directory and the
    /// database if needed, and migrates it to the current schema.
    pub fn open(state_dir: &Path) -> Result<Catalog, CatalogError> {
        Self::open_at_version(state_dir, schema::supported_version())
    }

    /// Opens and migrates only up to `target`: how tests make an old catalog.
    fn open_at_version(state_dir: &Path, target: u32) -> Result<Catalog, CatalogError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|source| CatalogError::CreateDir { path: state_dir.to_owned(), source })?;
        let path = state_dir.join(CATALOG_FILE);
        let mut conn = Connection::open(&path).map_err(|source| CatalogError::Open { path: path.clone(), source })?;
        configure(&conn)?;
        schema::migrate(&mut conn, &path, target)?;
        Ok(Catalog { conn, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the open catalog.
    pub fn schema_version(&self) -> Result<u32, CatalogError> {
        schema::version(&self.conn)
    }

    /// The schema version this build of envclone writes.
    pub fn supported_schema_version() -> u32 {
        schema::supported_version()
    }

    /// A write transaction that holds the database's write lock from the
    /// start, so what it reads cannot change before it writes.
    fn write(&self, what: &'static str) -> Result<Transaction<'_>, CatalogError> {
        Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate).map_err(CatalogError::query(what))
    }
}

fn configure(conn: &Connection) -> Result<(), CatalogError> {
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|source| CatalogError::Configure { setting: "busy_timeout", source })?;
    // journal_mode answers with the mode in force, which must be WAL.
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(|source| CatalogError::Configure { setting: "journal_mode=WAL", source })?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(CatalogError::Configure {
            setting: "journal_mode=WAL",
            source: rusqlite::Error::InvalidParameterName(format!("journal_mode stayed {mode}")),
        });
    }
    for (setting, name, value) in [
        ("foreign_keys=ON", "foreign_keys", "ON"),
        // The journal must survive a power cut: every commit reaches the disk.
        ("synchronous=FULL", "synchronous", "FULL"),
    ] {
        conn.pragma_update(None, name, value).map_err(|source| CatalogError::Configure { setting, source })?;
    }
    Ok(())
}

/// A time as stored: RFC 3339 UTC with milliseconds, ordered as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timestamp(DateTime<Utc>);

impl ToSql for Timestamp {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.0.to_rfc3339_opts(SecondsFormat::Millis, true)))
    }
}

impl FromSql for Timestamp {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        DateTime::parse_from_rfc3339(text)
            .map(|time| Timestamp(time.with_timezone(&Utc)))
            .map_err(|error| FromSqlError::Other(format!("time {text:?}: {error}").into()))
    }
}

/// Paths are stored as text, so they must be UTF-8.
fn path_text(path: &Path) -> Result<&str, CatalogError> {
    path.to_str().ok_or_else(|| CatalogError::NonUtf8Path { path: path.to_owned() })
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use chrono::TimeZone;

    /// A fresh catalog in its own temporary state directory.
    pub(crate) fn catalog() -> (tempfile::TempDir, Catalog) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let catalog = Catalog::open(dir.path()).expect("open a fresh catalog");
        (dir, catalog)
    }

    pub(crate) fn at(hour: u32, minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, hour, minute, 0).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::error::Failure;

    #[test]
    fn open_creates_a_wal_catalog_at_the_current_version() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let catalog = Catalog::open(&state_dir).unwrap();
        assert_eq!(catalog.path(), state_dir.join(CATALOG_FILE));
        assert_eq!(catalog.schema_version().unwrap(), Catalog::supported_schema_version());
        let mode: String = catalog.conn.pragma_query_value(None, "journal_mode", |row| row.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let foreign_keys: i64 = catalog.conn.pragma_query_value(None, "foreign_keys", |row| row.get(0)).unwrap();
        assert_eq!(foreign_keys, 1);
    }

    #[test]
    fn reopening_keeps_the_data() {
        let (dir, catalog) = catalog();
        catalog.ensure_environment("prod", at(1, 0)).unwrap();
        drop(catalog);
        let catalog = Catalog::open(dir.path()).unwrap();
        assert_eq!(catalog.environment("prod").unwrap().map(|env| env.name), Some("prod".to_owned()));
    }

    #[test]
    fn opening_an_old_catalog_migrates_it_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let old = Catalog::open_at_version(dir.path(), 1).unwrap();
        assert_eq!(old.schema_version().unwrap(), 1);
        old.ensure_environment("prod", at(1, 0)).unwrap();
        drop(old);

        let catalog = Catalog::open(dir.path()).unwrap();

        assert_eq!(catalog.schema_version().unwrap(), Catalog::supported_schema_version());
        assert!(catalog.environment("prod").unwrap().is_some());
        let op = catalog.begin_operation(OperationKind::Snapshot, "prod", &Owner::current(), at(2, 0)).unwrap();
        assert_eq!(catalog.operation(op).unwrap().state, OperationState::Running);
    }

    #[test]
    fn concurrent_opens_of_a_new_catalog_migrate_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let path = dir.path().to_owned();
                std::thread::spawn(move || {
                    let catalog = Catalog::open(&path)?;
                    catalog.ensure_environment(&format!("env{i}"), at(1, 0))?;
                    catalog.schema_version()
                })
            })
            .collect();

        let versions: Vec<u32> = threads.into_iter().map(|t| t.join().unwrap().unwrap()).collect();

        assert_eq!(versions, [Catalog::supported_schema_version(); 4]);
        assert_eq!(Catalog::open(dir.path()).unwrap().environments().unwrap().len(), 4);
    }

    #[test]
    fn open_refuses_a_catalog_from_a_newer_envclone() {
        let dir = tempfile::tempdir().unwrap();
        drop(Catalog::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join(CATALOG_FILE)).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);

        let error = Catalog::open(dir.path()).unwrap_err();

        assert!(
            matches!(error, CatalogError::NewerSchema { found: 99, supported, .. }
                if supported == Catalog::supported_schema_version()),
            "{error:?}"
        );
        assert!(error.hint().is_some());
    }

    #[test]
    fn open_refuses_a_file_that_is_not_a_database() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CATALOG_FILE), vec![b'x'; 4096]).unwrap();

        let error = Catalog::open(dir.path()).unwrap_err();

        assert!(matches!(error, CatalogError::Configure { .. } | CatalogError::Query { .. }), "{error:?}");
    }

    #[test]
    fn open_reports_a_state_dir_it_cannot_create() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();

        let error = Catalog::open(&file.join("state")).unwrap_err();

        assert!(matches!(error, CatalogError::CreateDir { .. }), "{error:?}");
    }

    #[test]
    fn times_are_stored_to_the_millisecond_and_sort_as_text() {
        let time = at(3, 4) + chrono::Duration::microseconds(5_678_901);
        let text = match Timestamp(time).to_sql().unwrap() {
            ToSqlOutput::Owned(rusqlite::types::Value::Text(text)) => text,
            other => panic!("{other:?}"),
        };
        assert_eq!(text, "2024-05-01T03:04:05.678Z");
        let back = Timestamp::column_result(ValueRef::Text(text.as_bytes())).unwrap();
        assert_eq!(back.0, time - chrono::Duration::microseconds(901));
    }
}

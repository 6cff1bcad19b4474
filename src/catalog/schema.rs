//! The catalog's schema as an ordered list of migrations.
//!
//! The schema version is SQLite's `user_version`. Each migration runs in
//! its own IMMEDIATE transaction together with the bump of `user_version`,
//! so a failed migration leaves the catalog at the previous version and a
//! second process opening the catalog at the same time waits (busy timeout)
//! instead of applying the migration twice. Migrations are only ever
//! appended: a released one never changes.

use std::path::Path;

use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::CatalogError;

pub(crate) struct Migration {
    pub version: u32,
    pub description: &'static str,
    pub sql: &'static str,
}

/// Times are RFC 3339 UTC text with milliseconds ("2024-05-01T02:00:00.000Z"):
/// readable with the sqlite3 shell and ordered as text.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "environments, snapshots, images and their dependents",
        sql: r#"
            CREATE TABLE environments (
                id          INTEGER PRIMARY KEY,
                name        TEXT NOT NULL UNIQUE,
                created_at  TEXT NOT NULL
            );
            CREATE TABLE snapshots (
                id                INTEGER PRIMARY KEY,
                env_id            INTEGER NOT NULL REFERENCES environments(id) ON DELETE RESTRICT,
                name              TEXT NOT NULL,
                label             TEXT,
                schedule          TEXT,
                created_at        TEXT NOT NULL,
                state             TEXT NOT NULL
                                  CHECK (state IN ('in-progress', 'complete', 'failed', 'deleted')),
                memory            INTEGER NOT NULL CHECK (memory IN (0, 1)),
                freeze_window_ms  INTEGER CHECK (freeze_window_ms >= 0),
                UNIQUE (env_id, name)
            );
            CREATE INDEX snapshots_by_env ON snapshots (env_id, created_at);
            CREATE TABLE snapshot_vms (
                snapshot_id  INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
                vm           TEXT NOT NULL,
                consistency  TEXT NOT NULL
                             CHECK (consistency IN ('app-consistent', 'crash-consistent', 'none')),
                reason       TEXT,
                PRIMARY KEY (snapshot_id, vm)
            );
            CREATE TABLE images (
                id                INTEGER PRIMARY KEY,
                path              TEXT NOT NULL UNIQUE,
                vm                TEXT NOT NULL,
                disk              TEXT,
                kind              TEXT NOT NULL CHECK (kind IN ('base', 'overlay', 'memory', 'full-copy')),
                format            TEXT NOT NULL CHECK (format IN ('qcow2', 'raw', 'libvirt-save')),
                size_bytes        INTEGER NOT NULL CHECK (size_bytes >= 0),
                backing_image_id  INTEGER REFERENCES images(id) ON DELETE RESTRICT,
                snapshot_id       INTEGER REFERENCES snapshots(id) ON DELETE RESTRICT,
                created_at        TEXT NOT NULL,
                CHECK (backing_image_id IS NULL OR backing_image_id <> id)
            );
            CREATE INDEX images_by_backing ON images (backing_image_id);
            CREATE INDEX images_by_snapshot ON images (snapshot_id);
            CREATE TABLE image_dependents (
                image_id  INTEGER NOT NULL REFERENCES images(id) ON DELETE RESTRICT,
                kind      TEXT NOT NULL CHECK (kind IN ('snapshot', 'clone', 'standby')),
                name      TEXT NOT NULL,
                PRIMARY KEY (image_id, kind, name)
            );
        "#,
    },
    Migration {
        version: 2,
        description: "operation journal",
        sql: r#"
            CREATE TABLE operations (
                id               INTEGER PRIMARY KEY,
                kind             TEXT NOT NULL,
                env_id           INTEGER NOT NULL REFERENCES environments(id) ON DELETE RESTRICT,
                pid              INTEGER NOT NULL,
                pid_start_ticks  INTEGER,
                boot_id          TEXT,
                started_at       TEXT NOT NULL,
                finished_at      TEXT,
                state            TEXT NOT NULL
                                 CHECK (state IN ('running', 'completed', 'rolling-back', 'rolled-back', 'failed')),
                error            TEXT
            );
            CREATE INDEX operations_by_state ON operations (state);
            CREATE TABLE operation_steps (
                id            INTEGER PRIMARY KEY,
                operation_id  INTEGER NOT NULL REFERENCES operations(id) ON DELETE CASCADE,
                seq           INTEGER NOT NULL,
                name          TEXT NOT NULL,
                undo          TEXT NOT NULL,
                state         TEXT NOT NULL
                              CHECK (state IN ('running', 'done', 'failed', 'undone', 'undo-failed')),
                started_at    TEXT NOT NULL,
                finished_at   TEXT,
                error         TEXT,
                UNIQUE (operation_id, seq)
            );
        "#,
    },
    Migration {
        version: 3,
        description: "schedule runs and their counters",
        sql: r#"
            CREATE TABLE schedule_runs (
                id               INTEGER PRIMARY KEY,
                schedule         TEXT NOT NULL,
                env_id           INTEGER NOT NULL REFERENCES environments(id) ON DELETE RESTRICT,
                origin           TEXT NOT NULL CHECK (origin IN ('daemon', 'command')),
                state            TEXT NOT NULL
                                 CHECK (state IN ('running', 'succeeded', 'failed', 'skipped-overlap')),
                started_at       TEXT NOT NULL,
                finished_at      TEXT,
                pid              INTEGER NOT NULL,
                pid_start_ticks  INTEGER,
                boot_id          TEXT,
                missed           INTEGER NOT NULL DEFAULT 0 CHECK (missed >= 0),
                snapshot         TEXT,
                error            TEXT,
                deleted          INTEGER NOT NULL DEFAULT 0 CHECK (deleted >= 0),
                deferred         INTEGER NOT NULL DEFAULT 0 CHECK (deferred >= 0),
                retention_error  TEXT
            );
            CREATE INDEX schedule_runs_by_schedule ON schedule_runs (schedule, started_at);
            CREATE INDEX schedule_runs_by_state ON schedule_runs (state);
            CREATE TABLE schedule_counters (
                schedule            TEXT PRIMARY KEY,
                runs                INTEGER NOT NULL DEFAULT 0 CHECK (runs >= 0),
                failures            INTEGER NOT NULL DEFAULT 0 CHECK (failures >= 0),
                missed              INTEGER NOT NULL DEFAULT 0 CHECK (missed >= 0),
                overlapping         INTEGER NOT NULL DEFAULT 0 CHECK (overlapping >= 0),
                retention_failures  INTEGER NOT NULL DEFAULT 0 CHECK (retention_failures >= 0),
                deleted             INTEGER NOT NULL DEFAULT 0 CHECK (deleted >= 0),
                deferred            INTEGER NOT NULL DEFAULT 0 CHECK (deferred >= 0),
                last_success        TEXT,
                last_error          TEXT,
                last_error_at       TEXT
            );
        "#,
    },
    Migration {
        version: 4,
        description: "snapshot deletion: requested, deferred and done",
        // A delete that pins forbid is deferred: the snapshot stays complete
        // with `delete_requested_at` and why (`delete_deferred`), so `prune`
        // tries again later. `deleted_at` is when it became `deleted`.
        sql: r#"
            ALTER TABLE snapshots ADD COLUMN delete_requested_at TEXT;
            ALTER TABLE snapshots ADD COLUMN delete_deferred TEXT;
            ALTER TABLE snapshots ADD COLUMN deleted_at TEXT;
        "#,
    },
    Migration {
        version: 5,
        description: "clones: environments made from a snapshot of another",
        // `environment` is the clone's environment as the config would
        // describe it (JSON of `config::Environment`): its VMs, domains and
        // agent endpoints, so `envclone ssh CLONE VM` reaches them.
        // `resources` (JSON of `CloneResources`) is everything the clone
        // made, which `envclone destroy` removes and nothing else.
        sql: r#"
            CREATE TABLE clones (
                id           INTEGER PRIMARY KEY,
                name         TEXT NOT NULL UNIQUE,
                source_env   TEXT NOT NULL,
                snapshot     TEXT NOT NULL,
                created_at   TEXT NOT NULL,
                disks        TEXT NOT NULL CHECK (disks IN ('linked', 'full')),
                network      TEXT NOT NULL CHECK (network IN ('isolated', 'readdress')),
                environment  TEXT NOT NULL,
                resources    TEXT NOT NULL
            );
        "#,
    },
    Migration {
        version: 6,
        description: "standbys: independent copies of an environment kept current",
        // `standbys` is one row per standby: its primary, storage, whether
        // the daemon keeps it current (`autorestore`), the snapshot it was
        // last brought to (its restored point: `snapshot_created_at` gives
        // the lag), `merging` (set while a sync merges copies into SB's
        // images: SB reads like neither snapshot until it is finished) and
        // `resources` (JSON of `StandbyResources`: its
        // domains, the primary's MACs, its networks). `standby_disks` says,
        // per VM disk, which snapshot image SB's copy reads like now and
        // the SHA-256 of the last file written for it. `standby_syncs` is
        // the history of transfers (bytes moved per sync).
        sql: r#"
            CREATE TABLE standbys (
                id                   INTEGER PRIMARY KEY,
                name                 TEXT NOT NULL UNIQUE,
                primary_env          TEXT NOT NULL,
                storage              TEXT NOT NULL,
                autorestore          INTEGER NOT NULL CHECK (autorestore IN (0, 1)),
                created_at           TEXT NOT NULL,
                snapshot             TEXT,
                snapshot_created_at  TEXT,
                synced_at            TEXT,
                merging              TEXT,
                resources            TEXT NOT NULL
            );
            CREATE TABLE standby_disks (
                standby_id       INTEGER NOT NULL REFERENCES standbys(id) ON DELETE CASCADE,
                vm               TEXT NOT NULL,
                disk             TEXT NOT NULL,
                path             TEXT NOT NULL,
                snapshot         TEXT,
                source_image_id  INTEGER,
                sha256           TEXT,
                synced_at        TEXT,
                PRIMARY KEY (standby_id, vm, disk)
            );
            CREATE TABLE standby_syncs (
                id                   INTEGER PRIMARY KEY,
                standby_id           INTEGER NOT NULL REFERENCES standbys(id) ON DELETE CASCADE,
                snapshot             TEXT NOT NULL,
                mode                 TEXT NOT NULL CHECK (mode IN ('full', 'incremental')),
                bytes                INTEGER NOT NULL CHECK (bytes >= 0),
                started_at           TEXT NOT NULL,
                finished_at          TEXT NOT NULL
            );
            CREATE INDEX standby_syncs_by_standby ON standby_syncs (standby_id, id);
        "#,
    },
    Migration {
        version: 7,
        description: "failovers: DR drills and role switches of a standby",
        // One row per failover of `env` to its standby `standby`: `mode`
        // `test` (a DR drill: the standby runs on a throwaway overlay in
        // its isolated networks, the primary untouched), `planned` or
        // `unplanned`; `epoch` numbers the role switches (none for a drill);
        // `state` is `running` while a drill runs (or a switch is under
        // way), `active` for the switch in force, `ended` afterwards.
        // `environment` (JSON of `config::Environment`) says how to reach
        // the standby's VMs while it runs, `resources` (JSON) what the
        // failover made, which ending it removes, and `report` the JSON
        // report it printed.
        sql: r#"
            CREATE TABLE failovers (
                id           INTEGER PRIMARY KEY,
                env          TEXT NOT NULL,
                standby      TEXT NOT NULL,
                mode         TEXT NOT NULL CHECK (mode IN ('test', 'planned', 'unplanned')),
                epoch        INTEGER CHECK (epoch IS NULL OR epoch > 0),
                state        TEXT NOT NULL CHECK (state IN ('running', 'active', 'ended')),
                started_at   TEXT NOT NULL,
                finished_at  TEXT,
                environment  TEXT NOT NULL,
                resources    TEXT NOT NULL,
                report       TEXT NOT NULL
            );
            CREATE INDEX failovers_by_standby ON failovers (standby, state);
        "#,
    },
    Migration {
        version: 8,
        description: "fence events: how each primary domain of a role switch was fenced, and each return",
        // One row per thing that happened to a fenced primary domain of a
        // switch (`failovers` row `failover_id`, epoch `epoch`): `fenced`
        // (stopped, autostart off, stamped), `fenced-unconfirmed` (its
        // libvirt did not answer), `returned-refenced` (found running while
        // the switch is in force, stopped again), `refence-failed`. A
        // domain's fence state is its newest `fenced`/`fenced-unconfirmed`.
        sql: r#"
            CREATE TABLE fence_events (
                id           INTEGER PRIMARY KEY,
                failover_id  INTEGER NOT NULL REFERENCES failovers(id) ON DELETE CASCADE,
                env          TEXT NOT NULL,
                epoch        INTEGER NOT NULL CHECK (epoch > 0),
                domain       TEXT NOT NULL,
                kind         TEXT NOT NULL
                             CHECK (kind IN ('fenced', 'fenced-unconfirmed', 'returned-refenced', 'refence-failed')),
                detail       TEXT,
                at           TEXT NOT NULL
            );
            CREATE INDEX fence_events_by_failover ON fence_events (failover_id, id);
        "#,
    },
    Migration {
        version: 9,
        description: "failbacks: mode 'failback' and state 'failing-back' for failovers",
        // SQLite cannot change a CHECK in place: both tables are rebuilt
        // with their rows and ids. fence_events is rebuilt first and
        // dropped first, so dropping the old failovers cascades into no
        // fence event; the renames carry fence_events' foreign key over to
        // the new failovers. A failback is a row of mode `failback` with
        // the epoch it starts (ENV home again), state `ended` from birth;
        // `failing-back` is a switch whose failback is under way (the fence
        // guard leaves ENV's domains alone then: the failback starts them).
        sql: r#"
            CREATE TABLE failovers_v9 (
                id           INTEGER PRIMARY KEY,
                env          TEXT NOT NULL,
                standby      TEXT NOT NULL,
                mode         TEXT NOT NULL CHECK (mode IN ('test', 'planned', 'unplanned', 'failback')),
                epoch        INTEGER CHECK (epoch IS NULL OR epoch > 0),
                state        TEXT NOT NULL CHECK (state IN ('running', 'active', 'failing-back', 'ended')),
                started_at   TEXT NOT NULL,
                finished_at  TEXT,
                environment  TEXT NOT NULL,
                resources    TEXT NOT NULL,
                report       TEXT NOT NULL
            );
            INSERT INTO failovers_v9 (id, env, standby, mode, epoch, state, started_at, finished_at, environment,
                                      resources, report)
                SELECT id, env, standby, mode, epoch, state, started_at, finished_at, environment, resources, report
                FROM failovers;
            CREATE TABLE fence_events_v9 (
                id           INTEGER PRIMARY KEY,
                failover_id  INTEGER NOT NULL REFERENCES failovers_v9(id) ON DELETE CASCADE,
                env          TEXT NOT NULL,
                epoch        INTEGER NOT NULL CHECK (epoch > 0),
                domain       TEXT NOT NULL,
                kind         TEXT NOT NULL
                             CHECK (kind IN ('fenced', 'fenced-unconfirmed', 'returned-refenced', 'refence-failed')),
                detail       TEXT,
                at           TEXT NOT NULL
            );
            INSERT INTO fence_events_v9 (id, failover_id, env, epoch, domain, kind, detail, at)
                SELECT id, failover_id, env, epoch, domain, kind, detail, at FROM fence_events;
            DROP TABLE fence_events;
            DROP TABLE failovers;
            ALTER TABLE failovers_v9 RENAME TO failovers;
            ALTER TABLE fence_events_v9 RENAME TO fence_events;
            CREATE INDEX failovers_by_standby ON failovers (standby, state);
            CREATE INDEX fence_events_by_failover ON fence_events (failover_id, id);
        "#,
    },
    Migration {
        version: 10,
        description: "the other environments an operation touches (a clone's source)",
        // An operation is journaled under one environment; `recover ENV`
        // and `status ENV` also find it through these.
        sql: r#"
            CREATE TABLE operation_envs (
                operation_id  INTEGER NOT NULL REFERENCES operations(id) ON DELETE CASCADE,
                env           TEXT NOT NULL,
                PRIMARY KEY (operation_id, env)
            );
            CREATE INDEX operation_envs_by_env ON operation_envs (env);
        "#,
    },
    Migration {
        version: 11,
        description: "the host a standby lives on",
        // Every standby before hosts existed is on the controller's own.
        sql: r#"
            ALTER TABLE standbys ADD COLUMN host TEXT NOT NULL DEFAULT 'local';
        "#,
    },
    Migration {
        version: 12,
        description: "the host an operation acts on, when not its environment's",
        // `recover` undoes an interrupted operation on the host it acted
        // on: a standby's before the standby is recorded, say.
        sql: r#"
            ALTER TABLE operations ADD COLUMN host TEXT;
        "#,
    },
];

/// The schema version this build writes.
pub(crate) fn supported_version() -> u32 {
    MIGRATIONS.last().map_or(0, |migration| migration.version)
}

pub(crate) fn version(conn: &Connection) -> Result<u32, CatalogError> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(CatalogError::query("read the schema version"))
}

/// Brings the catalog up to `target` (at most [`supported_version`]),
/// refusing a catalog newer than this build.
pub(crate) fn migrate(conn: &mut Connection, path: &Path, target: u32) -> Result<u32, CatalogError> {
    let supported = supported_version();
    let found = version(conn)?;
    if found > supported {
        return Err(CatalogError::NewerSchema { path: path.to_owned(), found, supported });
    }
    for migration in MIGRATIONS.iter().filter(|m| m.version <= target) {
        let fail =
            |source| CatalogError::Migrate { version: migration.version, description: migration.description, source };
        let tx = Transaction::new(conn, TransactionBehavior::Immediate).map_err(fail)?;
        // Read again inside the write lock: another process may have migrated meanwhile.
        let current: u32 = tx.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(fail)?;
        if current >= migration.version {
            continue;
        }
        tx.execute_batch(migration.sql).map_err(fail)?;
        tx.pragma_update(None, "user_version", migration.version).map_err(fail)?;
        tx.commit().map_err(fail)?;
    }
    version(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one_without_gaps() {
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version as usize, index + 1, "{}", migration.description);
        }
    }
}

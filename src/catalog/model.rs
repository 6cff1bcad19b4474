//! The catalog's rows as typed Rust values: ids, the small enums stored as
//! text, and one struct per kind of row. Callers never see SQL or strings
//! standing for states.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::{Deserialize, Serialize};

/// Declares an integer row id that converts to and from SQL.
macro_rules! row_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.0))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                i64::column_result(value).map($name)
            }
        }
    };
}
pub(crate) use row_id;

/// Declares an enum stored as a fixed text (kebab-case, as in the config and
/// in `--json` output), with `as_str`, `Display`, `FromStr`, serde and SQL.
macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|value| value.as_str() == text)
                    .ok_or_else(|| format!("unknown {} {text:?}", stringify!($name)))
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                value.as_str()?.parse().map_err(|message: String| FromSqlError::Other(message.into()))
            }
        }
    };
}
pub(crate) use text_enum;

row_id!(
    /// An environment's row id.
    EnvId
);
row_id!(
    /// A snapshot's row id.
    SnapshotId
);
row_id!(
    /// A disk image's or memory file's row id.
    ImageId
);

text_enum!(
    /// Where a snapshot is in its life. See [`SnapshotState::valid_transition`].
    SnapshotState {
        /// Being taken; its images may be incomplete.
        InProgress => "in-progress",
        /// Taken; every VM's images are recorded.
        Complete => "complete",
        /// Taking it failed; what it left behind is garbage to collect.
        Failed => "failed",
        /// Deleted by the user or by retention. Some images may outlive it
        /// while clones, standbys or other images still need them.
        Deleted => "deleted",
    }
);

text_enum!(
    /// How consistent one VM's part of a snapshot is.
    Consistency {
        /// The agent ran the hooks and froze the filesystems.
        AppConsistent => "app-consistent",
        /// Taken without a freeze: as after a power cut.
        CrashConsistent => "crash-consistent",
        /// No claim at all (e.g. disks copied while the VM kept writing).
        None => "none",
    }
);

text_enum!(
    /// What an image file is.
    ImageKind {
        /// A VM's original disk; never deleted by envclone.
        Base => "base",
        /// A qcow2 overlay whose backing file is another image.
        Overlay => "overlay",
        /// A saved memory state.
        Memory => "memory",
        /// A standalone copy with no backing file.
        FullCopy => "full-copy",
    }
);

text_enum!(
    /// The file format of an image.
    ImageFormat {
        Qcow2 => "qcow2",
        Raw => "raw",
        /// libvirt's saved-state format for memory files.
        LibvirtSave => "libvirt-save",
    }
);

text_enum!(
    /// What kind of thing holds an image.
    DependentKind {
        Snapshot => "snapshot",
        Clone => "clone",
        Standby => "standby",
    }
);

impl SnapshotState {
    /// The one place that says which state changes a snapshot may make.
    pub fn valid_transition(self, to: SnapshotState) -> bool {
        use SnapshotState::*;
        match self {
            InProgress => matches!(to, Complete | Failed),
            Complete => matches!(to, Deleted),
            Failed => matches!(to, Deleted),
            Deleted => false,
        }
    }
}

/// An environment known to the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Environment {
    pub id: EnvId,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// What a caller supplies to start recording a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSnapshot {
    pub env: String,
    /// Unique within the environment.
    pub name: String,
    pub label: Option<String>,
    /// The schedule that took it, if any; retention applies per schedule.
    pub schedule: Option<String>,
    pub created_at: DateTime<Utc>,
    pub memory: bool,
}

/// A snapshot with its per-VM consistency and its total size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub id: SnapshotId,
    pub env: String,
    pub name: String,
    pub label: Option<String>,
    pub schedule: Option<String>,
    pub created_at: DateTime<Utc>,
    pub state: SnapshotState,
    pub memory: bool,
    /// How long the guests were frozen, once known (`freeze_window_ms` in JSON).
    #[serde(rename = "freeze_window_ms", serialize_with = "serialize_millis")]
    pub freeze_window: Option<Duration>,
    /// Sum of the sizes of the snapshot's own images.
    pub size_bytes: u64,
    /// Ordered by VM name.
    pub vms: Vec<VmConsistency>,
}

fn serialize_millis<S: serde::Serializer>(duration: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
    match duration {
        Some(duration) => serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)),
        None => serializer.serialize_none(),
    }
}

/// One VM's part of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmConsistency {
    pub vm: String,
    pub consistency: Consistency,
    /// Why it is less than app-consistent (e.g. "agent did not answer").
    pub reason: Option<String>,
}

/// What a caller supplies to record an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewImage {
    pub path: PathBuf,
    pub vm: String,
    /// Disk target ("vda"); `None` for memory files.
    pub disk: Option<String>,
    pub kind: ImageKind,
    pub format: ImageFormat,
    pub size_bytes: u64,
    pub backing: Option<ImageId>,
    pub snapshot: Option<SnapshotId>,
    pub created_at: DateTime<Utc>,
}

/// A disk image or memory file recorded in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Image {
    pub id: ImageId,
    pub path: PathBuf,
    pub vm: String,
    pub disk: Option<String>,
    pub kind: ImageKind,
    pub format: ImageFormat,
    pub size_bytes: u64,
    pub backing: Option<ImageId>,
    pub snapshot: Option<SnapshotId>,
    pub created_at: DateTime<Utc>,
}

/// Something outside the image's own snapshot that needs it to stay.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dependent {
    pub kind: DependentKind,
    /// The clone's, standby's or snapshot's name, as its owner records it.
    pub name: String,
}

impl Dependent {
    pub fn clone_named(name: impl Into<String>) -> Self {
        Self { kind: DependentKind::Clone, name: name.into() }
    }

    pub fn standby_named(name: impl Into<String>) -> Self {
        Self { kind: DependentKind::Standby, name: name.into() }
    }

    pub fn snapshot_named(name: impl Into<String>) -> Self {
        Self { kind: DependentKind::Snapshot, name: name.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_enums_round_trip_through_their_text() {
        for state in SnapshotState::ALL {
            assert_eq!(state.as_str().parse::<SnapshotState>(), Ok(*state));
        }
        for kind in ImageKind::ALL {
            assert_eq!(kind.as_str().parse::<ImageKind>(), Ok(*kind));
        }
        assert_eq!(serde_json::to_string(&Consistency::CrashConsistent).unwrap(), "\"crash-consistent\"");
        assert!("frozen".parse::<Consistency>().is_err());
    }

    #[test]
    fn snapshot_json_gives_the_freeze_window_in_milliseconds() {
        let snapshot = Snapshot {
            id: SnapshotId(1),
            env: "prod".into(),
            name: "s1".into(),
            label: None,
            schedule: None,
            created_at: DateTime::<Utc>::UNIX_EPOCH,
            state: SnapshotState::Complete,
            memory: false,
            freeze_window: Some(Duration::from_millis(1500)),
            size_bytes: 10,
            vms: vec![],
        };

        let json = serde_json::to_value(&snapshot).unwrap();

        assert_eq!(json["freeze_window_ms"], 1500);
        assert_eq!(json["state"], "complete");
    }

    #[test]
    fn snapshot_transitions_per_state() {
        use SnapshotState::*;
        let allowed: &[(SnapshotState, &[SnapshotState])] =
            &[(InProgress, &[Complete, Failed]), (Complete, &[Deleted]), (Failed, &[Deleted]), (Deleted, &[])];
        for (from, targets) in allowed {
            for to in SnapshotState::ALL {
                assert_eq!(from.valid_transition(*to), targets.contains(to), "{from} -> {to}");
            }
        }
    }
}

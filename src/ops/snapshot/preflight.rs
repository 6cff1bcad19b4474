//! Before anything is touched: every domain exists and runs, every disk
//! can take an external snapshot, the storage has room, and the snapshot
//! gets a free name and its file paths. (The agents are checked by the
//! OpenSessions step, which keeps the sessions for the freeze.)

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::SnapshotError;
use crate::catalog::{Catalog, ImageFormat};
use crate::config::Environment;
use crate::host::Storage;
use crate::hypervisor::{DomainDef, DomainState, HvError, Hypervisor};

/// Tried after the bare name: `-2`, `-3`... up to this.
const MAX_NAME_SUFFIX: u32 = 99;

/// One VM as the snapshot will take it.
#[derive(Debug, Clone)]
pub struct VmPlan {
    pub vm: String,
    pub domain: String,
    /// The live definition before the snapshot: its disk sources are the
    /// images that become the snapshot's.
    pub def: DomainDef,
    pub memory_bytes: u64,
    pub disks: Vec<DiskPlan>,
    /// `<storage>/<vm>/<snapshot>.mem`, once the name is chosen.
    pub memory_image: PathBuf,
}

/// One disk: the image it writes to now, and the overlay it will write to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    pub target: String,
    pub image: PathBuf,
    pub format: ImageFormat,
    /// `<storage>/<vm>/<snapshot>.<disk>.qcow2`, once the name is chosen.
    pub overlay: PathBuf,
}

/// Every VM of `env`: its domain exists and runs; its disks are files (or
/// devices) in a format the catalog knows. Read-only disks and CD-ROMs are
/// left out of the snapshot.
pub fn inspect(hv: &dyn Hypervisor, env: &Environment) -> Result<Vec<VmPlan>, SnapshotError> {
    env.vms
        .iter()
        .map(|(vm, config)| {
            let domain_name = &config.domain;
            let domain = hv.domain(domain_name).map_err(|source| match source {
                HvError::NoSuchDomain { .. } => {
                    SnapshotError::DomainMissing { vm: vm.clone(), domain: domain_name.clone() }
                }
                source => SnapshotError::InspectDomain { vm: vm.clone(), domain: domain_name.clone(), source: Box::new(source) },
            })?;
            if domain.state != DomainState::Running {
                return Err(SnapshotError::DomainNotRunning {
                    vm: vm.clone(),
                    domain: domain_name.clone(),
                    state: domain.state,
                });
            }
            let mut disks = Vec::new();
            for disk in domain.def.disks() {
                if disk.device != "disk" || disk.readonly {
                    tracing::info!(vm, disk = %disk.target, device = %disk.device, "left out of the snapshot (read-only or not a disk)");
                    continue;
                }
                let unsupported = |why: String| SnapshotError::UnsupportedDisk {
                    vm: vm.clone(),
                    domain: domain_name.clone(),
                    disk: disk.target.clone(),
                    why,
                };
                let image = disk.source.clone().ok_or_else(|| unsupported("it has no source".into()))?;
                let format = match disk.format.as_deref().unwrap_or("raw") {
                    "qcow2" => ImageFormat::Qcow2,
                    "raw" => ImageFormat::Raw,
                    other => return Err(unsupported(format!("format {other}"))),
                };
                disks.push(DiskPlan { target: disk.target.clone(), image, format, overlay: PathBuf::new() });
            }
            if disks.is_empty() {
                return Err(SnapshotError::NoDisks { vm: vm.clone(), domain: domain_name.clone() });
            }
            let memory_bytes = memory_bytes(&domain.def)
                .ok_or_else(|| SnapshotError::MemorySize { vm: vm.clone(), domain: domain_name.clone() })?;
            Ok(VmPlan {
                vm: vm.clone(),
                domain: domain_name.clone(),
                def: domain.def,
                memory_bytes,
                disks,
                memory_image: PathBuf::new(),
            })
        })
        .collect()
}

/// Creates `dir` (on the environment's host) if needed and checks it has
/// `needed` bytes free for unprivileged writers; returns what is free.
pub fn check_space(storage: &dyn Storage, dir: &Path, needed: u64) -> Result<u64, SnapshotError> {
    storage
        .create_dir(dir)
        .map_err(|source| SnapshotError::StorageDir { path: dir.to_owned(), source: Box::new(source) })?;
    let free = storage
        .free_space(dir)
        .map_err(|source| SnapshotError::StatStorage { path: dir.to_owned(), source: Box::new(source) })?;
    if free < needed {
        return Err(SnapshotError::NoSpace { path: dir.to_owned(), free, needed });
    }
    Ok(free)
}

/// `<UTC yyyymmddThhmmssZ>`, or with `-2`, `-3`... when the catalog or the
/// storage already has that name.
pub fn choose_name(
    catalog: &Catalog,
    files: &dyn Storage,
    env: &str,
    now: DateTime<Utc>,
    storage: &Path,
    plans: &[VmPlan],
) -> Result<String, SnapshotError> {
    // One listing per VM directory rather than a look per file: on a host
    // reached over SSH each look is a round trip.
    let mut taken = std::collections::BTreeSet::new();
    for plan in plans {
        let dir = storage.join(&plan.vm);
        let listed = files
            .list_dir(&dir)
            .map_err(|source| SnapshotError::StatStorage { path: dir.clone(), source: Box::new(source) })?;
        taken.extend(listed);
    }
    let base = now.format("%Y%m%dT%H%M%SZ").to_string();
    for n in 1..=MAX_NAME_SUFFIX {
        let name = if n == 1 { base.clone() } else { format!("{base}-{n}") };
        let mut planned = plans.to_vec();
        assign_paths(&mut planned, storage, &name);
        let on_disk = planned.iter().any(|plan| {
            taken.contains(&plan.memory_image) || plan.disks.iter().any(|disk| taken.contains(&disk.overlay))
        });
        if !on_disk && catalog.snapshot_named(env, &name)?.is_none() {
            return Ok(name);
        }
    }
    Err(SnapshotError::NoFreeName { base, tried: MAX_NAME_SUFFIX })
}

/// Fills in the overlay and memory image paths of snapshot `name`.
pub fn assign_paths(plans: &mut [VmPlan], storage: &Path, name: &str) {
    for plan in plans {
        let dir = storage.join(&plan.vm);
        plan.memory_image = dir.join(format!("{name}.mem"));
        for disk in &mut plan.disks {
            disk.overlay = dir.join(format!("{name}.{}.qcow2", disk.target));
        }
    }
}

/// Creates each VM's directory and checks no overlay exists yet.
pub fn prepare_dirs(storage: &dyn Storage, plans: &[VmPlan]) -> Result<(), SnapshotError> {
    for plan in plans {
        for disk in &plan.disks {
            if let Some(dir) = disk.overlay.parent() {
                storage
                    .create_dir(dir)
                    .map_err(|source| SnapshotError::StorageDir { path: dir.to_owned(), source: Box::new(source) })?;
            }
            let dir = disk.overlay.parent().unwrap_or(Path::new("/"));
            let listed = storage
                .list_dir(dir)
                .map_err(|source| SnapshotError::StatStorage { path: dir.to_owned(), source: Box::new(source) })?;
            if listed.contains(&disk.overlay) {
                return Err(SnapshotError::OverlayExists {
                    vm: plan.vm.clone(),
                    disk: disk.target.clone(),
                    path: disk.overlay.clone(),
                });
            }
        }
    }
    Ok(())
}

/// The domain's `<memory>` in bytes.
pub fn memory_bytes(def: &DomainDef) -> Option<u64> {
    let root = xmltree::Element::parse(def.to_xml().as_bytes()).ok()?;
    let memory = root.get_child("memory")?;
    let value: u64 = memory.get_text()?.trim().parse().ok()?;
    let unit = memory.attributes.get("unit").map(String::as_str).unwrap_or("KiB");
    let factor: u64 = match unit {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "KiB" => 1 << 10,
        "MB" => 1000 * 1000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1000 * 1000 * 1000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1000 * 1000 * 1000 * 1000,
        "T" | "TiB" => 1 << 40,
        _ => return None,
    };
    value.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::NewSnapshot;
    use crate::hypervisor::FakeHypervisor;
    use chrono::TimeZone;

    #[test]
    fn memory_size_is_read_in_its_unit() {
        let hv = FakeHypervisor::running_env("net", &["web"]);
        assert_eq!(memory_bytes(&hv.peek_domain("web").unwrap().def), Some(256 << 20));
        let def =
            |memory: &str| DomainDef::parse(&format!("<domain type='qemu'><name>x</name>{memory}</domain>")).unwrap();
        assert_eq!(memory_bytes(&def("<memory unit='GiB'>2</memory>")), Some(2 << 30));
        assert_eq!(memory_bytes(&def("<memory>1024</memory>")), Some(1 << 20));
        assert_eq!(memory_bytes(&def("<memory unit='parsecs'>1</memory>")), None);
        assert_eq!(memory_bytes(&def("")), None);
    }

    #[test]
    fn space_check_names_the_dir_and_both_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("images/demo");

        let free = check_space(&crate::host::LocalStorage, &storage, 1).unwrap();
        let error = check_space(&crate::host::LocalStorage, &storage, u64::MAX).unwrap_err();

        assert!(storage.is_dir() && free > 0);
        assert!(
            matches!(&error, SnapshotError::NoSpace { path, free: f, needed } if *path == storage && *f > 0 && *needed == u64::MAX),
            "{error:?}"
        );
    }

    #[test]
    fn name_gets_a_suffix_when_taken_in_the_catalog_or_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("state")).unwrap();
        let hv = FakeHypervisor::running_env("net", &["web"]);
        let env = Environment {
            vms: [(
                "web".to_owned(),
                crate::config::Vm { domain: "web".into(), agent: crate::config::AgentEndpoint::new("10.0.0.2") },
            )]
            .into(),
            ..Environment::default()
        };
        let plans = inspect(&hv, &env).unwrap();
        let now = Utc.with_ymd_and_hms(2024, 5, 1, 2, 3, 4).unwrap();
        let storage = dir.path().join("images");

        assert_eq!(
            choose_name(&catalog, &crate::host::LocalStorage, "demo", now, &storage, &plans).unwrap(),
            "20240501T020304Z"
        );
        let taken = NewSnapshot {
            env: "demo".into(),
            name: "20240501T020304Z".into(),
            label: None,
            schedule: None,
            created_at: now,
            memory: false,
        };
        catalog.create_snapshot(&taken).unwrap();
        std::fs::create_dir_all(storage.join("web")).unwrap();
        std::fs::write(storage.join("web/20240501T020304Z-2.vda.qcow2"), "").unwrap();

        assert_eq!(
            choose_name(&catalog, &crate::host::LocalStorage, "demo", now, &storage, &plans).unwrap(),
            "20240501T020304Z-3"
        );
    }

    #[test]
    fn inspect_refuses_a_missing_or_stopped_domain() {
        let hv = FakeHypervisor::running_env("net", &["web"]);
        let mut env = Environment::default();
        env.vms.insert(
            "db".into(),
            crate::config::Vm { domain: "nope".into(), agent: crate::config::AgentEndpoint::new("x") },
        );
        assert!(matches!(inspect(&hv, &env), Err(SnapshotError::DomainMissing { .. })));
        env.vms.clear();
        env.vms.insert(
            "web".into(),
            crate::config::Vm { domain: "web".into(), agent: crate::config::AgentEndpoint::new("x") },
        );
        hv.destroy_domain("web").unwrap();
        assert!(matches!(inspect(&hv, &env), Err(SnapshotError::DomainNotRunning { .. })));
    }
}

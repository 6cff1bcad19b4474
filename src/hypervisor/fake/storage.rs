//! The fake's external snapshots, save/restore and block jobs.

use std::path::{Path, PathBuf};

use super::ops::{lv, not_running, State};
use crate::hypervisor::{
    BlockCommit, BlockJobInfo, BlockJobKind, DomainDef, DomainState, ExternalSnapshot, HvError, LibvirtCode,
};

/// A block job in progress on one disk.
#[derive(Debug, Clone)]
pub(in crate::hypervisor::fake) struct Job {
    kind: BlockJobKind,
    polls_left: u32,
    /// The disk's chain (top first) once the job completes or is pivoted.
    after: Vec<PathBuf>,
}

/// Arbitrary job size, in bytes.
const JOB_END: u64 = 64 << 20;

/// Points `disk` at `chain[0]` with `chain[1..]` as its backing chain.
fn set_chain(def: &mut DomainDef, disk: &str, chain: &[PathBuf]) -> Result<(), HvError> {
    if let Some((top, backing)) = chain.split_first() {
        def.set_disk_source(disk, top, "qcow2")?;
        def.set_disk_backing(disk, backing)?;
    }
    Ok(())
}

impl State {
    pub fn create_external_snapshot(&mut self, domain: &str, snap: &ExternalSnapshot) -> Result<(), HvError> {
        let err = |code, message: String| HvError::Snapshot {
            domain: domain.to_owned(),
            snapshot: snap.name.clone(),
            source: lv(code, message),
        };
        let d = self.dom(domain)?;
        let disks = d.def.disks();
        for (target, overlay) in &snap.disks {
            let disk = disks
                .iter()
                .find(|disk| disk.target == *target)
                .ok_or_else(|| HvError::NoSuchDisk { domain: domain.to_owned(), disk: target.clone() })?;
            if disk.readonly || disk.device != "disk" {
                let message = format!("external snapshot of read-only disk '{target}' is not supported");
                return Err(err(LibvirtCode::Unsupported, message));
            }
            if disk.source.as_ref() == Some(overlay) {
                return Err(err(LibvirtCode::OperationInvalid, format!("overlay of '{target}' is its current image")));
            }
        }
        let active = d.state.is_active();
        if snap.memory_file.is_some() && !active {
            return Err(err(
                LibvirtCode::OperationInvalid,
                "memory state cannot be saved of an inactive domain".into(),
            ));
        }
        if snap.live && (snap.memory_file.is_none() || !active) {
            let message = "live snapshot creation is supported only during full system snapshots";
            return Err(err(LibvirtCode::Unsupported, message.into()));
        }
        if snap.disks.is_empty() && snap.memory_file.is_none() {
            return Err(err(LibvirtCode::InvalidArg, "disk-only snapshots require at least one disk".into()));
        }
        if !snap.no_metadata && d.snapshots.contains(&snap.name) {
            return Err(err(LibvirtCode::OperationInvalid, format!("snapshot '{}' already exists", snap.name)));
        }
        // The memory image embeds the definition from before the switch.
        if let Some(memory) = &snap.memory_file {
            self.saved.insert(memory.clone(), d.def.clone());
        }
        let d = self.dom_mut(domain)?;
        for (target, overlay) in &snap.disks {
            let disk = disks.iter().find(|disk| disk.target == *target);
            let old: Vec<PathBuf> = disk.into_iter().flat_map(|d| d.source.iter().chain(&d.backing)).cloned().collect();
            let chain: Vec<PathBuf> = std::iter::once(overlay.clone()).chain(old).collect();
            set_chain(&mut d.def, target, &chain)?;
        }
        if !snap.no_metadata {
            d.snapshots.push(snap.name.clone());
        }
        Ok(())
    }

    pub fn save_memory(&mut self, domain: &str, path: &Path) -> Result<(), HvError> {
        let d = self.dom(domain)?;
        if !d.state.is_active() {
            let source = not_running(domain);
            return Err(HvError::SaveMemory { domain: domain.to_owned(), path: path.to_owned(), source });
        }
        self.saved.insert(path.to_owned(), d.def.clone());
        self.stop(domain);
        Ok(())
    }

    pub fn restore_memory(&mut self, path: &Path, def: Option<&DomainDef>) -> Result<(), HvError> {
        let err = |code, message: String| HvError::RestoreMemory { path: path.to_owned(), source: lv(code, message) };
        let image = self.saved.get(path).cloned().ok_or_else(|| {
            err(LibvirtCode::System, format!("cannot open '{}': No such file or directory", path.display()))
        })?;
        let def = def.cloned().unwrap_or_else(|| image.clone());
        let (name, uuid) = (def.name(), def.uuid().unwrap_or_default());
        let image_uuid = image.uuid().unwrap_or_default();
        if uuid != image_uuid {
            return Err(err(
                LibvirtCode::InvalidArg,
                format!("Target domain uuid {uuid} does not match source {image_uuid}"),
            ));
        }
        if name != image.name() {
            let message = format!("Target domain name '{name}' does not match source '{}'", image.name());
            return Err(err(LibvirtCode::InvalidArg, message));
        }
        match self.domains.get_mut(&name) {
            Some(d) if d.state.is_active() => {
                Err(err(LibvirtCode::OperationInvalid, format!("domain '{name}' is already active")))
            }
            Some(d) if d.def.uuid().unwrap_or_default() != uuid => {
                Err(err(LibvirtCode::OperationFailed, format!("domain '{name}' already exists with another uuid")))
            }
            Some(d) => {
                d.def = def;
                d.state = DomainState::Running;
                Ok(())
            }
            None => {
                if let Some(other) = self.domains.values().find(|d| d.def.uuid().unwrap_or_default() == uuid) {
                    let message = format!("domain '{}' is already defined with uuid {uuid}", other.def.name());
                    return Err(err(LibvirtCode::OperationFailed, message));
                }
                self.insert_domain(def, DomainState::Running, false);
                Ok(())
            }
        }
    }

    pub fn block_commit(&mut self, domain: &str, disk: &str, opts: &BlockCommit) -> Result<(), HvError> {
        let err = |code, message: String| HvError::BlockCommit {
            domain: domain.to_owned(),
            disk: disk.to_owned(),
            source: lv(code, message),
        };
        let d = self.dom(domain)?;
        let current = d.def.disks().into_iter().find(|x| x.target == disk);
        let current =
            current.ok_or_else(|| HvError::NoSuchDisk { domain: domain.to_owned(), disk: disk.to_owned() })?;
        if !d.state.is_active() {
            return Err(HvError::BlockCommit {
                domain: domain.to_owned(),
                disk: disk.to_owned(),
                source: not_running(domain),
            });
        }
        let key = (domain.to_owned(), disk.to_owned());
        if self.jobs.contains_key(&key) {
            return Err(err(LibvirtCode::OperationInvalid, format!("disk '{disk}' already in active block job")));
        }
        let chain: Vec<PathBuf> = current.source.into_iter().chain(current.backing).collect();
        let find = |p: &Path| {
            chain.iter().position(|c| c == p).ok_or_else(|| {
                err(LibvirtCode::InvalidArg, format!("could not find image '{}' in chain of '{disk}'", p.display()))
            })
        };
        let top = opts.top.as_deref().map(find).transpose()?.unwrap_or(0);
        let base = match opts.base.as_deref() {
            Some(p) => find(p)?,
            None if opts.shallow => top + 1,
            None => chain.len().saturating_sub(1),
        };
        if base <= top || base >= chain.len() {
            return Err(err(LibvirtCode::InvalidArg, format!("top of '{disk}' has no backing file to commit into")));
        }
        if opts.shallow && base != top + 1 {
            return Err(err(LibvirtCode::InvalidArg, "shallow commit needs the base right below the top".into()));
        }
        if (top == 0) != opts.active {
            let message = if opts.active {
                "active commit of a non-active layer"
            } else {
                "commit of the active layer needs the active flag"
            };
            return Err(err(LibvirtCode::InvalidArg, message.into()));
        }
        let mut after = chain;
        after.drain(top..base);
        let kind = if opts.active { BlockJobKind::ActiveCommit } else { BlockJobKind::Commit };
        if kind == BlockJobKind::Commit {
            set_chain(&mut self.dom_mut(domain)?.def, disk, &after)?;
        }
        self.jobs.insert(key, Job { kind, polls_left: self.job_polls, after });
        Ok(())
    }

    pub fn block_job(&mut self, domain: &str, disk: &str) -> Result<Option<BlockJobInfo>, HvError> {
        let err = |source| HvError::BlockJob { domain: domain.to_owned(), disk: disk.to_owned(), source };
        let d = self.dom(domain)?;
        if !d.def.disks().iter().any(|x| x.target == disk) {
            return Err(err(lv(LibvirtCode::InvalidArg, format!("disk '{disk}' not found in domain"))));
        }
        if !d.state.is_active() {
            return Err(err(not_running(domain)));
        }
        let key = (domain.to_owned(), disk.to_owned());
        let Some(job) = self.jobs.get_mut(&key) else {
            return Ok(None);
        };
        if job.polls_left > 0 {
            job.polls_left -= 1;
            return Ok(Some(BlockJobInfo { kind: job.kind, cur: JOB_END / 2, end: JOB_END }));
        }
        if job.kind == BlockJobKind::Commit {
            self.jobs.remove(&key);
            return Ok(None);
        }
        Ok(Some(BlockJobInfo { kind: job.kind, cur: JOB_END, end: JOB_END }))
    }

    /// Pivots (`pivot`) or aborts the job on `disk`.
    pub fn block_job_end(&mut self, domain: &str, disk: &str, pivot: bool) -> Result<(), HvError> {
        let err = |code, message: String| {
            let (domain, disk, source) = (domain.to_owned(), disk.to_owned(), lv(code, message));
            if pivot {
                HvError::BlockJobPivot { domain, disk, source }
            } else {
                HvError::BlockJobAbort { domain, disk, source }
            }
        };
        self.dom(domain)?;
        let key = (domain.to_owned(), disk.to_owned());
        let job = self.jobs.get(&key).cloned().ok_or_else(|| {
            err(LibvirtCode::OperationInvalid, format!("disk '{disk}' does not have an active block job"))
        })?;
        if pivot {
            if !matches!(job.kind, BlockJobKind::ActiveCommit | BlockJobKind::Copy) {
                return Err(err(LibvirtCode::OperationInvalid, format!("block job of '{disk}' cannot be pivoted")));
            }
            if job.polls_left > 0 {
                return Err(err(LibvirtCode::OperationInvalid, format!("block job '{disk}' not ready for pivot yet")));
            }
            set_chain(&mut self.dom_mut(domain)?.def, disk, &job.after)?;
        }
        self.jobs.remove(&key);
        Ok(())
    }
}

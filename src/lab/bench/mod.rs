//! `envclone lab bench`: measures, on a lab, what issue #7 asks, in one
//! run, and reports each figure against its reference and target.
//!
//! Four families, each in a file of its own, each on extra environments
//! it defines into the lab for itself ([`super::extra`]) and removes when
//! done, so `demo` and its catalog are never touched:
//!
//! - [`stall`]: the service-visible stall of snapshots, a live clone, a raw
//!   `virsh` live snapshot and `virt-clone`, seen by [`probe::Prober`];
//! - [`data`]: clone time against the data written in a disk;
//! - [`memory`]: memory-state capture time, pause and image size against
//!   RAM, QEMU's background-snapshot (envclone) and libvirt's live snapshot;
//! - [`scale`]: group freeze window and linked-clone time against the
//!   number of VMs;
//! - [`hosts`]: shipping to a standby on another host (issue #14): bytes
//!   shipped against bytes written, sync time over a shaped link, the RPO a
//!   1-minute schedule reaches. It runs on a two-host lab of its own
//!   ([`hosts::HostsLab`]), not on the extra environments.
//!
//! Every envclone operation runs through the real `envclone` binary (this
//! one) with `--config` pointing at the extra environments, as a user would
//! run it ([`exec`]). [`report`] holds the figures, the targets and the
//! Markdown; [`plot`] draws clone time against data size.

mod data;
mod error;
mod exec;
mod hosts;
mod memory;
pub mod plot;
pub mod probe;
pub mod report;
mod scale;
mod stall;

pub use error::BenchError;
pub use report::BenchReport;

use super::extra::{ExtraEnv, ExtraLab, ExtraOptions};
use super::{Lab, LabError};
use crate::config::{Config, DomainType};
use crate::guest::GuestSession;
use crate::hypervisor::{DomainState, Hypervisor, LibvirtHypervisor};
use exec::Tools;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The measurement families, in the order a full run takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Stall,
    Data,
    Memory,
    Scale,
    Hosts,
}

impl Family {
    pub const ALL: [Family; 5] = [Family::Stall, Family::Data, Family::Memory, Family::Scale, Family::Hosts];

    pub fn name(self) -> &'static str {
        match self {
            Family::Stall => "stall",
            Family::Data => "data",
            Family::Memory => "memory",
            Family::Scale => "scale",
            Family::Hosts => "hosts",
        }
    }

    pub fn parse(name: &str) -> Result<Family, BenchError> {
        Family::ALL.into_iter().find(|f| f.name() == name).ok_or(BenchError::UnknownFamily { name: name.to_string() })
    }
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub families: Vec<Family>,
    /// Data written in a disk, GiB (issue #7: 1, 4, 16).
    pub data_sizes_gib: Vec<u64>,
    /// Guest RAM, MiB (256, 1024, 2048).
    pub ram_sizes_mib: Vec<u64>,
    /// VMs per environment (1, 3, 6).
    pub scale_sizes: Vec<usize>,
    /// Data written in `db` before each incremental sync to host b, MiB (4, 16, 64).
    pub hosts_sizes_mib: Vec<u64>,
    /// The two-host lab of the hosts family (default: the bench's lab when
    /// it has two hosts, else `<lab>-hosts`).
    pub hosts_lab: Option<String>,
    pub agent_binary: PathBuf,
    /// The `envclone` binary the operations run through.
    pub envclone: PathBuf,
    pub boot_timeout: Duration,
    /// Leave the extra environments defined afterwards (to look at them).
    pub keep: bool,
}

/// What every family works with.
struct Bench<'a> {
    extra: ExtraLab<'a>,
    tools: Tools,
    extra_options: ExtraOptions,
    netns: String,
    progress: &'a dyn Fn(&str),
    started: Instant,
    keep: bool,
}

/// The tools a bench runs beyond the lab's own, with their Debian packages.
const TOOLS: &[(&str, &str)] =
    &[("virsh", "libvirt-clients"), ("virt-clone", "virtinst"), ("qemu-img", "qemu-utils"), ("qemu-io", "qemu-utils")];

pub fn run(lab: &Lab, options: &BenchOptions, progress: &dyn Fn(&str)) -> Result<BenchReport, LabError> {
    let started = Instant::now();
    // The hosts family alone needs no lab of the bench's: it brings up its own.
    let needs_lab = options.families.iter().any(|f| *f != Family::Hosts);
    let lab_config = crate::config::load(&lab.paths().config())
        .ok()
        .filter(|_| super::daemons::is_running(&lab.paths().libvirt_instance()));
    if needs_lab && lab_config.is_none() {
        return Err(BenchError::LabNotUp { lab: lab.name().to_string(), config: lab.paths().config() }.into());
    }
    for (tool, package) in TOOLS {
        if super::host::find_tool(tool).is_none() {
            return Err(BenchError::MissingTool { tool, package }.into());
        }
    }
    let domain_type = lab_config.and_then(|c| c.lab).map_or(DomainType::Qemu, |l| l.domain_type);
    let extra = ExtraLab::new(lab);
    if needs_lab {
        progress("removing what an earlier bench left");
        extra.remove_all()?;
    }
    let bench = Bench {
        tools: Tools {
            envclone: options.envclone.clone(),
            config: extra.config_path(),
            libvirt_uri: lab.paths().libvirt_uri(),
        },
        extra,
        extra_options: ExtraOptions {
            agent_binary: options.agent_binary.clone(),
            domain_type,
            boot_timeout: options.boot_timeout,
        },
        netns: lab.netns(),
        progress,
        started,
        keep: options.keep,
    };
    let mut report = BenchReport {
        measured_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        machine: machine(domain_type),
        lab: lab.name().to_string(),
        seconds: 0.0,
        notes: Vec::new(),
        not_measured: Vec::new(),
        stall: None,
        data: None,
        memory: None,
        scale: None,
        hosts: None,
        targets: Vec::new(),
    };
    for family in &options.families {
        bench.say(&format!("== {}", family.name()));
        let outcome = match family {
            Family::Stall => stall::run(&bench, &mut report.notes).map(|f| report.stall = Some(f)),
            Family::Data => {
                data::run(&bench, &options.data_sizes_gib, &mut report.notes).map(|f| report.data = Some(f))
            }
            Family::Memory => {
                memory::run(&bench, &options.ram_sizes_mib, &mut report.notes).map(|f| report.memory = Some(f))
            }
            Family::Scale => {
                scale::run(&bench, &options.scale_sizes, &mut report.notes).map(|f| report.scale = Some(f))
            }
            Family::Hosts => bench.hosts(options, domain_type, &mut report.notes).map(|f| report.hosts = Some(f)),
        };
        // A family that failed is reported as not measured; the others
        // still run (each family removes its own environments either way).
        if let Err(e) = outcome {
            let why = crate::error::chain(&e);
            bench.say(&format!("{} not measured: {why}", family.name()));
            report.not_measured.push(format!("the {} family: {why}", family.name()));
        }
    }
    if !needs_lab {
        // No extra environment was made.
    } else if options.keep {
        bench.say(&format!("keeping the extra environments (config: {})", bench.extra.config_path().display()));
    } else {
        bench.extra.remove_all()?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.check_targets();
    Ok(report)
}

impl Bench<'_> {
    fn say(&self, line: &str) {
        (self.progress)(&format!("[{:>4.0}s] {line}", self.started.elapsed().as_secs_f64()));
    }

    /// The hosts family on its two-host lab, brought up if need be and
    /// taken down again if it was (unless `--keep`).
    fn hosts(
        &self,
        options: &BenchOptions,
        domain_type: DomainType,
        notes: &mut Vec<String>,
    ) -> Result<report::HostsFamily, BenchError> {
        let lab = hosts::HostsLab::resolve(self.extra.lab(), options.hosts_lab.as_deref())?;
        let hosts_lab = hosts::HostsLab::up(lab, self, domain_type)?;
        let measured = hosts::run(self, &hosts_lab, &options.hosts_sizes_mib, notes);
        if hosts_lab.brought_up && !self.keep {
            self.say(&format!("taking lab '{}' down (the bench brought it up)", hosts_lab.lab.name()));
            hosts_lab.lab.down(false).map_err(BenchError::lab(format!("take lab {} down", hosts_lab.lab.name())))?;
        }
        measured
    }

    fn hv(&self) -> Result<LibvirtHypervisor, BenchError> {
        LibvirtHypervisor::connect(&self.tools.libvirt_uri)
            .map_err(BenchError::libvirt("connect to the lab's libvirtd"))
    }

    /// Defines and boots `envs`, waiting for their agents.
    fn add(&self, envs: &[ExtraEnv]) -> Result<(), BenchError> {
        let names: Vec<&str> = envs.iter().map(|e| e.name.as_str()).collect();
        let took = self
            .extra
            .add(envs, &self.extra_options, &|line| self.say(line))
            .map_err(BenchError::lab(format!("set up {}", names.join(", "))))?;
        self.say(&format!("{} up in {:.0} s", names.join(", "), took.as_secs_f64()));
        Ok(())
    }

    fn remove(&self, envs: &[ExtraEnv]) -> Result<(), BenchError> {
        for env in envs {
            self.extra.remove(&env.name).map_err(BenchError::lab(format!("remove {}", env.name)))?;
        }
        Ok(())
    }

    /// Runs `measure` on `envs`, then removes them whatever happened.
    fn with_envs<T>(
        &self,
        envs: &[ExtraEnv],
        measure: impl FnOnce() -> Result<T, BenchError>,
    ) -> Result<T, BenchError> {
        let result = self.add(envs).and_then(|()| measure());
        if self.keep {
            return result;
        }
        let removed = self.remove(envs);
        let value = result?;
        removed?;
        Ok(value)
    }

    /// Runs `measure` with the domains of `others` paused, so that their
    /// idle TCG guests (timer interrupts, each a slice of one of a few
    /// cores) do not add noise to what is measured; resumes them whatever
    /// `measure` returns.
    fn with_paused<T>(
        &self,
        others: &[&ExtraEnv],
        measure: impl FnOnce() -> Result<T, BenchError>,
    ) -> Result<T, BenchError> {
        let domains: Vec<String> =
            others.iter().flat_map(|env| env.vms.iter().map(|vm| env.domain(&vm.name))).collect();
        let mut paused = Vec::new();
        let mut result = Ok(());
        for domain in &domains {
            match self.tools.virsh("pause the other environments", &["suspend", domain]) {
                Ok(_) => paused.push(domain),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let measured = result.and_then(|()| measure());
        let mut resumed = Ok(());
        for domain in paused {
            if let Err(e) = self.tools.virsh("resume the other environments", &["resume", domain]) {
                resumed = resumed.and(Err(e));
            }
        }
        let value = measured?;
        resumed?;
        Ok(value)
    }

    /// Runs a shell command in a VM of an extra environment; its stdout.
    fn sh(&self, env: &str, vm: &str, command: &str) -> Result<String, BenchError> {
        let config = self.extra.config().map_err(BenchError::lab("read the extra config"))?;
        sh_in(&config, env, vm, command)
    }

    /// Shuts VMs off from inside, all at once: `sync; poweroff -f`. The
    /// lab's guests have no ACPI daemon, so `virsh shutdown` would wait
    /// forever; this is what their init would do on a clean shutdown (the
    /// filesystems are synced; there is no service to stop). The poweroff
    /// runs detached, so the SSH command returns before the guest dies.
    fn power_off(&self, env: &ExtraEnv, vms: &[&str]) -> Result<(), BenchError> {
        for vm in vms {
            self.sh(&env.name, vm, "sync; (sleep 0.2; poweroff -f) </dev/null >/dev/null 2>&1 &")?;
        }
        let hv = self.hv()?;
        for vm in vms {
            let domain = env.domain(vm);
            crate::wait::until(
                &format!("{domain} to power off"),
                Duration::from_secs(60),
                Duration::from_millis(20),
                || hv.domain(&domain).map(|d| (d.state == DomainState::ShutOff).then_some(())),
            )
            .map_err(|e| BenchError::Timeout {
                step: format!("power off {domain}"),
                what: e.to_string(),
                waited: Duration::from_secs(60),
            })?;
        }
        Ok(())
    }

    /// `virt-clone` of a shut-off domain into `new` (disks under scratch),
    /// timed; returns the time and the files it made. Storage pools
    /// virt-clone defines on the way (one per directory it touches) are
    /// removed again.
    fn virt_clone(&self, source: &str, new: &str) -> Result<(exec::Timed<String>, Vec<PathBuf>), BenchError> {
        let step = format!("virt-clone {source}");
        let scratch = self.extra.scratch();
        std::fs::create_dir_all(&scratch).map_err(BenchError::io(&step, "create", &scratch))?;
        let disks = self.hv()?.domain(source).map_err(BenchError::libvirt(&step))?.def.disks();
        let files: Vec<PathBuf> = disks.iter().map(|d| scratch.join(format!("{new}.{}.qcow2", d.target))).collect();
        let pools_before = self.pools(&step)?;
        let mut args = vec!["--original", source, "--name", new];
        for file in &files {
            args.push("--file");
            args.push(file.to_str().unwrap_or_default());
        }
        let result = self.tools.virt_clone(&step, &args);
        for pool in self.pools(&step)?.into_iter().filter(|p| !pools_before.contains(p)) {
            let _ = self.tools.virsh(&step, &["pool-destroy", &pool]);
            let _ = self.tools.virsh(&step, &["pool-undefine", &pool]);
        }
        Ok((result?, files))
    }

    fn pools(&self, step: &str) -> Result<Vec<String>, BenchError> {
        let listing = self.tools.virsh(step, &["pool-list", "--all", "--name"])?;
        Ok(listing.value.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
    }

    /// Undefines a domain made by virt-clone and deletes its disks.
    fn drop_virt_clone(&self, domain: &str, files: &[PathBuf]) -> Result<(), BenchError> {
        let hv = self.hv()?;
        super::extra::remove_domain(&hv, domain).map_err(BenchError::lab(format!("remove {domain}")))?;
        exec::remove_files(&format!("remove {domain}'s disks"), files)
    }
}

/// An SSH session to a VM of `config`'s environment `env`.
fn session_in(config: &Config, env: &str, vm: &str) -> Result<GuestSession, BenchError> {
    let (_, vm_config) = config.vm(env, vm).map_err(|e| BenchError::Report {
        step: format!("SSH into {env}/{vm}"),
        command: "config lookup".into(),
        detail: e.to_string(),
    })?;
    GuestSession::connect(
        &crate::guest::endpoint::ssh_target(&vm_config.agent),
        &crate::guest::endpoint::ssh_options(&config.controller),
    )
    .map_err(|e| BenchError::Report {
        step: format!("SSH into {env}/{vm}"),
        command: "ssh".into(),
        detail: crate::error::chain(&e),
    })
}

/// Runs a shell command in a VM of `config`'s environment `env`; its stdout.
fn sh_in(config: &Config, env: &str, vm: &str, command: &str) -> Result<String, BenchError> {
    let step = format!("`{command}` in {env}/{vm}");
    let output = session_in(config, env, vm)?.exec(command, None).map_err(|e| BenchError::Report {
        step: step.clone(),
        command: command.into(),
        detail: crate::error::chain(&e),
    })?;
    if output.status != 0 {
        return Err(BenchError::Command {
            step,
            command: command.into(),
            status: Some(output.status),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn machine(domain_type: DomainType) -> report::Machine {
    let first_line = |program: &str, arg: &str| {
        std::process::Command::new(program)
            .arg(arg)
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(|l| l.trim().to_string()))
            .unwrap_or_else(|| format!("{program} (unknown version)"))
    };
    let mem_kib: f64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:")).map(String::from))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0.0);
    report::Machine {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory_gib: mem_kib / 1024.0 / 1024.0,
        domain_type: domain_type.to_string(),
        kernel: format!("Linux {}", std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()),
        qemu: first_line("qemu-system-x86_64", "--version"),
        libvirt: first_line("libvirtd", "--version"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_parse_by_name_and_unknown_ones_are_refused() {
        assert_eq!(Family::parse("memory").unwrap(), Family::Memory);
        assert!(matches!(Family::parse("disk"), Err(BenchError::UnknownFamily { .. })));
    }
}

//! The command line, as clap derive types. Parsing only: what each command
//! does lives in [`crate::commands`].

use crate::config::{DomainType, QuiescePolicy};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "envclone",
    version,
    about = "Snapshot, live-clone and fail over whole multi-VM environments on libvirt/QEMU hosts",
    after_help = format!("Exit codes:\n{}", crate::exit::ExitCode::table())
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Configuration file.
    #[arg(long, short = 'c', global = true, env = "ENVCLONE_CONFIG", default_value = crate::config::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Override controller.libvirt_uri from the config file.
    #[arg(long, global = true, env = "ENVCLONE_LIBVIRT_URI")]
    pub libvirt_uri: Option<String>,
    /// Print results (and errors) as JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the configuration; with --live also libvirt and every agent.
    Check(CheckArgs),
    /// Open a shell in a VM, or run a command there, with the configured key.
    Ssh(SshArgs),
    /// A throwaway lab of tiny VMs to try envclone on.
    #[command(subcommand)]
    Lab(LabCommand),
    /// Run the config's schedules: snapshots on time, then retention (SIGHUP reloads the config).
    Daemon(DaemonArgs),
    /// Each environment's last snapshot and its age, and each schedule's runs and failures.
    Status(StatusArgs),
    /// Run one schedule now, with the daemon's bookkeeping (for systemd timers and cron).
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Take a consistent snapshot of every VM of an environment.
    Snapshot(SnapshotArgs),
    /// List an environment's snapshots: size, age, consistency, freeze window.
    Snapshots(SnapshotsArgs),
    /// Delete a snapshot, merging its images live into their neighbours; deferred (exit 0) while a clone, standby or other snapshot needs them.
    DeleteSnapshot(DeleteSnapshotArgs),
    /// Apply retention: delete the snapshots that the schedules' (and the environment's) retention does not keep.
    Prune(PruneArgs),
    /// Put an environment back, in place, to a snapshot (the state it replaces is kept as an undo snapshot).
    Restore(RestoreArgs),
    /// Finish or roll back interrupted operations (snapshot, restore, delete, clone), then check the environment.
    Recover(RecoverArgs),
    /// Clone an environment from a snapshot (a fresh one without --from) into a new, isolated environment.
    Clone(CloneArgs),
    /// List the clones.
    Clones,
    /// Remove a clone: its domains, networks, gateway namespace and the images only it uses.
    Destroy(DestroyArgs),
    /// Standby environments: independent copies of an environment kept current by autorestore.
    #[command(subcommand)]
    Standby(StandbyCommand),
    /// Fail ENV over to its standby: unplanned by default (the primary is down: fenced, the standby starts from its newest restored point), --planned (a final snapshot first), or --test, a DR drill that leaves ENV untouched (--test --end ends it).
    Failover(FailoverArgs),
    /// Hand ENV back from the standby serving it: what the standby wrote is carried home and verified, ENV's domains start on it, the standby waits again with its own identity, and the next epoch is recorded.
    Failback(FailbackArgs),
    /// The start gate on the hosts of [hosts]: a libvirt hook that refuses to start a fenced domain, or a domain of an environment without a fresh lease from the controller.
    #[command(subcommand)]
    Gate(GateCommand),
}

#[derive(Debug, Subcommand)]
pub enum GateCommand {
    /// Write the hook, the protected list and fresh leases on each host (idempotent); a new hook acts from libvirtd's next start.
    Install(GateHostsArgs),
    /// Renew the lease of every environment that is not failed over, withhold the others' (what `status` and the daemon do).
    Renew(GateHostsArgs),
    /// Per host: the hook installed and current, the protected domains, each lease and its age.
    Status(GateHostsArgs),
}

#[derive(Debug, Args)]
pub struct GateHostsArgs {
    /// Only this host of [hosts] (repeatable); default: every one.
    #[arg(long = "host", value_name = "NAME")]
    pub hosts: Vec<String>,
}

#[derive(Debug, Args)]
pub struct FailbackArgs {
    /// Environment name from the config: the primary a standby serves.
    pub environment: String,
    /// The standby serving ENV (checked; it is the one its failover recorded).
    #[arg(long, value_name = "SB")]
    pub standby: Option<String>,
}

#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// Environment name from the config: the primary.
    pub environment: String,
    /// A DR drill: the standby starts from its newest restored point on a throwaway overlay, in its isolated networks, while ENV runs untouched.
    #[arg(long)]
    pub test: bool,
    /// With --test: end the drill (the standby stops, shut off on its disks as they were).
    #[arg(long, requires = "test")]
    pub end: bool,
    /// The primary is healthy: a final snapshot is brought into the standby, the primary is fenced, the standby takes over its MACs and networks.
    #[arg(long, conflicts_with = "test")]
    pub planned: bool,
    /// The standby to use, when ENV has more than one.
    #[arg(long, value_name = "SB")]
    pub standby: Option<String>,
    /// Unplanned failover even though every domain of ENV runs (its writes since the standby's point are lost; --planned keeps them).
    #[arg(long, conflicts_with_all = ["test", "planned"])]
    pub force: bool,
    /// The libvirt URI of ENV's host, when it is not controller.libvirt_uri (unplanned failover: where to fence ENV, and where envclone keeps it fenced).
    #[arg(long, value_name = "URI", conflicts_with_all = ["test", "planned"])]
    pub primary_uri: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum StandbyCommand {
    /// Make a standby of ENV: full copies of every disk on its own storage, domains defined and shut off.
    Create(StandbyCreateArgs),
    /// Bring a standby to its primary's newest complete snapshot now (what autorestore runs).
    Sync(StandbyNameArgs),
    /// The standbys: primary, restored point and lag, last transfer.
    List,
    /// Remove a standby: its domains, networks and disks; the primary is not touched.
    Destroy(StandbyNameArgs),
}

#[derive(Debug, Args)]
pub struct StandbyCreateArgs {
    /// Environment name from the config: the primary.
    pub environment: String,
    /// The standby's name (its domains are NAME-<vm>, its networks NAME-<net>).
    #[arg(long)]
    pub name: String,
    /// Folder for the standby's disks, on its host; default: `[standbys.NAME] storage`, else
    /// standbys/NAME under the host's storage (<state_dir> for local).
    #[arg(long, value_name = "DIR")]
    pub storage: Option<PathBuf>,
    /// Do not bring the standby to each new snapshot in the daemon (sync it by hand).
    #[arg(long)]
    pub no_autorestore: bool,
    /// The host the standby lives on (a name under [hosts]); default: `[standbys.NAME] host`, else local.
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
}

#[derive(Debug, Args)]
pub struct StandbyNameArgs {
    /// The standby's name, as `envclone standby list` lists it.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct CloneArgs {
    /// Environment name from the config: the source.
    pub environment: String,
    /// The clone's name (its domains are NAME-<vm>, its networks NAME-<net>).
    #[arg(long)]
    pub name: String,
    /// Snapshot to clone from; default: take a consistent snapshot now.
    #[arg(long, value_name = "SNAP")]
    pub from: Option<String>,
    /// `linked`: qcow2 overlays on the snapshot's images; `full`: independent copies (allocated data only).
    #[arg(long, value_enum, default_value_t = CloneDisks::Linked)]
    pub disks: CloneDisks,
    /// `boot`: cold-boot and wait for the agents; `off`: define only; `resume`: from the snapshot's memory
    /// (a snapshot taken with --memory; without --from one is taken).
    #[arg(long, value_enum, default_value_t = CloneStart::Boot)]
    pub start: CloneStart,
    /// `isolated`: copies of the source's networks with the same addresses and no route out;
    /// `readdress`: a new subnet from the environment's [readdress] pool, connection strings rewritten and
    /// checked before the link goes up.
    #[arg(long, value_enum, default_value_t = CloneNetwork::Isolated)]
    pub network: CloneNetwork,
    /// Give every guest new SSH host keys (known_hosts is updated; `destroy` removes the entries).
    #[arg(long)]
    pub new_host_keys: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CloneDisks {
    Linked,
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CloneStart {
    Resume,
    Boot,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CloneNetwork {
    Isolated,
    Readdress,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    /// The clone's name, as `envclone clones` lists it.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Environment name from the config.
    pub environment: String,
    /// Also capture each VM's memory (live), so a restore resumes running processes.
    #[arg(long)]
    pub memory: bool,
    /// A label kept with the snapshot (its name is the UTC time it was taken).
    #[arg(long)]
    pub label: Option<String>,
    /// What to do when a guest cannot be frozen: fail (`required`), take it
    /// crash-consistent and say so (`best-effort`), or never freeze (`off`).
    /// Default: the environment's `quiesce`.
    #[arg(long, value_enum)]
    pub quiesce: Option<QuiesceArg>,
    /// Taken for this schedule (the daemon's runs): recorded as the
    /// schedule's, for its retention; the schedule's `memory` applies.
    #[arg(long, value_name = "SCHEDULE")]
    pub scheduled: Option<String>,
}

#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    /// Environment name (from the config, or known to the catalog).
    pub environment: String,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Environment name from the config.
    pub environment: String,
    /// Snapshot name, as `envclone snapshots ENV` lists it.
    pub snapshot: String,
    /// Resume every VM from the snapshot's memory images (a snapshot taken
    /// with --memory) instead of booting it from the snapshot's disks.
    #[arg(long)]
    pub memory: bool,
    /// Keep no undo snapshot of the state the restore replaces, and delete
    /// its overlays where nothing else needs them.
    #[arg(long)]
    pub discard: bool,
}

#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// Only this environment (default: every environment of the config or the journal).
    pub environment: Option<String>,
    /// Print the plan (what would be undone, thawed, resumed or recorded) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct DeleteSnapshotArgs {
    /// Environment name from the config.
    pub environment: String,
    /// Snapshot name, as `envclone snapshots ENV` lists it.
    pub snapshot: String,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Environment name from the config.
    pub environment: String,
    /// List what would be deleted (and what would be deferred) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QuiesceArg {
    Required,
    BestEffort,
    Off,
}

impl From<QuiesceArg> for QuiescePolicy {
    fn from(arg: QuiesceArg) -> Self {
        match arg {
            QuiesceArg::Required => QuiescePolicy::Required,
            QuiesceArg::BestEffort => QuiescePolicy::BestEffort,
            QuiesceArg::Off => QuiescePolicy::Off,
        }
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also connect to libvirt (domains, networks) and log in to every agent
    /// over SSH with its host key verified.
    #[arg(long)]
    pub live: bool,
    /// With --live: only this environment (of the config, or a clone).
    #[arg(requires = "live")]
    pub environment: Option<String>,
}

#[derive(Debug, Args)]
pub struct SshArgs {
    /// Environment name from the config.
    pub environment: String,
    /// VM name within the environment.
    pub vm: String,
    /// Command to run instead of a shell (after `--`).
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Create (or finish creating) the lab and wait until its agents answer.
    Up(LabUpArgs),
    /// Remove everything the lab made.
    Down(LabDownArgs),
    /// What the lab runs right now.
    Status(LabArgs),
    /// Shell exports that point later commands at the lab.
    Env(LabArgs),
    /// Power loss of one of a two-host lab's hosts: SIGKILL to its QEMUs,
    /// libvirtd, virtlogd and dropbear, its links cut; nothing undefined.
    HostDown(LabHostArgs),
    /// Power a two-host lab's host back on: links, storage, libvirtd and
    /// dropbear; libvirt's autostart decides which domains start.
    HostUp(LabHostArgs),
    /// Shape a two-host lab's host link in both directions (tc token
    /// bucket; this kernel has no netem, so no delay or loss).
    Link(LabLinkArgs),
    /// Measure stalls, clone times, memory capture, scale and shipping to
    /// another host on the lab (minutes; a Markdown table on stdout, every
    /// figure in a JSON file).
    Bench(Box<LabBenchArgs>),
}

#[derive(Debug, Args)]
pub struct LabBenchArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    /// Also write every figure, ratio and target as JSON to FILE (the
    /// global `--json` prints that JSON on stdout instead of the tables).
    #[arg(long, value_name = "FILE")]
    pub json_file: Option<PathBuf>,
    /// Write the plot of clone time against data size (SVG) to FILE
    /// (default: the JSON file's path with .svg, when there is one).
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Only these families (stall, data, memory, scale, hosts); default: all.
    #[arg(long, value_delimiter = ',', value_name = "FAMILY")]
    pub only: Vec<String>,
    /// Data written in a disk, GiB.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub data_gib: Vec<u64>,
    /// Guest RAM sizes, MiB.
    #[arg(long, value_delimiter = ',', default_value = "256,1024,2048")]
    pub ram_mib: Vec<u64>,
    /// VMs per environment.
    #[arg(long, value_delimiter = ',', default_value = "1,3,6")]
    pub vms: Vec<usize>,
    /// hosts: data written in db before each incremental sync to host b, MiB.
    #[arg(long, value_delimiter = ',', default_value = "4,16,64")]
    pub hosts_mib: Vec<u64>,
    /// hosts: the two-host lab to run on, brought up with `--hosts 2` if it
    /// is not up and then taken down again (unless --keep). Default: the
    /// lab itself when it has two hosts, else `<lab>-hosts`.
    #[arg(long, value_name = "NAME")]
    pub hosts_lab: Option<String>,
    /// Keep the bench's environments afterwards (in the lab's extra/ directory).
    #[arg(long)]
    pub keep: bool,
    /// Static envclone-agent for the bench's guests (default: the one `lab up` finds).
    #[arg(long, env = "ENVCLONE_AGENT_BIN")]
    pub agent_bin: Option<PathBuf>,
    /// How long a guest may take to boot until its agent answers.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    pub boot_timeout: std::time::Duration,
}

#[derive(Debug, Args, Clone)]
pub struct LabArgs {
    /// Lab name; several labs can coexist (tests use their own).
    #[arg(long = "lab", env = "ENVCLONE_LAB", default_value = "lab")]
    pub name: String,
    /// Where labs keep their files.
    #[arg(long, env = "ENVCLONE_LABS_DIR", default_value = crate::lab::DEFAULT_LABS_DIR)]
    pub labs_dir: PathBuf,
    /// Content-addressed cache of guest images, shared by labs.
    #[arg(long, env = "ENVCLONE_LAB_CACHE", default_value = crate::lab::DEFAULT_CACHE_DIR)]
    pub cache_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct LabUpArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    /// libvirt domain type of the guests: `qemu` (TCG, works everywhere) or
    /// `kvm` (where nested or bare-metal KVM works). Default: the lab
    /// config's [lab] domain_type, else qemu.
    #[arg(long, value_enum)]
    pub domain_type: Option<DomainTypeArg>,
    /// Static envclone-agent to put in the guests.
    #[arg(long, env = "ENVCLONE_AGENT_BIN")]
    pub agent_bin: Option<PathBuf>,
    /// How long a guest may take to boot until its agent answers.
    #[arg(long, default_value = "240s", value_parser = humantime::parse_duration)]
    pub boot_timeout: std::time::Duration,
    /// 1: demo on the lab's own libvirtd. 2: two remote hosts, `a` (demo)
    /// and `b`, each with its own libvirtd, storage and SSH. Default: what
    /// the lab was brought up with, else 1.
    #[arg(long)]
    pub hosts: Option<u8>,
}

#[derive(Debug, Args)]
pub struct LabHostArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    /// The host: `a` or `b`.
    pub host: String,
}

#[derive(Debug, Args)]
pub struct LabLinkArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    /// The host whose link to the controller is shaped: `a` or `b`.
    pub host: String,
    /// A tc rate (`100mbit`, `1gbit`, `12.5mbps` for bytes/s), or `none`
    /// to remove the shaping.
    #[arg(long)]
    pub rate: crate::lab::hosts::RateSetting,
}

#[derive(Debug, Args)]
pub struct LabDownArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    /// Also remove the shared guest image cache.
    #[arg(long)]
    pub purge_cache: bool,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Run the schedules that are due now, wait for them to end, and exit
    /// (non-zero if one failed).
    #[arg(long)]
    pub once: bool,
    /// With --once: judge which schedules are due at this time (RFC 3339,
    /// e.g. 2024-05-01T02:00:00Z) instead of now.
    #[arg(long, requires = "once", value_parser = parse_rfc3339)]
    pub now: Option<chrono::DateTime<chrono::Utc>>,
    #[command(flatten)]
    pub run: ScheduledRunArgs,
    /// On SIGTERM/SIGINT, how long to wait for runs in progress.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub shutdown_grace: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct ScheduledRunArgs {
    /// How long one scheduled snapshot (and its retention) may take before
    /// it is stopped and counted as failed.
    #[arg(long, default_value = "2h", value_parser = humantime::parse_duration)]
    pub run_timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this environment.
    pub environment: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Run the named schedule once now: snapshot, then its retention; the
    /// run is recorded and counted like the daemon's.
    Run(ScheduleRunArgs),
}

#[derive(Debug, Args)]
pub struct ScheduleRunArgs {
    /// Schedule name from the config (`[schedules.NAME]`).
    pub schedule: String,
    #[command(flatten)]
    pub run: ScheduledRunArgs,
}

fn parse_rfc3339(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&chrono::Utc))
        .map_err(|error| format!("{error} (expected e.g. 2024-05-01T02:00:00Z)"))
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DomainTypeArg {
    Qemu,
    Kvm,
}

impl From<DomainTypeArg> for DomainType {
    fn from(arg: DomainTypeArg) -> Self {
        match arg {
            DomainTypeArg::Qemu => DomainType::Qemu,
            DomainTypeArg::Kvm => DomainType::Kvm,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_lists_every_exit_code() {
        let help = Cli::command().render_long_help().to_string();
        for code in crate::exit::ExitCode::ALL {
            let line = format!("{:>4}  {}", code.code(), code.describe());
            assert!(help.contains(&line), "help lacks exit code line {line:?}");
        }
    }

    #[test]
    fn snapshot_takes_memory_label_and_quiesce() {
        let cli = Cli::try_parse_from([
            "envclone",
            "snapshot",
            "demo",
            "--memory",
            "--label",
            "before upgrade",
            "--quiesce",
            "best-effort",
        ])
        .unwrap();
        let Command::Snapshot(args) = cli.command else { panic!("parsed as {:?}", cli.command) };
        assert_eq!(args.environment, "demo");
        assert!(args.memory);
        assert_eq!(args.label.as_deref(), Some("before upgrade"));
        assert_eq!(args.quiesce.map(QuiescePolicy::from), Some(QuiescePolicy::BestEffort));
        assert!(Cli::try_parse_from(["envclone", "snapshot", "demo", "--quiesce", "sometimes"]).is_err());
        let cli = Cli::try_parse_from(["envclone", "snapshot", "demo", "--scheduled", "nightly"]).unwrap();
        assert!(
            matches!(cli.command, Command::Snapshot(ref a) if a.scheduled.as_deref() == Some("nightly") && !a.memory)
        );
        let cli = Cli::try_parse_from(["envclone", "snapshots", "demo", "--json"]).unwrap();
        assert!(cli.global.json && matches!(cli.command, Command::Snapshots(ref a) if a.environment == "demo"));
    }

    #[test]
    fn daemon_status_and_schedule_run_parse() {
        let cli = Cli::try_parse_from(["envclone", "daemon", "--once", "--now", "2024-05-01T02:00:00+02:00"]).unwrap();
        let Command::Daemon(args) = cli.command else { panic!("parsed as {:?}", cli.command) };
        assert!(args.once);
        assert_eq!(args.now.map(|t| t.to_rfc3339()), Some("2024-05-01T00:00:00+00:00".to_owned()));
        assert_eq!(args.run.run_timeout, std::time::Duration::from_secs(7200));
        assert!(Cli::try_parse_from(["envclone", "daemon", "--now", "2024-05-01T02:00:00Z"]).is_err());
        assert!(Cli::try_parse_from(["envclone", "daemon", "--once", "--now", "yesterday"]).is_err());
        let cli = Cli::try_parse_from(["envclone", "schedule", "run", "nightly", "--run-timeout", "30m"]).unwrap();
        let Command::Schedule(ScheduleCommand::Run(args)) = cli.command else { panic!("parsed as {:?}", cli.command) };
        assert_eq!((args.schedule.as_str(), args.run.run_timeout.as_secs()), ("nightly", 1800));
        let cli = Cli::try_parse_from(["envclone", "status", "--json"]).unwrap();
        assert!(cli.global.json && matches!(cli.command, Command::Status(StatusArgs { environment: None })));
    }

    #[test]
    fn clone_takes_a_name_and_defaults_to_linked_boot_isolated() {
        let cli = Cli::try_parse_from(["envclone", "clone", "demo", "--name", "c1", "--from", "s1"]).unwrap();
        let Command::Clone(args) = cli.command else { panic!("parsed as {:?}", cli.command) };
        assert_eq!((args.environment.as_str(), args.name.as_str(), args.from.as_deref()), ("demo", "c1", Some("s1")));
        assert_eq!(
            (args.disks, args.start, args.network),
            (CloneDisks::Linked, CloneStart::Boot, CloneNetwork::Isolated)
        );
        let cli = Cli::try_parse_from(["envclone", "clone", "demo", "--name", "c1", "--start", "off"]).unwrap();
        assert!(matches!(cli.command, Command::Clone(ref a) if a.start == CloneStart::Off && a.from.is_none()));
        assert!(Cli::try_parse_from(["envclone", "clone", "demo"]).is_err());
        assert!(matches!(Cli::try_parse_from(["envclone", "destroy", "c1"]).unwrap().command, Command::Destroy(_)));
        assert!(matches!(Cli::try_parse_from(["envclone", "clones", "--json"]).unwrap().command, Command::Clones));
    }

    #[test]
    fn restore_takes_environment_snapshot_memory_and_discard() {
        let cli =
            Cli::try_parse_from(["envclone", "restore", "demo", "20240501T020000Z", "--memory", "--json"]).unwrap();
        let Command::Restore(args) = cli.command else { panic!("parsed as {:?}", cli.command) };
        assert_eq!((args.environment.as_str(), args.snapshot.as_str()), ("demo", "20240501T020000Z"));
        assert!(args.memory && !args.discard && cli.global.json);
        let cli = Cli::try_parse_from(["envclone", "restore", "demo", "s1", "--discard"]).unwrap();
        assert!(matches!(cli.command, Command::Restore(ref a) if a.discard && !a.memory));
        assert!(Cli::try_parse_from(["envclone", "restore", "demo"]).is_err());
    }

    #[test]
    fn delete_snapshot_and_prune_parse() {
        let cli = Cli::try_parse_from(["envclone", "delete-snapshot", "demo", "20240501T020000Z", "--json"]).unwrap();
        let Command::DeleteSnapshot(args) = cli.command else { panic!("parsed as {:?}", cli.command) };
        assert_eq!((args.environment.as_str(), args.snapshot.as_str()), ("demo", "20240501T020000Z"));
        assert!(cli.global.json);
        assert!(Cli::try_parse_from(["envclone", "delete-snapshot", "demo"]).is_err());
        let cli = Cli::try_parse_from(["envclone", "prune", "demo", "--dry-run"]).unwrap();
        assert!(matches!(cli.command, Command::Prune(ref a) if a.dry_run && a.environment == "demo"));
    }

    #[test]
    fn gate_commands_take_hosts() {
        let cli = Cli::try_parse_from(["envclone", "gate", "install", "--host", "a", "--host", "b"]).unwrap();
        let Command::Gate(GateCommand::Install(args)) = cli.command else { panic!("parsed as {:?}", cli.command) };
        assert_eq!(args.hosts, ["a", "b"]);
        let cli = Cli::try_parse_from(["envclone", "gate", "renew", "--json"]).unwrap();
        assert!(
            cli.global.json && matches!(cli.command, Command::Gate(GateCommand::Renew(ref a)) if a.hosts.is_empty())
        );
        assert!(matches!(
            Cli::try_parse_from(["envclone", "gate", "status"]).unwrap().command,
            Command::Gate(GateCommand::Status(_))
        ));
        assert!(Cli::try_parse_from(["envclone", "gate"]).is_err());
    }

    #[test]
    fn ssh_takes_a_command_after_double_dash() {
        let cli = Cli::try_parse_from(["envclone", "ssh", "demo", "web", "--", "cat", "/etc/hosts"]).unwrap();
        let Command::Ssh(args) = cli.command else { panic!("parsed as {:?}", cli.command) };
        assert_eq!((args.environment.as_str(), args.vm.as_str()), ("demo", "web"));
        assert_eq!(args.command, ["cat", "/etc/hosts"]);
    }
}

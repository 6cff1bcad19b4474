//! The command line, as clap derive types. Parsing only: what each command
//! does lives in [`crate::commands`].

use crate::config::DomainType;
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
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also connect to libvirt (domains, networks) and log in to every agent
    /// over SSH with its host key verified.
    #[arg(long)]
    pub live: bool,
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
}

#[derive(Debug, Args)]
pub struct LabDownArgs {
    #[command(flatten)]
    pub lab: LabArgs,
    /// Also remove the shared guest image cache.
    #[arg(long)]
    pub purge_cache: bool,
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
    fn ssh_takes_a_command_after_double_dash() {
        let cli = Cli::try_parse_from(["envclone", "ssh", "demo", "web", "--", "cat", "/etc/hosts"]).unwrap();
        let Command::Ssh(args) = cli.command else { panic!("parsed as {:?}", cli.command) };
        assert_eq!((args.environment.as_str(), args.vm.as_str()), ("demo", "web"));
        assert_eq!(args.command, ["cat", "/etc/hosts"]);
    }
}

//! One file per subcommand. Each turns parsed arguments into calls on the
//! library and a report; `main` prints errors and picks the exit code.

pub mod check;
mod clone;
mod clones;
mod daemon;
mod delete_snapshot;
mod destroy;
mod failback;
mod failover;
mod gate;
mod guard;
mod lab;
mod prune;
mod recover;
mod restore;
mod schedule;
mod session;
mod snapshot;
mod snapshots;
mod ssh;
mod standby;
mod status;

use crate::cli::{Cli, Command};
use crate::config::Config;
pub use crate::error::chain as error_chain;
use crate::exit::ExitCode;
use crate::Result;
use serde::Serialize;

/// What a command printed and how the process should exit.
pub fn run(cli: Cli) -> Result<std::process::ExitCode> {
    let out = Output { json: cli.global.json, quiet: cli.global.quiet };
    if runs_an_operation(&cli.command) {
        // SIGTERM/SIGINT then stop the operation cleanly before its next
        // step (see `ops::interrupt`); other commands keep the default
        // action, and `recover` too: it may be stopped anywhere and run
        // again.
        if let Err(error) = crate::ops::interrupt::install() {
            tracing::warn!("cannot handle SIGTERM/SIGINT ({error}): a signal stops the operation where it is");
        }
    }
    match cli.command {
        Command::Check(args) => check::run(&cli.global, &args, &out).map(ExitCode::into),
        Command::Ssh(args) => ssh::run(&cli.global, &args),
        Command::Lab(command) => lab::run(&cli.global, command, &out).map(ExitCode::into),
        Command::Daemon(args) => daemon::run(&cli.global, &args, &out).map(ExitCode::into),
        Command::Status(args) => status::run(&cli.global, &args, &out).map(ExitCode::into),
        Command::Schedule(command) => schedule::run(&cli.global, command, &out).map(ExitCode::into),
        Command::Snapshot(args) => snapshot::run(&cli.global, &args, &out).map(ExitCode::into),
        Command::Snapshots(args) => snapshots::run(&cli.global, &args, &out).map(ExitCode::into),
        Command::DeleteSnapshot(args) => delete_snapshot::run(&cli.global, &args, &out).map(ExitCode::into),
        Command::Prune(args) => prune::run(&cli.global, &args, &out).map(ExitCode::into),
        Command::Restore(args) => restore::run(&cli.global, &args, &out).map(ExitCode::into),
        Command::Recover(args) => recover::run(&cli.global, &args, &out).map(ExitCode::into),
        Command::Clone(args) => clone::run(&cli.global, &args, &out).map(ExitCode::into),
        Command::Clones => clones::run(&cli.global, &out).map(ExitCode::into),
        Command::Destroy(args) => destroy::run(&cli.global, &args, &out).map(ExitCode::into),
        Command::Standby(command) => standby::run(&cli.global, command, &out).map(ExitCode::into),
        Command::Failover(args) => failover::run(&cli.global, &args, &out).map(ExitCode::into),
        Command::Failback(args) => failback::run(&cli.global, &args, &out).map(ExitCode::into),
        Command::Gate(command) => gate::run(&cli.global, command, &out).map(ExitCode::into),
    }
}

/// Whether `command` runs a journaled operation that a signal should
/// stop between steps rather than mid-step.
fn runs_an_operation(command: &Command) -> bool {
    matches!(
        command,
        Command::Schedule(_)
            | Command::Snapshot(_)
            | Command::DeleteSnapshot(_)
            | Command::Prune(_)
            | Command::Restore(_)
            | Command::Clone(_)
            | Command::Destroy(_)
            | Command::Standby(_)
            | Command::Failover(_)
            | Command::Failback(_)
    )
}

/// Loads the config named on the command line, with flag overrides applied
/// on top of the file (defaults < file < environment < flags).
pub fn load_config(global: &crate::cli::GlobalArgs) -> Result<Config> {
    let mut config = crate::config::load(&global.config)?;
    if let Some(uri) = &global.libvirt_uri {
        config.controller.libvirt_uri = uri.clone();
    }
    Ok(config)
}

/// The config with every recorded clone added as an environment (names of
/// the config win): snapshots, restores, deletes, prunes, recoveries and
/// clones of a clone then work as for any environment.
pub fn load_config_with_clones(global: &crate::cli::GlobalArgs) -> Result<Config> {
    let mut config = load_config(global)?;
    let catalog = crate::catalog::Catalog::open(&config.controller.state_dir)?;
    for clone in catalog.clones()? {
        if config.environments.contains_key(&clone.name) {
            continue;
        }
        let environment =
            crate::ops::clone::clone_environment(&clone).map_err(crate::Error::operation("read the clones"))?;
        config.environments.insert(clone.name.clone(), environment);
    }
    // Roles switched: while a standby serves an environment, the
    // environment's snapshots (manual, scheduled), restores and recoveries
    // work on the standby's domains, its active side.
    let names: Vec<String> = config.environments.keys().cloned().collect();
    for name in names {
        if let Some((environment, _)) =
            crate::ops::failover::active_environment(&catalog, &name).map_err(crate::Error::from)?
        {
            config.environments.insert(name, environment);
        }
    }
    Ok(config)
}

/// Set once a command has printed its report: an error after it (a check
/// that found problems, a recover with failed undos) then goes to stderr
/// only, so `--json` stdout stays one JSON document.
static REPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn report_printed() -> bool {
    REPORTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Prints a report as JSON (`--json`) or as text for people.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
    /// `-q`: only errors on stderr, so no progress either.
    pub quiet: bool,
}

impl Output {
    pub fn report<T: Serialize>(&self, value: &T, human: impl FnOnce(&T) -> String) {
        REPORTED.store(true, std::sync::atomic::Ordering::Relaxed);
        if self.json {
            match serde_json::to_string_pretty(value) {
                Ok(text) => write_out(&format!("{text}\n")),
                Err(e) => write_err(&format!("error: cannot encode the report as JSON: {e}\n")),
            }
        } else {
            write_out(&human(value));
        }
    }

    /// A progress line on stderr; silent under --json so stdout stays one
    /// JSON document and stderr stays for errors.
    pub fn progress(&self, line: &str) {
        if !self.json && !self.quiet {
            write_err(&format!("  .. {line}\n"));
        }
    }

    /// An operation's event: a line per step begun or ended, and a bar for
    /// a long step's progress when stderr is a terminal (a log or a pipe
    /// gets the lines only).
    pub fn event(&self, event: &crate::ops::context::Event) {
        use crate::ops::context::Event;
        use std::io::IsTerminal;
        if self.json || self.quiet {
            return;
        }
        let mut bar = PROGRESS_BAR.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match event {
            Event::Progress { step, permille } => {
                if !std::io::stderr().is_terminal() {
                    return;
                }
                let bar = bar.get_or_insert_with(|| {
                    let bar = indicatif::ProgressBar::new(1000);
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "  .. {msg} [{bar:30}] {percent}% ({elapsed}, eta {eta})",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    bar
                });
                bar.set_message(step.clone());
                bar.set_position(u64::from(*permille));
            }
            other => {
                if let Some(bar) = bar.take() {
                    bar.finish_and_clear();
                }
                write_err(&format!("  .. {other}\n"));
            }
        }
    }
}

/// Whether a write to stdout, or to stderr, has failed once.
static STDOUT_LOST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static STDERR_LOST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes `text` to stdout. Every line the binary prints goes through
/// here or [`write_err`]: a write that fails (the reader of a pipe gone,
/// `envclone standby sync SB | head -1`; Rust ignores SIGPIPE, so that is
/// an EPIPE, which `println!` turns into a panic) is logged once and
/// otherwise ignored, because an operation must never stop half-way
/// because nobody reads its output any more.
pub fn write_out(text: &str) {
    write_to(&mut std::io::stdout().lock(), text, "stdout", &STDOUT_LOST);
}

/// Writes `text` to stderr; a write error is ignored as in [`write_out`].
pub fn write_err(text: &str) {
    write_to(&mut std::io::stderr().lock(), text, "stderr", &STDERR_LOST);
}

/// Whether some output could not be written (stdout or stderr closed).
pub fn output_lost() -> bool {
    STDOUT_LOST.load(std::sync::atomic::Ordering::Relaxed) || STDERR_LOST.load(std::sync::atomic::Ordering::Relaxed)
}

fn write_to(stream: &mut impl std::io::Write, text: &str, name: &str, lost: &std::sync::atomic::AtomicBool) {
    if let Err(error) = stream.write_all(text.as_bytes()).and_then(|()| stream.flush()) {
        if !lost.swap(true, std::sync::atomic::Ordering::Relaxed) {
            // To stderr through the log: dropped too if stderr is the one closed.
            tracing::warn!("cannot write to {name} ({error}): output dropped from here on; the work goes on");
        }
    }
}

/// The one progress bar on stderr, while a long step runs.
static PROGRESS_BAR: std::sync::Mutex<Option<indicatif::ProgressBar>> = std::sync::Mutex::new(None);

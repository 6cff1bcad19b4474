//! The `envclone` binary: parse, run, and turn an error into one message
//! (the whole chain, printed once), a hint and an exit code.

use clap::Parser;
use envclone::cli::Cli;
use envclone::error::Failure;
use envclone::exit::ExitCode;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.global.verbose, cli.global.quiet);
    let json = cli.global.json;
    match envclone::commands::run(cli) {
        Ok(code) => code,
        Err(error) => {
            let code = ExitCode::from_error(&error);
            report_error(&error, code, json);
            code.into()
        }
    }
}

fn report_error(error: &envclone::Error, code: ExitCode, json: bool) {
    let chain = envclone::error::chain(error);
    let hint = error.hint();
    if json && !envclone::commands::report_printed() {
        let value = serde_json::json!({
            "error": { "message": chain, "hint": hint, "exit_code": code.code() }
        });
        envclone::commands::write_out(&format!("{value:#}\n"));
    }
    envclone::commands::write_err(&format!("error: {chain}\n"));
    if let Some(hint) = hint {
        envclone::commands::write_err(&format!("hint: {hint}\n"));
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_env("ENVCLONE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // A log line that cannot be written (stderr closed) is dropped, never
    // reported with an `eprintln!` that would panic mid-operation.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .log_internal_errors(false)
        .init();
}

//! `envclone snapshots ENV [--json]`: every snapshot of the environment,
//! oldest first, with state, age, size, freeze window, memory and each
//! VM's consistency.

use chrono::Utc;

use super::session::Records;
use super::Output;
use crate::cli::{GlobalArgs, SnapshotsArgs};
use crate::exit::ExitCode;
use crate::ops::snapshot::{self, SnapshotSummary};
use crate::Result;

pub fn run(global: &GlobalArgs, args: &SnapshotsArgs, out: &Output) -> Result<ExitCode> {
    let Records { config, catalog } = Records::open(global)?;
    // An environment removed from the config still lists what it left.
    if catalog.environment(&args.environment)?.is_none() {
        config.environment(&args.environment)?;
    }
    let list = snapshot::list(&catalog, &args.environment, Utc::now())?;
    out.report(&list, |list| human(&args.environment, list));
    Ok(ExitCode::Ok)
}

fn human(env: &str, list: &[SnapshotSummary]) -> String {
    if list.is_empty() {
        return format!("no snapshots of environment '{env}'\n");
    }
    let mut text = format!(
        "{:<22} {:<11} {:>6} {:>10} {:>8} {:<6} {}\n",
        "NAME", "STATE", "AGE", "SIZE", "FROZEN", "MEMORY", "LABEL"
    );
    for snapshot in list {
        let window = snapshot.freeze_window_ms.map(|ms| format!("{ms} ms")).unwrap_or_else(|| "-".into());
        text.push_str(&format!(
            "{:<22} {:<11} {:>6} {:>10} {:>8} {:<6} {}\n",
            snapshot.name,
            snapshot.state.as_str(),
            age(snapshot.age_seconds),
            bytesize::ByteSize(snapshot.size_bytes).to_string(),
            window,
            if snapshot.memory { "yes" } else { "no" },
            snapshot.label.as_deref().unwrap_or("")
        ));
        for vm in &snapshot.vms {
            let reason = vm.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default();
            let memory = if vm.memory { " + memory" } else { "" };
            text.push_str(&format!("    {} {}{memory}{reason}\n", vm.vm, vm.consistency));
        }
    }
    text
}

/// "42s", "5m", "3h", "2d".
fn age(seconds: i64) -> String {
    let seconds = seconds.max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_in_the_largest_sensible_unit() {
        assert_eq!([age(-3), age(59), age(600), age(7200), age(3 * 86400)], ["0s", "59s", "10m", "2h", "3d"]);
    }
}

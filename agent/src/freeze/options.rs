//! `freeze` arguments and their validation. Arguments arrive as text and are
//! checked here rather than by clap, so that a bad one is answered with a
//! JSON envelope (kind `bad-argument`, exit 2) like every other refusal.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::FreezeError;

pub const DEFAULT_HOOKS_DIR: &str = "/etc/envclone/hooks.d";
pub const MAX_LEASE: Duration = Duration::from_secs(10 * 60);
pub const MAX_HOOK: Duration = Duration::from_secs(10 * 60);
pub const MIN_TIMEOUT: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Prints TWO JSON lines (envelopes). The first as soon as everything is frozen:
  \"ok\":{\"pid\":..,\"mounts\":[{\"mount_point\":\"/\",..}],\"hooks\":[..],\"took_ms\":..}
The freeze is then held until `thaw` on stdin, EOF on stdin (channel closed, connection lost), \
SIGTERM/SIGHUP/SIGINT/SIGQUIT or the lease timeout. Everything thaws at once, in reverse freeze \
order; the hooks run with `thaw` in reverse name order; the second line says why it ended:
  \"ok\":{\"reason\":\"stdin-thaw|eof|lease-timeout|signal\",\"frozen_ms\":..,\"thawed\":[..],..}
with exit status 1 when a post-thaw hook failed (`hook_failures` names it).

With --barrier, an `armed` line comes first, once the hooks ran and the filesystems are synced:
  \"ok\":{\"pid\":..,\"hooks\":[..],\"took_ms\":..,\"sync_ms\":..}
and the freeze waits for the line `freeze` on stdin (anything that would end a lease cancels it).

A failed freeze prints one error envelope instead and leaves nothing frozen; its kind is \
`hook-failed` (a pre-freeze hook failed or timed out; hooks already run got `thaw`), \
`freeze-failed`, `already-frozen` (exit 3), `bad-argument` (exit 2) or `cancelled` (stdin \
closed before the freeze).

Hooks: executables in the hooks directory, in name order; hidden files, `*~` and package \
manager leftovers (`*.dpkg-*`, `*.rpmnew`...) are skipped. Filesystems: every writable local \
filesystem, once per superblock; pseudo, network, FUSE and read-only ones are skipped. While \
frozen the agent writes only to stdout, stderr and /run/envclone-agent/freeze.json (tmpfs).

If the agent is SIGKILLed while frozen, the guest stays frozen: `envclone-agent thaw` thaws it.")]
pub struct FreezeArgs {
    /// Lease timeout, counted from the first FIFREEZE: thaw on its own after
    /// this long (e.g. 30s, 1500ms, 2m, 1m30s; at most 10m).
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub timeout: String,
    /// Time limit of each hook run; a hook still running then is killed
    /// (with its process group) and counts as failed. At most 10m.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub hook_timeout: String,
    /// Directory of freeze/thaw hooks; a missing directory means no hooks.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_HOOKS_DIR)]
    pub hooks_dir: PathBuf,
    /// Freeze this mount point even if its type is normally skipped
    /// (repeatable). It must be mounted.
    #[arg(long = "include", value_name = "MOUNT")]
    pub include: Vec<String>,
    /// Never freeze this mount point (repeatable); ignored when not mounted.
    #[arg(long = "exclude", value_name = "MOUNT")]
    pub exclude: Vec<String>,
    /// Two-phase freeze: run the hooks and sync, print an `armed` line,
    /// and freeze only when `freeze` arrives on stdin (within the hook
    /// timeout plus the lease timeout; else the hooks are unwound).
    #[arg(long)]
    pub barrier: bool,
}

/// Validated [`FreezeArgs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub lease_timeout: Duration,
    pub hook_timeout: Duration,
    pub hooks_dir: PathBuf,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub barrier: bool,
}

impl Options {
    pub fn from_args(args: &FreezeArgs) -> Result<Options, FreezeError> {
        let lease_timeout = bounded("--timeout", &args.timeout, MAX_LEASE)?;
        let hook_timeout = bounded("--hook-timeout", &args.hook_timeout, MAX_HOOK)?;
        if !args.hooks_dir.is_absolute() {
            return Err(bad("--hooks-dir", format!("{:?} is not an absolute path", args.hooks_dir)));
        }
        let include = args.include.iter().map(|m| mount_point("--include", m)).collect::<Result<Vec<_>, _>>()?;
        let exclude = args.exclude.iter().map(|m| mount_point("--exclude", m)).collect::<Result<Vec<_>, _>>()?;
        if let Some(both) = include.iter().find(|m| exclude.contains(m)) {
            return Err(bad("--include", format!("{both} is also excluded")));
        }
        Ok(Options {
            lease_timeout,
            hook_timeout,
            hooks_dir: args.hooks_dir.clone(),
            include,
            exclude,
            barrier: args.barrier,
        })
    }
}

fn bad(arg: &str, problem: String) -> FreezeError {
    FreezeError::BadArgument { arg: arg.to_string(), problem }
}

fn bounded(arg: &str, text: &str, max: Duration) -> Result<Duration, FreezeError> {
    let d = parse_duration(text).map_err(|problem| bad(arg, format!("{text:?}: {problem}")))?;
    if d < MIN_TIMEOUT || d > max {
        return Err(bad(arg, format!("{text:?} is outside {}ms..={}s", MIN_TIMEOUT.as_millis(), max.as_secs())));
    }
    Ok(d)
}

/// `30s`, `1500ms`, `2m`, `1h`, `1m30s`: whole numbers, each with a unit.
pub fn parse_duration(text: &str) -> Result<Duration, &'static str> {
    if text.is_empty() {
        return Err("empty duration");
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err("expected a number");
        }
        let value: u64 = rest[..digits].parse().map_err(|_| "number too large")?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let millis_per = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "" => return Err("missing unit (ms, s, m or h)"),
            _ => return Err("unknown unit (use ms, s, m or h)"),
        };
        rest = &rest[unit_len..];
        let millis = value.checked_mul(millis_per).ok_or("duration too large")?;
        total = total.checked_add(Duration::from_millis(millis)).ok_or("duration too large")?;
    }
    Ok(total)
}

/// An absolute path without `.`/`..` components or doubled slashes, trailing
/// slash dropped: the form mountinfo uses.
fn mount_point(arg: &str, text: &str) -> Result<String, FreezeError> {
    if !text.starts_with('/') {
        return Err(bad(arg, format!("{text:?} is not an absolute path")));
    }
    let parts: Vec<&str> = text.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(bad(arg, format!("{text:?} contains `.` or `..`")));
    }
    Ok(format!("/{}", parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> FreezeArgs {
        FreezeArgs {
            timeout: "30s".into(),
            hook_timeout: "30s".into(),
            hooks_dir: DEFAULT_HOOKS_DIR.into(),
            include: vec![],
            exclude: vec![],
            barrier: false,
        }
    }

    #[test]
    fn durations_by_table() {
        for (text, millis) in
            [("30s", 30_000), ("1500ms", 1500), ("2m", 120_000), ("1m30s", 90_000), ("1h", 3_600_000), ("0s", 0)]
        {
            assert_eq!(parse_duration(text), Ok(Duration::from_millis(millis)), "{text}");
        }
        for text in ["", "30", "s", "3x", "1.5s", "-1s", " 1s", "1s ", "99999999999999999999s", "18446744073709551615h"]
        {
            assert!(parse_duration(text).is_err(), "{text:?} was accepted");
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_duration_never_panics(text in "[0-9a-z]{0,12}") {
            let _ = parse_duration(&text);
        }

        #[test]
        fn compound_durations_add_up(m in 0u64..1000, s in 0u64..1000, ms in 0u64..1000) {
            let total = parse_duration(&format!("{m}m{s}s{ms}ms")).unwrap();
            proptest::prop_assert_eq!(total, Duration::from_millis(m * 60_000 + s * 1000 + ms));
        }
    }

    #[test]
    fn defaults_are_valid() {
        let options = Options::from_args(&args()).unwrap();
        assert_eq!(options.lease_timeout, Duration::from_secs(30));
        assert_eq!(options.hook_timeout, Duration::from_secs(30));
    }

    #[test]
    fn freeze_refuses_bad_arguments() {
        let cases: Vec<(&str, FreezeArgs)> = vec![
            ("--timeout", FreezeArgs { timeout: "0s".into(), ..args() }),
            ("--timeout", FreezeArgs { timeout: "11m".into(), ..args() }),
            ("--timeout", FreezeArgs { timeout: "soon".into(), ..args() }),
            ("--hook-timeout", FreezeArgs { hook_timeout: "50ms".into(), ..args() }),
            ("--hooks-dir", FreezeArgs { hooks_dir: "hooks.d".into(), ..args() }),
            ("--include", FreezeArgs { include: vec!["var".into()], ..args() }),
            ("--exclude", FreezeArgs { exclude: vec!["/var/../etc".into()], ..args() }),
            ("--include", FreezeArgs { include: vec!["/var".into()], exclude: vec!["/var/".into()], ..args() }),
        ];
        for (want, bad_args) in cases {
            let err = Options::from_args(&bad_args).unwrap_err();
            assert!(matches!(&err, FreezeError::BadArgument { arg, .. } if arg == want), "{bad_args:?}: {err:?}");
        }
    }

    #[test]
    fn mount_points_are_normalized() {
        let options = Options::from_args(&FreezeArgs {
            include: vec!["/srv//data/".into()],
            exclude: vec!["/".into()],
            ..args()
        })
        .unwrap();
        assert_eq!(options.include, ["/srv/data"]);
        assert_eq!(options.exclude, ["/"]);
    }
}

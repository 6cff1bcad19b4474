//! The shell scripts the gate runs on a host, and what they answer: one
//! word-separated line per fact (`hook created`, `now 1767000000`,
//! `granted demo 1767000600`, `lease demo 1767000600 1767000000`...).
//! Files are written next to their place and renamed over it, so the hook
//! never reads half a file. POSIX sh and coreutils only, as the hook.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{protected_list, GateError, Inspected, Layout, Lease, Protected, Renewed, Wanted, MARKER, MIN_LIBVIRT};
use crate::guest::shell_quote;

/// Ends every here-document: no line of the hook or of a list is this.
const END: &str = "ENVCLONE_GATE_EOF";

/// What `install` did to the hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookChange {
    /// There was none: libvirtd acts on it from its next start or reload.
    Created,
    /// An older gate hook was replaced: libvirt reads it at each start.
    Updated,
    Unchanged,
}

/// The hook on a host, as `inspect` found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookState {
    Missing,
    /// A file at the gate's path that is not the gate's.
    Foreign,
    /// The gate's, but not what this envclone installs (or not executable).
    Stale,
    Current,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HookLine {
    Changed(HookChange),
    Foreign,
    OldLibvirt,
    Missing,
    Ours { executable: bool, sha256: String },
}

/// Everything a script answered.
#[derive(Debug, Default)]
pub(super) struct Output {
    pub hook: Option<HookLine>,
    pub libvirt: Option<String>,
    gate: Option<bool>,
    now: Option<u64>,
    granted: Vec<(String, u64)>,
    withheld: Vec<String>,
    protected: Vec<Protected>,
    /// (env, expiry, written at)
    leases: Vec<(String, u64, u64)>,
}

impl Output {
    pub fn renewed(&self) -> Renewed {
        let now = self.now.unwrap_or(0);
        Renewed {
            installed: self.gate.unwrap_or(false),
            granted: self
                .granted
                .iter()
                .map(|(env, expiry)| Lease {
                    env: env.clone(),
                    expires_at: *expiry,
                    expires_in_seconds: seconds_between(now, *expiry),
                    age_seconds: Some(0),
                })
                .collect(),
            withheld: self.withheld.clone(),
        }
    }

    /// What `inspect` found; the hook is current when it is executable and
    /// its sha256 is `expected`.
    pub fn inspected(&self, host: &str, expected: &str) -> Result<Inspected, GateError> {
        let bad = |what| GateError::BadOutput { host: host.to_owned(), what };
        let hook = match &self.hook {
            Some(HookLine::Missing) => HookState::Missing,
            Some(HookLine::Foreign) => HookState::Foreign,
            Some(HookLine::Ours { executable: true, sha256 }) if sha256 == expected => HookState::Current,
            Some(HookLine::Ours { .. }) => HookState::Stale,
            _ => return Err(bad("the hook's state")),
        };
        let now = self.now.ok_or_else(|| bad("the host's time"))?;
        Ok(Inspected {
            hook,
            gate_dir_exists: self.gate.unwrap_or(false),
            protected: self.protected.clone(),
            leases: self
                .leases
                .iter()
                .map(|(env, expiry, written)| Lease {
                    env: env.clone(),
                    expires_at: *expiry,
                    expires_in_seconds: seconds_between(now, *expiry),
                    age_seconds: Some(now.saturating_sub(*written)),
                })
                .collect(),
        })
    }
}

fn seconds_between(from: u64, to: u64) -> i64 {
    i64::try_from(to).unwrap_or(i64::MAX).saturating_sub(i64::try_from(from).unwrap_or(i64::MAX))
}

/// Reads a script's answer; lines it does not know are skipped (a login
/// banner, a newer envclone's facts).
pub(super) fn parse(host: &str, text: &str) -> Result<Output, GateError> {
    let bad = |what| GateError::BadOutput { host: host.to_owned(), what };
    let number = |word: Option<&str>, what| word.and_then(|w| w.parse::<u64>().ok()).ok_or_else(|| bad(what));
    let mut out = Output::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("libvirt"), _) => {
                let version = line["libvirt".len()..].trim();
                out.libvirt = (!version.is_empty()).then(|| version.to_owned());
            }
            (Some("hook"), Some(state)) => out.hook = Some(hook_line(state, words.next(), words.next())),
            (Some("gate"), Some(state)) => out.gate = Some(state == "present"),
            (Some("now"), now) => out.now = Some(number(now, "the host's time")?),
            (Some("granted"), Some(env)) => out.granted.push((env.to_owned(), number(words.next(), "an expiry")?)),
            (Some("withheld"), Some(env)) => out.withheld.push(env.to_owned()),
            (Some("protected"), Some(domain)) => {
                let env = words.next().ok_or_else(|| bad("a protected domain's environment"))?;
                out.protected.push(Protected { domain: domain.to_owned(), env: env.to_owned() });
            }
            (Some("lease"), Some(env)) => {
                // A lease file that does not hold a number counts as expired,
                // as the hook reads it.
                let expiry = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                let written = number(words.next(), "a lease's time")?;
                out.leases.push((env.to_owned(), expiry, written));
            }
            _ => {}
        }
    }
    Ok(out)
}

fn hook_line(state: &str, mode: Option<&str>, sum: Option<&str>) -> HookLine {
    match state {
        "created" => HookLine::Changed(HookChange::Created),
        "updated" => HookLine::Changed(HookChange::Updated),
        "unchanged" => HookLine::Changed(HookChange::Unchanged),
        "foreign" => HookLine::Foreign,
        "old-libvirt" => HookLine::OldLibvirt,
        "missing" => HookLine::Missing,
        // `hook ours x SHA256` (`-` instead of `x`: not executable).
        _ => HookLine::Ours { executable: mode == Some("x"), sha256: sum.unwrap_or_default().to_owned() },
    }
}

/// The sha256 of `hook`, as `sha256sum` prints it.
pub(super) fn sha256(hook: &str) -> String {
    Sha256::digest(hook.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn q(path: &std::path::Path) -> String {
    shell_quote(&path.to_string_lossy()).into_owned()
}

/// Stops on the first failing command; finds libvirt's daemons in sbin
/// over a login whose PATH lacks it.
fn header(layout: &Layout) -> String {
    format!(
        "set -e\numask 022\nPATH=\"$PATH:/usr/sbin:/sbin\"\ndir={}\nhook={}\n",
        q(&layout.gate_dir),
        q(&layout.hook_path())
    )
}

fn write_file(target: &str, content: &str) -> String {
    format!("cat > {target}.new <<'{END}'\n{content}{END}\nmv -f {target}.new {target}\n")
}

/// The protected list (when `protected`) and the leases, as `wanted` says.
/// Without `create`, a host whose gate directory is missing gets nothing.
fn leases(layout: &Layout, wanted: &Wanted, protected: bool, create: bool) -> String {
    let mut text = String::new();
    if create {
        text.push_str("mkdir -p \"$dir\"\n");
    } else {
        text.push_str("[ -d \"$dir\" ] || { echo 'gate absent'; exit 0; }\n");
    }
    text.push_str("echo 'gate present'\n");
    if protected {
        text.push_str(&write_file(&q(&layout.protected_path()), &protected_list(&wanted.protected)));
    }
    text.push_str("now=$(date +%s)\necho \"now $now\"\n");
    let ttl = wanted.lease.as_secs().max(1);
    for env in &wanted.grant {
        let file = q(&layout.lease_path(env));
        text.push_str(&format!(
            "echo \"$((now + {ttl}))\" > {file}.new\nmv -f {file}.new {file}\necho \"granted {env} $((now + {ttl}))\"\n"
        ));
    }
    for env in &wanted.withhold {
        text.push_str(&format!("rm -f {}\necho 'withheld {env}'\n", q(&layout.lease_path(env))));
    }
    text
}

/// The hook (unless a foreign one is there, or libvirt is too old to run
/// it: then nothing is written), the protected list and the leases.
pub(super) fn install(layout: &Layout, hook: &str, wanted: &Wanted) -> String {
    let (major, minor) = MIN_LIBVIRT;
    let mut text = header(layout);
    text.push_str(&format!(
        "libvirt=$( {{ libvirtd --version || virtqemud --version; }} 2>/dev/null | head -n 1 ) || true\n\
         echo \"libvirt $libvirt\"\n\
         version=${{libvirt##* }}\n\
         major=${{version%%.*}}\n\
         minor=${{version#*.}}\n\
         minor=${{minor%%.*}}\n\
         case $major$minor in\n\
         '' | *[!0-9]*) ;;\n\
         *) if [ \"$major\" -lt {major} ] || {{ [ \"$major\" -eq {major} ] && [ \"$minor\" -lt {minor} ]; }}; then\n\
         echo 'hook old-libvirt'; exit 0; fi ;;\n\
         esac\n\
         if [ -e \"$hook\" ] && ! grep -qF {marker} \"$hook\"; then echo 'hook foreign'; exit 0; fi\n\
         mkdir -p {qemu_d}\n",
        marker = shell_quote(MARKER),
        qemu_d = q(&layout.hooks_dir.join("qemu.d")),
    ));
    text.push_str(&format!("cat > \"$hook.new\" <<'{END}'\n{hook}{END}\nchmod 0755 \"$hook.new\"\n"));
    text.push_str(
        "if [ -x \"$hook\" ] && [ \"$(cat \"$hook\")\" = \"$(cat \"$hook.new\")\" ]; then\n\
         rm -f \"$hook.new\"; echo 'hook unchanged'\n\
         elif [ -e \"$hook\" ]; then\n\
         mv -f \"$hook.new\" \"$hook\"; echo 'hook updated'\n\
         else\n\
         mv -f \"$hook.new\" \"$hook\"; echo 'hook created'\n\
         fi\n",
    );
    text.push_str(&leases(layout, wanted, true, true));
    text
}

/// The protected list and the leases, where the gate is installed.
pub(super) fn renew(layout: &Layout, wanted: &Wanted) -> String {
    header(layout) + &leases(layout, wanted, true, false)
}

/// `wanted`'s grants only, where the gate is installed.
pub(super) fn grant(layout: &Layout, wanted: &Wanted) -> String {
    header(layout) + &leases(layout, wanted, false, false)
}

/// Reads the hook's state (its sha256), the protected list and every lease with its file's time; writes nothing.
pub(super) fn inspect(layout: &Layout) -> String {
    header(layout)
        + &format!(
            "if [ ! -e \"$hook\" ]; then echo 'hook missing'\n\
             elif ! grep -qF {marker} \"$hook\"; then echo 'hook foreign'\n\
             else\n\
             mode=-; [ -x \"$hook\" ] && mode=x\n\
             sum=$(sha256sum < \"$hook\"); echo \"hook ours $mode ${{sum%% *}}\"\n\
             fi\n\
             if [ -d \"$dir\" ]; then echo 'gate present'; else echo 'gate absent'; fi\n\
             echo \"now $(date +%s)\"\n\
             if [ -r \"$dir/protected\" ]; then\n\
             while read -r domain env; do echo \"protected $domain $env\"; done < \"$dir/protected\"\n\
             fi\n\
             for file in \"$dir\"/*.lease; do\n\
             [ -f \"$file\" ] || continue\n\
             name=${{file##*/}}; expiry=\n\
             read -r expiry < \"$file\" || true\n\
             echo \"lease ${{name%.lease}} ${{expiry:-0}} $(stat -c %Y \"$file\")\"\n\
             done\n",
            marker = shell_quote(MARKER),
        )
}

//! A TEST HOOK: crash points that make `envclone` die on the spot at a
//! named step of an operation, so the end-to-end tests of `envclone
//! recover` can leave behind exactly what a real crash (a SIGKILL, a power
//! cut of the controller) would: a journal with steps `running`, guests
//! frozen or paused, files half written.
//!
//! Operations call [`hit`] once at each step boundary (`hit("snapshot",
//! "freeze")` right after every guest froze). It does nothing unless the
//! environment variable [`VARIABLE`] (`ENVCLONE_CRASHPOINT`) names that
//! point as `OPERATION:STEP` (e.g. `ENVCLONE_CRASHPOINT=snapshot:freeze`);
//! then the process aborts at once (`std::process::abort`: no destructors,
//! no rollback, no thaw; the kernel closes its sockets and frees its locks,
//! as after a SIGKILL). It is compiled in always, so the tests exercise the
//! binary that ships; never set the variable outside tests.
//!
//! The points of `envclone snapshot`, in the order they are reached:
//!
//! | point | reached |
//! | --- | --- |
//! | `snapshot:freeze` | every guest to freeze answered frozen; no disk touched yet |
//! | `snapshot:memory-point` | (`--memory`) a VM was paused for its memory point, its disks not switched yet |
//! | `snapshot:disk-snapshot` | every VM's disks switched to their overlays; guests still frozen |
//! | `snapshot:thaw` | the barrier is over (guests thawed, its steps closed in the journal); before the memory streams and the record |
//!
//! `envclone clone` has one point after each of its journaled steps, named
//! after the step: `clone:STEP` aborts right after STEP is marked done,
//! e.g. `clone:define c1-web for web` (that domain is defined),
//! `clone:start c1-web` (it was started; the agents not waited for),
//! `clone:wait for the clone's agents` (everything runs; not recorded).
//! The steps are the progress lines `envclone clone` prints.

use std::io::Write as _;
use std::sync::OnceLock;

/// The environment variable that arms one crash point: `OPERATION:STEP`.
pub const VARIABLE: &str = "ENVCLONE_CRASHPOINT";

/// Aborts the process if [`VARIABLE`] names `operation:step`; otherwise
/// returns at once. See the module documentation: a test hook.
pub fn hit(operation: &str, step: &str) {
    if armed(operation, step) {
        // Not `eprintln!`: with stderr closed it would panic instead of aborting.
        let _ = writeln!(
            std::io::stderr(),
            "envclone: crash point {operation}:{step} reached ({VARIABLE} is set): aborting"
        );
        no_core_dump();
        std::process::abort();
    }
}

/// Whether [`VARIABLE`] names `operation:step` (read once per process).
pub fn armed(operation: &str, step: &str) -> bool {
    static POINT: OnceLock<Option<String>> = OnceLock::new();
    let point = POINT.get_or_init(|| std::env::var(VARIABLE).ok().map(|value| value.trim().to_owned()));
    point.as_deref().is_some_and(|point| matches(point, operation, step))
}

fn matches(point: &str, operation: &str, step: &str) -> bool {
    point.split_once(':') == Some((operation, step))
}

/// A crash point is a planned death: it should not leave a core file.
fn no_core_dump() {
    let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: setrlimit only reads the struct passed by reference; a
    // failure (ignored) leaves the limit as it was.
    unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &none);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;

    #[test]
    fn point_names_operation_and_step() {
        assert!(matches("snapshot:freeze", "snapshot", "freeze"));
        assert!(!matches("snapshot:freeze", "snapshot", "thaw"));
        assert!(!matches("snapshot:freeze", "restore", "freeze"));
        assert!(!matches("snapshot", "snapshot", ""));
        assert!(!matches("", "snapshot", "freeze"));
    }

    #[test]
    fn unarmed_point_does_nothing() {
        // This test process never sets the variable.
        hit("recover-test", "never-armed");
    }

    #[test]
    fn armed_point_aborts_the_process() {
        let output = Command::new(std::env::current_exe().unwrap())
            .args(["ops::crashpoint::tests::crash_helper", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env(VARIABLE, "recover-test:helper")
            .output()
            .unwrap();

        assert_eq!(output.status.signal(), Some(libc::SIGABRT), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("crash point recover-test:helper reached"), "{stderr}");
        assert!(!String::from_utf8_lossy(&output.stdout).contains("AFTER THE CRASH POINT"));
    }

    /// Run by `armed_point_aborts_the_process` in a child process.
    #[test]
    #[ignore = "helper process of armed_point_aborts_the_process"]
    fn crash_helper() {
        hit("recover-test", "helper");
        println!("AFTER THE CRASH POINT");
    }
}

//! SIGTERM and SIGINT as a request to stop an operation cleanly.
//!
//! A command that runs an operation calls [`install`]: from then on the
//! first SIGTERM or SIGINT only sets a flag ([`Interrupt::process`]).
//! [`crate::ops::journal::Journaled::step`] looks at it before it starts
//! each step: when set, the step is not started and the operation fails
//! with [`Interrupted`], so its normal rollback runs (the step already
//! running when the signal came finishes first: a step is never cut
//! mid-action). An operation past its point of no return (its catalog
//! commit, see [`crate::ops::journal::Journaled::is_point_of_no_return`])
//! is finished instead. A second signal ends the process at once, as
//! the default action would (what it leaves is for `envclone recover`).
//!
//! The flag lives in the [`crate::ops::context::OpContext`], not only in
//! a global, so a unit test sets its own without stopping the operations
//! of other tests running in the same process.

use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal};

/// Set by the first SIGTERM or SIGINT (the signal's number), read before
/// each step.
#[derive(Debug, Default)]
pub struct Interrupt {
    signal: AtomicI32,
}

static PROCESS: Interrupt = Interrupt::new();

impl Interrupt {
    pub const fn new() -> Interrupt {
        Interrupt { signal: AtomicI32::new(0) }
    }

    /// The flag the process's signal handler sets.
    pub fn process() -> &'static Interrupt {
        &PROCESS
    }

    /// Asks the operation to stop before its next step, as `signal` does.
    pub fn request(&self, signal: Signal) {
        self.signal.store(signal as i32, Ordering::SeqCst);
    }

    /// The signal that asked the operation to stop, if one did:
    /// `SIGTERM` or `SIGINT`.
    pub fn requested(&self) -> Option<&'static str> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            number => Some(Signal::try_from(number).map_or("a signal", Signal::as_str)),
        }
    }
}

/// An operation stopped by a signal before one of its steps; the
/// operation rolled back what it had done (the error that carries this
/// says what was undone, or what could not be).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("interrupted by {signal} before step '{step}': the steps before it are rolled back")]
pub struct Interrupted {
    /// `SIGTERM` or `SIGINT`.
    pub signal: &'static str,
    /// The step that was not started.
    pub step: String,
}

impl Interrupted {
    pub fn hint() -> String {
        "what the operation had done was rolled back; run it again (`envclone status` shows the rollback's outcome)"
            .into()
    }
}

extern "C" fn on_signal(number: libc::c_int) {
    let first = PROCESS.signal.compare_exchange(0, number, Ordering::SeqCst, Ordering::SeqCst).is_ok();
    if !first {
        // A second signal: the default action, at once. `signal` and
        // `raise` are async-signal-safe.
        // SAFETY: restores the default disposition of a signal number the
        // kernel just delivered (a valid one) and raises it; no memory is
        // touched.
        unsafe {
            libc::signal(number, libc::SIG_DFL);
            libc::raise(number);
        }
    }
}

/// Turns SIGTERM and SIGINT into [`Interrupt::process`]'s flag (see the
/// module documentation). `SA_RESTART`: a system call the running step
/// is in goes on instead of failing with EINTR.
pub fn install() -> nix::Result<()> {
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, SigSet::empty());
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only does an atomic compare-exchange, and on
        // a second signal calls `signal` and `raise`, all async-signal-safe.
        unsafe { nix::sys::signal::sigaction(signal, &action) }?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_flag_asks_nothing_and_a_request_names_its_signal() {
        let interrupt = Interrupt::new();
        assert_eq!(interrupt.requested(), None);

        interrupt.request(Signal::SIGTERM);

        assert_eq!(interrupt.requested(), Some("SIGTERM"));
    }
}

//! envclone's exit codes: one documented enum so runbooks and timers can
//! branch on them. Each module's error picks its codes next to its variants
//! ([`Failure::exit_code`]); [`ExitCode::from_error`] asks it.

use crate::error::Failure;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// Done.
    Ok = 0,
    /// The operation failed; the message says which step.
    Failed = 1,
    /// Bad command line or invalid configuration; nothing was done.
    Usage = 2,
    /// Another operation holds the environment; try again later.
    Busy = 3,
    /// An environment, VM, domain or network named does not exist.
    NotFound = 4,
    /// A guest agent or libvirt could not be reached.
    Unreachable = 5,
}

impl ExitCode {
    pub const ALL: [ExitCode; 6] =
        [ExitCode::Ok, ExitCode::Failed, ExitCode::Usage, ExitCode::Busy, ExitCode::NotFound, ExitCode::Unreachable];

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn describe(self) -> &'static str {
        match self {
            ExitCode::Ok => "done",
            ExitCode::Failed => "the operation failed; the message says which step",
            ExitCode::Usage => "bad command line or invalid configuration; nothing was done",
            ExitCode::Busy => "another operation holds the environment",
            ExitCode::NotFound => "an environment, VM, domain or network named does not exist",
            ExitCode::Unreachable => "a guest agent or libvirt could not be reached",
        }
    }

    /// The code the binary ends with for `error`: the error says it
    /// itself ([`Failure::exit_code`]), next to its variants.
    pub fn from_error(error: &(impl Failure + ?Sized)) -> ExitCode {
        error.exit_code()
    }

    /// The table printed in `--help` and kept in README.
    pub fn table() -> String {
        ExitCode::ALL.iter().map(|code| format!("  {:>2}  {}\n", code.code(), code.describe())).collect()
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_stable() {
        let numbers: Vec<u8> = ExitCode::ALL.iter().map(|c| c.code()).collect();
        assert_eq!(numbers, [0, 1, 2, 3, 4, 5]);
    }
}

//! Reading a file that `rewrite` or `scan` may look at: only regular files,
//! never through a symlink, never more than [`MAX_FILE_BYTES`].

use super::error::RewriteError;
use envclone_agent::{SkipReason, MAX_FILE_BYTES};
use std::fs::{Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// How much of the start of a file is searched for a NUL byte.
const BINARY_PROBE: usize = 8 * 1024;

#[derive(Debug)]
pub enum Text {
    Read { bytes: Vec<u8>, meta: Metadata },
    Skipped(SkipReason),
}

/// Reads a regular file. Opens with `O_NOFOLLOW` and `O_NONBLOCK` (a FIFO
/// put there since the check must not hang the agent) and makes sure what
/// was opened is what was checked.
pub fn read(path: &Path) -> Result<Text, RewriteError> {
    let read_error = |source| RewriteError::ReadFile { path: path.to_path_buf(), source };
    let checked = match path.symlink_metadata() {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Text::Skipped(SkipReason::NotFound)),
        Err(source) => return Err(read_error(source)),
    };
    if !checked.file_type().is_file() {
        return Ok(Text::Skipped(SkipReason::NotARegularFile));
    }
    if checked.len() > MAX_FILE_BYTES {
        return Ok(Text::Skipped(SkipReason::TooLarge));
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    if (meta.dev(), meta.ino()) != (checked.dev(), checked.ino()) || !meta.file_type().is_file() {
        return Err(RewriteError::FileReplaced { path: path.to_path_buf() });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Ok(Text::Skipped(SkipReason::TooLarge));
    }
    Ok(Text::Read { bytes, meta })
}

/// A NUL byte near the start: not a text file.
pub fn looks_binary(bytes: &[u8]) -> bool {
    bytes[..bytes.len().min(BINARY_PROBE)].contains(&0)
}

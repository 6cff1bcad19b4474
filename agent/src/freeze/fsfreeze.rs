//! FIFREEZE and FITHAW (linux/fs.h), issued on a descriptor of the mount
//! point opened read-only: opening a directory and reading never waits on a
//! frozen filesystem (atime updates are skipped while frozen).

use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::{fstat, Mode};

// FIFREEZE = _IOWR('X', 119, int), FITHAW = _IOWR('X', 120, int). The
// kernel ignores the argument.
nix::ioctl_readwrite!(fifreeze, b'X', 119, libc::c_int);
nix::ioctl_readwrite!(fithaw, b'X', 120, libc::c_int);

/// The mount point `path`, opened for FIFREEZE/FITHAW. When `expected_dev`
/// is given, the directory must be the root of that device: a path that now
/// leads elsewhere (over-mounted, moved) is refused with EXDEV.
pub fn open_mount(path: &str, expected_dev: Option<libc::dev_t>) -> Result<OwnedFd, Errno> {
    let fd = open(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY, Mode::empty())?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    if let Some(dev) = expected_dev {
        if fstat(fd.as_raw_fd())?.st_dev != dev {
            return Err(Errno::EXDEV);
        }
    }
    Ok(fd)
}

/// FIFREEZE: syncs the filesystem and blocks every writer until FITHAW.
/// EBUSY: frozen already (by someone else).
pub fn freeze(fd: &OwnedFd) -> Result<(), Errno> {
    let mut unused: libc::c_int = 0;
    // SAFETY: a valid descriptor and a pointer to a live int.
    unsafe { fifreeze(fd.as_raw_fd(), &mut unused) }.map(drop)
}

/// Whether FITHAW found the filesystem frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thawed {
    Thawed,
    /// EINVAL: it was not frozen (somebody thawed it first).
    WasNotFrozen,
}

pub fn thaw(fd: &OwnedFd) -> Result<Thawed, Errno> {
    let mut unused: libc::c_int = 0;
    // SAFETY: a valid descriptor and a pointer to a live int.
    match unsafe { fithaw(fd.as_raw_fd(), &mut unused) } {
        Ok(_) => Ok(Thawed::Thawed),
        Err(Errno::EINVAL) => Ok(Thawed::WasNotFrozen),
        Err(e) => Err(e),
    }
}

//! Safe wrappers for the libvirt calls `virt` 0.5 doesn't wrap: save with
//! flags, block commit and block jobs.

use std::ffi::CString;
use std::os::raw::c_uint;
use std::ptr;

use virt::domain::Domain;
use virt::error::Error;
use virt::sys;

/// libvirt returns -1 and sets the thread's last error on failure.
fn check(rc: i32) -> Result<i32, Error> {
    if rc < 0 {
        Err(Error::last_error())
    } else {
        Ok(rc)
    }
}

fn cstring(s: &str) -> Result<CString, Error> {
    Ok(CString::new(s)?)
}

/// `virDomainSaveFlags(dom, path, NULL, 0)`.
pub(super) fn save(dom: &Domain, path: &str) -> Result<(), Error> {
    let path = cstring(path)?;
    // SAFETY: `dom` holds a reference on its virDomainPtr for the whole call;
    // `path` is NUL-terminated and outlives the call; dxml may be NULL.
    check(unsafe { sys::virDomainSaveFlags(dom.as_ptr(), path.as_ptr(), ptr::null(), 0) })?;
    Ok(())
}

/// `virDomainBlockCommit`; `bandwidth` in MiB/s, 0 for unlimited.
pub(super) fn block_commit(
    dom: &Domain,
    disk: &str,
    base: Option<&str>,
    top: Option<&str>,
    bandwidth: u64,
    flags: c_uint,
) -> Result<(), Error> {
    let disk = cstring(disk)?;
    let base = base.map(cstring).transpose()?;
    let top = top.map(cstring).transpose()?;
    let as_ptr = |s: &Option<CString>| s.as_ref().map_or(ptr::null(), |s| s.as_ptr());
    // SAFETY: as in `save`; every string outlives the call, NULL base/top
    // are documented defaults.
    check(unsafe {
        sys::virDomainBlockCommit(
            dom.as_ptr(),
            disk.as_ptr(),
            as_ptr(&base),
            as_ptr(&top),
            bandwidth as std::os::raw::c_ulong,
            flags,
        )
    })?;
    Ok(())
}

/// `virDomainGetBlockJobInfo`: `(type, cur, end)`, or `None` without a job.
pub(super) fn block_job_info(dom: &Domain, disk: &str) -> Result<Option<(i32, u64, u64)>, Error> {
    let disk = cstring(disk)?;
    let mut info = sys::virDomainBlockJobInfo { type_: 0, bandwidth: 0, cur: 0, end: 0 };
    // SAFETY: as in `save`; `info` is a valid, writable struct for the call.
    let rc = check(unsafe { sys::virDomainGetBlockJobInfo(dom.as_ptr(), disk.as_ptr(), &mut info, 0) })?;
    Ok((rc == 1).then_some((info.type_, info.cur, info.end)))
}

/// `virDomainBlockJobAbort` (with `VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT` to pivot).
pub(super) fn block_job_abort(dom: &Domain, disk: &str, flags: c_uint) -> Result<(), Error> {
    let disk = cstring(disk)?;
    // SAFETY: as in `save`.
    check(unsafe { sys::virDomainBlockJobAbort(dom.as_ptr(), disk.as_ptr(), flags) })?;
    Ok(())
}

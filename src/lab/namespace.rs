//! The lab's network namespace: its guests, bridges and daemons live in it,
//! so nothing the lab does can reach (or be reached from) the host's networks.

use super::{host, LabError};
use std::path::Path;

pub fn exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Creates the namespace with loopback up; does nothing if it exists.
pub fn ensure(name: &str) -> Result<(), LabError> {
    if !exists(name) {
        host::run("ip", &["netns", "add", name])?;
    }
    host::run("ip", &["netns", "exec", name, "ip", "link", "set", "lo", "up"])?;
    Ok(())
}

/// Every process that lives in the namespace (QEMU, libvirtd, dnsmasq...).
pub fn pids(name: &str) -> Result<Vec<i32>, LabError> {
    if !exists(name) {
        return Ok(Vec::new());
    }
    let listing = host::run("ip", &["netns", "pids", name])?;
    Ok(listing.split_whitespace().filter_map(|pid| pid.parse().ok()).collect())
}

pub fn delete(name: &str) -> Result<(), LabError> {
    if exists(name) {
        host::run("ip", &["netns", "delete", name])?;
    }
    Ok(())
}

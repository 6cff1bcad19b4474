//! TCP connections made inside a named network namespace.
//!
//! Lab guests live only in namespaces the lab creates. A socket stays in the
//! namespace it was created in, so a short-lived thread enters the namespace,
//! connects, and hands the stream back: the calling thread (and the tokio
//! runtime, if any) never leaves its own namespace.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

use super::GuestError;

/// Where `ip netns add NAME` leaves the handle of a namespace.
const NETNS_DIR: &str = "/run/netns";

/// Connects to `addr`, inside `/run/netns/<netns>` when a namespace is named.
/// `addr` is already resolved: names are resolved by the caller, in the
/// caller's namespace (IP literals are the norm).
pub fn connect_tcp(netns: Option<&str>, addr: SocketAddr, timeout: Duration) -> Result<TcpStream, GuestError> {
    let Some(name) = netns else {
        return TcpStream::connect_timeout(&addr, timeout).map_err(|source| GuestError::Connect {
            netns: None,
            addr,
            source,
        });
    };
    let path = netns_path(name);
    // Opened here rather than in the thread so a missing namespace is
    // reported without spawning anything.
    let handle = check_name(name).and_then(|()| File::open(&path)).map_err(|source| GuestError::OpenNetns {
        netns: name.to_string(),
        path,
        source,
    })?;

    let owned = name.to_string();
    let worker = std::thread::Builder::new()
        .name(format!("netns-connect-{name}"))
        .spawn(move || {
            // setns(2) with CLONE_NEWNET changes only this thread, which ends
            // right after; the stream it made keeps its namespace.
            setns(&handle, CloneFlags::CLONE_NEWNET)
                .map_err(|source| GuestError::EnterNetns { netns: owned.clone(), source })?;
            TcpStream::connect_timeout(&addr, timeout).map_err(|source| GuestError::Connect {
                netns: Some(owned),
                addr,
                source,
            })
        })
        .map_err(|source| GuestError::NetnsThread { netns: name.to_string(), source })?;
    match worker.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// A namespace name is one path component; anything else could make us open
/// a file outside /run/netns.
fn check_name(name: &str) -> io::Result<()> {
    let plain = !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0']);
    if plain {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidInput, "not a plain namespace name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Failure;

    #[test]
    fn connect_refuses_namespace_names_that_are_paths() {
        for name in ["", ".", "..", "../etc", "a/b"] {
            let err = connect_tcp(Some(name), "127.0.0.1:1".parse().unwrap(), Duration::from_millis(10)).unwrap_err();
            assert!(matches!(err, GuestError::OpenNetns { .. }), "{name:?}: {err:?}");
        }
    }

    #[test]
    fn connect_refuses_missing_namespace_and_names_it() {
        let err = connect_tcp(Some("envclone-no-such-ns"), "127.0.0.1:1".parse().unwrap(), Duration::from_millis(10))
            .unwrap_err();
        assert!(matches!(err, GuestError::OpenNetns { .. }), "{err:?}");
        assert!(err.to_string().contains("envclone-no-such-ns"), "{err}");
        assert!(err.hint().unwrap().contains("envclone lab status"));
    }
}

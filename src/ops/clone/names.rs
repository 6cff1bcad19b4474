//! What a clone's things are called. Linux limits interface names to 15
//! bytes, so bridges and veths are named after a hash of the clone and
//! network names rather than the names themselves.

use sha2::{Digest, Sha256};

/// Longest clone name: `<clone>-<vm>` domains and `envclone-c-<clone>`
/// namespaces stay readable.
pub const MAX_NAME: usize = 24;

/// A clone name: lower-case letters, digits and '-', starting with a letter.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("it must have 1 to {MAX_NAME} characters"));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err("it must start with a lower-case letter".into());
    }
    if !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        return Err("only lower-case letters, digits and '-' are allowed".into());
    }
    Ok(())
}

/// The clone's domain for VM `vm`.
pub fn domain(clone: &str, vm: &str) -> String {
    format!("{clone}-{vm}")
}

/// The clone's copy of the source network `network`.
pub fn network(clone: &str, network: &str) -> String {
    format!("{clone}-{network}")
}

/// The quarantine a readdressed clone's VMs wait in: a copy of the source
/// network `network` with the source's addressing, reachable only from the
/// gateway namespace.
pub fn quarantine_network(clone: &str, network: &str) -> String {
    format!("{clone}-q-{network}")
}

/// The quarantine network's bridge (`ecq` + 8 hex digits).
pub fn quarantine_bridge(clone: &str, network: &str) -> String {
    format!("ecq{}", short_hash(clone, network))
}

/// The network a standby that took over with its own addresses serves
/// on in place of the primary's `network` (`[standbys.SB] network =
/// "readdress"`): its own subnet, a host address, no forward.
pub fn served_network(standby: &str, network: &str) -> String {
    format!("{standby}-s-{network}")
}

/// The served network's bridge (`ecs` + 8 hex digits).
pub fn served_bridge(standby: &str, network: &str) -> String {
    format!("ecs{}", short_hash(standby, network))
}

/// The namespace the clone's gateway lives in.
pub fn gateway_netns(clone: &str) -> String {
    format!("envclone-c-{clone}")
}

fn short_hash(clone: &str, network: &str) -> String {
    let digest = Sha256::digest(format!("{clone}\0{network}").as_bytes());
    hex::encode(&digest[..4])
}

/// The clone network's bridge: `ecb` + 8 hex digits (11 bytes).
pub fn bridge(clone: &str, network: &str) -> String {
    format!("ecb{}", short_hash(clone, network))
}

/// The gateway veth's end on the bridge (`ecg...`) and its peer in the
/// gateway namespace (`ecp...`).
pub fn veth_pair(clone: &str, network: &str) -> (String, String) {
    let hash = short_hash(clone, network);
    (format!("ecg{hash}"), format!("ecp{hash}"))
}

/// Where the clone's overlay of `disk` of `vm` lives.
pub fn overlay(storage: &std::path::Path, clone: &str, vm: &str, disk: &str) -> std::path::PathBuf {
    storage.join(vm).join(format!("{clone}.{disk}.qcow2"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_in_fifteen_bytes_and_differ_per_network() {
        let long = "a".repeat(MAX_NAME);
        let (veth, peer) = veth_pair(&long, "envclone-demo-network-with-a-long-name");
        for name in [bridge(&long, "net"), veth.clone(), peer.clone()] {
            assert!(name.len() <= 15, "{name}");
        }
        assert_ne!(veth, peer);
        assert_ne!(bridge("c1", "a"), bridge("c1", "b"));
        assert_ne!(bridge("c1", "a"), bridge("c2", "a"));
    }

    #[test]
    fn check_name_refuses_bad_names() {
        for bad in ["", "C1", "1c", "c_1", "c 1", "c/1", &"a".repeat(MAX_NAME + 1)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["c1", "qa-copy", "x"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }
}

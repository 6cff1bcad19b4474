//! Answers of `readdress`, `set-clock` and `reset-identity`: what a clone's
//! agent changed so that the clone stops posing as its source.

use serde::{Deserialize, Serialize};

/// Answer of `envclone-agent readdress`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReaddressReport {
    /// Kernel name of the interface that has the requested MAC.
    pub interface: String,
    /// The MAC, normalised to lowercase.
    pub mac: String,
    /// The new address with its prefix, e.g. `10.88.1.11/24`.
    pub address: String,
    /// False when the interface already had exactly this address.
    pub address_added: bool,
    /// IPv4 addresses (with prefix) removed before this answer was written.
    pub removed: Vec<String>,
    /// IPv4 addresses still present when this answer was written, because
    /// the SSH session that asked arrived on one of them: the agent removes
    /// them `removal_delay_ms` after answering, once the answer is on its way.
    pub removal_deferred: Vec<String>,
    pub removal_delay_ms: u64,
    /// The default route's gateway, when one was asked for.
    pub gateway: Option<String>,
    /// Set when a hostname was asked for.
    pub hostname: Option<HostnameChange>,
    /// Whether /etc/hosts was rewritten (false: it already said the right thing).
    pub hosts_file_changed: bool,
    /// Whether the new address survives a reboot. The agent changes the live
    /// configuration only; `not_persisted_reason` says what sets the address
    /// at boot and was left alone.
    pub persisted: bool,
    pub not_persisted_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostnameChange {
    pub previous: String,
    pub new: String,
}

/// Answer of `envclone-agent set-clock`. Times are milliseconds since the
/// Unix epoch on the guest's CLOCK_REALTIME.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetClockReport {
    /// The clock just before it was set.
    pub previous_unix_ms: i64,
    /// The time it was set to.
    pub new_unix_ms: i64,
    /// `new_unix_ms - previous_unix_ms`: negative when the clock went back.
    pub step_ms: i64,
}

/// Answer of `envclone-agent reset-identity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetIdentityReport {
    /// What /etc/machine-id held before (None when it was missing or empty).
    pub previous_machine_id: Option<String>,
    /// The new machine-id: 32 lowercase hex digits.
    pub machine_id: String,
    /// Whether /var/lib/dbus/machine-id was a file of its own and got the
    /// new id too (a symlink to /etc/machine-id needs nothing).
    pub dbus_machine_id_updated: bool,
    /// New host keys, one per key file; empty without `--ssh-host-keys`.
    pub host_keys: Vec<HostKey>,
    /// What was done so that the running SSH servers offer the new keys to
    /// new connections.
    pub ssh_servers: Vec<SshServerReload>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SshServer {
    Dropbear,
    Openssh,
}

/// A freshly generated host key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostKey {
    pub server: SshServer,
    /// The private key file in the guest.
    pub path: String,
    /// The public half as an OpenSSH line without comment
    /// (`ssh-ed25519 AAAA...`), ready for a known_hosts entry.
    pub public_key: String,
}

/// One running SSH listener and whether it now serves the new keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshServerReload {
    pub server: SshServer,
    pub previous_pid: i32,
    /// The listener serving new connections now (the same pid when it was
    /// reloaded in place, absent when it was not touched).
    pub pid: Option<i32>,
    /// True when new connections get the new keys.
    pub serves_new_keys: bool,
    /// Why not, when `serves_new_keys` is false.
    pub note: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        let report = ResetIdentityReport {
            previous_machine_id: None,
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            dbus_machine_id_updated: false,
            host_keys: vec![HostKey {
                server: SshServer::Dropbear,
                path: "/etc/dropbear/dropbear_ed25519_host_key".into(),
                public_key: "ssh-ed25519 AAAA".into(),
            }],
            ssh_servers: vec![SshServerReload {
                server: SshServer::Dropbear,
                previous_pid: 7,
                pid: Some(9),
                serves_new_keys: true,
                note: None,
            }],
        };
        let text = serde_json::to_string(&report).unwrap();
        assert!(text.contains("\"server\":\"dropbear\""), "{text}");
        assert_eq!(serde_json::from_str::<ResetIdentityReport>(&text).unwrap(), report);
    }
}

//! The fake's state, and its domain, network and QMP behaviour.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;

use super::storage::Job;
use super::{Call, FakeStep};
use crate::hypervisor::{
    random_mac, random_uuid, Domain, DomainDef, DomainState, HvError, LibvirtCode, LibvirtError, Network, NetworkDef,
};

#[derive(Debug)]
pub(super) struct FakeDomain {
    pub def: DomainDef,
    pub state: DomainState,
    pub persistent: bool,
    pub autostart: bool,
    pub snapshots: Vec<String>,
}

#[derive(Debug)]
pub(super) struct FakeNetwork {
    pub def: NetworkDef,
    pub active: bool,
    pub persistent: bool,
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub domains: BTreeMap<String, FakeDomain>,
    pub networks: BTreeMap<String, FakeNetwork>,
    /// Save images (and snapshot memory files) by path: the domain inside.
    pub saved: BTreeMap<PathBuf, DomainDef>,
    /// Block jobs by (domain, disk).
    pub jobs: HashMap<(String, String), Job>,
    pub job_polls: u32,
    pub qmp_replies: HashMap<String, String>,
    /// (step, None = every call | Some(n) = only the n-th call).
    pub failures: Vec<(FakeStep, Option<usize>)>,
    pub counts: HashMap<FakeStep, usize>,
    pub calls: Vec<Call>,
}

pub(super) fn lv(code: LibvirtCode, message: impl Into<String>) -> LibvirtError {
    LibvirtError::new(code, message)
}

pub(super) fn not_running(name: &str) -> LibvirtError {
    lv(LibvirtCode::OperationInvalid, format!("domain '{name}' is not running"))
}

/// The network part of `addr/prefix`, for subnet clash checks.
fn subnet((addr, prefix): (IpAddr, u8)) -> (IpAddr, u8) {
    match addr {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0);
            (IpAddr::from((u32::from(v4) & mask).to_be_bytes()), prefix)
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix.min(128))).unwrap_or(0);
            (IpAddr::from((u128::from(v6) & mask).to_be_bytes()), prefix)
        }
    }
}

impl State {
    pub fn record(&mut self, call: Call) -> Result<(), HvError> {
        let step = call.step();
        self.calls.push(call);
        let n = self.counts.entry(step).or_default();
        *n += 1;
        let n = *n;
        let fails = self.failures.iter().any(|&(s, nth)| s == step && nth.map_or(true, |k| k == n));
        if fails {
            return Err(HvError::Injected { step });
        }
        Ok(())
    }

    pub fn dom(&self, name: &str) -> Result<&FakeDomain, HvError> {
        self.domains.get(name).ok_or_else(|| HvError::NoSuchDomain { name: name.to_owned() })
    }

    pub fn dom_mut(&mut self, name: &str) -> Result<&mut FakeDomain, HvError> {
        self.domains.get_mut(name).ok_or_else(|| HvError::NoSuchDomain { name: name.to_owned() })
    }

    fn net_mut(&mut self, name: &str) -> Result<&mut FakeNetwork, HvError> {
        self.networks.get_mut(name).ok_or_else(|| HvError::NoSuchNetwork { name: name.to_owned() })
    }

    /// Fills in a UUID and MACs where missing, as libvirt's parser does.
    pub fn insert_domain(&mut self, mut def: DomainDef, state: DomainState, persistent: bool) {
        if def.uuid().is_none() {
            def.set_uuid(&random_uuid());
        }
        for (index, iface) in def.interfaces().iter().enumerate() {
            if iface.mac.is_none() {
                // The index comes from the same list: it exists.
                let _ = def.set_interface_mac(index, &random_mac());
            }
        }
        let fake = FakeDomain { def, state, persistent, autostart: false, snapshots: Vec::new() };
        self.domains.insert(fake.def.name(), fake);
    }

    pub fn insert_network(&mut self, mut def: NetworkDef, active: bool) {
        if def.uuid().is_none() {
            def.set_uuid(&random_uuid());
        }
        if def.bridge().is_none() {
            def.set_bridge(&format!("virbr{}", self.networks.len() + 1));
        }
        self.networks.insert(def.name(), FakeNetwork { def, active, persistent: true });
    }

    pub fn domain(&self, name: &str) -> Result<Domain, HvError> {
        let d = self.dom(name)?;
        Ok(Domain {
            name: name.to_owned(),
            uuid: d.def.uuid().unwrap_or_default(),
            state: d.state,
            def: d.def.clone(),
            autostart: d.autostart,
        })
    }

    pub fn define_domain(&mut self, def: &DomainDef) -> Result<Domain, HvError> {
        let name = def.name();
        let fail = |message: String| HvError::DefineDomain {
            name: name.clone(),
            source: lv(LibvirtCode::OperationFailed, message),
        };
        if let Some(existing) = self.domains.get(&name) {
            let uuid = existing.def.uuid().unwrap_or_default();
            if def.uuid().as_deref() != Some(uuid.as_str()) {
                return Err(fail(format!("domain '{name}' already exists with uuid {uuid}")));
            }
        }
        if let Some(uuid) = def.uuid() {
            if let Some(other) =
                self.domains.values().find(|d| d.def.uuid() == Some(uuid.clone()) && d.def.name() != name)
            {
                return Err(fail(format!("domain '{}' is already defined with uuid {uuid}", other.def.name())));
            }
        }
        match self.domains.get_mut(&name) {
            Some(existing) => {
                existing.def = def.clone();
                existing.persistent = true;
            }
            None => self.insert_domain(def.clone(), DomainState::ShutOff, true),
        }
        self.domain(&name)
    }

    pub fn start_domain(&mut self, name: &str) -> Result<(), HvError> {
        let err = |source| HvError::StartDomain { name: name.to_owned(), source };
        let d = self.dom(name)?;
        if d.state.is_active() {
            return Err(err(lv(LibvirtCode::OperationInvalid, "domain is already running")));
        }
        for iface in d.def.interfaces() {
            let Some(net) = iface.network else { continue };
            match self.networks.get(&net) {
                None => return Err(err(lv(LibvirtCode::NoNetwork, format!("no network with matching name '{net}'")))),
                Some(n) if !n.active => {
                    return Err(err(lv(LibvirtCode::OperationInvalid, format!("network '{net}' is not active"))))
                }
                Some(_) => {}
            }
        }
        self.dom_mut(name)?.state = DomainState::Running;
        Ok(())
    }

    /// Stops QEMU: block jobs die, a transient domain disappears.
    pub fn stop(&mut self, name: &str) {
        self.jobs.retain(|(domain, _), _| domain != name);
        if let Some(d) = self.domains.get_mut(name) {
            d.state = DomainState::ShutOff;
            if !d.persistent {
                self.domains.remove(name);
            }
        }
    }

    pub fn destroy_domain(&mut self, name: &str) -> Result<(), HvError> {
        self.dom(name)?;
        self.stop(name);
        Ok(())
    }

    pub fn undefine_domain(&mut self, name: &str) -> Result<(), HvError> {
        let d = self.dom_mut(name)?;
        if d.state.is_active() {
            d.persistent = false;
            d.snapshots.clear();
        } else {
            self.domains.remove(name);
        }
        Ok(())
    }

    pub fn set_autostart(&mut self, name: &str, on: bool) -> Result<(), HvError> {
        let d = self.dom_mut(name)?;
        if !d.persistent {
            let source = lv(LibvirtCode::OperationInvalid, "cannot set autostart for transient domain");
            return Err(HvError::SetAutostart { name: name.to_owned(), source });
        }
        d.autostart = on;
        Ok(())
    }

    pub fn move_interface(&mut self, domain: &str, mac: &str, network: &str) -> Result<(), HvError> {
        let err = |source| HvError::MoveInterface {
            domain: domain.to_owned(),
            mac: mac.to_owned(),
            network: network.to_owned(),
            source,
        };
        match self.networks.get(network) {
            None => return Err(err(lv(LibvirtCode::NoNetwork, format!("no network with matching name '{network}'")))),
            Some(n) if !n.active => {
                return Err(err(lv(LibvirtCode::OperationInvalid, format!("network '{network}' is not active"))))
            }
            Some(_) => {}
        }
        let d = self.dom_mut(domain)?;
        let index = d.def.interface_index(mac).ok_or_else(|| {
            err(lv(LibvirtCode::OperationInvalid, format!("no interface with MAC {mac} in domain {domain}")))
        })?;
        d.def.set_interface_network(index, network)?;
        d.def.set_interface_link(index, true)
    }

    pub fn network(&self, name: &str) -> Result<Network, HvError> {
        let n = self.networks.get(name).ok_or_else(|| HvError::NoSuchNetwork { name: name.to_owned() })?;
        Ok(Network {
            name: name.to_owned(),
            uuid: n.def.uuid().unwrap_or_default(),
            active: n.active,
            def: n.def.clone(),
        })
    }

    pub fn define_network(&mut self, def: &NetworkDef) -> Result<Network, HvError> {
        let name = def.name();
        let fail = |code, message: String| HvError::DefineNetwork { name: name.clone(), source: lv(code, message) };
        if let Some(existing) = self.networks.get(&name) {
            let uuid = existing.def.uuid().unwrap_or_default();
            if def.uuid().as_deref() != Some(uuid.as_str()) {
                return Err(fail(
                    LibvirtCode::OperationFailed,
                    format!("network '{name}' already exists with uuid {uuid}"),
                ));
            }
        }
        if let Some(bridge) = def.bridge() {
            if self
                .networks
                .values()
                .any(|n| n.def.name() != name && n.def.bridge().as_deref() == Some(bridge.as_str()))
            {
                return Err(fail(LibvirtCode::Other(1), format!("bridge name '{bridge}' already in use.")));
            }
        }
        match self.networks.get_mut(&name) {
            Some(existing) => existing.def = def.clone(),
            None => self.insert_network(def.clone(), false),
        }
        self.network(&name)
    }

    pub fn start_network(&mut self, name: &str) -> Result<(), HvError> {
        let err = |code, message: String| HvError::StartNetwork { name: name.to_owned(), source: lv(code, message) };
        let n = self.net_mut(name)?;
        if n.active {
            return Err(err(LibvirtCode::OperationInvalid, "network is already active".to_owned()));
        }
        if let Some(mine) = n.def.ip().map(subnet) {
            let clash = self.networks.values().find(|o| o.active && o.def.ip().map(subnet) == Some(mine));
            if let Some(other) = clash {
                let bridge = other.def.bridge().unwrap_or_default();
                return Err(err(LibvirtCode::Other(1), format!("Network is already in use by interface {bridge}")));
            }
        }
        self.net_mut(name)?.active = true;
        Ok(())
    }

    pub fn destroy_network(&mut self, name: &str) -> Result<(), HvError> {
        let n = self.net_mut(name)?;
        n.active = false;
        if !n.persistent {
            self.networks.remove(name);
        }
        Ok(())
    }

    pub fn undefine_network(&mut self, name: &str) -> Result<(), HvError> {
        let n = self.net_mut(name)?;
        if n.active {
            n.persistent = false;
        } else {
            self.networks.remove(name);
        }
        Ok(())
    }

    /// Scripted replies first; then `query-status`, `stop` and `cont`; any
    /// other command gets QEMU's `CommandNotFound`.
    pub fn qmp(&mut self, domain: &str, command_json: &str) -> Result<String, HvError> {
        if !self.dom(domain)?.state.is_active() {
            return Err(HvError::QmpTransport { domain: domain.to_owned(), source: not_running(domain) });
        }
        let request: serde_json::Value = match serde_json::from_str(command_json) {
            Ok(v) => v,
            Err(e) => return Ok(qmp_error("GenericError", &format!("JSON parse error, {e}"))),
        };
        let command = request.get("execute").and_then(|c| c.as_str()).unwrap_or_default().to_owned();
        if let Some(reply) = self.qmp_replies.get(&command) {
            return Ok(reply.clone());
        }
        let d = self.dom_mut(domain)?;
        let reply = match command.as_str() {
            "query-status" => {
                let running = d.state == DomainState::Running;
                let status = if running { "running" } else { "paused" };
                serde_json::json!({ "return": { "status": status, "running": running } }).to_string()
            }
            "stop" => {
                d.state = DomainState::Paused;
                r#"{"return": {}}"#.to_owned()
            }
            "cont" => {
                d.state = DomainState::Running;
                r#"{"return": {}}"#.to_owned()
            }
            other => qmp_error("CommandNotFound", &format!("The command {other} has not been found")),
        };
        Ok(reply)
    }
}

fn qmp_error(class: &str, desc: &str) -> String {
    serde_json::json!({ "error": { "class": class, "desc": desc } }).to_string()
}

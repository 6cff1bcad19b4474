//! Networks: each network the VMs use copied as an isolated bridge
//! (`--network readdress`: the quarantine), and for a readdressed clone its
//! own networks on free subnets of the pool, defined but empty.

use std::net::Ipv4Addr;

use super::resolve::VmPlan;
use super::{names, readdress, undo, CloneError, Readdressing, Run};
use crate::catalog::{ClonedNetwork, UndoAction};
use crate::config::Rewrite;
use crate::hypervisor::{HvError, NetworkDef, NetworkSpec};
use crate::ops::journal::Journaled;

/// The clone's networks as made.
#[derive(Debug)]
pub(super) struct Networks<'r> {
    /// The isolated copies of the source's networks, which the gateway
    /// reaches (`--network readdress`: the quarantine).
    pub copies: Vec<ClonedNetwork>,
    /// `--network readdress`: the networks the clone moves to.
    pub own: Option<OwnNetworks<'r>>,
}

/// A readdressed clone's own networks, and what its guests are rewritten
/// and readdressed with.
#[derive(Debug)]
pub(super) struct OwnNetworks<'r> {
    pub addresses: readdress::AddressPlan,
    pub networks: Vec<ClonedNetwork>,
    pub rewrite: &'r Rewrite,
}

impl<'r> Run<'r, '_> {
    /// The networks the VMs use (and the environment lists), each copied as
    /// an isolated bridge without a host address.
    pub(super) fn networks(&mut self, plans: &[VmPlan]) -> Result<Networks<'r>, CloneError> {
        let ctx = self.ctx;
        let sources = self.source_networks(plans)?;
        let readdressing = self.readdressing;
        let mut copies = Vec::new();
        let mut source_networks = Vec::new();
        for source in sources {
            let def = ctx
                .host
                .hypervisor()
                .network(&source)
                .map_err(|e| CloneError::InspectNetwork { network: source.clone(), source: Box::new(e) })?
                .def;
            // Readdressed VMs wait in a quarantine copy until they are clean.
            let (name, bridge) = if readdressing.is_some() {
                (
                    names::quarantine_network(&self.request.name, &source),
                    names::quarantine_bridge(&self.request.name, &source),
                )
            } else {
                (names::network(&self.request.name, &source), names::bridge(&self.request.name, &source))
            };
            // An isolated clone's network has no host address: the gateway
            // its own clone recorded stands in for it (a clone of a clone).
            let ip = match def.ip() {
                Some((std::net::IpAddr::V4(address), prefix)) => Some((address, prefix)),
                Some(_) => None,
                None => self.recorded_gateway(&source)?,
            };
            let gateway = ip.map(|(address, prefix)| format!("{address}/{prefix}"));
            let kind = if readdressing.is_some() { "quarantine" } else { "isolated copy" };
            self.create_network(&name, &bridge, None, &format!("{kind} of {source}"))?;
            source_networks.push(readdress::SourceNetwork { name: source.clone(), gateway: ip });
            copies.push(ClonedNetwork { source, name, bridge, veth: None, gateway });
        }
        let own = match readdressing {
            Some(readdressing) => Some(self.own_networks(plans, &source_networks, readdressing)?),
            None => None,
        };
        Ok(Networks { copies, own })
    }

    /// The networks the environment lists, then any other its VMs'
    /// interfaces are on; an interface on no libvirt network is refused.
    fn source_networks(&self, plans: &[VmPlan]) -> Result<Vec<String>, CloneError> {
        let mut sources: Vec<String> = self.source.networks.clone();
        for plan in plans {
            for (index, iface) in plan.def.interfaces().iter().enumerate() {
                match &iface.network {
                    Some(network) if !sources.contains(network) => sources.push(network.clone()),
                    Some(_) => {}
                    None => {
                        return Err(CloneError::Unsupported {
                            what: format!(
                                "interface {index} of {} (not on a libvirt network: it would reach production)",
                                plan.source_domain
                            ),
                        })
                    }
                }
            }
        }
        Ok(sources)
    }

    /// A readdressed clone's address plan, and its networks made from it.
    fn own_networks(
        &mut self,
        plans: &[VmPlan],
        source_networks: &[readdress::SourceNetwork],
        readdressing: Readdressing<'r>,
    ) -> Result<OwnNetworks<'r>, CloneError> {
        let addresses = self.plan_addresses(plans, source_networks, readdressing.addresses)?;
        let mut networks = Vec::new();
        for network in &addresses.networks {
            let name = names::network(&self.request.name, &network.source_network);
            let bridge = names::bridge(&self.request.name, &network.source_network);
            let ip = Some((network.gateway, network.subnet.prefix_len()));
            self.create_network(&name, &bridge, ip, &format!("{} for {}", network.subnet, network.source_network))?;
            networks.push(ClonedNetwork {
                source: network.source_network.clone(),
                name,
                bridge,
                veth: None,
                gateway: Some(format!("{}/{}", network.gateway, network.subnet.prefix_len())),
            });
        }
        Ok(OwnNetworks { addresses, networks, rewrite: readdressing.rewrite })
    }

    /// The gateway address a clone recorded for its network `network`.
    fn recorded_gateway(&self, network: &str) -> Result<Option<(Ipv4Addr, u8)>, CloneError> {
        for clone in self.ctx.catalog.clones()? {
            let recorded = clone.resources.networks.iter().find(|n| n.name == network);
            if let Some(gateway) = recorded.and_then(|n| n.gateway.as_deref()) {
                return Ok(gateway.parse::<ipnet::Ipv4Net>().ok().map(|net| (net.addr(), net.prefix_len())));
            }
        }
        Ok(None)
    }

    /// Defines and starts one of the clone's networks: a bridge that
    /// forwards nowhere, with a host address or without.
    fn create_network(
        &mut self,
        name: &str,
        bridge: &str,
        ip: Option<(Ipv4Addr, u8)>,
        what: &str,
    ) -> Result<(), CloneError> {
        self.step(&format!("create network {name} ({what})"), undo::remove_network_undo(name), |run| {
            let def = NetworkDef::isolated(&NetworkSpec { name: name.to_owned(), bridge: bridge.to_owned(), ip });
            let fail = |e: HvError| CloneError::DefineNetwork { network: name.to_owned(), source: Box::new(e) };
            run.ctx.host.hypervisor().define_network(&def).map_err(fail)?;
            run.ctx.host.hypervisor().start_network(name).map_err(fail)
        })
    }

    /// The clone's subnets and addresses, clear of every subnet libvirt has.
    fn plan_addresses(
        &mut self,
        plans: &[VmPlan],
        networks: &[readdress::SourceNetwork],
        config: &crate::config::Readdress,
    ) -> Result<readdress::AddressPlan, CloneError> {
        let mut vms = Vec::new();
        for plan in plans {
            let interfaces = plan.def.interfaces();
            let [iface] = interfaces.as_slice() else {
                return Err(CloneError::Unsupported {
                    what: format!(
                        "--network readdress of VM '{}' with {} interfaces (one per VM is readdressed)",
                        plan.vm,
                        interfaces.len()
                    ),
                });
            };
            vms.push(readdress::SourceVm {
                vm: plan.vm.clone(),
                network: iface.network.clone().unwrap_or_default(),
                address: self.source.vms[&plan.vm].agent.address.clone(),
            });
        }
        let taken = readdress::taken_subnets(self.ctx.host.hypervisor())
            .map_err(|(network, source)| CloneError::InspectNetwork { network, source })?;
        let clone = self.request.name.clone();
        self.step("plan the clone's addresses", UndoAction::Nothing, |_| {
            readdress::plan(config.pool, networks, &vms, &taken, |vm| config.hostname_for(&clone, vm))
        })
    }
}

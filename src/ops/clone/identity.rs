//! Identity, for a clone that runs: a new machine-id in every guest; with
//! `--network readdress` the guests rewritten, scanned, readdressed and
//! moved from the quarantine onto their own networks; with
//! `--new-host-keys` new SSH host keys, trusted under the guest's
//! clone-side name.

use std::collections::BTreeMap;

use super::networks::{Networks, OwnNetworks};
use super::resolve::VmPlan;
use super::start::Guests;
use super::{agent_error, names, readdress, undo, CloneError, Run, StartMode, VmReport};
use crate::catalog::{ClonedNetwork, UndoAction};
use crate::config::Environment;
use crate::ops::journal::Journaled;

/// The clone with its identity: what the record and the report say of it.
#[derive(Debug)]
pub(super) struct Identified {
    /// How the clone's guests are reached.
    pub environment: Environment,
    pub vms: Vec<VmReport>,
    /// The networks the clone keeps: its own when readdressed, else the
    /// copies.
    pub networks: Vec<ClonedNetwork>,
    /// Where the controller reaches the clone from; none once readdressed
    /// (the quarantine and its gateway are gone).
    pub gateway_netns: Option<String>,
    /// `--network readdress`: the subnets and addresses the clone got.
    pub addresses: Option<readdress::AddressPlan>,
    /// Lines added to the controller's known_hosts.
    pub known_hosts: Vec<String>,
}

impl Run<'_, '_> {
    pub(super) fn identity(
        &mut self,
        plans: &[VmPlan],
        networks: Networks<'_>,
        mut guests: Guests<'_>,
    ) -> Result<Identified, CloneError> {
        if self.request.start != StartMode::Off {
            self.new_machine_ids(&mut guests)?;
        }
        let mut known_hosts = Vec::new();
        let (kept, gateway_netns, addresses) = match networks.own {
            Some(own) => {
                self.readdress(plans, &own, &networks.copies, &mut guests, &mut known_hosts)?;
                (own.networks, None, Some(own.addresses))
            }
            None => (networks.copies, Some(names::gateway_netns(&self.request.name)), None),
        };
        if self.request.new_host_keys {
            self.new_host_keys(&mut guests, &mut known_hosts, addresses.is_none())?;
        }
        let (environment, vms) = guests.into_parts();
        Ok(Identified { environment, vms, networks: kept, gateway_netns, addresses, known_hosts })
    }

    /// A new /etc/machine-id in every guest: two machines with one id
    /// confuse DHCP, journald and anything that keys on it.
    fn new_machine_ids(&mut self, guests: &mut Guests<'_>) -> Result<(), CloneError> {
        for index in 0..guests.vms.len() {
            let vm = guests.vms[index].vm.clone();
            let report = self.step(&format!("new machine-id for {vm}"), UndoAction::Nothing, |_| {
                guests.agents().reset_identity(&vm, false).map_err(agent_error(&vm, "give the guest a new machine-id"))
            })?;
            guests.vms[index].machine_id = Some(report.machine_id);
        }
        Ok(())
    }

    /// `--new-host-keys`: each guest makes new keys and its SSH server
    /// serves them; known_hosts trusts them under the guest's clone-side
    /// name (its new address, or for an isolated clone, which answers at
    /// the source's address, an alias naming the clone's domain), and the
    /// agents are reached again with the new keys before going on.
    fn new_host_keys(
        &mut self,
        guests: &mut Guests<'_>,
        known_hosts: &mut Vec<String>,
        isolated: bool,
    ) -> Result<(), CloneError> {
        let path = self.ctx.config.controller.known_hosts.clone();
        let mut environment = guests.environment().clone();
        for index in 0..guests.vms.len() {
            let vm = guests.vms[index].vm.clone();
            let report = self.step(&format!("new SSH host keys for {vm}"), UndoAction::Nothing, |_| {
                let report = guests
                    .agents()
                    .reset_identity(&vm, true)
                    .map_err(agent_error(&vm, "give the guest new host keys"))?;
                match report.ssh_servers.iter().find(|s| !s.serves_new_keys) {
                    None => Ok(report),
                    Some(server) => Err(CloneError::HostKeysNotServed {
                        vm: vm.clone(),
                        detail: server.note.clone().unwrap_or_else(|| format!("{:?} was not restarted", server.server)),
                    }),
                }
            })?;
            guests.vms[index].machine_id = Some(report.machine_id.clone());
            // Cannot fail: the guests' environment is the clone's, with every planned VM.
            #[allow(clippy::expect_used)]
            let endpoint = &mut environment.vms.get_mut(&vm).expect("the environment has every VM").agent;
            let name = if isolated { guests.vms[index].domain.clone() } else { endpoint.address.clone() };
            let host_name = crate::guest::hostkey::known_hosts_name(&name, endpoint.port);
            let lines: Vec<String> = report.host_keys.iter().map(|k| format!("{host_name} {}", k.public_key)).collect();
            // The lines trusting the source's key at this name go.
            let stale: Vec<String> =
                known_hosts.iter().filter(|l| l.split(' ').next() == Some(host_name.as_str())).cloned().collect();
            let undo = UndoAction::Custom {
                kind: undo::UNDO_DISTRUST_HOST_KEYS.to_owned(),
                data: serde_json::to_value(undo::HostKeys { known_hosts: path.clone(), lines: lines.clone() })
                    .unwrap_or_default(),
            };
            self.step(&format!("trust {vm}'s new host keys as {host_name}"), undo, |_| {
                let fail = |source| CloneError::KnownHosts { path: path.clone(), source };
                crate::guest::hostkey::distrust(&path, &stale).map_err(fail)?;
                crate::guest::hostkey::trust(&path, &lines).map_err(fail)
            })?;
            known_hosts.retain(|l| !stale.contains(l));
            known_hosts.extend(lines);
            if isolated {
                endpoint.host_key_alias = Some(name);
            }
        }
        guests.reach(environment);
        self.wait_for_agents(guests, "wait for the clone's agents with their new host keys")
    }

    /// `--network readdress`, from the quarantine: rewrite, scan (stop if
    /// any source address is left), readdress, link up, wait, and remove
    /// the quarantine.
    fn readdress(
        &mut self,
        plans: &[VmPlan],
        own: &OwnNetworks<'_>,
        quarantine: &[ClonedNetwork],
        guests: &mut Guests<'_>,
        known_hosts: &mut Vec<String>,
    ) -> Result<(), CloneError> {
        let host_keys = self.rewrite_and_scan(own, guests)?;
        self.readdress_and_link_up(plans, own, &host_keys, guests, known_hosts)?;
        self.wait_for_agents(guests, "wait for the clone's agents at their new addresses")?;
        self.remove_quarantine(quarantine)
    }

    /// Every VM's connection strings rewritten and found clean, before any
    /// link goes up; returns each guest's host key, read in the quarantine.
    fn rewrite_and_scan(
        &mut self,
        own: &OwnNetworks<'_>,
        guests: &mut Guests<'_>,
    ) -> Result<BTreeMap<String, Vec<u8>>, CloneError> {
        let vms: Vec<String> = guests.vms.iter().map(|v| v.vm.clone()).collect();
        let mut hostnames = BTreeMap::new();
        for vm in &vms {
            let hostname = self.step(&format!("ask {vm} for its host name"), UndoAction::Nothing, |_| {
                guests.agents().hostname(vm).map_err(agent_error(vm, "ask the host name"))
            })?;
            hostnames.insert(vm.clone(), hostname);
        }
        let plan = &own.addresses;
        let (rewrite_plan, scan) = readdress::agent_requests(
            plan.rewrite_map(&hostnames, &own.rewrite.map),
            plan.source_subnets(),
            own.rewrite,
        );
        // Every VM is rewritten and found clean before any link goes up.
        let mut host_keys = BTreeMap::new();
        for (index, vm) in vms.iter().enumerate() {
            let key = self.step(&format!("read {vm}'s host key"), UndoAction::Nothing, |_| {
                guests.agents().host_key(vm).map_err(agent_error(vm, "read the host key"))
            })?;
            host_keys.insert(vm.clone(), key);
            let report = self.step(&format!("rewrite connection strings in {vm}"), UndoAction::Nothing, |_| {
                guests.agents().rewrite(vm, &rewrite_plan).map_err(agent_error(vm, "rewrite connection strings"))
            })?;
            guests.vms[index].replacements = Some(report.replacements);
            self.step(&format!("scan {vm} for source addresses"), UndoAction::Nothing, |_| {
                let report = guests.agents().scan(vm, &scan).map_err(agent_error(vm, "scan for source addresses"))?;
                if report.findings.is_empty() {
                    Ok(())
                } else {
                    Err(CloneError::SourceAddressesRemain { vm: vm.clone(), findings: report.findings })
                }
            })?;
        }
        Ok(host_keys)
    }

    /// Each guest re-addressed, its host key trusted at its new address,
    /// its interface moved onto the clone's own network; the guests are
    /// then reached at their new addresses.
    fn readdress_and_link_up(
        &mut self,
        plans: &[VmPlan],
        own: &OwnNetworks<'_>,
        host_keys: &BTreeMap<String, Vec<u8>>,
        guests: &mut Guests<'_>,
        known_hosts: &mut Vec<String>,
    ) -> Result<(), CloneError> {
        let plan = &own.addresses;
        let libvirt_netns = self.ctx.config.controller.libvirt_netns.clone();
        let mut environment = guests.environment().clone();
        for (index, vm_plan) in plans.iter().enumerate() {
            let vm = &vm_plan.vm;
            // Cannot fail: the address plan was made from these VMs and their networks.
            #[allow(clippy::expect_used)]
            let addresses = plan.vm(vm).expect("the plan has every VM").clone();
            #[allow(clippy::expect_used)]
            let network = plan.network(&addresses.source_network).expect("the plan has every network").clone();
            let mac = guests.vms[index].macs[0].clone();
            // A guest resumed from memory still has its source's MAC: QEMU's
            // saved device state carries it, whatever the new XML says.
            let guest_mac = match self.request.start {
                StartMode::Resume => vm_plan.def.interfaces()[0].mac.clone().unwrap_or_else(|| mac.clone()),
                _ => mac.clone(),
            };
            let what = format!(
                "readdress {vm}: {} -> {} ({})",
                addresses.source_address, addresses.address, addresses.hostname
            );
            self.step(&what, UndoAction::Nothing, |_| {
                guests
                    .agents()
                    .readdress(vm, &guest_mac, &addresses.address, network.gateway, &addresses.hostname)
                    .map_err(agent_error(vm, "readdress the guest"))
            })?;
            // The guest keeps its host key: trust it at the new address.
            let port = self.source.vms[vm].agent.port;
            let path = &self.ctx.config.controller.known_hosts;
            let trusted = undo::HostKeys::at(path, &addresses.address.addr().to_string(), port, &host_keys[vm]);
            self.step(&format!("trust {vm}'s host key at {}", addresses.address.addr()), trusted.distrust(), |_| {
                crate::guest::hostkey::trust(path, &trusted.lines)
                    .map_err(|source| CloneError::KnownHosts { path: path.clone(), source })
            })?;
            known_hosts.extend(trusted.lines);
            let domain = guests.vms[index].domain.clone();
            let own_network = names::network(&self.request.name, &addresses.source_network);
            self.step(&format!("link up: {domain} onto {own_network}"), UndoAction::Nothing, |run| {
                run.ctx.host.hypervisor().move_interface(&domain, &mac, &own_network).map_err(|source| {
                    CloneError::MoveInterface {
                        vm: vm.clone(),
                        domain: domain.clone(),
                        mac: mac.clone(),
                        source: Box::new(source),
                    }
                })
            })?;
            // Cannot fail: the guests' environment is the clone's, with every planned VM.
            #[allow(clippy::expect_used)]
            let endpoint = &mut environment.vms.get_mut(vm).expect("the environment has every VM").agent;
            endpoint.address = addresses.address.addr().to_string();
            endpoint.netns = libvirt_netns.clone();
            guests.vms[index].address = endpoint.address.clone();
            guests.vms[index].hostname = Some(addresses.hostname.clone());
        }
        environment.networks = own.networks.iter().map(|n| n.name.clone()).collect();
        guests.reach(environment);
        Ok(())
    }

    /// The quarantine networks, their gateway links and namespace.
    fn remove_quarantine(&mut self, quarantine: &[ClonedNetwork]) -> Result<(), CloneError> {
        let libvirt_netns = self.ctx.config.controller.libvirt_netns.clone();
        for network in quarantine {
            if let Some(veth) = &network.veth {
                self.step(&format!("remove the gateway link {veth}"), UndoAction::Nothing, |run| {
                    run.ctx.host.net().delete_link(libvirt_netns.as_deref(), veth).map_err(|e| CloneError::Gateway {
                        netns: names::gateway_netns(&run.request.name),
                        source: Box::new(e),
                    })
                })?;
            }
            self.step(&format!("remove the quarantine network {}", network.name), UndoAction::Nothing, |run| {
                undo::remove_network(run.ctx.host.hypervisor(), &network.name).map_err(|detail| CloneError::Remove {
                    clone: run.request.name.clone(),
                    what: network.name.clone(),
                    detail,
                })
            })?;
        }
        let netns = names::gateway_netns(&self.request.name);
        self.step(&format!("remove the gateway namespace {netns}"), UndoAction::Nothing, |run| {
            run.ctx
                .host
                .net()
                .delete_netns(&netns)
                .map_err(|e| CloneError::Gateway { netns: netns.clone(), source: Box::new(e) })
        })
    }
}

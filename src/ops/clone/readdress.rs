//! `--network readdress`: the clone's own addresses and names, and the
//! agents' part in getting there.
//!
//! The addresses are planned before anything is made ([`plan`]): each
//! source network gets a free subnet of the same prefix length from the
//! environment's `[readdress] pool`, and each guest keeps its host part.
//! The rewrite map ([`AddressPlan::rewrite_map`]) sends every source
//! address and host name to the clone's. What the agents do with it, in
//! the quarantine network and before the link goes up, is driven by the
//! state machine in `mod.rs`; [`CloneAgents`](crate::guest::agents::CloneAgents) is the agents' side of it,
//! in the guest agents port.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use envclone_agent::{RewritePlan, ScanRequest};
use ipnet::Ipv4Net;
use serde::Serialize;

use super::CloneError;
use crate::hypervisor::{HvError, Hypervisor};

/// One source network and the subnet the clone gets instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkAddresses {
    pub source_network: String,
    /// The source network's subnet, e.g. `10.77.1.0/24`.
    pub source_subnet: Ipv4Net,
    /// The source host's address on it (the guests' gateway).
    pub source_gateway: Ipv4Addr,
    pub subnet: Ipv4Net,
    /// The clone network's host address, same host part as the source's.
    pub gateway: Ipv4Addr,
}

/// One VM: its address and name in the source and in the clone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmAddresses {
    pub vm: String,
    pub source_network: String,
    pub source_address: Ipv4Addr,
    /// With the prefix, as the agent's `readdress` takes it.
    pub address: Ipv4Net,
    pub hostname: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddressPlan {
    pub networks: Vec<NetworkAddresses>,
    pub vms: Vec<VmAddresses>,
}

/// What [`plan`] needs to know of the source.
#[derive(Debug, Clone)]
pub struct SourceNetwork {
    pub name: String,
    /// The source host's address on it and the prefix; a network without
    /// one cannot be readdressed (there is no subnet to move).
    pub gateway: Option<(Ipv4Addr, u8)>,
}

#[derive(Debug, Clone)]
pub struct SourceVm {
    pub vm: String,
    /// The network the VM's one interface is on.
    pub network: String,
    /// Its agent's address, which is the guest's address there.
    pub address: String,
}

/// Plans the clone's addresses: a subnet of `pool` per source network that
/// overlaps nothing in `taken` (every subnet libvirt already has), and each
/// VM's host part kept in it; host names from `hostname(vm)`.
pub fn plan(
    pool: Ipv4Net,
    networks: &[SourceNetwork],
    vms: &[SourceVm],
    taken: &[Ipv4Net],
    hostname: impl Fn(&str) -> String,
) -> Result<AddressPlan, CloneError> {
    let fail = |detail: String| CloneError::AddressPlan { detail };
    let mut used: Vec<Ipv4Net> = taken.to_vec();
    let mut planned = Vec::new();
    for network in networks {
        let (source_gateway, prefix) = network.gateway.ok_or_else(|| {
            fail(format!("network {} has no IPv4 address on the host, so its subnet is unknown", network.name))
        })?;
        let source_subnet = Ipv4Net::new(source_gateway, prefix).map_err(|e| fail(e.to_string()))?.trunc();
        if prefix < pool.prefix_len() {
            return Err(fail(format!(
                "network {} ({source_subnet}) is larger than the whole pool {pool}",
                network.name
            )));
        }
        used.push(source_subnet);
        let subnet = pool
            .subnets(prefix)
            .map_err(|e| fail(e.to_string()))?
            .find(|candidate| !used.iter().any(|u| overlaps(u, candidate)))
            .ok_or_else(|| fail(format!("pool {pool} has no free /{prefix} left for network {}", network.name)))?;
        used.push(subnet);
        planned.push(NetworkAddresses {
            source_network: network.name.clone(),
            source_subnet,
            source_gateway,
            subnet,
            gateway: with_host_part(subnet, source_subnet, source_gateway),
        });
    }
    let mut addresses = Vec::new();
    for vm in vms {
        let network = planned.iter().find(|n| n.source_network == vm.network).ok_or_else(|| {
            fail(format!("VM '{}' is on network {}, which the environment does not list", vm.vm, vm.network))
        })?;
        let source_address: Ipv4Addr = vm.address.parse().map_err(|_| {
            fail(format!("VM '{}' has agent address {:?}; readdress needs its IPv4 address", vm.vm, vm.address))
        })?;
        if !network.source_subnet.contains(&source_address) {
            return Err(fail(format!(
                "VM '{}' has address {source_address}, outside its network {} ({})",
                vm.vm, vm.network, network.source_subnet
            )));
        }
        let address = with_host_part(network.subnet, network.source_subnet, source_address);
        addresses.push(VmAddresses {
            vm: vm.vm.clone(),
            source_network: vm.network.clone(),
            source_address,
            address: Ipv4Net::new(address, network.subnet.prefix_len()).map_err(|e| fail(e.to_string()))?,
            hostname: hostname(&vm.vm),
        });
    }
    Ok(AddressPlan { networks: planned, vms: addresses })
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// `address`'s host part (relative to `from`) in `to`.
fn with_host_part(to: Ipv4Net, from: Ipv4Net, address: Ipv4Addr) -> Ipv4Addr {
    let host = u32::from(address) & !u32::from(from.netmask());
    Ipv4Addr::from(u32::from(to.network()) | host)
}

impl AddressPlan {
    /// Every source address and host name to the clone's, plus the
    /// environment's own extras. `source_hostnames` are the names the
    /// guests answered with, by VM.
    pub fn rewrite_map(
        &self,
        source_hostnames: &BTreeMap<String, String>,
        extra: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut map = extra.clone();
        for network in &self.networks {
            map.insert(network.source_gateway.to_string(), network.gateway.to_string());
        }
        for vm in &self.vms {
            map.insert(vm.source_address.to_string(), vm.address.addr().to_string());
            if let Some(old) = source_hostnames.get(&vm.vm) {
                if !old.eq_ignore_ascii_case(&vm.hostname) {
                    map.insert(old.clone(), vm.hostname.clone());
                }
            }
        }
        map
    }

    /// The source subnets: no address in them may stay in a clone's files.
    pub fn source_subnets(&self) -> Vec<String> {
        self.networks.iter().map(|n| n.source_subnet.to_string()).collect()
    }

    pub fn vm(&self, vm: &str) -> Option<&VmAddresses> {
        self.vms.iter().find(|v| v.vm == vm)
    }

    pub fn network(&self, source: &str) -> Option<&NetworkAddresses> {
        self.networks.iter().find(|n| n.source_network == source)
    }
}

/// What the agents are asked with `map`: the rewrite of the configured
/// files, and the scan that must then find none of `subnets` (and none of
/// the old names) left in them. A readdressed clone, a standby taking over
/// with its own addresses and its way home all ask the same.
pub fn agent_requests(
    map: BTreeMap<String, String>,
    subnets: Vec<String>,
    rewrite: &crate::config::Rewrite,
) -> (RewritePlan, ScanRequest) {
    let scan = ScanRequest {
        needles: map.keys().cloned().collect(),
        subnets,
        roots: rewrite.roots.clone(),
        files: Some(rewrite.files.clone()),
        exclude: Vec::new(),
    };
    let plan = RewritePlan { map, files: rewrite.files.clone(), roots: rewrite.roots.clone(), backup_suffix: None };
    (plan, scan)
}

/// Every IPv4 subnet libvirt has a host address on: what a plan must not
/// hand out. An error names the network that could not be read.
pub fn taken_subnets(hv: &dyn Hypervisor) -> Result<Vec<Ipv4Net>, (String, Box<HvError>)> {
    let mut taken = Vec::new();
    for name in hv.network_names().map_err(|e| ("*".to_owned(), Box::new(e)))? {
        let network = hv.network(&name).map_err(|e| (name.clone(), Box::new(e)))?;
        if let Some((std::net::IpAddr::V4(address), prefix)) = network.def.ip() {
            if let Ok(subnet) = Ipv4Net::new(address, prefix) {
                taken.push(subnet.trunc());
            }
        }
    }
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    fn demo() -> (Vec<SourceNetwork>, Vec<SourceVm>) {
        let networks =
            vec![SourceNetwork { name: "demo-net".into(), gateway: Some(("10.77.1.1".parse().unwrap(), 24)) }];
        let vm = |name: &str, address: &str| SourceVm {
            vm: name.into(),
            network: "demo-net".into(),
            address: address.into(),
        };
        (networks, vec![vm("web", "10.77.1.11"), vm("db", "10.77.1.12")])
    }

    #[test]
    fn plan_takes_the_first_free_subnet_and_keeps_host_parts() {
        let (networks, vms) = demo();
        let taken = [net("10.90.0.0/24"), net("10.90.1.0/25")];

        let plan = plan(net("10.90.0.0/16"), &networks, &vms, &taken, |vm| format!("c2-{vm}")).unwrap();

        assert_eq!(plan.networks[0].subnet, net("10.90.2.0/24"));
        assert_eq!(plan.networks[0].gateway.to_string(), "10.90.2.1");
        assert_eq!(plan.vm("db").unwrap().address, net("10.90.2.12/24"));
        assert_eq!(plan.vm("web").unwrap().hostname, "c2-web");
        assert_eq!(plan.source_subnets(), ["10.77.1.0/24"]);
    }

    #[test]
    fn plan_never_hands_out_the_source_subnet_itself() {
        let (networks, vms) = demo();
        let plan = plan(net("10.77.0.0/16"), &networks, &vms, &[net("10.77.0.0/24")], |vm| vm.into()).unwrap();
        assert_eq!(plan.networks[0].subnet, net("10.77.2.0/24"));
    }

    #[test]
    fn plan_refuses_what_it_cannot_address() {
        let (networks, vms) = demo();
        let full = plan(net("10.90.0.0/24"), &networks, &vms, &[net("10.90.0.0/24")], |vm| vm.into());
        assert!(
            matches!(full, Err(CloneError::AddressPlan { ref detail }) if detail.contains("no free /24")),
            "{full:?}"
        );

        let small = plan(net("10.90.0.0/26"), &networks, &vms, &[], |vm| vm.into());
        assert!(matches!(small, Err(CloneError::AddressPlan { .. })), "{small:?}");

        let mut outside = vms.clone();
        outside[0].address = "10.78.1.11".into();
        let error = plan(net("10.90.0.0/16"), &networks, &outside, &[], |vm| vm.into()).unwrap_err();
        assert!(error.to_string().contains("outside its network"), "{error}");

        let by_name = [SourceVm { address: "web.example".into(), ..vms[0].clone() }];
        assert!(plan(net("10.90.0.0/16"), &networks, &by_name, &[], |vm| vm.into()).is_err());

        let no_ip = [SourceNetwork { name: "demo-net".into(), gateway: None }];
        assert!(plan(net("10.90.0.0/16"), &no_ip, &vms, &[], |vm| vm.into()).is_err());
    }

    #[test]
    fn rewrite_map_sends_every_source_address_and_name_to_the_clone() {
        let (networks, vms) = demo();
        let plan = plan(net("10.90.0.0/16"), &networks, &vms, &[], |vm| format!("c2-{vm}")).unwrap();
        let hostnames = BTreeMap::from([("web".to_owned(), "web".to_owned()), ("db".to_owned(), "db".to_owned())]);
        let extra = BTreeMap::from([("db.prod.example".to_owned(), "db.c2.example".to_owned())]);

        let map = plan.rewrite_map(&hostnames, &extra);

        let expected: BTreeMap<String, String> = [
            ("10.77.1.1", "10.90.0.1"),
            ("10.77.1.11", "10.90.0.11"),
            ("10.77.1.12", "10.90.0.12"),
            ("db", "c2-db"),
            ("web", "c2-web"),
            ("db.prod.example", "db.c2.example"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
        assert_eq!(map, expected);
        // The agent accepts it: whole-token, idempotent.
        envclone_agent::matcher::Rewriter::new(&map).unwrap().ensure_idempotent().unwrap();
    }
}

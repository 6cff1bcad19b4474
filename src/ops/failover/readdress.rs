//! A takeover with the standby's own addresses (`[standbys.SB] network =
//! "readdress"`), and its way back at failback.
//!
//! Where the default takeover gives SB the primary's MACs and addresses on
//! the primary's networks (safe because the primary is fenced first), this
//! one keeps SB off the production networks altogether: SB serves at
//! addresses of its own, and its agents rewrite the connection strings (IPs,
//! host names in app config) so that SB's web talks to SB's db. Clients are
//! pointed at SB's addresses (DNS, load balancer): the report lists them.
//! It is the clone's `--network readdress` ([`crate::ops::clone`]) applied
//! to a standby, and uses the same planner, agent requests and scan.
//!
//! Steps, after the fence (each journaled before it runs, with its undo):
//!
//! 1. `plan SB's own addresses`: a free subnet of the primary's `[readdress]
//!    pool` per network (clear of every subnet libvirt has), each VM keeping
//!    its host part; host names from the pool's pattern with SB as the
//!    clone name (`sb-web`).
//! 2. `create network SB-s-NET` per network: SB's **served** network, the
//!    planned subnet with a host address, no forward (undo: remove it).
//! 3. Each SB domain on fresh epoch overlays (as any switch), keeping its
//!    own MACs, its interfaces still on SB's isolated copies `SB-NET`, which
//!    serve as the quarantine: the guests boot with the primary's addresses
//!    there and reach nothing.
//! 4. The gateway namespace `envclone-c-SB` (the drill's), then SB's domains
//!    started and their agents awaited at the primary's addresses through it.
//! 5. Every VM's configured files rewritten (every primary address and host
//!    name to SB's) and scanned for any address of the primary's subnets:
//!    one left stops the failover before any link goes up, the file named,
//!    and everything is rolled back (the primary's fence included).
//! 6. Per VM: the guest re-addressed by its agent (live; its host name
//!    persisted), its host key trusted at the new address, its interface
//!    moved onto its served network ("link up").
//! 7. SB's agents awaited at their new addresses; the gateway removed.
//!
//! What SB then writes (rewritten files included) is in its epoch overlays,
//! and failback carries it home: [`give_back`] runs in ENV's guests once
//! they answer at home, before the failback is recorded. It gives each its
//! host name back and rewrites with the inverse map (SB's addresses and
//! names to the primary's), then scans for SB's subnets. The served
//! networks are removed once ENV is home.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::drill::{gateway, start_domains, wait_for_agents, Run};
use super::takeover::{epoch_overlays, in_standby_domains, TakeoverVm};
use super::{undo, FailoverError};
use crate::catalog::{ClonedNetwork, StandbyRecord, UndoAction};
use crate::config::{Environment, Rewrite};
use crate::guest::agents::CloneAgents;
use crate::hypervisor::{HvError, NetworkDef, NetworkSpec};
use crate::ops::clone::readdress::{self as plan, agent_requests};
use crate::ops::clone::{names, undo as clone_undo};
use crate::ops::journal::Journaled as _;

/// One of SB's VMs at its own address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedVm {
    pub vm: String,
    /// SB's address with its prefix, e.g. `10.90.0.11/24`.
    pub address: String,
    pub hostname: String,
    pub gateway: String,
    /// The primary's address and host name it took over from.
    pub primary_address: String,
    pub primary_hostname: String,
}

/// What a takeover with SB's own addresses made: its networks, its
/// addresses, and the map its agents rewrote with (failback inverts it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readdressed {
    pub networks: Vec<ClonedNetwork>,
    pub vms: Vec<ServedVm>,
    /// Every primary address and host name to SB's, the environment's
    /// `[rewrite] map` included.
    pub map: BTreeMap<String, String>,
    /// The primary's subnets, none of which SB's files may name.
    pub primary_subnets: Vec<String>,
}

impl Readdressed {
    fn subnets(&self) -> Vec<String> {
        let subnet = |gateway: &str| gateway.parse::<Ipv4Net>().ok().map(|net| net.trunc().to_string());
        self.networks.iter().filter_map(|n| n.gateway.as_deref().and_then(subnet)).collect()
    }
}

fn rewrite_of(primary: &Environment, standby: &StandbyRecord) -> Result<Rewrite, FailoverError> {
    primary.rewrite.clone().ok_or_else(|| FailoverError::ReaddressNotConfigured {
        env: standby.primary.clone(),
        standby: standby.name.clone(),
        missing: "rewrite",
    })
}

fn agent_error(vm: &str, step: &'static str) -> impl FnOnce(crate::guest::GuestError) -> FailoverError {
    let vm = vm.to_owned();
    move |source| FailoverError::Agent { vm, step, source: Box::new(source) }
}

/// Steps 1 to 7 of the module documentation (after the fence).
pub(super) fn take_over(
    run: &mut Run<'_, '_>,
    standby: &StandbyRecord,
    primary: &Environment,
    epoch: i64,
) -> Result<(Vec<TakeoverVm>, Readdressed), FailoverError> {
    let ctx = run.ctx;
    let sb = standby.name.as_str();
    let rewrite = rewrite_of(primary, standby)?;
    let address_plan = plan_addresses(run, standby, primary)?;

    let networks = served_networks(run, sb, &address_plan)?;
    let vms = on_epoch_overlays(run, standby, epoch, &address_plan)?;

    // The quarantine: SB's isolated copies, reached through the drill's gateway.
    let netns = names::gateway_netns(sb);
    let links = gateway(run, sb, &netns, &standby.resources.networks)?;
    start_domains(run, vms.iter().map(|vm| vm.domain.as_str()))?;
    let quarantined = in_standby_domains(primary, &vms, |_, agent| agent.netns = Some(netns.clone()));
    wait_for_agents(run, &format!("wait for {sb}'s agents in its isolated networks"), &quarantined)?;

    let agents = (run.tools.agents)(&quarantined);
    let mut hostnames = BTreeMap::new();
    for vm in &vms {
        let hostname = run.step(&format!("ask {} for its host name", vm.vm), UndoAction::Nothing, |_| {
            agents.hostname(&vm.vm).map_err(agent_error(&vm.vm, "ask the host name"))
        })?;
        hostnames.insert(vm.vm.clone(), hostname);
    }
    let map = address_plan.rewrite_map(&hostnames, &rewrite.map);
    let (rewrite_plan, scan) = agent_requests(map.clone(), address_plan.source_subnets(), &rewrite);
    let mut host_keys = BTreeMap::new();
    // Every VM rewritten and found clean before any link goes up.
    for vm in &vms {
        let vm = vm.vm.as_str();
        let key = run.step(&format!("read {vm}'s host key"), UndoAction::Nothing, |_| {
            agents.host_key(vm).map_err(agent_error(vm, "read the host key"))
        })?;
        host_keys.insert(vm.to_owned(), key);
        rewrite_and_scan(run, agents.as_ref(), vm, &rewrite_plan, &scan, "the primary's addresses")?;
    }

    let known_hosts = &ctx.config.controller.known_hosts;
    let mut served = Vec::new();
    for vm in &vms {
        // Cannot fail: the address plan was made above from these VMs and their networks.
        #[allow(clippy::expect_used)]
        let addresses = address_plan.vm(&vm.vm).expect("every VM was planned above");
        #[allow(clippy::expect_used)]
        let network = address_plan.network(&addresses.source_network).expect("the plan has every network");
        let mac = vm.macs.first().cloned().unwrap_or_default();
        let what = format!(
            "readdress {}: {} -> {} ({})",
            vm.vm, addresses.source_address, addresses.address, addresses.hostname
        );
        run.step(&what, UndoAction::Nothing, |_| {
            agents
                .readdress(&vm.vm, &mac, &addresses.address, network.gateway, &addresses.hostname)
                .map(drop)
                .map_err(agent_error(&vm.vm, "readdress the guest"))
        })?;
        let port = primary.vms.get(&vm.vm).map_or(22, |v| v.agent.port);
        let trusted = clone_undo::HostKeys::at(known_hosts, &vm.address, port, &host_keys[&vm.vm]);
        run.step(&format!("trust {}'s host key at {}", vm.vm, vm.address), trusted.distrust(), |_| {
            crate::guest::hostkey::trust(known_hosts, &trusted.lines)
                .map_err(|source| FailoverError::KnownHosts { path: known_hosts.clone(), source })
        })?;
        let own = names::served_network(sb, &addresses.source_network);
        run.step(&format!("link up: {} onto {own}", vm.domain), UndoAction::Nothing, |run| {
            run.ctx.host.hypervisor().move_interface(&vm.domain, &mac, &own).map_err(|source| {
                FailoverError::MoveInterface {
                    vm: vm.vm.clone(),
                    domain: vm.domain.clone(),
                    mac: mac.clone(),
                    network: own.clone(),
                    source: Box::new(source),
                }
            })
        })?;
        served.push(ServedVm {
            vm: vm.vm.clone(),
            address: addresses.address.to_string(),
            hostname: addresses.hostname.clone(),
            gateway: network.gateway.to_string(),
            primary_address: addresses.source_address.to_string(),
            primary_hostname: hostnames.get(&vm.vm).cloned().unwrap_or_default(),
        });
    }
    drop(agents);
    let readdressed = Readdressed { networks, vms: served, map, primary_subnets: address_plan.source_subnets() };
    let serving = served_environment(primary, &vms, &readdressed, ctx.config.controller.libvirt_netns.as_deref());
    wait_for_agents(run, &format!("wait for {sb}'s agents at their own addresses"), &serving)?;
    super::drill::remove_gateway(run, &netns, &links)?;
    Ok((vms, readdressed))
}

/// Step 2: SB's served networks, one per planned subnet.
fn served_networks(
    run: &mut Run<'_, '_>,
    sb: &str,
    address_plan: &plan::AddressPlan,
) -> Result<Vec<ClonedNetwork>, FailoverError> {
    let mut networks = Vec::new();
    for planned in &address_plan.networks {
        let name = names::served_network(sb, &planned.source_network);
        let bridge = names::served_bridge(sb, &planned.source_network);
        let ip = Some((planned.gateway, planned.subnet.prefix_len()));
        let what = format!("create network {name} ({} for {})", planned.subnet, planned.source_network);
        run.step(&what, clone_undo::remove_network_undo(&name), |run| {
            let def = NetworkDef::isolated(&NetworkSpec { name: name.clone(), bridge: bridge.clone(), ip });
            let fail = |e: HvError| FailoverError::DefineNetwork { network: name.clone(), source: Box::new(e) };
            run.ctx.host.hypervisor().define_network(&def).map_err(fail)?;
            run.ctx.host.hypervisor().start_network(&name).map_err(fail)
        })?;
        networks.push(ClonedNetwork {
            source: planned.source_network.clone(),
            name,
            bridge,
            veth: None,
            gateway: Some(format!("{}/{}", planned.gateway, planned.subnet.prefix_len())),
        });
    }
    Ok(networks)
}

/// Step 3: each SB domain on fresh epoch overlays, keeping its own MACs
/// and its interfaces on SB's isolated copies (the quarantine).
fn on_epoch_overlays(
    run: &mut Run<'_, '_>,
    standby: &StandbyRecord,
    epoch: i64,
    address_plan: &plan::AddressPlan,
) -> Result<Vec<TakeoverVm>, FailoverError> {
    let sb = standby.name.as_str();
    let mut vms = Vec::new();
    for domain in &standby.resources.domains {
        let current = super::inspect(run.ctx, &domain.domain)?;
        let mut def = current.def.clone();
        let overlays = epoch_overlays(run, standby, domain, epoch, &mut def)?;
        run.step(
            &format!("run {} on its epoch-{epoch} overlays", domain.domain),
            undo::redefine(&current.def, run.ctx.host.name()),
            |run| {
                run.ctx
                    .host
                    .hypervisor()
                    .define_domain(&def)
                    .map(drop)
                    .map_err(|e| FailoverError::Redefine { domain: domain.domain.clone(), source: Box::new(e) })
            },
        )?;
        let addresses = address_plan.vm(&domain.vm).ok_or_else(|| FailoverError::AddressPlan {
            detail: format!("VM '{}' of standby {sb} is not in environment '{}'", domain.vm, standby.primary),
        })?;
        vms.push(TakeoverVm {
            vm: domain.vm.clone(),
            domain: domain.domain.clone(),
            primary_domain: domain.primary_domain.clone(),
            macs: domain.macs.clone(),
            networks: vec![names::served_network(sb, &addresses.source_network)],
            address: addresses.address.addr().to_string(),
            overlays,
        });
    }
    Ok(vms)
}

/// Step 1: SB's subnets and addresses, from the primary's pool.
fn plan_addresses(
    run: &mut Run<'_, '_>,
    standby: &StandbyRecord,
    primary: &Environment,
) -> Result<plan::AddressPlan, FailoverError> {
    let hv = run.ctx.host.hypervisor();
    let pool = primary.readdress.clone().ok_or_else(|| FailoverError::ReaddressNotConfigured {
        env: standby.primary.clone(),
        standby: standby.name.clone(),
        missing: "readdress",
    })?;
    let mut networks = Vec::new();
    for network in &standby.resources.networks {
        let recorded = network.gateway.as_deref().and_then(|g| g.parse::<Ipv4Net>().ok());
        let gateway = match recorded {
            Some(net) => Some((net.addr(), net.prefix_len())),
            None => match hv.network(&network.source) {
                Ok(found) => match found.def.ip() {
                    Some((std::net::IpAddr::V4(address), prefix)) => Some((address, prefix)),
                    _ => None,
                },
                Err(e) => {
                    return Err(FailoverError::InspectNetwork { network: network.source.clone(), source: Box::new(e) })
                }
            },
        };
        networks.push(plan::SourceNetwork { name: network.source.clone(), gateway });
    }
    let isolated: BTreeMap<&str, &str> =
        standby.resources.networks.iter().map(|n| (n.name.as_str(), n.source.as_str())).collect();
    let mut vms = Vec::new();
    for domain in &standby.resources.domains {
        let found = super::inspect(run.ctx, &domain.domain)?;
        let interfaces = found.def.interfaces();
        let [iface] = interfaces.as_slice() else {
            return Err(FailoverError::Unsupported {
                what: format!(
                    "a takeover with its own addresses of VM '{}' with {} interfaces (one per VM is readdressed)",
                    domain.vm,
                    interfaces.len()
                ),
            });
        };
        let on = iface.network.as_deref().unwrap_or_default();
        vms.push(plan::SourceVm {
            vm: domain.vm.clone(),
            network: isolated.get(on).map_or(on, |source| *source).to_owned(),
            address: primary.vms.get(&domain.vm).map(|v| v.agent.address.clone()).unwrap_or_default(),
        });
    }
    let taken =
        plan::taken_subnets(hv).map_err(|(network, source)| FailoverError::InspectNetwork { network, source })?;
    let sb = standby.name.clone();
    run.step(&format!("plan {sb}'s own addresses"), UndoAction::Nothing, |_| {
        plan::plan(pool.pool, &networks, &vms, &taken, |vm| pool.hostname_for(&sb, vm))
            .map_err(|e| FailoverError::AddressPlan { detail: crate::error::chain(&e) })
    })
}

/// One VM's rewrite with `plan`, then its scan, which must find nothing of
/// `side` left.
fn rewrite_and_scan(
    run: &mut Run<'_, '_>,
    agents: &dyn CloneAgents,
    vm: &str,
    plan: &envclone_agent::RewritePlan,
    scan: &envclone_agent::ScanRequest,
    side: &'static str,
) -> Result<(), FailoverError> {
    run.step(&format!("rewrite connection strings in {vm}"), UndoAction::Nothing, |_| {
        agents.rewrite(vm, plan).map(drop).map_err(agent_error(vm, "rewrite connection strings"))
    })?;
    run.step(&format!("scan {vm} for {side}"), UndoAction::Nothing, |_| {
        let report = agents.scan(vm, scan).map_err(agent_error(vm, "scan for old addresses"))?;
        if report.findings.is_empty() {
            Ok(())
        } else {
            Err(FailoverError::AddressesRemain { vm: vm.to_owned(), side, findings: report.findings })
        }
    })
}

/// How ENV is reached while SB serves it at SB's own addresses.
pub(super) fn served_environment(
    primary: &Environment,
    vms: &[TakeoverVm],
    readdressed: &Readdressed,
    libvirt_netns: Option<&str>,
) -> Environment {
    let mut environment = in_standby_domains(primary, vms, |vm, agent| {
        agent.address = vm.address.clone();
        agent.netns = libvirt_netns.map(str::to_owned);
    });
    environment.networks = readdressed.networks.iter().map(|n| n.name.clone()).collect();
    environment
}

/// Failback's part (ENV's guests answer at home, on disks carried from SB):
/// each guest gets its host name back and its files rewritten with the
/// inverse map, and no file may still name SB's subnets.
pub(super) fn give_back(
    run: &mut Run<'_, '_>,
    primary: &Environment,
    readdressed: &Readdressed,
) -> Result<(), FailoverError> {
    let Some(rewrite) = primary.rewrite.clone() else { return Ok(()) };
    let inverse: BTreeMap<String, String> = readdressed.map.iter().map(|(a, b)| (b.clone(), a.clone())).collect();
    let (plan, scan) = agent_requests(inverse, readdressed.subnets(), &rewrite);
    let agents = (run.tools.agents)(primary);
    for served in &readdressed.vms {
        let vm = served.vm.as_str();
        let Some(config) = primary.vms.get(vm) else { continue };
        let domain = super::inspect(run.ctx, &config.domain)?;
        let mac = domain.def.interfaces().first().and_then(|i| i.mac.clone()).unwrap_or_default();
        let prefix = served.address.parse::<Ipv4Net>().map_or(24, |net| net.prefix_len());
        let own = Ipv4Net::new(served.primary_address.parse().unwrap_or(Ipv4Addr::UNSPECIFIED), prefix)
            .map_err(|e| FailoverError::AddressPlan { detail: e.to_string() })?;
        let gateway = primary_gateway(readdressed, served, prefix);
        let what = format!("give {vm} its host name {} back", served.primary_hostname);
        run.step(&what, UndoAction::Nothing, |_| {
            agents
                .readdress(vm, &mac, &own, gateway, &served.primary_hostname)
                .map(drop)
                .map_err(agent_error(vm, "give the host name back"))
        })?;
        rewrite_and_scan(run, agents.as_ref(), vm, &plan, &scan, "the standby's addresses")?;
    }
    Ok(())
}

/// The primary's gateway on `served`'s network: the map's preimage of
/// SB's gateway there.
fn primary_gateway(readdressed: &Readdressed, served: &ServedVm, prefix: u8) -> Ipv4Addr {
    let fallback = || {
        let own: Ipv4Addr = served.primary_address.parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
        Ipv4Net::new(own, prefix).map(|net| net.hosts().next().unwrap_or(own)).unwrap_or(own)
    };
    readdressed
        .map
        .iter()
        .find(|(_, to)| **to == served.gateway)
        .and_then(|(from, _)| from.parse().ok())
        .unwrap_or_else(fallback)
}

//! Gateway: the namespace the controller reaches the clone's agents from,
//! with one veth per copied network that has a gateway address.

use super::networks::Networks;
use super::{names, undo, CloneError, Run};
use crate::catalog::UndoAction;
use crate::host::HostNetError;
use crate::ops::journal::Journaled;

impl Run<'_, '_> {
    /// The gateway namespace and one veth per network with a gateway
    /// address; returns the networks with their veths.
    pub(super) fn gateway<'n>(&mut self, mut networks: Networks<'n>) -> Result<Networks<'n>, CloneError> {
        let netns = names::gateway_netns(&self.request.name);
        let libvirt_netns = self.ctx.config.controller.libvirt_netns.clone();
        let fail = |netns: &str| {
            let netns = netns.to_owned();
            move |e: HostNetError| CloneError::Gateway { netns, source: Box::new(e) }
        };
        let undo = UndoAction::Custom {
            kind: undo::UNDO_REMOVE_NETNS.to_owned(),
            data: serde_json::json!({ "netns": netns }),
        };
        self.step(&format!("create the gateway namespace {netns}"), undo, |run| {
            run.ctx.host.net().add_netns(&netns).map_err(fail(&netns))
        })?;
        for network in &mut networks.copies {
            let Some(address) = network.gateway.clone() else { continue };
            let (veth, peer) = names::veth_pair(&self.request.name, &network.source);
            let link = undo::LinkRef { netns: libvirt_netns.clone(), link: veth.clone() };
            let undo = UndoAction::Custom {
                kind: undo::UNDO_REMOVE_LINK.to_owned(),
                data: serde_json::to_value(&link).unwrap_or_default(),
            };
            let bridge = &network.bridge;
            self.step(&format!("gateway {address} on {}", network.name), undo, |run| {
                run.ctx
                    .host
                    .net()
                    .add_gateway(libvirt_netns.as_deref(), bridge, &veth, &netns, &peer, &address)
                    .map_err(fail(&netns))
            })?;
            network.veth = Some(veth);
        }
        Ok(networks)
    }
}

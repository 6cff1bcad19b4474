//! [`FakeNet`]: `ip` in memory.

use std::sync::Mutex;

use crate::host::{HostNet, HostNetError};

/// The namespaces and links that exist, each link as (link, bridge, address).
#[derive(Debug, Default)]
pub(crate) struct FakeNet {
    netns: Mutex<Vec<String>>,
    links: Mutex<Vec<(String, String, String)>>,
}

impl FakeNet {
    pub(crate) fn netns(&self) -> Vec<String> {
        self.netns.lock().unwrap().clone()
    }

    pub(crate) fn links(&self) -> Vec<(String, String, String)> {
        self.links.lock().unwrap().clone()
    }
}

impl HostNet for FakeNet {
    fn add_netns(&self, netns: &str) -> Result<(), HostNetError> {
        self.netns.lock().unwrap().push(netns.to_owned());
        Ok(())
    }

    fn delete_netns(&self, netns: &str) -> Result<(), HostNetError> {
        self.netns.lock().unwrap().retain(|n| n != netns);
        Ok(())
    }

    fn add_gateway(
        &self,
        _libvirt_netns: Option<&str>,
        bridge: &str,
        veth: &str,
        _netns: &str,
        _peer: &str,
        address: &str,
    ) -> Result<(), HostNetError> {
        self.links.lock().unwrap().push((veth.to_owned(), bridge.to_owned(), address.to_owned()));
        Ok(())
    }

    fn delete_link(&self, _netns: Option<&str>, link: &str) -> Result<(), HostNetError> {
        self.links.lock().unwrap().retain(|(l, _, _)| l != link);
        Ok(())
    }
}

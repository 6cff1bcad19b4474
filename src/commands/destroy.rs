//! `envclone destroy NEW`: removes a clone and what only it uses; see
//! [`crate::ops::destroy`].

use super::{load_config, Output};
use crate::catalog::Catalog;
use crate::cli::{DestroyArgs, GlobalArgs};
use crate::exit::ExitCode;
use crate::hypervisor::LibvirtHypervisor;
use crate::ops::clone::IpCommand;
use crate::ops::context::{Event, OpContext, SystemClock};
use crate::ops::destroy::{self, DestroyReport};
use crate::ops::restore::QemuImg;
use crate::{Error, Result};

pub fn run(global: &GlobalArgs, args: &DestroyArgs, out: &Output) -> Result<ExitCode> {
    let config = load_config(global)?;
    let uri = &config.controller.libvirt_uri;
    let hv = LibvirtHypervisor::connect(uri).map_err(Error::hypervisor(format!("connect to libvirt at {uri}")))?;
    let catalog = Catalog::open(&config.controller.state_dir)?;
    let progress = |event: &Event| out.progress(&event.to_string());
    let ctx = OpContext { config: &config, hv: &hv, catalog: &catalog, progress: &progress, clock: &SystemClock };
    let report = destroy::destroy(&ctx, &args.name, &QemuImg, &IpCommand).map_err(Error::operation("destroy"))?;
    out.report(&report, human);
    Ok(ExitCode::Ok)
}

fn human(report: &DestroyReport) -> String {
    if !report.existed {
        return format!("no clone named {}: nothing to destroy\n", report.name);
    }
    let mut text = format!("clone {} destroyed in {:.1} s\n", report.name, report.duration_ms as f64 / 1000.0);
    for domain in &report.domains {
        text.push_str(&format!("  domain {domain} removed\n"));
    }
    for network in &report.networks {
        text.push_str(&format!("  network {network} removed\n"));
    }
    if let Some(netns) = &report.gateway_netns {
        text.push_str(&format!("  namespace {netns} removed\n"));
    }
    for path in &report.deleted {
        text.push_str(&format!("  deleted {}\n", path.display()));
    }
    text
}

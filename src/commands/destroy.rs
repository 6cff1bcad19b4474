//! `envclone destroy NEW`: removes a clone and what only it uses; see
//! [`crate::ops::destroy`].

use super::session::Session;
use super::{load_config, Output};
use crate::cli::{DestroyArgs, GlobalArgs};
use crate::exit::ExitCode;
use crate::ops::context::Event;
use crate::ops::destroy::{self, DestroyReport};
use crate::{Error, Result};

pub fn run(global: &GlobalArgs, args: &DestroyArgs, out: &Output) -> Result<ExitCode> {
    let session = Session::with_config(load_config(global)?)?;
    let (_config, _catalog) = (&session.config, &session.catalog);
    let progress = |event: &Event| out.progress(&event.to_string());
    let ctx = session.context(&progress)?;
    let report = destroy::destroy(&ctx, &args.name).map_err(Error::operation("destroy"))?;
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

//! `envclone clones [--json]`: every clone the catalog holds.

use serde::Serialize;

use super::session::Records;
use super::{load_config, Output};
use crate::cli::GlobalArgs;
use crate::exit::ExitCode;
use crate::Result;

#[derive(Debug, Serialize)]
struct CloneLine {
    name: String,
    source: String,
    snapshot: String,
    created_at: chrono::DateTime<chrono::Utc>,
    disks: String,
    network: String,
    domains: Vec<String>,
    networks: Vec<String>,
    gateway_netns: Option<String>,
}

pub fn run(global: &GlobalArgs, out: &Output) -> Result<ExitCode> {
    let records = Records::with_config(load_config(global)?)?;
    let lines: Vec<CloneLine> = records
        .catalog
        .clones()?
        .into_iter()
        .map(|c| CloneLine {
            name: c.name,
            source: c.source_env,
            snapshot: c.snapshot,
            created_at: c.created_at,
            disks: c.disks,
            network: c.network,
            domains: c.resources.domains,
            networks: c.resources.networks.into_iter().map(|n| n.name).collect(),
            gateway_netns: c.resources.gateway_netns,
        })
        .collect();
    out.report(&lines, |lines| {
        if lines.is_empty() {
            return "no clones\n".to_owned();
        }
        lines
            .iter()
            .map(|c| {
                format!(
                    "{}  of {} at {}, {} disks, {} network, created {}: {}\n",
                    c.name,
                    c.source,
                    c.snapshot,
                    c.disks,
                    c.network,
                    c.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    c.domains.join(", ")
                )
            })
            .collect()
    });
    Ok(ExitCode::Ok)
}

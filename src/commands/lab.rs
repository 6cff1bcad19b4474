//! `envclone lab up | down | status | env | host-down | host-up | link | bench`.

use super::Output;
use crate::cli::{GlobalArgs, LabArgs, LabBenchArgs, LabCommand, LabUpArgs};
use crate::config::DomainType;
use crate::exit::ExitCode;
use crate::lab::bench::{self, BenchError, BenchOptions, BenchReport, Family};
use crate::lab::hosts::{HostCount, HostPowerReport, HostStatus, LinkReport};
use crate::lab::{find_agent_binary, DownReport, Lab, LabError, LabStatus, UpOptions, UpReport};
use crate::Result;

pub fn run(_global: &GlobalArgs, command: LabCommand, out: &Output) -> Result<ExitCode> {
    match command {
        LabCommand::Up(args) => up(&args, out),
        LabCommand::Down(args) => {
            let report = open(&args.lab)?.down(args.purge_cache)?;
            out.report(&report, human_down);
            Ok(ExitCode::Ok)
        }
        LabCommand::Status(args) => {
            let status = open(&args)?.status()?;
            out.report(&status, human_status);
            Ok(ExitCode::Ok)
        }
        LabCommand::Env(args) => {
            super::write_out(&open(&args)?.env_exports());
            Ok(ExitCode::Ok)
        }
        LabCommand::HostDown(args) => {
            let report = open(&args.lab)?.host_down(&args.host)?;
            out.report(&report, |r| human_power("down", r));
            Ok(ExitCode::Ok)
        }
        LabCommand::HostUp(args) => {
            let report = open(&args.lab)?.host_up(&args.host)?;
            out.report(&report, |r| human_power("up", r));
            Ok(ExitCode::Ok)
        }
        LabCommand::Link(args) => {
            let report = open(&args.lab)?.link(&args.host, &args.rate)?;
            out.report(&report, human_link);
            Ok(ExitCode::Ok)
        }
        LabCommand::Bench(args) => run_bench(&args, out),
    }
}

fn run_bench(args: &LabBenchArgs, out: &Output) -> Result<ExitCode> {
    let lab = open(&args.lab)?;
    let families = if args.only.is_empty() {
        Family::ALL.to_vec()
    } else {
        args.only
            .iter()
            .map(|name| Family::parse(name))
            .collect::<Result<Vec<_>, BenchError>>()
            .map_err(LabError::from)?
    };
    let options = BenchOptions {
        families,
        data_sizes_gib: args.data_gib.clone(),
        ram_sizes_mib: args.ram_mib.clone(),
        scale_sizes: args.vms.clone(),
        hosts_sizes_mib: args.hosts_mib.clone(),
        hosts_lab: args.hosts_lab.clone(),
        agent_binary: find_agent_binary(args.agent_bin.as_deref())?,
        envclone: std::env::current_exe().map_err(|source| LabError::io("find", "/proc/self/exe".as_ref(), source))?,
        boot_timeout: args.boot_timeout,
        keep: args.keep,
    };
    out.progress(&format!("benchmarking on lab '{}' (this takes minutes)", lab.name()));
    let report = bench::run(&lab, &options, &|line| out.progress(line))?;
    let json = serde_json::to_string_pretty(&report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    if let Some(path) = &args.json_file {
        std::fs::write(path, format!("{json}\n")).map_err(|source| LabError::io("write", path, source))?;
        out.progress(&format!("figures written to {}", path.display()));
    }
    let plot = args.plot.clone().or_else(|| args.json_file.as_ref().map(|p| p.with_extension("svg")));
    if let (Some(path), Some(data)) = (&plot, &report.data) {
        let caption = format!("{}, {} cores", &report.measured_at[..10], report.machine.cores);
        std::fs::write(path, bench::plot::clone_time_svg(data, &caption))
            .map_err(|source| LabError::io("write", path, source))?;
        out.progress(&format!("plot written to {}", path.display()));
    }
    out.report(&report, BenchReport::markdown);
    Ok(ExitCode::Ok)
}

fn open(args: &LabArgs) -> Result<Lab> {
    Ok(Lab::new(&args.name, &args.labs_dir, &args.cache_dir)?)
}

fn up(args: &LabUpArgs, out: &Output) -> Result<ExitCode> {
    let lab = open(&args.lab)?;
    // A lab brought up before keeps its domain type and its hosts unless
    // told otherwise (and a lab never changes its number of hosts).
    let previous = crate::config::load(&lab.paths().config()).ok();
    let previous_type = previous.as_ref().and_then(|c| c.lab.as_ref()).map(|l| l.domain_type);
    let domain_type = args.domain_type.map(DomainType::from).or(previous_type).unwrap_or(DomainType::Qemu);
    let hosts = HostCount::resolve(lab.name(), args.hosts, previous.as_ref().map(HostCount::of))?;
    let options = UpOptions {
        domain_type,
        agent_binary: find_agent_binary(args.agent_bin.as_deref())?,
        boot_timeout: args.boot_timeout,
        hosts,
    };
    let layout = match hosts {
        HostCount::One => String::new(),
        HostCount::Two => ", hosts a and b".to_string(),
    };
    out.progress(&format!("bringing up lab '{}' ({domain_type} guests{layout})", lab.name()));
    let report = lab.up(&options, &|line| out.progress(line))?;
    out.report(&report, human_up);
    Ok(ExitCode::Ok)
}

fn human_up(report: &UpReport) -> String {
    let mut text = format!(
        "lab '{}' is up in {:.1}s (namespace {}, {} guests)\n",
        report.lab, report.seconds, report.netns, report.domain_type
    );
    for vm in &report.vms {
        text.push_str(&format!(
            "  {:<4} {:<10} {:<12} agent {} answered after {:.1}s\n",
            vm.vm, vm.domain, vm.address, vm.agent_version, vm.ready_after
        ));
    }
    for host in &report.hosts {
        text.push_str(&format!(
            "  host {} {:<14} namespace {}, libvirt over SSH answered in {:.1}s\n",
            host.name, host.address, host.netns, host.libvirt_over_ssh_seconds
        ));
    }
    text.push_str(&format!(
        "config: {}\nnext:   eval \"$(envclone lab env --lab {})\"; envclone check --live; envclone ssh demo web\n",
        report.config.display(),
        report.lab
    ));
    text
}

fn human_status(status: &LabStatus) -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let mut text = format!(
        "lab '{}': namespace {} {}, libvirtd running: {}\n",
        status.lab,
        status.netns,
        if status.netns_exists { "present" } else { "absent" },
        yes_no(status.libvirtd_running)
    );
    for domain in &status.domains {
        let agent = match &domain.agent {
            Some(Ok(hostname)) => format!("agent answers as {hostname}"),
            Some(Err(e)) => format!("agent does not answer: {e}"),
            None => String::new(),
        };
        text.push_str(&format!("  {:<12} {:<9} {agent}\n", domain.name, domain.state));
    }
    if !status.networks.is_empty() {
        text.push_str(&format!("  networks: {}\n", status.networks.join(", ")));
    }
    for host in &status.hosts {
        text.push_str(&human_host(host));
    }
    text
}

fn human_host(host: &HostStatus) -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let mut text = format!(
        "host {} ({}, namespace {}): libvirtd running: {}, ssh: {}, link: {}{}\n",
        host.name,
        host.address,
        host.netns,
        yes_no(host.libvirtd_running),
        if host.ssh_up { "up" } else { "down" },
        if host.link_up { "up" } else { "down" },
        host.rate.as_ref().map(|rate| format!(", shaped to {rate}")).unwrap_or_default()
    );
    for domain in &host.domains {
        text.push_str(&format!("  {:<12} {}\n", domain.name, domain.state));
    }
    text
}

fn human_power(action: &str, report: &HostPowerReport) -> String {
    let killed = match report.processes_killed {
        0 => String::new(),
        n => format!(" ({n} processes killed)"),
    };
    format!("host {} is {action}{killed}\n{}", report.host.name, human_host(&report.host))
}

fn human_link(report: &LinkReport) -> String {
    match &report.rate {
        Some(rate) => format!(
            "host {}'s link shaped to {rate} in both directions ({} and {})\n",
            report.host, report.devices[0], report.devices[1]
        ),
        None => format!("host {}'s link is not shaped\n", report.host),
    }
}

fn human_down(report: &DownReport) -> String {
    let mut text = format!("lab '{}' removed", report.lab);
    if !report.domains_removed.is_empty() {
        text.push_str(&format!("; domains: {}", report.domains_removed.join(", ")));
    }
    if !report.networks_removed.is_empty() {
        text.push_str(&format!("; networks: {}", report.networks_removed.join(", ")));
    }
    for host in &report.hosts_removed {
        text.push_str(&format!("; host {}", host.name));
        if !host.domains_removed.is_empty() {
            text.push_str(&format!(" with {}", host.domains_removed.join(", ")));
        }
    }
    if let Some(dir) = &report.dir_removed {
        text.push_str(&format!("; files under {}", dir.display()));
    }
    if let Some(cache) = &report.cache_removed {
        text.push_str(&format!("; image cache {}", cache.display()));
    }
    text.push('\n');
    text
}

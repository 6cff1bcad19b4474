//! Hosts (issue #14, item 9): a standby of `demo` on host `b` of a
//! two-host lab, kept by `envclone standby sync` over host b's link shaped
//! to [`LINK_RATE`].
//!
//! After the standby's first sync (a full copy), for each size: `dd` of
//! that many MiB of `/dev/urandom` into a file in `db` (the previous
//! size's file removed first), `sync`, `envclone snapshot demo`, `envclone
//! standby sync`. Per size:
//!
//! - bytes shipped against bytes written: db/vda's `bytes` in the sync
//!   report (what crossed the link) over the bytes `dd` wrote;
//! - throughput, two ways: db/vda's bytes over its ship step (the
//!   journaled `copy db/vda overlay ...` step: the stale copy removed, the
//!   data relayed, the SHA-256 computed on both hosts), and every disk's
//!   bytes over the whole sync's wall time (planning, four disks' ships
//!   and checksums, the merges on b);
//! - RPO reachable with a [`SCHEDULE`] schedule, **derived** rather than
//!   measured by a daemon run: the interval plus this size's snapshot and
//!   sync wall time (the newest point b can hold is one interval plus the
//!   time to take and ship it behind).
//!
//! Last, the RTO of an unplanned failover after `lab host-down a`; demo
//! then fails back to a, so the lab ends as it began.
//!
//! The two-host lab is [`HostsLab`]: used as it is when it is up, else
//! brought up and taken down again afterwards (unless `--keep`).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::exec::{number, Timed, Tools};
use super::report::{FullSync, HostsFamily, HostsPoint, MIB};
use super::{Bench, BenchError};
use crate::catalog::{Catalog, OperationKind, OperationState, Step};
use crate::config::{Config, DomainType};
use crate::lab::hosts::{HostCount, LabHosts, RateSetting};
use crate::lab::{Lab, UpOptions};

/// The standby the family makes on host b (destroyed at the end).
const STANDBY: &str = "bench-sb";
/// The host the standby lives on, and whose link is shaped.
const FAR_HOST: &str = "b";
/// The host demo runs on, lost to measure the RTO.
const NEAR_HOST: &str = "a";
/// What host b's link is shaped to while the syncs run, and the same in
/// bytes per second (tc's `mbit` is 10^6 bits).
const LINK_RATE: &str = "100mbit";
const LINK_BYTES_PER_S: f64 = 100e6 / 8.0;
/// The file in `db` the guest writes.
const BLOB: &str = "/srv/db/bench-blob";
/// The schedule interval the RPO is derived for.
const SCHEDULE: Duration = Duration::from_secs(60);
/// qcow2 clusters (64 KiB) and their tables, ext4's journal and metadata:
/// what a sync may ship beyond 1.1x the data written.
pub const CLUSTER_SLACK: u64 = 2 << 20;

/// The two-host lab the family runs on.
pub struct HostsLab {
    pub lab: Lab,
    /// Whether this bench brought it up (and so takes it down afterwards).
    pub brought_up: bool,
}

impl HostsLab {
    /// `explicit` (`--hosts-lab`), else the bench's lab when it has two
    /// hosts, else `<lab>-hosts`: up with two hosts, or brought up so.
    pub fn resolve(main: &Lab, explicit: Option<&str>) -> Result<Lab, BenchError> {
        let labs_dir = main.paths().root.parent().map(PathBuf::from).unwrap_or_default();
        let name = match explicit {
            Some(name) => name.to_string(),
            None if two_hosts(main) == Some(true) => return Ok(main.clone()),
            None => format!("{}-hosts", main.name()),
        };
        Lab::new(&name, &labs_dir, &main.paths().cache).map_err(BenchError::lab(format!("the two-host lab {name}")))
    }

    /// A two-host lab that is up is used as it is (its config, which a
    /// user may have edited, left alone); one that does not exist is
    /// brought up with two hosts.
    pub fn up(lab: Lab, bench: &Bench<'_>, domain_type: DomainType) -> Result<HostsLab, BenchError> {
        match two_hosts(&lab) {
            Some(false) => Err(BenchError::NotTwoHosts { lab: lab.name().to_string() }),
            Some(true) if crate::lab::daemons::is_running(&lab.paths().libvirt_instance()) => {
                bench.say(&format!("two-host lab '{}' is up: used as it is", lab.name()));
                Ok(HostsLab { lab, brought_up: false })
            }
            Some(true) => Err(BenchError::LabNotUp { lab: lab.name().to_string(), config: lab.paths().config() }),
            None => {
                bench.say(&format!("bringing up two-host lab '{}'", lab.name()));
                let options = UpOptions {
                    domain_type,
                    agent_binary: bench.extra_options.agent_binary.clone(),
                    boot_timeout: bench.extra_options.boot_timeout,
                    hosts: HostCount::Two,
                };
                let up = lab.up(&options, &|line| bench.say(line));
                // Half made is still made: taken down like a whole one.
                let made = HostsLab { lab, brought_up: true };
                match up {
                    Ok(_) => Ok(made),
                    Err(e) => {
                        if let Err(down) = made.lab.down(false) {
                            bench.say(&format!("cannot take the half made lab down: {}", crate::error::chain(&down)));
                        }
                        Err(BenchError::lab(format!("bring up lab {}", made.lab.name()))(e))
                    }
                }
            }
        }
    }

    pub fn config(&self) -> Result<Config, BenchError> {
        crate::config::load(&self.lab.paths().config()).map_err(|e| BenchError::Report {
            step: format!("read lab {}'s config", self.lab.name()),
            command: "config".into(),
            detail: crate::error::chain(&e),
        })
    }
}

/// Whether `lab` is brought up with two hosts; `None` when it has no config.
fn two_hosts(lab: &Lab) -> Option<bool> {
    let config = crate::config::load(&lab.paths().config()).ok()?;
    Some(HostCount::of(&config) == HostCount::Two)
}

pub(super) fn run(
    bench: &Bench<'_>,
    hosts_lab: &HostsLab,
    sizes_mib: &[u64],
    notes: &mut Vec<String>,
) -> Result<HostsFamily, BenchError> {
    notes.push(format!(
        "Hosts: lab `{}` (two hosts, network namespaces on this one machine, joined by veth links; the controller \
         relays every byte from a to b over SSH). Host b's link shaped with `envclone lab link b --rate {LINK_RATE}` \
         (tc tbf; this kernel has no netem, so no delay and no loss); guests are TCG. Data written in `db` with \
         `dd if=/dev/urandom` then `sync`; bytes shipped are db/vda's `bytes` in the `standby sync --json` report. \
         Ship time: the journaled `copy db/vda overlay ...` step (stale-copy removal, relay, SHA-256 on both \
         hosts); sync time: the whole command. RPO is derived (schedule interval + snapshot + sync), not measured \
         by a daemon run.",
        hosts_lab.lab.name()
    ));
    let config = hosts_lab.config()?;
    let tools = Tools {
        envclone: bench.tools.envclone.clone(),
        config: hosts_lab.lab.paths().config(),
        libvirt_uri: config.controller.libvirt_uri.clone(),
    };
    let far = Far { bench, lab: &hosts_lab.lab, config: &config, tools };
    far.remove_standby()?;
    let previous_rate = far.link_rate()?;
    far.shape(&LINK_RATE.parse().map_err(|e: String| far.lab_step("shape", e))?)?;
    let measured = far.measure(sizes_mib);
    // Whatever happened: the standby goes, the link is as it was, the
    // guest's file is removed.
    let mut cleanup = Vec::new();
    if !bench.keep {
        cleanup.push(far.remove_standby());
    }
    cleanup.push(far.shape(&previous_rate));
    cleanup.push(far.sh("db", &format!("rm -f {BLOB}")).map(drop));
    let family = measured?;
    cleanup.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(family)
}

/// The family's view of the two-host lab.
struct Far<'a> {
    bench: &'a Bench<'a>,
    lab: &'a Lab,
    config: &'a Config,
    tools: Tools,
}

impl Far<'_> {
    fn measure(&self, sizes_mib: &[u64]) -> Result<HostsFamily, BenchError> {
        let bench = self.bench;
        bench.say("snapshot demo, then a standby of it on host b (the first sync: a full copy)");
        self.tools.envclone("hosts: snapshot", &["snapshot", "demo"])?;
        let created = self
            .tools
            .envclone("hosts: standby create", &["standby", "create", "demo", "--name", STANDBY, "--host", FAR_HOST])?;
        let sync = &created.value["sync"];
        // The create's sync is journaled as a standby-sync of its own.
        let (ship_ms, _) = self.ship_ms("db/vda")?;
        let full = FullSync {
            bytes: sync["bytes"].as_u64().unwrap_or(0),
            create_ms: created.ms(),
            sync_reported_ms: number(sync, "/duration_ms"),
            db_vda_bytes: disk_bytes(sync, "db", "vda").unwrap_or(0),
            db_vda_ship_ms: ship_ms,
        };
        bench.say(&format!(
            "full copy: {:.1} MiB in {:.1} s (standby create)",
            full.bytes as f64 / MIB,
            full.create_ms / 1000.0
        ));
        let mut points = Vec::new();
        for &size in sizes_mib {
            points.push(self.point(size)?);
        }
        let (marginal_mb_s, ship_fixed_ms) = fit(&points);
        let (rto_ms, rto_note) = self.rto()?;
        Ok(HostsFamily {
            lab: self.lab.name().to_string(),
            standby_host: FAR_HOST.to_string(),
            link_rate: LINK_RATE.to_string(),
            link_bytes_per_s: LINK_BYTES_PER_S,
            schedule_interval_s: SCHEDULE.as_secs_f64(),
            full,
            points,
            marginal_mb_s,
            ship_fixed_ms,
            rto_ms,
            rto_note,
        })
    }

    /// The RTO of an unplanned failover after host a is lost (`lab
    /// host-down a`): `rto_ms` of `failover --json`, from the command's
    /// start until every agent answered on b. Then a comes back and demo
    /// fails back to it, so the lab ends as it began.
    fn rto(&self) -> Result<(Option<f64>, String), BenchError> {
        let bench = self.bench;
        let hosts = LabHosts::new(self.lab);
        bench.say("host a lost (lab host-down a), then an unplanned failover of demo to its standby on b");
        hosts.host_down(NEAR_HOST).map_err(BenchError::lab("hosts: host-down a"))?;
        let failover = self.tools.envclone("hosts: failover", &["failover", "demo"]);
        hosts.host_up(NEAR_HOST).map_err(BenchError::lab("hosts: host-up a"))?;
        let failover = failover?;
        let rto_ms = number(&failover.value, "/rto_ms");
        bench.say(&format!("RTO {:.1} s; a is back: demo fails back to it", rto_ms.unwrap_or(0.0) / 1000.0));
        // The guard fences what a's autostart may have started, then demo goes home.
        self.tools.envclone("hosts: status", &["status"])?;
        let back = self.tools.envclone("hosts: failback", &["failback", "demo"])?;
        let note = format!(
            "unplanned failover after `lab host-down a`, standby on b at the newest synced point; failback then \
             took {:.1} s of downtime",
            number(&back.value, "/downtime_ms").unwrap_or(0.0) / 1000.0
        );
        Ok((rto_ms, note))
    }

    /// One size: write, snapshot, sync.
    fn point(&self, size_mib: u64) -> Result<HostsPoint, BenchError> {
        let bench = self.bench;
        bench.say(&format!("{size_mib} MiB of /dev/urandom in db"));
        self.sh(
            "db",
            &format!("rm -f {BLOB} && dd if=/dev/urandom of={BLOB} bs=1M count={size_mib} 2>/dev/null && sync"),
        )?;
        let snapshot = self.tools.envclone("hosts: snapshot", &["snapshot", "demo"])?;
        let synced = self.tools.envclone("hosts: standby sync", &["standby", "sync", STANDBY])?;
        let mode = synced.value["mode"].as_str().unwrap_or("?");
        if mode != "incremental" {
            return Err(BenchError::Report {
                step: format!("hosts: standby sync after {size_mib} MiB"),
                command: format!("envclone standby sync {STANDBY}"),
                detail: format!("mode {mode}, not incremental: the bytes would not be a delta's"),
            });
        }
        let (ship_ms, ship_all_ms) = self.ship_ms("db/vda")?;
        let point = HostsPoint::new(size_mib, &snapshot, &synced, ship_ms, ship_all_ms, SCHEDULE).ok_or_else(|| {
            BenchError::Field { step: "hosts: standby sync".into(), field: "/disks[db/vda]/bytes".into() }
        })?;
        bench.say(&format!(
            "{size_mib} MiB: db/vda shipped {:.2} MiB ({:.3}x), ship {:.1} s ({:.1} MB/s), sync {:.1} s ({:.1} MB/s)",
            point.shipped_bytes as f64 / MIB,
            point.shipped_vs_written,
            point.ship_ms / 1000.0,
            point.ship_mb_s,
            point.sync_ms / 1000.0,
            point.sync_mb_s
        ));
        Ok(point)
    }

    /// The ship steps of the standby's newest completed sync, from the
    /// catalog's journal (each step's start and end, recorded to the
    /// millisecond): `disk`'s (`db/vda`) and all of them together, in
    /// milliseconds.
    fn ship_ms(&self, disk: &str) -> Result<(f64, f64), BenchError> {
        let kind = OperationKind::StandbySync;
        let step = "hosts: the sync's ship steps";
        let fail = |e: crate::catalog::CatalogError| BenchError::Report {
            step: step.into(),
            command: "catalog".into(),
            detail: crate::error::chain(&e),
        };
        let catalog = Catalog::open(&self.config.controller.state_dir).map_err(fail)?;
        let operation = catalog
            .operations_in(OperationState::Completed)
            .map_err(fail)?
            .into_iter()
            .filter(|o| o.kind == kind && o.env == STANDBY)
            .max_by_key(|o| o.id.0)
            .ok_or_else(|| BenchError::Field {
                step: step.into(),
                field: format!("a completed {kind} of {STANDBY}"),
            })?;
        let steps = catalog.steps(operation.id).map_err(fail)?;
        Ok(ship_steps_ms(&steps, disk))
    }

    fn sh(&self, vm: &str, command: &str) -> Result<String, BenchError> {
        super::sh_in(self.config, "demo", vm, command)
    }

    fn lab_step(&self, what: &str, detail: String) -> BenchError {
        BenchError::Report { step: format!("hosts: {what} lab {}", self.lab.name()), command: "lab".into(), detail }
    }

    /// What host b's link is shaped to now.
    fn link_rate(&self) -> Result<RateSetting, BenchError> {
        let hosts = LabHosts::new(self.lab).status().map_err(BenchError::lab("hosts: look at host b's link"))?;
        let rate = hosts.into_iter().find(|h| h.name == FAR_HOST).and_then(|h| h.rate);
        match rate {
            None => Ok(RateSetting::Unshaped),
            Some(rate) => rate.parse().map_err(|e: String| self.lab_step("read the link rate of", e)),
        }
    }

    fn shape(&self, rate: &RateSetting) -> Result<(), BenchError> {
        self.lab.link(FAR_HOST, rate).map(drop).map_err(BenchError::lab("hosts: shape host b's link"))
    }

    /// Destroys the standby an earlier (killed) run left.
    fn remove_standby(&self) -> Result<(), BenchError> {
        let listed = self.tools.envclone("hosts: standby list", &["standby", "list"])?;
        let exists = listed.value.as_array().is_some_and(|all| all.iter().any(|s| s["name"] == STANDBY));
        if exists {
            self.bench.say(&format!("destroying standby {STANDBY}"));
            self.tools.envclone("hosts: standby destroy", &["standby", "destroy", STANDBY])?;
        }
        Ok(())
    }
}

impl HostsPoint {
    /// A size's figures from its snapshot and sync (`None` when the sync
    /// report has no db/vda).
    fn new(
        size_mib: u64,
        snapshot: &Timed<Value>,
        synced: &Timed<Value>,
        ship_ms: f64,
        ship_all_ms: f64,
        schedule: Duration,
    ) -> Option<HostsPoint> {
        let written_bytes = size_mib << 20;
        let shipped_bytes = disk_bytes(&synced.value, "db", "vda")?;
        let shipped_all_bytes = synced.value["bytes"].as_u64().unwrap_or(shipped_bytes);
        let sync_ms = synced.ms();
        Some(HostsPoint {
            written_mib: size_mib,
            written_bytes,
            shipped_bytes,
            shipped_all_bytes,
            shipped_vs_written: shipped_bytes as f64 / written_bytes as f64,
            snapshot_ms: snapshot.ms(),
            sync_ms,
            sync_reported_ms: number(&synced.value, "/duration_ms"),
            ship_ms,
            ship_all_ms,
            ship_mb_s: shipped_bytes as f64 / 1e6 / (ship_ms / 1000.0),
            sync_mb_s: shipped_all_bytes as f64 / 1e6 / (sync_ms / 1000.0),
            rpo_s: schedule.as_secs_f64() + (snapshot.ms() + sync_ms) / 1000.0,
        })
    }
}

/// `bytes` of one disk of a sync report.
fn disk_bytes(report: &Value, vm: &str, disk: &str) -> Option<u64> {
    report["disks"].as_array()?.iter().find(|d| d["vm"] == vm && d["disk"] == disk)?["bytes"].as_u64()
}

/// The ship steps' time (ms): `disk`'s (`db/vda`) and every disk's. A
/// ship step is `copy VM/DISK overlay ...` (incremental) or `ship VM/DISK
/// in full ...`; only steps that finished count.
fn ship_steps_ms(steps: &[Step], disk: &str) -> (f64, f64) {
    let took = |s: &Step| s.finished_at.map_or(0.0, |end| (end - s.started_at).num_milliseconds() as f64);
    let ships: Vec<&Step> =
        steps.iter().filter(|s| s.name.starts_with("copy ") || s.name.starts_with("ship ")).collect();
    let of_disk: f64 = ships.iter().filter(|s| s.name.split_whitespace().nth(1) == Some(disk)).map(|s| took(s)).sum();
    (of_disk, ships.iter().map(|s| took(s)).sum())
}

/// Least squares of db/vda's ship time against its bytes over the sizes:
/// the marginal rate (MB/s, the slope) and the fixed cost of one ship
/// (ms, the intercept): what the link gives once a ship is under way, and
/// what each ship costs whatever its size. `None` with fewer than two
/// sizes or no spread.
fn fit(points: &[HostsPoint]) -> (Option<f64>, Option<f64>) {
    let n = points.len() as f64;
    if points.len() < 2 {
        return (None, None);
    }
    let xs: Vec<f64> = points.iter().map(|p| p.shipped_bytes as f64).collect();
    let ys: Vec<f64> = points.iter().map(|p| p.ship_ms).collect();
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    if sxx == 0.0 || sxy <= 0.0 {
        return (None, None);
    }
    let ms_per_byte = sxy / sxx;
    (Some(1e-6 / (ms_per_byte / 1000.0)), Some(my - ms_per_byte * mx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{OperationId, StepId, StepState, UndoAction};
    use chrono::{TimeZone, Utc};

    fn step(name: &str, ms: i64) -> Step {
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        Step {
            id: StepId(1),
            operation: OperationId(1),
            seq: 1,
            name: name.into(),
            undo: UndoAction::Nothing,
            state: StepState::Done,
            started_at: start,
            finished_at: Some(start + chrono::Duration::milliseconds(ms)),
            error: None,
        }
    }

    #[test]
    fn ship_time_counts_the_copy_and_ship_steps_of_the_disk_and_of_all() {
        let steps = [
            step("pin the images the sync reads", 15),
            step("copy db/vda overlay /srv/envclone/images/demo/db/x.vda.qcow2", 9500),
            step("verify db/vda copy /srv/envclone/standbys/sb/db/sb.vda.from-9.qcow2", 500),
            step("copy db/vdb overlay /srv/envclone/images/demo/db/x.vdb.qcow2", 2500),
            step("ship web/vda in full to host b (snapshot s)", 1000),
            step("merge into the standby's images and record", 6000),
        ];

        assert_eq!(ship_steps_ms(&steps, "db/vda"), (9500.0, 13000.0));
        assert_eq!(ship_steps_ms(&steps, "web/vda"), (1000.0, 13000.0));
    }

    fn point(mib: u64, ship_ms: f64) -> HostsPoint {
        HostsPoint {
            written_mib: mib,
            written_bytes: mib << 20,
            shipped_bytes: mib * 1_000_000,
            shipped_all_bytes: mib * 1_000_000,
            shipped_vs_written: 1.0,
            snapshot_ms: 1000.0,
            sync_ms: 10_000.0,
            sync_reported_ms: None,
            ship_ms,
            ship_all_ms: ship_ms,
            ship_mb_s: 1.0,
            sync_mb_s: 1.0,
            rpo_s: 71.0,
        }
    }

    #[test]
    fn the_fit_splits_ship_time_into_a_fixed_cost_and_a_rate() {
        // 2 s per ship, then 10 MB/s.
        let points = [point(4, 2400.0), point(16, 3600.0), point(64, 8400.0)];

        let (rate, fixed) = fit(&points);

        assert!((rate.unwrap() - 10.0).abs() < 1e-9, "{rate:?}");
        assert!((fixed.unwrap() - 2000.0).abs() < 1e-6, "{fixed:?}");
        assert_eq!(fit(&points[..1]), (None, None));
    }

    #[test]
    fn rpo_is_the_interval_plus_snapshot_and_sync() {
        let now = std::time::Instant::now();
        let timed = |ms: u64, value: Value| Timed { value, started: now, ended: now + Duration::from_millis(ms) };
        let synced = timed(
            20_000,
            serde_json::json!({"mode": "incremental", "bytes": 70_000_000u64, "duration_ms": 19_500,
                "disks": [{"vm": "db", "disk": "vda", "bytes": 68_000_000u64}]}),
        );

        let point = HostsPoint::new(64, &timed(3000, Value::Null), &synced, 8000.0, 12_000.0, SCHEDULE).unwrap();

        assert_eq!(point.rpo_s, 83.0);
        assert_eq!(point.ship_mb_s, 8.5);
        assert_eq!(point.sync_mb_s, 3.5);
        assert_eq!(point.sync_reported_ms, Some(19_500.0));
        assert!((point.shipped_vs_written - 68e6 / (64u64 << 20) as f64).abs() < 1e-12);
    }
}

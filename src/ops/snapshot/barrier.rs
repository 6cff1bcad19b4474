//! The freeze barrier: every guest frozen at once, every VM's disks
//! snapshotted (atomically per VM, all VMs in parallel), everything thawed,
//! with the window from the first freeze to the last thaw measured and held
//! under a hard limit.
//!
//! ```text
//! coordinator ─┬─ worker web: arm ──> Armed .. go: freeze ──> Frozen .... wait .... thaw ──> Thawed
//!              ├─ worker db:  arm ─────> Armed go: freeze ──> Frozen .... wait .... thaw ──> Thawed
//!              │        (all armed: hooks run and synced, nothing frozen yet; then the go)
//!              │        (all frozen, or a failure, or the limit)
//!              ├─ snapshot web: [pause] external snapshot [memory point]
//!              ├─ snapshot db:  [pause] external snapshot [memory point]
//!              │        (all done, or the limit)
//!              └─ thaw order to every worker; collect their reports
//! ```
//!
//! Two phases, like a barrier should: every guest is first armed (its
//! pre-freeze hooks run and its filesystems synced, nothing frozen), and
//! only when all are armed does each get the go and freeze. So no guest
//! sits frozen while another still starts its agent or runs its hooks: on
//! a busy host that skew was most of a group's window. Arming, freezes and
//! thaws run on one worker thread per VM (ssh2 and libvirt calls block);
//! each worker owns its freeze and thaws it when told or when the
//! coordinator goes away, so a guest is never left frozen by an early
//! return. The window is measured from the agents' own figures: a guest
//! froze at (answer received - time its FIFREEZEs took) and stayed frozen
//! for the `frozen_ms` its thaw reports. Nothing here writes to the catalog:
//! the journal records the barrier's steps before it starts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::Scope;
use std::time::{Duration, Instant};

use super::memory::{MemoryCapture, MemoryError};
use super::preflight::VmPlan;
use super::SnapshotError;
use crate::guest::agents::{FreezeInfo, Quiescer, ThawInfo};
use crate::guest::GuestError;
use crate::hypervisor::{ExternalSnapshot, HvError, Hypervisor};
use crate::ops::context::{Progress, StepTimer};

/// One VM's part in the barrier.
#[derive(Debug)]
pub struct BarrierVm<'a> {
    pub plan: &'a VmPlan,
    /// Freeze it through its agent.
    pub freeze: bool,
    /// Capture its memory at the disk snapshot's point.
    pub memory: Option<&'a mut MemoryCapture>,
}

#[derive(Debug, Clone)]
pub struct BarrierSettings {
    /// The external snapshots' name (libvirt keeps no metadata of it).
    pub snapshot: String,
    /// The hard limit on the window.
    pub limit: Duration,
    /// A freeze that fails aborts the barrier (`required`), or leaves that
    /// VM crash-consistent (`best-effort`).
    pub freeze_failure_aborts: bool,
    /// How long to wait for the first guest to answer its freeze (its
    /// pre-freeze hooks run first).
    pub freeze_wait: Duration,
    /// Bound on the disk snapshots when no guest is frozen.
    pub unfrozen_wait: Duration,
}

/// What happened to one VM.
#[derive(Debug, Default)]
pub struct VmBarrier {
    /// `None`: not asked to freeze. `Err`: why it was not frozen.
    pub freeze: Option<Result<(), String>>,
    /// `None`: not attempted. `Ok`: the VM writes to its overlays now.
    pub disks: Option<Result<(), String>>,
    /// `None`: no memory asked, or not reached.
    pub memory_point: Option<Result<(), String>>,
    /// `None`: nothing to thaw.
    pub thaw: Option<Result<ThawInfo, String>>,
}

impl VmBarrier {
    pub fn frozen(&self) -> bool {
        matches!(self.freeze, Some(Ok(())))
    }

    pub fn disks_switched(&self) -> bool {
        matches!(self.disks, Some(Ok(())))
    }

    /// Thawed, or never frozen.
    pub fn thawed(&self) -> bool {
        !self.frozen() || matches!(self.thaw, Some(Ok(_)))
    }
}

#[derive(Debug, Default)]
pub struct BarrierOutcome {
    pub vms: BTreeMap<String, VmBarrier>,
    /// First freeze to last thaw; `None` when nothing was frozen.
    pub window: Option<Duration>,
    /// In the order they happened; empty on success.
    pub failures: Vec<SnapshotError>,
}

enum WorkerEvent {
    Armed {
        vm: String,
    },
    /// Armed, then told to stand down before the go: nothing was frozen.
    Cancelled {
        vm: String,
    },
    Frozen {
        vm: String,
        at: Instant,
        info: FreezeInfo,
    },
    FreezeFailed {
        vm: String,
        error: GuestError,
    },
    Thawed {
        vm: String,
        at: Instant,
        result: Result<ThawInfo, GuestError>,
    },
}

struct SnapshotDone {
    vm: String,
    domain: String,
    /// `None`: not attempted.
    disks: Option<Result<(), HvError>>,
    memory: Option<Result<(), MemoryError>>,
}

/// Freeze intervals as the controller places them.
#[derive(Default)]
struct Window {
    starts: BTreeMap<String, Instant>,
    ends: BTreeMap<String, Instant>,
}

impl Window {
    fn frozen(&mut self, vm: &str, at: Instant, info: FreezeInfo) {
        self.starts.insert(vm.to_owned(), at.checked_sub(info.freezing).unwrap_or(at));
    }

    fn thawed(&mut self, vm: &str, at: Instant, frozen: Option<Duration>) {
        let end = match (self.starts.get(vm), frozen) {
            (Some(start), Some(frozen)) => (*start + frozen).min(at),
            _ => at,
        };
        self.ends.insert(vm.to_owned(), end);
    }

    fn first(&self) -> Option<Instant> {
        self.starts.values().min().copied()
    }

    fn deadline(&self, limit: Duration) -> Option<Instant> {
        self.first().map(|first| first + limit)
    }

    fn elapsed(&self) -> Duration {
        self.first().map(|first| first.elapsed()).unwrap_or_default()
    }

    fn measure(&self) -> Option<Duration> {
        let first = self.first()?;
        let last = self.ends.values().max().copied().unwrap_or_else(Instant::now);
        Some(last.saturating_duration_since(first))
    }
}

/// Runs the barrier; see the module documentation. Never returns with a
/// guest frozen by it or paused for its memory point: a thaw that failed
/// is in `failures`.
pub fn run(
    hv: &dyn Hypervisor,
    quiescer: &dyn Quiescer,
    vms: &mut [BarrierVm<'_>],
    settings: &BarrierSettings,
    progress: Progress<'_>,
) -> BarrierOutcome {
    let mut coordinator = Coordinator {
        outcome: BarrierOutcome {
            vms: vms.iter().map(|vm| (vm.plan.vm.clone(), VmBarrier::default())).collect(),
            ..BarrierOutcome::default()
        },
        window: Window::default(),
        settings,
        progress,
    };

    std::thread::scope(|scope| {
        let (orders, events) = spawn_freeze_workers(scope, quiescer, vms);
        let mut aborted = !coordinator.arm_all(&events, &orders);
        aborted |= !coordinator.freeze_armed(&events, &orders, aborted);
        crate::ops::crashpoint::hit("snapshot", "freeze");
        let done = coordinator.snapshot_all(scope, hv, vms, aborted);
        coordinator.thaw_all(orders, &events);
        coordinator.record_late_snapshots(&done);
    });

    let Coordinator { mut outcome, window, .. } = coordinator;
    let limit = settings.limit;
    outcome.window = window.measure();
    if let Some(measured) = outcome.window {
        let limit_reported = outcome.failures.iter().any(|f| matches!(f, SnapshotError::FreezeLimit { .. }));
        if measured > limit && !limit_reported {
            outcome.failures.push(SnapshotError::FreezeLimit {
                limit,
                window: measured,
                stage: "measured after the thaw",
            });
        }
    }
    outcome
}

type Orders = BTreeMap<String, mpsc::Sender<Order>>;

/// One worker per VM to freeze, each waiting for its orders; the events
/// come from all of them.
fn spawn_freeze_workers<'scope, 'env>(
    scope: &'scope Scope<'scope, 'env>,
    quiescer: &'env dyn Quiescer,
    vms: &[BarrierVm<'_>],
) -> (Orders, mpsc::Receiver<WorkerEvent>) {
    let (events_tx, events) = mpsc::channel::<WorkerEvent>();
    let mut orders = BTreeMap::new();
    for vm in vms.iter().filter(|vm| vm.freeze) {
        let (order, orders_rx) = mpsc::channel::<Order>();
        orders.insert(vm.plan.vm.clone(), order);
        let events_tx = events_tx.clone();
        let name = vm.plan.vm.clone();
        scope.spawn(move || freeze_worker(quiescer, name, orders_rx, events_tx));
    }
    // Only the workers hold senders now: the events end when every worker has.
    drop(events_tx);
    (orders, events)
}

/// The coordinator's side of the barrier: what it has seen so far and where
/// it reports its steps. It lives on the calling thread only.
struct Coordinator<'a> {
    outcome: BarrierOutcome,
    window: Window,
    settings: &'a BarrierSettings,
    progress: Progress<'a>,
}

impl Coordinator<'_> {
    /// Every guest runs its hooks and syncs, one fails, or the guests take
    /// longer than their hooks may. False: the barrier aborts.
    fn arm_all(&mut self, events: &mpsc::Receiver<WorkerEvent>, orders: &Orders) -> bool {
        let settings = self.settings;
        let mut waiting: BTreeSet<String> = orders.keys().cloned().collect();
        let arming = (!waiting.is_empty())
            .then(|| StepTimer::start(self.progress, format!("arm {} guests (pre-freeze hooks, sync)", waiting.len())));
        let arm_deadline = Instant::now() + settings.freeze_wait;
        let armed = collect(
            events,
            &mut waiting,
            (&mut self.outcome, &mut self.window, settings),
            |_| arm_deadline.saturating_duration_since(Instant::now()),
            |_, waiting| SnapshotError::ArmTimeout {
                waited: settings.freeze_wait,
                vms: waiting.iter().cloned().collect(),
            },
        );
        if let Some(timer) = arming {
            timer.end(armed);
        }
        armed
    }

    /// The go to every armed guest (none once `aborted`); every guest
    /// answers, one fails, or the limit passes. False: the barrier aborts.
    fn freeze_armed(&mut self, events: &mpsc::Receiver<WorkerEvent>, orders: &Orders, aborted: bool) -> bool {
        let settings = self.settings;
        let limit = settings.limit;
        let mut waiting: BTreeSet<String> = BTreeSet::new();
        if !aborted {
            for (vm, order) in orders {
                if self.outcome.vms.get(vm).is_some_and(|v| v.freeze.is_none()) && order.send(Order::Freeze).is_ok() {
                    waiting.insert(vm.clone());
                }
            }
        }
        // No guest waited on (so no timer) when the barrier had aborted.
        let freezing =
            (!waiting.is_empty()).then(|| StepTimer::start(self.progress, format!("freeze {} guests", waiting.len())));
        let frozen = collect(
            events,
            &mut waiting,
            (&mut self.outcome, &mut self.window, settings),
            |window| match window.deadline(limit) {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => settings.freeze_wait,
            },
            |window, _| SnapshotError::FreezeLimit {
                limit,
                window: window.elapsed(),
                stage: "waiting for every guest to freeze",
            },
        );
        if let Some(timer) = freezing {
            timer.end(frozen);
        }
        frozen
    }

    /// Disk snapshots (and memory points), every VM in parallel, unless the
    /// barrier aborted. The results not awaited before the deadline arrive
    /// later on the returned receiver.
    fn snapshot_all<'scope, 'env>(
        &mut self,
        scope: &'scope Scope<'scope, 'env>,
        hv: &'env dyn Hypervisor,
        vms: &'scope mut [BarrierVm<'_>],
        aborted: bool,
    ) -> mpsc::Receiver<SnapshotDone> {
        let (done_tx, done) = mpsc::channel::<SnapshotDone>();
        let count = vms.len();
        if !aborted {
            let timer = StepTimer::start(self.progress, format!("external disk snapshots of {count} VMs"));
            let deadline = self
                .window
                .deadline(self.settings.limit)
                .unwrap_or_else(|| Instant::now() + self.settings.unfrozen_wait);
            for vm in vms.iter_mut() {
                let done_tx = done_tx.clone();
                let plan = vm.plan;
                let memory = vm.memory.as_deref_mut();
                let snapshot = self.settings.snapshot.clone();
                scope.spawn(move || {
                    let result = snapshot_vm(hv, plan, &snapshot, memory, deadline);
                    let _ = done_tx.send(result);
                });
            }
            self.await_snapshots(&done, count, deadline);
            timer.end(self.outcome.failures.is_empty());
            crate::ops::crashpoint::hit("snapshot", "disk-snapshot");
        }
        drop(done_tx);
        done
    }

    /// Records the snapshots' results until all `count` are in or the
    /// deadline passes.
    fn await_snapshots(&mut self, done: &mpsc::Receiver<SnapshotDone>, count: usize, deadline: Instant) {
        let mut pending = count;
        while pending > 0 {
            match done.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(result) => {
                    pending -= 1;
                    if let Some(failure) = record_snapshot(&mut self.outcome, result) {
                        self.outcome.failures.push(failure);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.outcome.failures.push(SnapshotError::FreezeLimit {
                        limit: self.settings.limit,
                        window: self.window.elapsed(),
                        stage: "waiting for the disk snapshots",
                    });
                    break;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    /// Thaws everything: workers not frozen yet thaw as soon as they are;
    /// armed ones that never got the go stand down. Returns when every
    /// worker has ended.
    fn thaw_all(&mut self, orders: Orders, events: &mpsc::Receiver<WorkerEvent>) {
        let thawing = (!orders.is_empty()).then(|| StepTimer::start(self.progress, "thaw"));
        for order in orders.values() {
            let _ = order.send(Order::Thaw);
        }
        drop(orders);
        for event in events.iter() {
            if let Some(failure) = handle_event(&mut self.outcome, &mut self.window, event, self.settings, false) {
                self.outcome.failures.push(failure);
            }
        }
        if let Some(timer) = thawing {
            timer.end(self.outcome.vms.values().all(VmBarrier::thawed));
        }
    }

    /// Snapshots still running when the limit passed: their outcome says
    /// which chains changed.
    fn record_late_snapshots(&mut self, done: &mpsc::Receiver<SnapshotDone>) {
        for result in done.iter() {
            if let Some(failure) = record_snapshot(&mut self.outcome, result) {
                self.outcome.failures.push(failure);
            }
        }
    }
}

/// Takes the workers' events until every VM in `waiting` reported (armed,
/// frozen, or failed without aborting); false (the barrier aborts) when one
/// failed and that aborts, or when `wait` (how long to wait now) runs out,
/// in which case `timed_out` says what is missing.
fn collect(
    events: &mpsc::Receiver<WorkerEvent>,
    waiting: &mut BTreeSet<String>,
    (outcome, window, settings): (&mut BarrierOutcome, &mut Window, &BarrierSettings),
    wait: impl Fn(&Window) -> Duration,
    timed_out: impl FnOnce(&Window, &BTreeSet<String>) -> SnapshotError,
) -> bool {
    while !waiting.is_empty() {
        match events.recv_timeout(wait(window)) {
            Ok(event) => {
                waiting.remove(event_vm(&event));
                if let Some(failure) = handle_event(outcome, window, event, settings, true) {
                    outcome.failures.push(failure);
                    return false;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                outcome.failures.push(timed_out(window, waiting));
                return false;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    true
}

fn event_vm(event: &WorkerEvent) -> &str {
    match event {
        WorkerEvent::Armed { vm }
        | WorkerEvent::Cancelled { vm }
        | WorkerEvent::Frozen { vm, .. }
        | WorkerEvent::FreezeFailed { vm, .. }
        | WorkerEvent::Thawed { vm, .. } => vm,
    }
}

/// Records a worker's event; returns the failure it is, if any.
fn handle_event(
    outcome: &mut BarrierOutcome,
    window: &mut Window,
    event: WorkerEvent,
    settings: &BarrierSettings,
    freezing: bool,
) -> Option<SnapshotError> {
    match event {
        WorkerEvent::Armed { .. } => None,
        WorkerEvent::Cancelled { vm } => {
            outcome.vms.entry(vm).or_default().freeze =
                Some(Err("armed, then stood down before the go: not frozen".into()));
            None
        }
        WorkerEvent::Frozen { vm, at, info } => {
            window.frozen(&vm, at, info);
            outcome.vms.entry(vm).or_default().freeze = Some(Ok(()));
            None
        }
        WorkerEvent::FreezeFailed { vm, error } => {
            let entry = outcome.vms.entry(vm.clone()).or_default();
            entry.freeze = Some(Err(crate::error::chain(&error)));
            // After an abort, a late failure is only worth its reason.
            (settings.freeze_failure_aborts && freezing)
                .then_some(SnapshotError::Freeze { vm, source: Box::new(error) })
        }
        WorkerEvent::Thawed { vm, at, result } => {
            let entry = outcome.vms.entry(vm.clone()).or_default();
            match result {
                Ok(info) => {
                    window.thawed(&vm, at, Some(info.frozen));
                    entry.thaw = Some(Ok(info));
                    info.by_lease_timeout.then_some(SnapshotError::LeaseExpired { vm })
                }
                Err(error) => {
                    window.thawed(&vm, at, None);
                    entry.thaw = Some(Err(crate::error::chain(&error)));
                    Some(SnapshotError::Thaw { vm, source: Box::new(error) })
                }
            }
        }
    }
}

fn record_snapshot(outcome: &mut BarrierOutcome, done: SnapshotDone) -> Option<SnapshotError> {
    let entry = outcome.vms.entry(done.vm.clone()).or_default();
    let SnapshotDone { vm, domain, disks, memory } = done;
    entry.disks = disks.as_ref().map(|result| result.as_ref().map(|_| ()).map_err(|e| crate::error::chain(e)));
    entry.memory_point = memory.as_ref().map(|result| result.as_ref().map(|_| ()).map_err(|e| crate::error::chain(e)));
    match (disks, memory) {
        (Some(Err(source)), memory) => {
            if let Some(Err(error)) = memory {
                tracing::error!(vm, "resuming after a failed disk snapshot: {error}");
            }
            Some(SnapshotError::DiskSnapshot { vm, domain, source: Box::new(source) })
        }
        (_, Some(Err(source))) => Some(SnapshotError::Memory { vm, source }),
        _ => None,
    }
}

/// What the coordinator tells a worker: the go, then the thaw (a thaw
/// before the go stands an armed guest down).
enum Order {
    Freeze,
    Thaw,
}

/// Arms one VM, reports it, freezes at the go, reports it, waits for the
/// thaw order (or the coordinator's end) and thaws.
fn freeze_worker(
    quiescer: &dyn Quiescer,
    vm: String,
    orders: mpsc::Receiver<Order>,
    events: mpsc::Sender<WorkerEvent>,
) {
    let armed = match quiescer.arm(&vm) {
        Ok(armed) => armed,
        Err(error) => {
            let _ = events.send(WorkerEvent::FreezeFailed { vm, error });
            return;
        }
    };
    let _ = events.send(WorkerEvent::Armed { vm: vm.clone() });
    if !matches!(orders.recv(), Ok(Order::Freeze)) {
        // Dropping the armed guest unwinds its hooks.
        drop(armed);
        let _ = events.send(WorkerEvent::Cancelled { vm });
        return;
    }
    let frozen = match armed {
        Some(armed) => armed.freeze(),
        None => quiescer.freeze(&vm),
    };
    match frozen {
        Err(error) => {
            let _ = events.send(WorkerEvent::FreezeFailed { vm, error });
        }
        Ok((guest, info)) => {
            let _ = events.send(WorkerEvent::Frozen { vm: vm.clone(), at: Instant::now(), info });
            // An order, or the coordinator dropped its sender: thaw either way.
            let _ = orders.recv();
            let result = guest.thaw();
            let _ = events.send(WorkerEvent::Thawed { vm, at: Instant::now(), result });
        }
    }
}

/// One VM: [pause], the atomic external snapshot of all its disks,
/// [memory point]. The guest runs again when this returns.
fn snapshot_vm(
    hv: &dyn Hypervisor,
    plan: &VmPlan,
    snapshot: &str,
    memory: Option<&mut MemoryCapture>,
    deadline: Instant,
) -> SnapshotDone {
    let vm = plan.vm.clone();
    let domain = plan.domain.clone();
    let mut memory = memory;
    if let Some(capture) = memory.as_deref_mut() {
        if let Err(error) = capture.pause(hv) {
            return SnapshotDone { vm, domain, disks: None, memory: Some(Err(error)) };
        }
        crate::ops::crashpoint::hit("snapshot", "memory-point");
    }
    let disks = hv.create_external_snapshot(
        &plan.domain,
        &ExternalSnapshot {
            name: snapshot.to_owned(),
            disks: plan.disks.iter().map(|disk| (disk.target.clone(), disk.overlay.clone())).collect(),
            memory_file: None,
            atomic: true,
            quiesce: false,
            no_metadata: true,
            // libvirt refuses `live` for disk-only snapshots: it only means
            // something while memory is written, and a disk-only snapshot
            // never pauses the guest anyway.
            live: false,
        },
    );
    let memory = match (memory, &disks) {
        (Some(capture), Ok(())) => Some(capture.capture(hv, deadline)),
        // Only the resume is left to do; its failure is worth reporting.
        (Some(capture), Err(_)) => capture.resume(hv).err().map(Err),
        (None, _) => None,
    };
    SnapshotDone { vm, domain, disks: Some(disks), memory }
}

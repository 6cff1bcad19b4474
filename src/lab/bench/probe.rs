//! What a user of the guests' services sees during an operation, and how
//! long libvirt reports a VM paused.
//!
//! [`Prober`]: one thread per service, living in the lab's network
//! namespace (the guests exist nowhere else), sends a request every
//! [`INTERVAL`] for as long as it runs: an HTTP GET to web on :80, a TCP
//! connect-and-read to db on :5432 (what the guests serve, see
//! `src/lab/guest`). One request is in flight at a time per service, so
//! the prober never piles load on a slow TCG guest; the gap between two
//! answers is then at least a request's latency, which [`Prober::baseline`]
//! measures while nothing else happens. An operation's stall is the
//! longest gap between answers that overlaps its interval; a request that
//! fails or takes longer than [`TIMEOUT`] counts as failed.
//!
//! [`PauseWatch`]: polls libvirt's state of one domain every
//! [`PAUSE_POLL`]; libvirt learns of QEMU's STOP and RESUME events at once
//! (including those of a QMP `stop` it did not issue itself), so the
//! longest paused interval is the VM's pause to within a poll.

use super::BenchError;
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const INTERVAL: Duration = Duration::from_millis(10);
pub const TIMEOUT: Duration = Duration::from_secs(2);
pub const PAUSE_POLL: Duration = Duration::from_millis(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// `GET /` on :80; an answer is `HTTP/1.0 200` (web fetched its page from db).
    Http,
    /// Connect to :5432 and read until the server closes; an answer is any byte.
    Tcp,
}

#[derive(Debug, Clone)]
pub struct Target {
    /// e.g. `bsvc-web:80`
    pub label: String,
    pub addr: SocketAddr,
    pub service: Service,
}

#[derive(Debug, Default)]
struct Log {
    answers: Vec<Instant>,
    failures: Vec<(Instant, String)>,
}

/// One service's view of an interval.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStall {
    pub service: String,
    /// Longest time between two answers overlapping the interval.
    pub longest_gap_ms: f64,
    pub answers: usize,
    pub failed_requests: usize,
    /// What the first failed request saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_failure: Option<String>,
    /// False when the service had not answered again when the bench gave
    /// up waiting: the gap is then a lower bound.
    pub recovered: bool,
}

#[derive(Debug)]
pub struct Prober {
    stop: Arc<AtomicBool>,
    targets: Vec<(Target, Arc<Mutex<Log>>)>,
    threads: Vec<JoinHandle<()>>,
}

impl Prober {
    /// Starts one probing thread per target inside `netns`.
    pub fn start(netns: &str, targets: Vec<Target>) -> Result<Prober, BenchError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut prober = Prober { stop: stop.clone(), targets: Vec::new(), threads: Vec::new() };
        for target in targets {
            let handle = std::fs::File::open(format!("/run/netns/{netns}"))
                .map_err(|source| BenchError::Netns { netns: netns.to_string(), source })?;
            let log = Arc::new(Mutex::new(Log::default()));
            let (thread_log, thread_stop, thread_target) = (log.clone(), stop.clone(), target.clone());
            let (entered_tx, entered_rx) = std::sync::mpsc::channel();
            let thread = std::thread::Builder::new()
                .name(format!("probe-{}", target.label))
                .spawn(move || {
                    // This thread lives in the lab's namespace from here on;
                    // it only ever makes connections to the guests.
                    let entered = nix::sched::setns(&handle, nix::sched::CloneFlags::CLONE_NEWNET);
                    let ok = entered.is_ok();
                    let _ = entered_tx.send(entered.map_err(std::io::Error::from));
                    if ok {
                        probe_loop(&thread_target, &thread_log, &thread_stop);
                    }
                })
                .map_err(|source| BenchError::Netns { netns: netns.to_string(), source })?;
            let entered = entered_rx.recv().unwrap_or_else(|_| Err(std::io::Error::other("probe thread died")));
            prober.threads.push(thread);
            entered.map_err(|source| BenchError::Netns { netns: netns.to_string(), source })?;
            prober.targets.push((target, log));
        }
        Ok(prober)
    }

    /// Waits until every service answered at least once after `after`, up
    /// to `deadline`; false if one did not.
    pub fn wait_answered_after(&self, after: Instant, deadline: Duration) -> bool {
        let what = "every service to answer";
        crate::wait::until::<(), std::io::Error, _>(what, deadline, INTERVAL, || {
            Ok(self.targets.iter().all(|(_, log)| lock(log).answers.last().is_some_and(|t| *t > after)).then_some(()))
        })
        .is_ok()
    }

    /// Each service's stall over `[start, end]`.
    pub fn stalls(&self, start: Instant, end: Instant) -> Vec<ServiceStall> {
        let now = Instant::now();
        self.targets.iter().map(|(target, log)| stall(&target.label, &lock(log), start, end, now)).collect()
    }

    /// The probes' own resolution: each service's median gap between
    /// answers over the last `window`, while nothing else happens.
    pub fn baseline(&self, window: Duration) -> Vec<(String, f64)> {
        std::thread::sleep(window);
        let since = Instant::now() - window;
        self.targets
            .iter()
            .map(|(target, log)| {
                let log = lock(log);
                let answers: Vec<Instant> = log.answers.iter().copied().filter(|t| *t >= since).collect();
                let mut gaps: Vec<f64> = answers.windows(2).map(|w| ms(w[1] - w[0])).collect();
                (target.label.clone(), median(&mut gaps).unwrap_or(f64::NAN))
            })
            .collect()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn probe_loop(target: &Target, log: &Mutex<Log>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let result = request(target);
        let done = Instant::now();
        {
            let mut log = lock(log);
            match result {
                Ok(()) => log.answers.push(done),
                Err(why) => log.failures.push((done, why)),
            }
        }
        if let Some(rest) = INTERVAL.checked_sub(done - sent) {
            std::thread::sleep(rest);
        }
    }
}

fn request(target: &Target) -> Result<(), String> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&target.addr, TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    if target.service == Service::Http {
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n").map_err(|e| format!("send: {e}"))?;
    }
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(|e| format!("read: {e}"))?;
    if started.elapsed() > TIMEOUT {
        return Err(format!("answered after {} ms", started.elapsed().as_millis()));
    }
    let good = match target.service {
        Service::Http => answer.starts_with(b"HTTP/1.0 200"),
        Service::Tcp => !answer.is_empty(),
    };
    if good {
        Ok(())
    } else {
        let head = String::from_utf8_lossy(&answer[..answer.len().min(40)]).into_owned();
        Err(format!("bad answer {head:?}"))
    }
}

fn stall(label: &str, log: &Log, start: Instant, end: Instant, now: Instant) -> ServiceStall {
    let mut previous = log.answers.iter().rev().find(|t| **t <= start).copied().unwrap_or(start);
    let mut longest = Duration::ZERO;
    let mut answers = 0;
    let mut closed_at = None;
    for &t in log.answers.iter().filter(|t| **t > start) {
        longest = longest.max(t - previous);
        previous = t;
        answers += 1;
        if t >= end {
            closed_at = Some(t);
            break;
        }
    }
    let recovered = closed_at.is_some();
    if !recovered {
        longest = longest.max(now.max(end) - previous);
    }
    let until = closed_at.unwrap_or(now.max(end));
    let failures: Vec<&(Instant, String)> = log.failures.iter().filter(|(t, _)| *t >= start && *t <= until).collect();
    ServiceStall {
        service: label.to_string(),
        longest_gap_ms: ms(longest),
        answers,
        failed_requests: failures.len(),
        first_failure: failures.first().map(|(_, why)| why.clone()),
        recovered,
    }
}

/// Watches one domain's state for pauses.
#[derive(Debug)]
pub struct PauseWatch {
    stop: Arc<AtomicBool>,
    pauses: Arc<Mutex<Pauses>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Pauses {
    done: Vec<(Instant, Instant)>,
    since: Option<Instant>,
    polls: u64,
    errors: u64,
}

impl PauseWatch {
    pub fn start(libvirt_uri: &str, domain: &str) -> Result<PauseWatch, BenchError> {
        let step = format!("watch {domain} for pauses");
        let conn = virt::connect::Connect::open(Some(libvirt_uri)).map_err(|e| {
            BenchError::libvirt(&step)(crate::hypervisor::HvError::Connect {
                uri: libvirt_uri.to_string(),
                source: e.into(),
            })
        })?;
        let dom = conn.lookup_domain_by_name(domain).map_err(|e| {
            BenchError::libvirt(&step)(crate::hypervisor::HvError::LookupDomain {
                name: domain.to_string(),
                source: e.into(),
            })
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let pauses = Arc::new(Mutex::new(Pauses::default()));
        let (thread_stop, thread_pauses) = (stop.clone(), pauses.clone());
        let thread = std::thread::Builder::new()
            .name(format!("pause-{domain}"))
            .spawn(move || {
                // The connection lives and dies with this thread.
                let _conn = conn;
                while !thread_stop.load(Ordering::Relaxed) {
                    let state = dom.state();
                    let now = Instant::now();
                    {
                        let mut pauses = lock(&thread_pauses);
                        pauses.polls += 1;
                        match state {
                            Ok((virt::enumutil::Enum::Known(virt::domain::DomainState::Paused), _)) => {
                                pauses.since.get_or_insert(now);
                            }
                            Ok(_) => {
                                if let Some(since) = pauses.since.take() {
                                    pauses.done.push((since, now));
                                }
                            }
                            Err(_) => pauses.errors += 1,
                        }
                    }
                    std::thread::sleep(PAUSE_POLL);
                }
            })
            .map_err(|source| BenchError::Io { step, action: "start a thread for", path: domain.into(), source })?;
        Ok(PauseWatch { stop, pauses, thread: Some(thread) })
    }

    /// The longest pause overlapping `[start, end]` (zero when none).
    pub fn longest(&self, start: Instant, end: Instant) -> Duration {
        let pauses = lock(&self.pauses);
        let open = pauses.since.map(|since| (since, Instant::now()));
        pauses
            .done
            .iter()
            .copied()
            .chain(open)
            .filter(|(from, to)| *to >= start && *from <= end)
            .map(|(from, to)| to - from)
            .max()
            .unwrap_or(Duration::ZERO)
    }
}

impl Drop for PauseWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A probe thread never panics while holding the lock; if one did, its
    // data is still the best record there is.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}

pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    Some(values[values.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(start: Instant, answers_ms: &[u64], failures_ms: &[u64]) -> Log {
        Log {
            answers: answers_ms.iter().map(|m| start + Duration::from_millis(*m)).collect(),
            failures: failures_ms.iter().map(|m| (start + Duration::from_millis(*m), "x".into())).collect(),
        }
    }

    #[test]
    fn the_stall_is_the_longest_gap_overlapping_the_interval_closed_by_the_next_answer() {
        let t0 = Instant::now();
        let log = log(t0, &[0, 10, 20, 400, 410, 900, 910], &[300, 950]);

        let s = stall("web", &log, t0 + Duration::from_millis(15), t0 + Duration::from_millis(405), t0);

        assert_eq!(s.longest_gap_ms, 380.0);
        assert_eq!(s.answers, 3, "20, 400 and 410 (the first after the end)");
        assert_eq!(s.failed_requests, 1);
        assert!(s.recovered);
    }

    #[test]
    fn a_service_that_never_answers_again_is_not_recovered_and_counts_until_now() {
        let t0 = Instant::now();
        let log = log(t0, &[0, 10], &[]);

        let s = stall(
            "db",
            &log,
            t0 + Duration::from_millis(20),
            t0 + Duration::from_millis(30),
            t0 + Duration::from_millis(500),
        );

        assert!(!s.recovered);
        assert_eq!(s.longest_gap_ms, 490.0);
    }

    #[test]
    fn median_of_nothing_is_none() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
    }
}

//! Traffic inside a lab's network namespaces, for the end-to-end tests:
//! a client that requests a web page every 50 ms across an operation
//! ([`Client`]), and a TCP listener that answers a fixed line from inside a
//! namespace ([`Banner`]). Sockets are made by short-lived threads that
//! entered the namespace (setns(2)): the test process itself never leaves
//! its own, and nothing here reaches beyond the namespace named.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use envclone::guest::netns::connect_tcp;

/// One request may take this long before it counts as failed (a frozen
/// guest answers late, not never).
const REQUEST_WITHIN: Duration = Duration::from_secs(30);

/// What the client saw.
#[derive(Debug)]
pub struct ClientReport {
    pub requests: u64,
    /// Each failed request: when (since the start) and why.
    pub failures: Vec<String>,
    /// The longest time from one successful answer to the next.
    pub longest_gap: Duration,
    pub longest_request: Duration,
    /// The page of the first successful answer.
    pub first_page: String,
}

/// HTTP GETs of `/` at `addr` inside `netns`, one every `every`, until stopped.
pub struct Client {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<ClientReport>,
}

impl Client {
    /// Starts the client and returns once it had a first answer (so that
    /// what follows is measured from a serving state).
    pub fn start(netns: &str, addr: SocketAddr, every: Duration) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let first = Arc::new(AtomicBool::new(false));
        let netns = netns.to_owned();
        let handle = {
            let (stop, first) = (stop.clone(), first.clone());
            std::thread::spawn(move || run_client(&netns, addr, every, &stop, &first))
        };
        envclone::wait::until("the client's first answer", Duration::from_secs(120), every, || {
            Ok::<_, std::io::Error>((first.load(Ordering::SeqCst) || handle.is_finished()).then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e}"));
        Client { stop, handle }
    }

    pub fn stop(self) -> ClientReport {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("the client thread panicked")
    }
}

fn run_client(netns: &str, addr: SocketAddr, every: Duration, stop: &AtomicBool, first: &AtomicBool) -> ClientReport {
    let started = Instant::now();
    let mut report = ClientReport {
        requests: 0,
        failures: Vec::new(),
        longest_gap: Duration::ZERO,
        longest_request: Duration::ZERO,
        first_page: String::new(),
    };
    let mut last_answer: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) {
        let sent = Instant::now();
        report.requests += 1;
        match get(netns, addr) {
            Ok(page) => {
                let now = Instant::now();
                if let Some(last) = last_answer {
                    report.longest_gap = report.longest_gap.max(now - last);
                } else {
                    report.first_page = page;
                    first.store(true, Ordering::SeqCst);
                }
                last_answer = Some(now);
            }
            Err(why) => {
                // Before the first answer the service may still be starting.
                if last_answer.is_some() {
                    report.failures.push(format!("at {:.3} s: {why}", (sent - started).as_secs_f64()));
                }
            }
        }
        report.longest_request = report.longest_request.max(sent.elapsed());
        if let Some(rest) = every.checked_sub(sent.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    report
}

/// One `GET /` answered `200`; its body.
pub fn get(netns: &str, addr: SocketAddr) -> Result<String, String> {
    let mut stream = connect_tcp(Some(netns), addr, REQUEST_WITHIN).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(REQUEST_WITHIN)).map_err(|e| e.to_string())?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").map_err(|e| format!("send: {e}"))?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|e| format!("read: {e}"))?;
    match answer.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.0 200") => Ok(body.to_owned()),
        _ => Err(format!("answer {answer:?}")),
    }
}

/// A TCP listener bound inside a namespace that answers every connection
/// with one line, until dropped.
pub struct Banner {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Banner {
    pub fn start(netns: &str, addr: SocketAddr, line: &str) -> Banner {
        let listener = listen_in(netns, addr);
        listener.set_nonblocking(true).expect("non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let line = format!("{line}\n");
        let handle = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.write_all(line.as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        Banner { stop, handle: Some(handle) }
    }
}

impl Drop for Banner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// A listener bound to `addr` in `/run/netns/<netns>` (the socket keeps
/// the namespace it was made in; the thread that made it ends at once).
fn listen_in(netns: &str, addr: SocketAddr) -> TcpListener {
    let handle = File::open(format!("/run/netns/{netns}")).expect("open the namespace");
    std::thread::spawn(move || {
        nix::sched::setns(&handle, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter the namespace");
        TcpListener::bind(addr)
    })
    .join()
    .expect("the listening thread panicked")
    .unwrap_or_else(|e| panic!("listen on {addr}: {e}"))
}

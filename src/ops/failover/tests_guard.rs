//! The fence guard as commands run it ([`super::guard::run`]), on the
//! harness of `tests.rs`: it connects only while a switch is in force,
//! fences a returned old primary first and says so loudly, and says a
//! fence confirmed quietly.

use std::cell::RefCell;

use super::guard::{self, Connection, Notice};
use super::*;
use crate::catalog::FenceKind;
use crate::hypervisor::{DomainState, FakeHypervisor, Hypervisor};

impl Harness {
    /// The guard over every switch, each primary host answering through
    /// `hv` (or not, when `None`); and the URIs it connected to.
    fn run_guard(&self, hv: Option<&FakeHypervisor>) -> (Vec<SwitchStatus>, Vec<String>) {
        let asked = RefCell::new(Vec::new());
        let connect = |uri: &str| {
            asked.borrow_mut().push(uri.to_owned());
            match hv {
                Some(hv) => Connection::Answers(hv),
                None => Connection::Unreachable { uri: uri.to_owned(), reason: "connection refused".into() },
            }
        };
        let statuses = guard::run(&self.config.controller, &self.catalog, None, connect, at(45)).unwrap();
        (statuses, asked.into_inner())
    }

    fn primary_stopped(&self) {
        for domain in ["web", "db"] {
            self.hv.destroy_domain(domain).unwrap();
        }
    }
}

#[test]
fn the_guard_connects_to_no_host_while_no_switch_is_in_force() {
    let h = Harness::new();

    let (statuses, asked) = h.run_guard(Some(&h.hv));

    assert!(statuses.is_empty(), "{statuses:#?}");
    assert!(asked.is_empty(), "{asked:?}");
}

#[test]
fn a_returned_old_primary_is_fenced_again_first_and_said_loudly() {
    let h = Harness::new();
    h.planned(true).unwrap();
    h.hv.start_domain("web").unwrap();

    let (statuses, asked) = h.run_guard(Some(&h.hv));

    assert_eq!(asked, [h.config.controller.libvirt_uri.as_str()], "the primary's host, once");
    assert_eq!(h.state("web"), DomainState::ShutOff);
    assert_eq!(h.state("sb-web"), DomainState::Running, "the active side is untouched");
    let notices = guard::notices(&statuses);
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(notices[0].loud);
    assert!(
        notices[0].line.starts_with(
            "OLD PRIMARY RETURNED: domain web of demo ran while standby sb serves epoch 1; fenced again ("
        ),
        "{}",
        notices[0].line
    );
}

#[test]
fn an_old_primary_that_cannot_be_stopped_is_said_loudly_with_the_way_to_stop_it() {
    let h = Harness::new();
    h.planned(true).unwrap();
    let hv = FakeHypervisor::running_env("net", &["web", "db"]).fail_at(crate::hypervisor::FakeStep::DestroyDomain);

    let (statuses, _) = h.run_guard(Some(&hv));

    let notices = guard::notices(&statuses);
    assert_eq!(notices.len(), 2, "{notices:?}");
    assert!(notices.iter().all(|n| n.loud), "{notices:?}");
    assert!(
        notices[1].line.starts_with("OLD PRIMARY RETURNED AND STILL RUNS: domain web of demo"),
        "{}",
        notices[1].line
    );
    assert!(notices[1].line.ends_with("stop it by hand (`virsh destroy web`)"), "{}", notices[1].line);
}

#[test]
fn a_fence_confirmed_once_its_host_answers_is_said_quietly() {
    let h = Harness::new();
    h.primary_stopped();
    let unreachable = PrimaryHost::Unreachable { uri: "qemu:///system", reason: "connection refused" };
    let how = Unplanned { force: false, host: unreachable, primary_uri: None };
    let agents = |_: &Environment| -> Box<dyn CloneAgents> { Box::new(ReadyAgents::answering(true)) };
    let request = DrillRequest { env: "demo".into(), standby: None };
    h.with_context(|ctx| unplanned(ctx, &request, how, h.tools(&agents))).unwrap();
    let (down, _) = h.run_guard(None);
    assert!(!down[0].checked && guard::notices(&down).is_empty(), "{down:#?}");

    let (statuses, _) = h.run_guard(Some(&h.hv));

    let actions: Vec<FenceKind> = statuses[0].actions.iter().map(|a| a.action).collect();
    assert_eq!(actions, [FenceKind::Fenced, FenceKind::Fenced]);
    let notices = guard::notices(&statuses);
    assert_eq!(
        notices[0],
        Notice {
            line: "fence of domain db of demo confirmed: confirmed: its host answers again; autostart off, stamped"
                .into(),
            loud: false
        }
    );
}

//! `envclone delete-snapshot ENV SNAPSHOT`: deletes one snapshot and merges
//! its images away live; a delete that pins forbid is deferred, says why
//! and exits 0. The work is in [`crate::ops::delete`]; this file wires
//! libvirt, the catalog and the progress lines, and prints the report.

use super::session::Session;
use super::Output;
use crate::cli::{DeleteSnapshotArgs, GlobalArgs};
use crate::exit::ExitCode;
use crate::ops::context::Event;
use crate::ops::delete::{self, DeleteReport, DeleteSettings, DeleteSnapshotRequest};
use crate::Result;

pub fn run(global: &GlobalArgs, args: &DeleteSnapshotArgs, out: &Output) -> Result<ExitCode> {
    let session = Session::open(global)?;
    let (config, _catalog) = (&session.config, &session.catalog);
    config.environment(&args.environment)?;
    let progress = |event: &Event| out.progress(&event.to_string());
    let ctx = session.context_for(&args.environment, &progress)?;
    let request = DeleteSnapshotRequest { env: args.environment.clone(), snapshot: args.snapshot.clone() };
    let report = delete::delete_snapshot(&ctx, &request, &DeleteSettings::default())?;
    out.report(&report, human);
    Ok(ExitCode::Ok)
}

pub(super) fn human(report: &DeleteReport) -> String {
    let name = format!("{}/{}", report.env, report.snapshot);
    if let Some(reason) = &report.reason {
        let mut text = if report.deleted {
            format!("snapshot {name} is deleted; merging its images is deferred (nothing changed):\n")
        } else {
            format!("delete of snapshot {name} deferred (nothing changed; `envclone prune` tries again):\n")
        };
        for line in &report.deferred {
            text.push_str(&format!("  {line}\n"));
        }
        if report.deferred.is_empty() {
            text.push_str(&format!("  {reason}\n"));
        }
        return text;
    }
    if report.already_deleted {
        return format!("snapshot {name} was already deleted; nothing left to do\n");
    }
    let mut text = format!(
        "snapshot {name} deleted in {:.1} s, {} freed\n",
        report.duration_ms as f64 / 1000.0,
        bytesize::ByteSize(report.freed_bytes)
    );
    for merge in &report.merged {
        text.push_str(&format!(
            "  {}/{}: {} {} into {}\n",
            merge.vm,
            merge.disk,
            merge.method,
            merge.merged.display(),
            merge.into.display()
        ));
    }
    for image in &report.released {
        text.push_str(&format!("  released {} (a base image: it stays)\n", image.display()));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::delete::MergeReport;
    use std::path::PathBuf;

    fn report() -> DeleteReport {
        DeleteReport {
            env: "demo".into(),
            snapshot: "s2".into(),
            deleted: true,
            already_deleted: false,
            deferred: vec![],
            reason: None,
            merged: vec![MergeReport {
                vm: "web".into(),
                disk: "vda".into(),
                method: "commit",
                merged: PathBuf::from("/img/s3.qcow2"),
                into: PathBuf::from("/img/s2.qcow2"),
                moved_pins: vec!["demo/s3".into()],
                memory_images: vec![],
            }],
            released: vec![PathBuf::from("/img/base.qcow2")],
            removed: vec![PathBuf::from("/img/s3.qcow2")],
            freed_bytes: 2 << 20,
            duration_ms: 1500,
        }
    }

    #[test]
    fn a_deleted_snapshot_lists_its_merges_and_releases() {
        let text = human(&report());

        assert!(text.starts_with("snapshot demo/s2 deleted in 1.5 s"), "{text}");
        assert!(text.contains("web/vda: commit /img/s3.qcow2 into /img/s2.qcow2"), "{text}");
        assert!(text.contains("released /img/base.qcow2 (a base image: it stays)"), "{text}");
    }

    #[test]
    fn a_deferred_delete_says_nothing_changed_and_lists_each_blocker() {
        let deferred = DeleteReport {
            deleted: false,
            deferred: vec!["web/vda: /img/s2.qcow2 is also needed by clone 'qa'".into()],
            reason: Some("web/vda: /img/s2.qcow2 is also needed by clone 'qa'".into()),
            merged: vec![],
            released: vec![],
            removed: vec![],
            ..report()
        };

        let text = human(&deferred);

        assert!(text.starts_with("delete of snapshot demo/s2 deferred (nothing changed"), "{text}");
        assert!(text.contains("  web/vda: /img/s2.qcow2 is also needed by clone 'qa'\n"), "{text}");
    }
}

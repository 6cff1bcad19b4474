//! End to end: `envclone lab bench` runs on a lab set up as README says
//! (its tools, virt-clone included, come from scripts/install-deps.sh) and
//! writes its table, JSON and plot. The smallest sizes only (1 GiB of data,
//! a 1-VM environment): the figures themselves belong to the full bench
//! run, not to a test. All traffic stays inside the lab's namespaces.

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{stdout, LabUnderTest};
use serde_json::Value;

const LAB: &str = "bench-smoke";

#[test]
fn lab_bench_writes_its_table_json_and_plot() {
    let lab = LabUnderTest::up(LAB);
    let out = tempfile::tempdir().unwrap();
    let (json_file, plot) = (out.path().join("bench.json"), out.path().join("clone-time.svg"));

    let output = lab.envclone(&[
        "lab",
        "bench",
        "--only",
        "data,scale",
        "--data-gib",
        "1",
        "--vms",
        "1",
        "--json-file",
        json_file.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);

    assert!(output.status.success(), "lab bench: {}", String::from_utf8_lossy(&output.stderr));
    let table = stdout(&output);
    assert!(table.contains("**Clone time against data size**") && table.contains("| 1 GiB |"), "{table}");
    assert!(table.contains("**Scale**") && table.contains("**Targets**"), "{table}");
    let report: Value = serde_json::from_slice(&std::fs::read(&json_file).unwrap()).unwrap();
    assert_eq!(report["not_measured"], serde_json::json!([]), "{report:#}");
    let data = &report["data"]["points"][0];
    assert_eq!(data["size_gib"], 1);
    for figure in ["linked_ms", "full_ms", "virt_clone_ms", "convert_ms"] {
        assert!(data[figure].as_f64().unwrap() > 0.0, "{figure}: {data:#}");
    }
    assert_eq!(data["full_runs_ms"].as_array().unwrap().len(), 3, "alternating pairs: {data:#}");
    let scale = &report["scale"]["points"][0];
    assert_eq!(scale["vms"], 1);
    assert!(scale["freeze_window_ms"].as_f64().unwrap() > 0.0, "{scale:#}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("envclone linked"), "{svg}");

    // The bench removes what it defined: only demo's domains are left.
    let domains = lab.virsh(&["list", "--all", "--name"]);
    let mut left: Vec<&str> = domains.lines().filter(|l| !l.is_empty()).collect();
    left.sort();
    assert_eq!(left, ["demo-db", "demo-web"]);
}

//! The order/inventory flow end to end, with crashes: the demo runner
//! starts a broker, both services, both relays, places orders against
//! stock too small for all of them, SIGKILLs the inventory service and the
//! order relay mid-run and restarts them, then checks every invariant and
//! exits non-zero if one fails. Once on tansu (a broker that is its own
//! program, with its own group coordinator) and once on librdkafka's mock
//! cluster, the demo's default.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn converges_through_crashes_on_tansu() {
    converges_through_crashes("tansu");
}

#[test]
fn converges_through_crashes_on_the_mock_cluster() {
    converges_through_crashes("mock");
}

fn converges_through_crashes(broker: &str) {
    let demo = PathBuf::from(env!("CARGO_BIN_EXE_order-inventory-demo"));
    let relay = demo.with_file_name("outbox-relay");
    assert!(
        relay.exists(),
        "{} is missing: build it first (cargo build -p outbox-relay, or run the whole workspace's tests)",
        relay.display()
    );
    let run_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "order-inventory-e2e-{broker}-{}",
        std::process::id()
    ));
    let status = Command::new(&demo)
        .args([
            "--orders",
            "150",
            "--rate",
            "50",
            "--skus",
            "4",
            "--stock",
            "40",
            "--chaos",
            "--timeout",
            "90s",
            "--duplicates",
            "20",
            "--broker",
            broker,
        ])
        .arg("--tansu-bin")
        .arg(outbox_testkit::tansu_bin())
        .arg("--run-dir")
        .arg(&run_dir)
        .status()
        .expect("the demo runner starts");
    assert!(
        status.success(),
        "invariants failed or the run broke; logs in {}",
        run_dir.display()
    );

    let report =
        std::fs::read_to_string(run_dir.join("report.md")).expect("the runner writes a report");
    let wire = report
        .lines()
        .find(|l| l.starts_with("- on the wire:"))
        .expect("wire line");
    let duplicates: usize = wire
        .split(": ")
        .nth(2)
        .and_then(|d| d.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("duplicate count");
    assert!(
        duplicates >= 20,
        "the injected duplicates reached the wire:\n{report}"
    );
    assert_eq!(
        report.matches("- fault: SIGKILL").count(),
        2,
        "both crashes happened:\n{report}"
    );
    assert!(!report.contains("**NO**"), "{report}");
    assert!(
        report.contains("| order confirmed or cancelled |"),
        "the report gives the latency:\n{report}"
    );
    let count = |label: &str| -> usize {
        let line = report
            .lines()
            .find(|l| l.starts_with("- orders:"))
            .expect("orders line");
        line.split(", ")
            .find_map(|part| {
                part.trim()
                    .strip_suffix(label)
                    .map(|n| n.trim().rsplit(' ').next().unwrap().parse().unwrap())
            })
            .unwrap_or(0)
    };
    assert!(
        count("confirmed") > 0,
        "some orders must be confirmed:\n{report}"
    );
    assert!(
        count("cancelled") > 0,
        "stock was too small for all: some orders must be cancelled:\n{report}"
    );
}

//! Smoke runs of `herald-bench` (seconds, a handful of connections) so the
//! tool cannot rot: it must run to the end against a real relay, lose
//! nothing and write its JSON. No timing is asserted.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Backend, Relay, ADMIN, PUBLISHER};
use serde_json::Value;

/// Runs the bench with `args` and returns its JSON report.
fn bench(dir: &Path, args: &[&str]) -> Value {
    let out = dir.join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .args(args)
        .args(["--max-time", "120", "--threads", "1", "--out"])
        .arg(&out)
        .current_dir(dir)
        .output()
        .expect("run herald-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "herald-bench {args:?} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let text = std::fs::read_to_string(&out).expect("JSON report written");
    serde_json::from_str(&text).expect("report is JSON")
}

/// A metric's value from a report.
fn metric(report: &Value, key: &str) -> f64 {
    report["metrics"]
        .as_array()
        .expect("metrics")
        .iter()
        .find(|m| m["key"] == key)
        .and_then(|m| m["value"].as_f64())
        .unwrap_or_else(|| panic!("no metric {key} in {report:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_against_a_running_relay_loses_nothing() {
    let relay = Relay::start(Backend::Sqlite).await;
    let base = relay.base.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().to_owned();
    let report = tokio::task::spawn_blocking(move || {
        bench(
            &path,
            &[
                "--url",
                &base,
                "--admin-token",
                ADMIN,
                "--publisher-token",
                PUBLISHER,
                "fanout",
                "--subscribers",
                "5",
                "--duration",
                "2",
            ],
        )
    })
    .await
    .expect("bench thread");
    assert_eq!(report["scenario"], "fanout");
    assert_eq!(metric(&report, "subscribers"), 5.0);
    assert!(metric(&report, "published") > 0.0, "{report:#}");
    assert!(metric(&report, "deliveries") > 0.0, "{report:#}");
    assert_eq!(metric(&report, "lost"), 0.0, "{report:#}");
    assert_eq!(metric(&report, "repeats"), 0.0, "{report:#}");
    assert_eq!(
        metric(&report, "deliveries"),
        metric(&report, "published") * 5.0,
        "every subscriber gets every event: {report:#}"
    );
}

#[test]
fn ingest_and_backfill_with_a_spawned_relay() {
    let dir = tempfile::tempdir().expect("temp dir");
    let herald = env!("CARGO_BIN_EXE_herald");
    let report = bench(
        dir.path(),
        &[
            "--spawn-herald",
            herald,
            "ingest",
            "--publishers",
            "2",
            "--batch",
            "10",
            "--duration",
            "1",
        ],
    );
    assert_eq!(report["scenario"], "ingest");
    assert!(metric(&report, "acked") > 0.0, "{report:#}");
    assert_eq!(metric(&report, "errors"), 0.0, "{report:#}");

    let report = bench(
        dir.path(),
        &[
            "--spawn-herald",
            herald,
            "backfill",
            "--events",
            "300",
            "--repeat",
            "2",
        ],
    );
    assert_eq!(report["scenario"], "backfill");
    assert_eq!(metric(&report, "lost"), 0.0, "{report:#}");
    assert!(
        report["warnings"].as_array().is_some_and(Vec::is_empty),
        "{report:#}"
    );
}

#[test]
fn cluster_of_two_nodes_on_postgres() {
    let dir = tempfile::tempdir().expect("temp dir");
    let herald = env!("CARGO_BIN_EXE_herald");
    let database = common::postgres_url();
    let report = bench(
        dir.path(),
        &[
            "--spawn-herald",
            herald,
            "--database-url",
            &database,
            "cluster",
            "--nodes",
            "2",
            "--idle-streams",
            "20",
            "--idle-maps",
            "2",
            "--streams-per-worker",
            "8",
            "--hold",
            "0.2",
            "--settle",
            "0.2",
            "--fanout-subscribers",
            "10",
            "--fanout-publishers",
            "2",
            "--fanout-duration",
            "1",
            "--latency-subscribers",
            "10",
            "--latency-rate",
            "50",
            "--latency-duration",
            "1",
            "--ingest-publishers",
            "2",
            "--ingest-batches",
            "10",
            "--ingest-duration",
            "1",
            "--pause",
            "0.1",
        ],
    );
    assert_eq!(report["scenario"], "cluster", "{report:#}");
    let cases = report["cases"].as_array().expect("cases");
    let names: Vec<&str> = cases.iter().filter_map(|c| c["case"].as_str()).collect();
    assert_eq!(names, ["idle", "fanout", "latency", "ingest-b10"]);
    for case in cases {
        let one = case["one_node"].as_array().expect("one_node runs");
        let two = case["cluster"].as_array().expect("cluster runs");
        assert_eq!((one.len(), two.len()), (1, 1), "{case:#}");
        assert_eq!(two[0]["params"]["nodes"], 2, "{case:#}");
        match case["case"].as_str() {
            Some("idle") => {
                // 20 streams over 2 nodes and 3 client processes; the single
                // node holds its share.
                assert_eq!(metric(&two[0], "streams"), 20.0, "{case:#}");
                assert_eq!(metric(&two[0], "listed"), 20.0, "{case:#}");
                assert_eq!(metric(&two[0], "client_processes"), 3.0, "{case:#}");
                assert_eq!(metric(&one[0], "streams"), 10.0, "{case:#}");
                for run in [&one[0], &two[0]] {
                    assert_eq!(metric(run, "failed"), 0.0, "{case:#}");
                }
            }
            Some("fanout" | "latency") => {
                for run in [&one[0], &two[0]] {
                    assert_eq!(metric(run, "lost"), 0.0, "{case:#}");
                    assert_eq!(metric(run, "repeats"), 0.0, "{case:#}");
                    assert!(metric(run, "published") > 0.0, "{case:#}");
                    assert_eq!(
                        metric(run, "deliveries"),
                        metric(run, "published") * 10.0,
                        "every subscriber gets every event: {case:#}"
                    );
                }
            }
            _ => {
                for run in [&one[0], &two[0]] {
                    assert!(metric(run, "acked") > 0.0, "{case:#}");
                    assert_eq!(metric(run, "errors"), 0.0, "{case:#}");
                }
            }
        }
    }
    assert_eq!(
        report["targets"].as_array().map(Vec::len),
        Some(4),
        "{report:#}"
    );
}

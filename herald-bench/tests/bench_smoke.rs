//! Smoke runs of `herald-bench` (seconds, a handful of connections) so the
//! tool cannot rot: it must run to the end against a real relay, lose
//! nothing and write its JSON. No timing is asserted.
//!
//! The relay is the real `herald` binary of this workspace. It belongs to
//! another package, so Cargo gives no `CARGO_BIN_EXE_herald` here: the
//! tests take `HERALD_BIN` when it is set, else `target/<profile>/herald`
//! beside this test — which `cargo test` at the root has just built for the
//! relay's own tests — and have Cargo build it only when it is missing or
//! older than the relay's sources (e.g. `cargo test -p herald-bench` alone).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use serde_json::Value;

const ADMIN: &str = "test-admin-token";
const PUBLISHER: &str = "test-publisher-token";
/// How long the relay may take to print its address.
const START_WAIT: Duration = Duration::from_secs(15);

/// The PostgreSQL server the tests use (as in the relay's own tests).
fn postgres_url() -> String {
    std::env::var("HERALD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The `herald` binary (see the module doc); decided once per test process.
fn herald() -> &'static Path {
    static HERALD: OnceLock<PathBuf> = OnceLock::new();
    HERALD.get_or_init(|| {
        if let Some(path) = std::env::var_os("HERALD_BIN") {
            return PathBuf::from(path);
        }
        // This test runs as target/<profile>/deps/bench_smoke-<hash>.
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test runs from target/<profile>/deps");
        let binary = profile_dir.join("herald");
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("herald-bench lives in the workspace root");
        let built = modified(&binary);
        if built.is_some() && built >= newest_source(workspace) {
            return binary;
        }
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("profile directory name");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut build = Command::new(cargo);
        build
            .current_dir(workspace)
            .args(["build", "--package", "herald", "--bin", "herald"]);
        if let Some(target_dir) = profile_dir.parent() {
            build.arg("--target-dir").arg(target_dir);
        }
        // `debug` holds the dev profile's output; others are named as such.
        if profile != "debug" {
            build.args(["--profile", profile]);
        }
        let status = build.status().expect("run cargo build for herald");
        assert!(status.success(), "cargo build of herald failed: {status}");
        assert!(binary.exists(), "no herald binary at {}", binary.display());
        binary
    })
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The newest modification time among the relay's sources: its manifest,
/// the lock file, the build script, `src/` and `migrations/`.
fn newest_source(workspace: &Path) -> Option<SystemTime> {
    fn walk(path: &Path, newest: &mut Option<SystemTime>) {
        *newest = (*newest).max(modified(path));
        if let Ok(entries) = std::fs::read_dir(path) {
            for entry in entries.flatten() {
                walk(&entry.path(), newest);
            }
        }
    }
    let mut newest = None;
    for part in ["Cargo.toml", "Cargo.lock", "build.rs", "src", "migrations"] {
        walk(&workspace.join(part), &mut newest);
    }
    newest
}

/// A relay started for one test on a fresh SQLite file (rate limit off);
/// killed when dropped.
struct Relay {
    base: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Relay {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("settings.toml");
        let database = format!("sqlite://{}", dir.path().join("herald.db").display());
        std::fs::write(
            &config,
            format!(
                "[server]\nbind = \"127.0.0.1:0\"\nworkers = 2\n\
                 [database]\nurl = \"{database}\"\n\
                 [auth]\nadmin_token = \"{ADMIN}\"\npublisher_tokens = [\"{PUBLISHER}\"]\n\
                 [limits]\nrate_per_minute = 0\n"
            ),
        )
        .expect("write settings");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log file");
        let mut child = Command::new(herald())
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .current_dir(dir.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start herald");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("herald listening on ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let base = rx.recv_timeout(START_WAIT).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!(
                "herald did not start:\n{}",
                std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
            )
        });
        Self {
            base,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

#[test]
fn fanout_against_a_running_relay_loses_nothing() {
    let relay = Relay::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let report = bench(
        dir.path(),
        &[
            "--url",
            &relay.base,
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
    );
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
    let herald = herald().to_str().expect("UTF-8 path");
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
    let herald = herald().to_str().expect("UTF-8 path");
    let database = postgres_url();
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

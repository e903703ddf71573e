//! `GET /openapi.json`: the document describes every endpoint of the API,
//! and schemathesis (PyPI), run against a real relay, finds no 5xx and no
//! response that does not conform to it (status, content type, body; the
//! streams' first events included).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Backend, Relay, ADMIN, PUBLISHER};
use serde_json::Value;

/// Every path of the API, with its methods.
const OPERATIONS: &[(&str, &str)] = &[
    ("/api/maps/{map}/events", "post"),
    ("/api/maps/{map}/events", "get"),
    ("/api/maps/{map}/events/stream", "get"),
    ("/api/maps/{map}/sse-tokens", "post"),
    ("/api/events/stream", "get"),
    ("/api/admin/maps", "post"),
    ("/api/admin/maps", "get"),
    ("/api/admin/maps/{map}", "get"),
    ("/api/admin/maps/{map}/keys", "post"),
    ("/api/admin/maps/{map}/keys/{key_id}", "delete"),
    ("/api/admin/maps/{map}/limits", "put"),
    ("/api/admin/limits", "get"),
    ("/api/admin/connections", "get"),
    ("/api/admin/connections/{id}", "delete"),
    ("/api/admin/nodes", "get"),
    ("/api/admin/stats", "get"),
    ("/health", "get"),
    ("/ready", "get"),
    ("/metrics", "get"),
    ("/openapi.json", "get"),
    ("/admin", "get"),
];

async fn document(relay: &Relay) -> Value {
    let response = relay
        .http
        .get(relay.url("/openapi.json"))
        .send()
        .await
        .expect("openapi.json");
    assert_eq!(response.status(), 200);
    assert!(response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json")));
    response.json().await.expect("JSON document")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_describes_every_endpoint_without_auth() {
    let relay = Relay::start(Backend::Sqlite).await;
    let doc = document(&relay).await;
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "OpenAPI 3.1: {}",
        doc["openapi"]
    );
    for (path, method) in OPERATIONS {
        let operation = &doc["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is described");
        assert!(
            operation["responses"]
                .as_object()
                .is_some_and(|r| !r.is_empty()),
            "{method} {path} has responses"
        );
    }
    let described: usize = doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|p| p.as_object().map_or(0, serde_json::Map::len))
        .sum();
    assert_eq!(described, OPERATIONS.len(), "no undocumented extras");
    // Error answers name the error body; credentials are declared.
    let unauthorized = &doc["paths"]["/api/admin/stats"]["get"]["responses"]["401"];
    assert_eq!(
        unauthorized["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ErrorBody"
    );
    // What the HTTP layer answers before any handler is described too.
    for (path, method, status) in [
        ("/health", "get", "431"),
        ("/api/admin/stats", "get", "408"),
        ("/api/maps/{map}/events", "post", "413"),
        ("/api/maps/{map}/events/stream", "get", "414"),
    ] {
        assert_eq!(
            doc["paths"][path][method]["responses"][status]["content"]["application/json"]
                ["schema"]["$ref"],
            "#/components/schemas/ErrorBody",
            "{method} {path} {status}"
        );
    }
    for scheme in ["admin", "publisher", "map_key"] {
        assert_eq!(
            doc["components"]["securitySchemes"][scheme]["scheme"], "bearer",
            "{scheme}"
        );
    }
}

/// The schemathesis configuration: the admin token by default, the
/// publisher token and a map key where those are the credentials, and a
/// real map for `{map}` there (elsewhere `{map}` is generated freely).
fn schemathesis_config(slug: &str, key: &str) -> String {
    format!(
        r#"headers = {{ Authorization = "Bearer {ADMIN}" }}
max-stream-events = 2
request-timeout = 10

[[operations]]
include-path = "/api/maps/{{map}}/events"
include-method = "POST"
headers = {{ Authorization = "Bearer {PUBLISHER}" }}
parameters = {{ "path.map" = "{slug}" }}

[[operations]]
include-path-regex = "^/api/maps/\\{{map\\}}/(events|events/stream)$"
exclude-method = "POST"
headers = {{ Authorization = "Bearer {key}" }}
parameters = {{ "path.map" = "{slug}" }}

[[operations]]
include-path = "/api/maps/{{map}}/sse-tokens"
headers = {{ Authorization = "Bearer {key}" }}
parameters = {{ "path.map" = "{slug}" }}
"#
    )
}

async fn responses_conform(backend: Backend) {
    let relay = Relay::start(backend).await;
    let map = relay.create_map().await;
    relay.publish_n(&map.slug, 3).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(&config, schemathesis_config(&map.slug, &map.key)).expect("config");
    let schema = relay.url("/openapi.json");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("schemathesis")
            .arg("--config-file")
            .arg(&config)
            .args(["--no-color", "run", &schema])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_schema_conformance",
                "--phases",
                "coverage,fuzzing",
                "--max-time",
                "40",
                "--workers",
                "2",
                "--seed",
                "1",
            ])
            .current_dir(dir.path())
            .output()
    })
    .await
    .expect("join")
    .unwrap_or_else(|e| {
        panic!(
            "schemathesis (PyPI) is required for this test: {e}; \
             `.ci/run` installs it (pip install schemathesis)"
        )
    });
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found non-conforming responses:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // "Selected: a/b" and "Tested: c": every operation selected was tested.
    let number_after = |label: &str| -> Option<String> {
        let at = report.find(label)? + label.len();
        Some(
            report[at..]
                .trim_start()
                .split(|c: char| !c.is_ascii_digit() && c != '/')
                .next()?
                .to_owned(),
        )
    };
    let selected = number_after("Selected:").expect("a selection line");
    let tested = number_after("Tested:").expect("a tested line");
    let (chosen, all) = selected.split_once('/').expect("a/b");
    assert!(
        chosen == all && tested == all && all.parse::<usize>().unwrap_or(0) >= 19,
        "every operation was tested ({selected} selected, {tested} tested):\n{report}"
    );
    // The relay is still healthy afterwards.
    let health = relay
        .http
        .get(relay.url("/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
}

backend_tests!(responses_conform);

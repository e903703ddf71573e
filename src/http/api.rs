//! The API's request and response bodies as types: the handlers build
//! their answers from them, and `GET /openapi.json` ([`ApiDoc`]) describes
//! them from the same types, so the description cannot drift from what is
//! sent.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// Every error: a sentence for people and a stable code for programs.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, in a sentence.
    pub error: String,
    /// `UPPER_SNAKE` code, e.g. `UNAUTHORIZED`, `MAP_NOT_FOUND`,
    /// `INVALID_EVENT`, `RATE_LIMITED`, `STORE_UNAVAILABLE`.
    pub code: String,
}

/// `{"status"}` of the health and readiness probes.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    /// `ok` or `ready`.
    pub status: String,
}

/// One event as published.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewEventBody {
    /// 1–128 characters of `[A-Za-z0-9_.:-]`.
    #[serde(rename = "type")]
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_.:-]+$")]
    pub event_type: String,
    /// 0–128 characters of `[A-Za-z0-9_.:-]`; default `""`.
    #[schema(max_length = 128, pattern = "^[A-Za-z0-9_.:-]*$")]
    pub source: Option<String>,
    /// Any JSON value, at most `publish.max_event_bytes` serialized.
    pub payload: Option<Value>,
}

/// A publish body: one event, or an array of 1 to `publish.max_batch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PublishBody {
    One(NewEventBody),
    Many(Vec<NewEventBody>),
}

/// The ids of the published events, in the order sent.
#[derive(Debug, Serialize, ToSchema)]
pub struct Published {
    pub ids: Vec<String>,
}

/// A stored and delivered event.
#[derive(Debug, Serialize, ToSchema)]
pub struct Envelope {
    /// ULID, increasing in commit order.
    pub id: String,
    pub map_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub source: String,
    /// RFC 3339 UTC with milliseconds.
    pub created_at: String,
    /// The payload as published.
    pub payload: Value,
}

/// A page of history, oldest first. (The handler writes the same JSON
/// straight from the stored envelopes.)
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPage {
    pub items: Vec<Envelope>,
    /// Ask again with `after=next` when set.
    #[schema(required = true)]
    pub next: Option<String>,
}

/// One frame of an event stream, as an SSE parser reads it: `connected`
/// (data: `{map_id, connection_id, server_time}`), `backfill_truncated`
/// (data: `{requested, oldest_available}`), or an event (`id`, its `type`
/// as `event`, its [`Envelope`] as `data`). Comments (keep-alives) and
/// `retry:` are not events.
#[derive(Debug, Serialize, ToSchema)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    /// JSON text.
    pub data: String,
}

/// A single-use token for `?token=`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SseToken {
    pub token: String,
    /// Seconds.
    pub expires_in: u64,
}

/// `POST /api/admin/maps`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewMap {
    /// `[a-z0-9][a-z0-9-]{0,63}`, not itself a ULID.
    #[schema(min_length = 1, max_length = 64, pattern = "^[a-z0-9][a-z0-9-]{0,63}$")]
    pub slug: String,
    /// 0–128 characters, no control or invisible formatting characters;
    /// default: the slug.
    #[schema(max_length = 128)]
    pub name: Option<String>,
}

/// A new map and its first key (shown once).
#[derive(Debug, Serialize, ToSchema)]
pub struct MapCreated {
    pub id: String,
    pub slug: String,
    pub key_id: String,
    pub api_key: String,
}

/// A new key (shown once).
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyCreated {
    pub key_id: String,
    pub api_key: String,
}

/// A map's connection limits in force.
#[derive(Debug, Serialize, ToSchema)]
pub struct MapLimits {
    pub max_connections: u64,
    pub max_connections_per_key: u64,
}

/// `PUT /api/admin/maps/{map}/limits`: absent fields stay, `null` resets
/// to the configured default; any other field is refused.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsChange {
    #[schema(nullable, minimum = 0)]
    pub max_connections: Option<u64>,
    #[schema(nullable, minimum = 0)]
    pub max_connections_per_key: Option<u64>,
}

/// One key of a map.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    pub key_id: String,
    pub created_at: String,
    /// Open streams on every node.
    pub connections: u64,
}

/// A map.
#[derive(Debug, Serialize, ToSchema)]
pub struct MapView {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub created_at: String,
    pub limits: MapLimits,
    /// Open streams on every node.
    pub connections: u64,
    pub keys: Vec<KeyView>,
}

/// A page of maps.
#[derive(Debug, Serialize, ToSchema)]
pub struct MapList {
    pub total: usize,
    pub items: Vec<MapView>,
}

/// One open stream, on any node.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionView {
    pub id: String,
    /// The name of the node holding it.
    pub node: String,
    /// `null` for the admin firehose.
    #[schema(required = true)]
    pub map_id: Option<String>,
    /// `null` when opened with the admin token.
    #[schema(required = true)]
    pub key_id: Option<String>,
    pub remote_addr: String,
    pub connected_at: String,
    pub events_sent: u64,
    pub filter: String,
}

/// A page of open streams.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionList {
    pub total: u64,
    pub items: Vec<ConnectionView>,
}

/// One live node.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeView {
    /// ULID, new at each start.
    pub id: String,
    pub name: String,
    pub started_at: String,
    pub last_seen: String,
    pub connections: u64,
}

/// The live nodes.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeList {
    pub items: Vec<NodeView>,
}

/// Counters of every node.
#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    pub connections: u64,
    pub maps: usize,
    /// Live nodes.
    pub nodes: usize,
    /// Map hubs running on this node.
    pub active_hubs: usize,
    pub published: u64,
    pub delivered: u64,
    /// Events per second over the last few seconds.
    pub published_per_sec: f64,
    pub delivered_per_sec: f64,
    pub slow_consumer_disconnects: u64,
    pub store_batches: u64,
    pub store_failures: u64,
}

/// Streams against the per-node limit.
#[derive(Debug, Serialize, ToSchema)]
pub struct GlobalUsage {
    /// Per node (`limits.max_connections`).
    pub max_connections: u64,
    /// On every node.
    pub connections: u64,
    /// On this node.
    pub node_connections: u64,
}

/// Limits given to new maps.
#[derive(Debug, Serialize, ToSchema)]
pub struct LimitDefaults {
    pub max_connections_per_map: u64,
    pub max_connections_per_key: u64,
}

/// The per-IP request rate of stream and SSE-token requests.
#[derive(Debug, Serialize, ToSchema)]
pub struct RateLimit {
    pub rate_per_minute: u32,
    pub rate_burst: u32,
}

/// A key's streams against its limit.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyUsage {
    pub key_id: String,
    pub max_connections: u64,
    pub connections: u64,
}

/// A map's streams against its limits.
#[derive(Debug, Serialize, ToSchema)]
pub struct MapUsage {
    pub map_id: String,
    pub slug: String,
    pub max_connections: u64,
    pub max_connections_per_key: u64,
    pub connections: u64,
    pub keys: Vec<KeyUsage>,
}

/// Configured limits with current usage.
#[derive(Debug, Serialize, ToSchema)]
pub struct LimitsReport {
    pub global: GlobalUsage,
    pub defaults: LimitDefaults,
    pub rate: RateLimit,
    pub total_maps: usize,
    pub maps: Vec<MapUsage>,
}

/// Declares the Bearer credentials the operations name.
struct Credentials;

impl Modify for Credentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, what) in [
            ("admin", "`auth.admin_token`"),
            ("publisher", "one of `auth.publisher_tokens`"),
            ("map_key", "an API key of the map (or the admin token)"),
        ] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(format!("Bearer {what}")))
                        .build(),
                ),
            );
        }
    }
}

/// Adds the answers the HTTP layer may give to any request, before a
/// handler runs, to every operation that does not list them: a head or body
/// too slow (408), a body too large (413, where there is a body), a target
/// too long (414), a head too large (431).
struct HttpLayerErrors;

impl Modify for HttpLayerErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let error = |description: &str| {
            utoipa::openapi::ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                (&mut item.get, false),
                (&mut item.post, true),
                (&mut item.put, true),
                (&mut item.delete, false),
            ];
            for (operation, has_body) in operations {
                let Some(operation) = operation else { continue };
                let mut answers = vec![
                    ("400", "BAD_REQUEST"),
                    ("408", "REQUEST_TIMEOUT"),
                    ("414", "URI_TOO_LONG"),
                    ("431", "HEADERS_TOO_LARGE"),
                ];
                if has_body {
                    answers.push(("413", "PAYLOAD_TOO_LARGE"));
                }
                for (status, code) in answers {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error(code).into());
                }
                // Every 429 says when to try again.
                if let Some(utoipa::openapi::RefOr::T(too_many)) =
                    operation.responses.responses.get_mut("429")
                {
                    too_many.headers.insert(
                        "Retry-After".to_owned(),
                        utoipa::openapi::HeaderBuilder::new()
                            .schema(
                                utoipa::openapi::ObjectBuilder::new()
                                    .schema_type(utoipa::openapi::schema::Type::Integer)
                                    .minimum(Some(0)),
                            )
                            .description(Some("seconds to wait"))
                            .build(),
                    );
                }
            }
        }
    }
}

/// The API description served at `GET /openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "herald",
        description = "SSE event relay: publish, commit, fan out, lossless ULID backfill. \
                       Every error is `{\"error\", \"code\"}`. `{map}` is a map's id or slug."
    ),
    paths(
        super::events::publish,
        super::events::history,
        super::stream::map_stream,
        super::stream::firehose,
        super::stream::sse_token,
        super::admin::create_map,
        super::admin::list_maps,
        super::admin::get_map,
        super::admin::create_key,
        super::admin::revoke_key,
        super::admin::set_limits,
        super::admin::limits,
        super::admin::list_connections,
        super::admin::close_connection,
        super::admin::nodes,
        super::admin::stats,
        super::ops::health,
        super::ops::ready,
        super::ops::metrics,
        super::assets::serve,
        openapi_json,
    ),
    modifiers(&Credentials, &HttpLayerErrors)
)]
pub struct ApiDoc;

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json"))
)]
pub async fn openapi_json() -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok()
        .content_type("application/json")
        .body(ApiDoc::openapi().to_json().unwrap_or_default())
}

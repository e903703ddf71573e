//! `GET /api/maps/{map}/events/stream`, the admin firehose
//! `GET /api/events/stream`, and `POST /api/maps/{map}/sse-tokens`.

use super::api::{ErrorBody, SseEvent, SseToken};
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use ulid::Ulid;

use super::layer_errors::CarriesStream;
use super::{authenticate, query_params, resolve_map, Caller, Query};
use crate::actors::session::{self, StreamRequest, StreamServices};
use crate::cluster::Refusal;
use crate::connections::{Admission, ConnectionInfo, LimitExceeded};
use crate::error::ApiError;
use crate::event::parse_ulid;
use crate::filter::Filter;
use crate::sse_tokens::TokenGrant;
use crate::state::AppState;
use crate::store::{MapRecord, Scope};

/// Subscribe to one map.
#[utoipa::path(
    get, path = "/api/maps/{map}/events/stream", tag = "streams",
    params(("map" = String, Path, description = "the map's id or slug"), ("events" = Option<String>, Query, description = "comma list of type patterns"),
        ("sources" = Option<String>, Query, description = "comma list of exact sources"),
        ("last_event_id" = Option<String>, Query, description = "ULID to resume after (the Last-Event-ID header wins)"),
        ("token" = Option<String>, Query, description = "a single-use SSE token instead of a Bearer key"),
        ("Last-Event-ID" = Option<String>, Header, description = "ULID to resume after")),
    responses((status = 200, description = "the event stream: `retry`, `connected`, `backfill_truncated`?, backfill, live events, keep-alive comments", content_type = "text/event-stream", body = SseEvent),
        (status = 400, description = "INVALID_LAST_EVENT_ID, INVALID_FILTER or INVALID_QUERY", body = ErrorBody), (status = 401, description = "UNAUTHORIZED", body = ErrorBody), (status = 404, description = "MAP_NOT_FOUND", body = ErrorBody),
        (status = 414, description = "URI_TOO_LONG", body = ErrorBody), (status = 429, description = "RATE_LIMITED, GLOBAL_CONNECTION_LIMIT, MAP_CONNECTION_LIMIT or API_KEY_CONNECTION_LIMIT", body = ErrorBody),
        (status = 503, description = "SSE_DISABLED or STORE_UNAVAILABLE", body = ErrorBody)),
    security(("map_key" = []))
)]
pub async fn map_stream(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.rate_limiter.check(&req)?;
    let query = Query::of(&req);
    let caller = authenticate(&state, &req, query.token()).await?;
    let map = resolve_map(&state, &path).await?;
    let key_id = caller.reader_of(&map)?;
    let token = matches!(caller, Caller::SseToken(_))
        .then(|| query.token().map(str::to_owned))
        .flatten();
    let params = query.params()?;
    open_stream(&state, &req, &params, Some(&map), key_id, token.as_deref()).await
}

/// Subscribe to every map (admin token only).
#[utoipa::path(
    get, path = "/api/events/stream", tag = "streams",
    params(("events" = Option<String>, Query, description = "comma list of type patterns"),
        ("sources" = Option<String>, Query, description = "comma list of exact sources"),
        ("last_event_id" = Option<String>, Query, description = "ULID to resume after (the Last-Event-ID header wins)"),
        ("Last-Event-ID" = Option<String>, Header, description = "ULID to resume after")),
    responses((status = 200, description = "the event stream: `retry`, `connected`, `backfill_truncated`?, backfill, live events, keep-alive comments", content_type = "text/event-stream", body = SseEvent),
        (status = 400, description = "INVALID_LAST_EVENT_ID, INVALID_FILTER or INVALID_QUERY", body = ErrorBody), (status = 401, description = "UNAUTHORIZED", body = ErrorBody),
        (status = 414, description = "URI_TOO_LONG", body = ErrorBody), (status = 429, description = "RATE_LIMITED or GLOBAL_CONNECTION_LIMIT", body = ErrorBody), (status = 503, description = "SSE_DISABLED or STORE_UNAVAILABLE", body = ErrorBody)),
    security(("admin" = []))
)]
pub async fn firehose(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.rate_limiter.check(&req)?;
    authenticate(&state, &req, None).await?.require_admin()?;
    let params = query_params(&req)?;
    open_stream(&state, &req, &params, None, None, None).await
}

/// Mint a single-use token for `?token=` (browsers' EventSource).
#[utoipa::path(
    post, path = "/api/maps/{map}/sse-tokens", tag = "streams",
    params(("map" = String, Path, description = "the map's id or slug")),
    responses((status = 201, description = "a single-use token", body = SseToken),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody), (status = 404, description = "MAP_NOT_FOUND", body = ErrorBody), (status = 429, description = "RATE_LIMITED", body = ErrorBody), (status = 503, description = "SSE_DISABLED or STORE_UNAVAILABLE", body = ErrorBody)),
    security(("map_key" = []))
)]
pub async fn sse_token(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.rate_limiter.check(&req)?;
    let caller = authenticate(&state, &req, None).await?;
    let map = resolve_map(&state, &path).await?;
    if matches!(caller, Caller::SseToken(_)) {
        return Err(ApiError::Unauthorized);
    }
    let key_id = caller.reader_of(&map)?;
    if !state.settings.sse.enabled {
        return Err(ApiError::SseDisabled);
    }
    let token = state
        .sse_tokens
        .mint(TokenGrant {
            map_id: map.id,
            key_id,
        })
        .await?;
    Ok(HttpResponse::Created()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(SseToken {
            token,
            expires_in: state.sse_tokens.ttl().as_secs(),
        }))
}

/// The client's resume position: the `Last-Event-ID` header wins over the
/// `last_event_id` parameter; empty counts as absent.
fn last_event_id(
    req: &HttpRequest,
    params: &HashMap<String, String>,
) -> Result<Option<Ulid>, ApiError> {
    let header_value = match req.headers().get("last-event-id") {
        Some(value) => Some(value.to_str().map_err(|_| invalid_id())?.trim()),
        None => None,
    };
    let text = header_value.filter(|v| !v.is_empty()).or_else(|| {
        params
            .get("last_event_id")
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    });
    text.map(|t| parse_ulid(t).ok_or_else(invalid_id))
        .transpose()
}

fn invalid_id() -> ApiError {
    ApiError::InvalidLastEventId("Last-Event-ID must be a 26-character ULID".into())
}

/// Opens a stream once every check passed; `sse_token`, the credential of
/// the request when it is one, is used up only then, so a request refused
/// on the way (a typo in a filter, a limit) leaves it valid for the retry.
async fn open_stream(
    state: &AppState,
    req: &HttpRequest,
    params: &HashMap<String, String>,
    map: Option<&MapRecord>,
    key_id: Option<Ulid>,
    sse_token: Option<&str>,
) -> Result<HttpResponse, ApiError> {
    let after = last_event_id(req, params)?;
    let filter = Filter::parse(
        params.get("events").map(String::as_str),
        params.get("sources").map(String::as_str),
    )
    .map_err(|e| ApiError::InvalidFilter(e.to_string()))?;
    let settings = &state.settings;
    if !settings.sse.enabled {
        return Err(ApiError::SseDisabled);
    }
    let limits = &settings.limits;
    // In a cluster the database counts maps' and keys' streams on every
    // node (below); this node's table counts only its own limit then.
    let map_limits = map
        .filter(|_| !state.cluster.is_shared())
        .map(|m| m.effective_limits(limits));
    let admission = Admission {
        max_global: limits.max_connections,
        max_per_map: map_limits.map(|(per_map, _)| per_map),
        // The admin token counts against the map only, not against a key.
        max_per_key: key_id.and(map_limits).map(|(_, per_key)| per_key),
    };
    let info = ConnectionInfo {
        id: Ulid::generate(),
        map_id: map.map(|m| m.id),
        key_id,
        remote_addr: state
            .rate_limiter
            .client_ip(req)
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
        connected_ms: chrono::Utc::now().timestamp_millis(),
        filter: filter.to_string(),
        events_sent: AtomicU64::new(0),
    };
    let conn_id = info.id;
    let refused = |exceeded: LimitExceeded| {
        log::warn!(
            "refused conn={conn_id} map={} key={}: {exceeded}",
            map.map_or("*", |m| m.slug.as_str()),
            key_id.map_or_else(|| "admin".to_owned(), |k| k.to_string()),
        );
        match exceeded {
            LimitExceeded::Global => ApiError::GlobalConnectionLimit,
            LimitExceeded::Map => ApiError::MapConnectionLimit,
            LimitExceeded::Key => ApiError::ApiKeyConnectionLimit,
        }
    };
    let guard = state.connections.admit(info, admission).map_err(refused)?;
    // Dropping the guard on refusal frees whatever the database may hold.
    match state.cluster.admit(&guard.info, limits).await {
        Ok(()) => {}
        Err(Refusal::Limit(exceeded)) => return Err(refused(exceeded)),
        Err(Refusal::Gone) => return Err(ApiError::Unauthorized),
        Err(Refusal::Store(err)) => return Err(err.into()),
    }
    // Another request may have used the token since it was checked.
    if let Some(token) = sse_token {
        if state.sse_tokens.consume(token).await?.is_none() {
            return Err(ApiError::Unauthorized);
        }
    }
    let scope: Scope = map.map(|m| m.id);
    let services = StreamServices {
        hubs: state.hubs.clone(),
        store: Arc::clone(&state.store),
        metrics: Arc::clone(&state.metrics),
    };
    let request = StreamRequest {
        scope,
        after,
        filter,
        guard,
        retry_ms: settings.sse.retry_ms,
        keepalive: Duration::from_secs(settings.sse.keepalive_secs),
        client_buffer: settings.sse.client_buffer,
        max_backfill: settings.history.max_backfill,
        socket: crate::socket::of_request(req),
    };
    let body = session::open(services, request).await?;
    if let Some(mark) = req.conn_data::<CarriesStream>() {
        mark.mark();
    }
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

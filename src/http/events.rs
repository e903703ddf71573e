//! `POST /api/maps/{map}/events` (publish) and `GET /api/maps/{map}/events`
//! (history pages).

use super::api::{ErrorBody, HistoryPage, PublishBody, Published};
use actix_web::{web, HttpRequest, HttpResponse};
use sha2::{Digest, Sha256};
use ulid::Ulid;

use super::{authenticate, int_param, query_params, read_body, resolve_map, Caller};
use crate::auth::hash_hex;
use crate::error::ApiError;
use crate::event::{is_valid_name, parse_publish_body, parse_ulid, PublishError, PublishLimits};
use crate::filter::Filter;
use crate::state::AppState;
use crate::store::{Idempotency, Outcome};

/// Events read from the store per history query: the first query reads
/// the lower bound, later ones aim at `HISTORY_SCAN_BYTES`.
const HISTORY_SCAN_EVENTS: (u32, u32) = (16, 500);
/// Bytes of events aimed at per history query.
const HISTORY_SCAN_BYTES: usize = 256 << 10;
/// Largest history page, in bytes of JSON: a client that does not read its
/// answer holds no more than this of herald's memory.
const MAX_PAGE_BYTES: usize = (1 << 20) - 64;

/// Publish one event or an array; 201 with the ids once committed. With an
/// `Idempotency-Key`, a retry of a committed request answers the same ids
/// and creates nothing.
#[utoipa::path(
    post, path = "/api/maps/{map}/events", tag = "events",
    params(("map" = String, Path, description = "the map's id or slug"), ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_.:-]+$", description = "1-128 characters of [A-Za-z0-9_.:-]: a retry with the same key and body answers the first ids")),
    request_body(content = PublishBody, description = "one event or an array of up to `publish.max_batch`"),
    responses((status = 201, description = "committed", body = Published),
        (status = 400, description = "INVALID_JSON, INVALID_EVENT, INVALID_IDEMPOTENCY_KEY or BAD_REQUEST (a body whose framing breaks)", body = ErrorBody), (status = 401, description = "UNAUTHORIZED", body = ErrorBody), (status = 404, description = "MAP_NOT_FOUND", body = ErrorBody),
        (status = 408, description = "REQUEST_TIMEOUT", body = ErrorBody), (status = 409, description = "IDEMPOTENCY_KEY_REUSED", body = ErrorBody), (status = 413, description = "PAYLOAD_TOO_LARGE", body = ErrorBody), (status = 503, description = "STORE_UNAVAILABLE", body = ErrorBody)),
    security(("publisher" = []))
)]
pub async fn publish(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = authenticate(&state, &req, None).await?;
    let map = resolve_map(&state, &path).await?;
    if !matches!(caller, Caller::Publisher) {
        return Err(ApiError::Unauthorized);
    }
    let settings = &state.settings.publish;
    let key = idempotency_key(&req)?;
    let body = read_body(&req, payload, settings.max_body_bytes).await?;
    let limits = PublishLimits {
        max_event_bytes: settings.max_event_bytes,
        max_batch: settings.max_batch,
    };
    let events = parse_publish_body(&body, limits).map_err(|e| match e {
        PublishError::InvalidJson(m) => ApiError::InvalidJson(m),
        PublishError::InvalidEvent(m) => ApiError::InvalidEvent(m),
        PublishError::TooLarge(m) => ApiError::PayloadTooLarge(m),
    })?;
    let idempotency = key.map(|key| Idempotency {
        key,
        body_hash: hash_hex(&Sha256::digest(&body).into()),
    });
    let ids = match state
        .persistence
        .publish(map.id, events, idempotency)
        .await?
    {
        Outcome::Created(ids) | Outcome::Replayed(ids) => ids,
        Outcome::KeyReused => return Err(ApiError::IdempotencyKeyReused),
    };
    let ids = ids.iter().map(Ulid::to_string).collect();
    Ok(HttpResponse::Created().json(Published { ids }))
}

/// The `Idempotency-Key` header: 1–128 characters of `[A-Za-z0-9_.:-]`.
fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let mut values = req.headers().get_all("idempotency-key");
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::InvalidIdempotencyKey(
            "Idempotency-Key must be one value of 1 to 128 characters of [A-Za-z0-9_.:-]".into(),
        )
    };
    if values.next().is_some() {
        return Err(invalid());
    }
    let key = value.to_str().map_err(|_| invalid())?;
    if !is_valid_name(key, false) {
        return Err(invalid());
    }
    Ok(Some(key.to_owned()))
}

/// A page of stored events after `after`, oldest first.
#[utoipa::path(
    get, path = "/api/maps/{map}/events", tag = "events",
    params(("map" = String, Path, description = "the map's id or slug"), ("after" = Option<String>, Query, description = "ULID: events after it (default: from the beginning)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1-1000, default 100 (a page also stops at 1 MiB)"),
        ("events" = Option<String>, Query, description = "comma list of type patterns"),
        ("sources" = Option<String>, Query, description = "comma list of exact sources")),
    responses((status = 200, description = "a page, oldest first", body = HistoryPage),
        (status = 400, description = "INVALID_QUERY, INVALID_LAST_EVENT_ID or INVALID_FILTER", body = ErrorBody), (status = 401, description = "UNAUTHORIZED", body = ErrorBody), (status = 404, description = "MAP_NOT_FOUND", body = ErrorBody),
        (status = 414, description = "URI_TOO_LONG", body = ErrorBody), (status = 503, description = "STORE_UNAVAILABLE", body = ErrorBody)),
    security(("map_key" = []))
)]
pub async fn history(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = authenticate(&state, &req, None).await?;
    let map = resolve_map(&state, &path).await?;
    caller.reader_of(&map)?;
    let params = query_params(&req)?;
    let mut cursor = match params
        .get("after")
        .map(|a| a.trim())
        .filter(|a| !a.is_empty())
    {
        None => Ulid::nil(),
        Some(text) => parse_ulid(text).ok_or_else(|| {
            ApiError::InvalidLastEventId("after must be a 26-character ULID".into())
        })?,
    };
    let limit = int_param(&params, "limit", 100, 1..=1000)?;
    let filter = Filter::parse(
        params.get("events").map(String::as_str),
        params.get("sources").map(String::as_str),
    )
    .map_err(|e| ApiError::InvalidFilter(e.to_string()))?;

    // The page is built as it is read: at most `MAX_PAGE_BYTES` of it and
    // one store page are held at once, whatever the events weigh.
    let mut body = Vec::with_capacity(16 << 10);
    body.extend_from_slice(b"{\"items\":[");
    let mut items = 0;
    let mut last_item = None;
    let mut full = false;
    let mut scan = HISTORY_SCAN_EVENTS.0;
    'scan: loop {
        let page = state.store.events_after(Some(map.id), cursor, scan).await?;
        for event in &page {
            cursor = event.id;
            if !filter.matches(&event.event_type, &event.source) {
                continue;
            }
            let envelope = event.envelope();
            if items > 0 && body.len() + 1 + envelope.len() > MAX_PAGE_BYTES {
                full = true;
                break 'scan;
            }
            if items > 0 {
                body.push(b',');
            }
            body.extend_from_slice(envelope);
            items += 1;
            last_item = Some(event.id);
            if items == limit {
                full = true;
                break 'scan;
            }
        }
        if page.len() < scan as usize {
            break;
        }
        let bytes: usize = page.iter().map(|e| e.envelope().len()).sum();
        let per_event = (bytes / page.len()).max(1);
        scan = u32::try_from(HISTORY_SCAN_BYTES / per_event)
            .unwrap_or(u32::MAX)
            .clamp(HISTORY_SCAN_EVENTS.0, HISTORY_SCAN_EVENTS.1);
    }
    let next = match last_item.filter(|_| full) {
        Some(id) => format!("\"{id}\""),
        None => "null".to_owned(),
    };
    body.extend_from_slice(format!("],\"next\":{next}}}").as_bytes());
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

//! `/api/admin/*`: maps, keys, limits, connections and counters. Every
//! handler requires the admin token.

use super::api::{
    self, ConnectionList, ErrorBody, GlobalUsage, KeyCreated, KeyUsage, KeyView, LimitDefaults,
    LimitsChange, LimitsReport, MapCreated, MapLimits, MapList, MapUsage, MapView, NewMap,
    NodeList, RateLimit, Stats,
};
use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::Value;

use super::{authenticate, int_param, query_params, read_body, resolve_map, MAX_ADMIN_BODY};
use crate::cluster::{Counters, Usage};
use crate::directory::DirectoryError;
use crate::error::ApiError;
use crate::event::{format_millis, parse_ulid};
use crate::state::AppState;
use crate::store::MapRecord;

/// Largest `offset` of a listing: the int64 its description gives.
const MAX_OFFSET: usize = i64::MAX as usize;

impl From<DirectoryError> for ApiError {
    fn from(err: DirectoryError) -> Self {
        match err {
            DirectoryError::InvalidSlug => Self::InvalidSlug(err.to_string()),
            DirectoryError::InvalidName => Self::InvalidName(err.to_string()),
            DirectoryError::MapExists => Self::MapExists,
            DirectoryError::MapNotFound => Self::MapNotFound,
            DirectoryError::KeyNotFound => Self::KeyNotFound,
            DirectoryError::Store(e) => e.into(),
        }
    }
}

async fn admin(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    authenticate(state, req, None).await?.require_admin()
}

/// The map of an admin path, in the spec's order of checks: credential,
/// then map, then role.
async fn admin_map(
    state: &AppState,
    req: &HttpRequest,
    id_or_slug: &str,
) -> Result<Arc<MapRecord>, ApiError> {
    let caller = authenticate(state, req, None).await?;
    let map = resolve_map(state, id_or_slug).await?;
    caller.require_admin()?;
    Ok(map)
}

fn ms_text(ms: i64) -> String {
    format_millis(u64::try_from(ms).unwrap_or(0))
}

/// In a cluster, other nodes change maps and keys too: an admin view reads
/// them afresh (a notification would bring them a moment later).
async fn fresh_directory(state: &AppState) {
    if state.cluster.is_shared() {
        crate::cluster::reload_directory(state).await;
    }
}

fn map_limits(state: &AppState, map: &MapRecord) -> MapLimits {
    let (max_connections, max_connections_per_key) = map.effective_limits(&state.settings.limits);
    MapLimits {
        max_connections,
        max_connections_per_key,
    }
}

fn map_view(state: &AppState, usage: &Usage, map: &MapRecord) -> MapView {
    let keys = state
        .directory
        .keys_of(map.id)
        .iter()
        .map(|k| KeyView {
            key_id: k.id.to_string(),
            created_at: ms_text(k.created_ms),
            connections: usage.per_key.get(&k.id).copied().unwrap_or(0),
        })
        .collect();
    MapView {
        id: map.id.to_string(),
        slug: map.slug.clone(),
        name: map.name.clone(),
        created_at: ms_text(map.created_ms),
        limits: map_limits(state, map),
        connections: usage.per_map.get(&map.id).copied().unwrap_or(0),
        keys,
    }
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidJson(format!("request body is not valid JSON: {e}")))
}

#[derive(Deserialize)]
struct CreateMap {
    slug: Option<Value>,
    name: Option<Value>,
}

/// `POST /api/admin/maps` → 201 with the first key, shown once.
#[utoipa::path(
    post, path = "/api/admin/maps", tag = "admin",
    request_body = NewMap,
    responses((status = 201, description = "the map and its first key, shown once", body = MapCreated),
        (status = 400, description = "INVALID_JSON, INVALID_SLUG, INVALID_NAME or BAD_REQUEST", body = ErrorBody), (status = 401, description = "UNAUTHORIZED", body = ErrorBody), (status = 408, description = "REQUEST_TIMEOUT", body = ErrorBody),
        (status = 409, description = "MAP_EXISTS", body = ErrorBody), (status = 413, description = "PAYLOAD_TOO_LARGE", body = ErrorBody), (status = 503, description = "STORE_UNAVAILABLE", body = ErrorBody)),
    security(("admin" = []))
)]
pub async fn create_map(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    admin(&state, &req).await?;
    let body = read_body(&req, payload, MAX_ADMIN_BODY).await?;
    // An object: serde alone would also take an array of the fields, in order.
    let Value::Object(fields) = parse_json::<Value>(&body)? else {
        return Err(ApiError::InvalidJson(
            "request body must be a JSON object".into(),
        ));
    };
    let request: CreateMap = serde_json::from_value(Value::Object(fields))
        .map_err(|e| ApiError::InvalidJson(format!("request body: {e}")))?;
    let Some(Value::String(slug)) = request.slug else {
        return Err(ApiError::InvalidSlug(
            "slug is required and must be a string".into(),
        ));
    };
    let name = match request.name {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => Some(name),
        Some(_) => return Err(DirectoryError::InvalidName.into()),
    };
    let (map, issued) = state
        .directory
        .create_map(&slug, name.as_deref(), None)
        .await?;
    log::info!(
        "map created id={} slug={} key={}",
        map.id,
        map.slug,
        issued.key.id
    );
    Ok(HttpResponse::Created()
        // It carries a key, shown once: no cache may keep it.
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(MapCreated {
            id: map.id.to_string(),
            slug: map.slug.clone(),
            key_id: issued.key.id.to_string(),
            api_key: issued.secret,
        }))
}

/// `GET /api/admin/maps?limit=&offset=`.
#[utoipa::path(
    get, path = "/api/admin/maps", tag = "admin",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1-1000, default 100"),
        ("offset" = Option<i64>, Query, minimum = 0, description = "default 0")),
    responses((status = 200, description = "a page of maps, by id", body = MapList),
        (status = 400, description = "INVALID_QUERY", body = ErrorBody), (status = 401, description = "UNAUTHORIZED", body = ErrorBody), (status = 414, description = "URI_TOO_LONG", body = ErrorBody), (status = 503, description = "STORE_UNAVAILABLE", body = ErrorBody)),
    security(("admin" = []))
)]
pub async fn list_maps(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    admin(&state, &req).await?;
    let params = query_params(&req)?;
    let limit = int_param(&params, "limit", 100, 1..=1000)?;
    let offset = int_param(&params, "offset", 0, 0..=MAX_OFFSET)?;
    fresh_directory(&state).await;
    let usage = state.cluster.usage(&state.connections).await?;
    let (total, maps) = state.directory.list(limit, offset);
    let items = maps.iter().map(|m| map_view(&state, &usage, m)).collect();
    Ok(HttpResponse::Ok().json(MapList { total, items }))
}

/// `GET /api/admin/maps/{map}`.
#[utoipa::path(
    get, path = "/api/admin/maps/{map}", tag = "admin",
    params(("map" = String, Path, description = "the map's id or slug")),
    responses((status = 200, description = "the map", body = MapView),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody), (status = 404, description = "MAP_NOT_FOUND", body = ErrorBody), (status = 503, description = "STORE_UNAVAILABLE", body = ErrorBody)),
    security(("admin" = []))
)]
pub async fn get_map(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let mut map = admin_map(&state, &req, &path).await?;
    fresh_directory(&state).await;
    if let Some(fresh) = state.directory.map(map.id) {
        map = fresh;
    }
    let usage = state.cluster.usage(&state.connections).await?;
    Ok(HttpResponse::Ok().json(map_view(&state, &usage, &map)))
}

/// `POST /api/admin/maps/{map}/keys` → 201 with the key, shown once.
#[utoipa::path(
    post, path = "/api/admin/maps/{map}/keys", tag = "admin",
    params(("map" = String, Path, description = "the map's id or slug")),
    responses((status = 201, description = "the key, shown once", body = KeyCreated),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody), (status = 404, description = "MAP_NOT_FOUND", body = ErrorBody), (status = 503, description = "STORE_UNAVAILABLE", body = ErrorBody)),
    security(("admin" = []))
)]
pub async fn create_key(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let map = admin_map(&state, &req, &path).await?;
    let issued = state.directory.add_key(map.id).await?;
    log::info!("key created map={} key={}", map.id, issued.key.id);
    Ok(HttpResponse::Created()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(KeyCreated {
            key_id: issued.key.id.to_string(),
            api_key: issued.secret,
        }))
}

/// `DELETE /api/admin/maps/{map}/keys/{key_id}`: revokes the key and closes
/// its streams at once.
#[utoipa::path(
    delete, path = "/api/admin/maps/{map}/keys/{key_id}", tag = "admin",
    params(("map" = String, Path, description = "the map's id or slug"), ("key_id" = String, Path, description = "the key's id")),
    responses((status = 204, description = "revoked; its streams end on every node"),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody), (status = 404, description = "MAP_NOT_FOUND or KEY_NOT_FOUND", body = ErrorBody), (status = 503, description = "STORE_UNAVAILABLE", body = ErrorBody)),
    security(("admin" = []))
)]
pub async fn revoke_key(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (map, key_id) = path.into_inner();
    let map = admin_map(&state, &req, &map).await?;
    let key_id = parse_ulid(&key_id).ok_or(ApiError::KeyNotFound)?;
    state.directory.revoke_key(map.id, key_id).await?;
    state.sse_tokens.revoke_key(key_id);
    let closed = state.connections.close_key(key_id);
    log::info!(
        "key revoked map={} key={key_id} streams_closed={closed}",
        map.id
    );
    Ok(HttpResponse::NoContent().finish())
}

/// `PUT /api/admin/maps/{map}/limits`: absent fields stay, `null` resets
/// to the configured default.
#[utoipa::path(
    put, path = "/api/admin/maps/{map}/limits", tag = "admin",
    params(("map" = String, Path, description = "the map's id or slug")),
    request_body = LimitsChange,
    responses((status = 200, description = "the map's limits now in force", body = MapLimits),
        (status = 400, description = "INVALID_JSON, INVALID_LIMITS or BAD_REQUEST", body = ErrorBody), (status = 401, description = "UNAUTHORIZED", body = ErrorBody), (status = 404, description = "MAP_NOT_FOUND", body = ErrorBody),
        (status = 408, description = "REQUEST_TIMEOUT", body = ErrorBody), (status = 413, description = "PAYLOAD_TOO_LARGE", body = ErrorBody), (status = 503, description = "STORE_UNAVAILABLE", body = ErrorBody)),
    security(("admin" = []))
)]
pub async fn set_limits(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let map = admin_map(&state, &req, &path).await?;
    let body = read_body(&req, payload, MAX_ADMIN_BODY).await?;
    let Value::Object(fields) = parse_json::<Value>(&body)? else {
        return Err(ApiError::InvalidLimits("body must be a JSON object".into()));
    };
    // Absent fields keep the stored value, which another node may have set.
    let map = state
        .directory
        .fetch(&map.id.to_string())
        .await?
        .unwrap_or(map);
    let mut max_connections = map.max_connections;
    let mut max_connections_per_key = map.max_connections_per_key;
    for (name, value) in &fields {
        let slot = match name.as_str() {
            "max_connections" => &mut max_connections,
            "max_connections_per_key" => &mut max_connections_per_key,
            other => return Err(ApiError::InvalidLimits(format!("unknown field `{other}`"))),
        };
        *slot = match value {
            Value::Null => None,
            // The store keeps limits as signed 64-bit integers.
            Value::Number(n) if n.as_i64().is_some_and(|v| v >= 0) => n.as_u64(),
            _ => {
                return Err(ApiError::InvalidLimits(format!(
                    "{name} must be a non-negative integer or null"
                )))
            }
        };
    }
    let map = state
        .directory
        .set_limits(map.id, max_connections, max_connections_per_key)
        .await?;
    let limits = map_limits(&state, &map);
    log::info!(
        "limits map={} max_connections={} per_key={}",
        map.id,
        limits.max_connections,
        limits.max_connections_per_key
    );
    Ok(HttpResponse::Ok().json(limits))
}

/// `GET /api/admin/limits`: configured limits with current usage.
#[utoipa::path(
    get, path = "/api/admin/limits", tag = "admin",
    responses((status = 200, description = "configured limits with current usage, every node counted", body = LimitsReport),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody), (status = 503, description = "STORE_UNAVAILABLE", body = ErrorBody)),
    security(("admin" = []))
)]
pub async fn limits(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    admin(&state, &req).await?;
    let settings = &state.settings.limits;
    fresh_directory(&state).await;
    let Usage {
        total: connections,
        per_map,
        per_key,
    } = state.cluster.usage(&state.connections).await?;
    let (total, maps) = state.directory.list(usize::MAX, 0);
    let maps = maps
        .iter()
        .map(|map| {
            let limits = map_limits(&state, map);
            let keys = state
                .directory
                .keys_of(map.id)
                .iter()
                .map(|k| KeyUsage {
                    key_id: k.id.to_string(),
                    max_connections: limits.max_connections_per_key,
                    connections: per_key.get(&k.id).copied().unwrap_or(0),
                })
                .collect();
            MapUsage {
                map_id: map.id.to_string(),
                slug: map.slug.clone(),
                max_connections: limits.max_connections,
                max_connections_per_key: limits.max_connections_per_key,
                connections: per_map.get(&map.id).copied().unwrap_or(0),
                keys,
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(LimitsReport {
        global: GlobalUsage {
            max_connections: settings.max_connections,
            connections,
            node_connections: state.connections.total(),
        },
        defaults: LimitDefaults {
            max_connections_per_map: settings.max_connections_per_map,
            max_connections_per_key: settings.max_connections_per_key,
        },
        rate: RateLimit {
            rate_per_minute: settings.rate_per_minute,
            rate_burst: settings.rate_burst,
        },
        total_maps: total,
        maps,
    }))
}

/// `GET /api/admin/connections?map=&limit=&offset=`.
#[utoipa::path(
    get, path = "/api/admin/connections", tag = "admin",
    params(("map" = Option<String>, Query, description = "only this map's streams (id or slug)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "1-1000, default 100"),
        ("offset" = Option<i64>, Query, minimum = 0, description = "default 0")),
    responses((status = 200, description = "a page of open streams on every node, by id", body = ConnectionList),
        (status = 400, description = "INVALID_QUERY", body = ErrorBody), (status = 401, description = "UNAUTHORIZED", body = ErrorBody), (status = 404, description = "MAP_NOT_FOUND", body = ErrorBody), (status = 414, description = "URI_TOO_LONG", body = ErrorBody), (status = 503, description = "STORE_UNAVAILABLE", body = ErrorBody)),
    security(("admin" = []))
)]
pub async fn list_connections(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    admin(&state, &req).await?;
    let params = query_params(&req)?;
    let map_id = match params.get("map").filter(|m| !m.is_empty()) {
        Some(map) => Some(resolve_map(&state, map).await?.id),
        None => None,
    };
    let limit = int_param(&params, "limit", 100, 1..=1000)?;
    let offset = int_param(&params, "offset", 0, 0..=MAX_OFFSET)?;
    let (total, streams) = state
        .cluster
        .connections(&state.connections, map_id, limit, offset)
        .await?;
    let items = streams
        .iter()
        .map(|c| api::ConnectionView {
            id: c.id.to_string(),
            node: c.node.clone(),
            map_id: c.map_id.map(|m| m.to_string()),
            key_id: c.key_id.map(|k| k.to_string()),
            remote_addr: c.remote_addr.clone(),
            connected_at: ms_text(c.connected_ms),
            events_sent: c.events_sent,
            filter: c.filter.clone(),
        })
        .collect();
    Ok(HttpResponse::Ok().json(ConnectionList { total, items }))
}

/// `DELETE /api/admin/connections/{id}`: the stream ends at once, on
/// whichever node holds it.
#[utoipa::path(
    delete, path = "/api/admin/connections/{id}", tag = "admin",
    params(("id" = String, Path, description = "the stream's id")),
    responses((status = 204, description = "closed, on whichever node holds it"),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody), (status = 404, description = "CONNECTION_NOT_FOUND", body = ErrorBody), (status = 503, description = "STORE_UNAVAILABLE", body = ErrorBody)),
    security(("admin" = []))
)]
pub async fn close_connection(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    admin(&state, &req).await?;
    let id = parse_ulid(&path).ok_or(ApiError::ConnectionNotFound)?;
    if !state.cluster.close(&state.connections, id).await? {
        return Err(ApiError::ConnectionNotFound);
    }
    Ok(HttpResponse::NoContent().finish())
}

/// `GET /api/admin/nodes`: the live nodes.
#[utoipa::path(
    get, path = "/api/admin/nodes", tag = "admin",
    responses((status = 200, description = "the live nodes", body = NodeList),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody), (status = 503, description = "STORE_UNAVAILABLE", body = ErrorBody)),
    security(("admin" = []))
)]
pub async fn nodes(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    admin(&state, &req).await?;
    let nodes = state.cluster.nodes(&state.connections).await?;
    let items = nodes
        .iter()
        .map(|n| api::NodeView {
            id: n.id.to_string(),
            name: n.name.clone(),
            started_at: ms_text(n.started_ms),
            last_seen: ms_text(n.last_seen_ms),
            connections: n.connections,
        })
        .collect();
    Ok(HttpResponse::Ok().json(NodeList { items }))
}

/// `GET /api/admin/stats`: this node's counters plus the other live
/// nodes' (as of their last heartbeat); rates are events per second over
/// the last few seconds.
#[utoipa::path(
    get, path = "/api/admin/stats", tag = "admin",
    responses((status = 200, description = "counters of every node", body = Stats),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody), (status = 503, description = "STORE_UNAVAILABLE", body = ErrorBody)),
    security(("admin" = []))
)]
pub async fn stats(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    admin(&state, &req).await?;
    let m = &state.metrics;
    let nodes = state.cluster.nodes(&state.connections).await?;
    let total =
        nodes
            .iter()
            .filter(|n| n.id != state.cluster.id)
            .fold(Counters::of(m), |sum, n| Counters {
                published: sum.published + n.counters.published,
                delivered: sum.delivered + n.counters.delivered,
                published_rate: sum.published_rate + n.counters.published_rate,
                delivered_rate: sum.delivered_rate + n.counters.delivered_rate,
            });
    let connections = state.cluster.usage(&state.connections).await?.total;
    Ok(HttpResponse::Ok().json(Stats {
        connections,
        maps: state.directory.map_count(),
        nodes: nodes.len(),
        active_hubs: state.hubs.running(),
        published: total.published,
        delivered: total.delivered,
        published_per_sec: total.published_rate,
        delivered_per_sec: total.delivered_rate,
        slow_consumer_disconnects: m.slow_consumer_cuts.get(),
        store_batches: m.store_batches.get(),
        store_failures: m.store_failures.get(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_render_as_text() {
        assert_eq!(ms_text(0), "1970-01-01T00:00:00.000Z");
    }
}

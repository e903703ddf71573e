//! HTTP: routes, and the request plumbing every handler shares — who is
//! calling, which map, query strings and bodies. Handlers live one file per
//! resource and stay thin: parse, authorize, call a typed handle, answer.
//!
//! - [`stream`]: map streams, the admin firehose, SSE tokens.
//! - [`events`]: publish and history.
//! - [`admin`]: maps, keys, limits, connections, nodes, stats.
//! - [`api`]: request and response bodies as types, and `GET /openapi.json`.
//! - [`assets`]: the admin dashboard and the browser client, embedded.
//! - [`ops`]: health, readiness, metrics.
//! - [`stream_conn`]: the lean HTTP/1.1 path of connections opened for a stream.
//! - [`layer_errors`]: actix-http's own error answers, in JSON.

pub mod admin;
pub mod api;
pub mod assets;
pub mod events;
pub mod layer_errors;
pub mod ops;
pub mod stream;
pub mod stream_conn;

use std::collections::HashMap;
use std::sync::Arc;

use actix_cors::Cors;
use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::{guard, web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use ulid::Ulid;

use crate::auth::{bearer_token, secret_in, secret_matches};
use crate::error::ApiError;
use crate::sse_tokens::TokenGrant;
use crate::state::AppState;
use crate::store::{KeyRecord, MapRecord};

/// Most query parameters accepted on one request.
const MAX_QUERY_PARAMS: usize = 16;
/// Largest admin request body.
pub const MAX_ADMIN_BODY: usize = 64 << 10;

/// The application: state, panic catcher, CORS, JSON errors, routes.
pub fn app(
    state: AppState,
) -> actix_web::App<
    impl actix_web::dev::ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let cors = cors(&state.settings.cors.allowed_origins);
    actix_web::App::new()
        .app_data(web::Data::new(state))
        // A panicking handler answers 500 instead of dropping the connection.
        .wrap(actix_web_lab::middleware::CatchPanic::default())
        .wrap(cors)
        .wrap(actix_web::middleware::from_fn(json_errors))
        // JSON is never to be read as a script or a page.
        .wrap(
            actix_web::middleware::DefaultHeaders::new().add(("X-Content-Type-Options", "nosniff")),
        )
        .configure(configure)
}

/// Registers every route. Unknown paths answer 404 `NOT_FOUND` and known
/// paths with another method 405 `METHOD_NOT_ALLOWED` (with the `Allow`
/// header RFC 9110 asks for, naming the methods given here beside the
/// routes), both as JSON.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let resource = |path: &str, allow: &'static str| {
        web::resource(path).default_service(web::to(move || method_not_allowed(allow)))
    };
    // Documents and probes answer HEAD too (uptime monitors use it);
    // actix-http sends a HEAD answer's head only.
    let get_or_head = || web::route().guard(guard::Any(guard::Get()).or(guard::Head()));
    cfg.service(resource("/health", "GET, HEAD").route(get_or_head().to(ops::health)))
        .service(resource("/ready", "GET, HEAD").route(get_or_head().to(ops::ready)))
        .service(resource("/metrics", "GET, HEAD").route(get_or_head().to(ops::metrics)))
        .service(
            resource("/api/maps/{map}/events/stream", "GET")
                .route(web::get().to(stream::map_stream)),
        )
        .service(
            resource("/api/maps/{map}/events", "GET, POST")
                .route(web::get().to(events::history))
                .route(web::post().to(events::publish)),
        )
        .service(
            resource("/api/maps/{map}/sse-tokens", "POST").route(web::post().to(stream::sse_token)),
        )
        .service(resource("/api/events/stream", "GET").route(web::get().to(stream::firehose)))
        .service(
            resource("/api/admin/maps", "GET, POST")
                .route(web::get().to(admin::list_maps))
                .route(web::post().to(admin::create_map)),
        )
        .service(resource("/api/admin/maps/{map}", "GET").route(web::get().to(admin::get_map)))
        .service(
            resource("/api/admin/maps/{map}/keys", "POST").route(web::post().to(admin::create_key)),
        )
        .service(
            resource("/api/admin/maps/{map}/keys/{key_id}", "DELETE")
                .route(web::delete().to(admin::revoke_key)),
        )
        .service(
            resource("/api/admin/maps/{map}/limits", "PUT").route(web::put().to(admin::set_limits)),
        )
        .service(resource("/api/admin/limits", "GET").route(web::get().to(admin::limits)))
        .service(
            resource("/api/admin/connections", "GET").route(web::get().to(admin::list_connections)),
        )
        .service(
            resource("/api/admin/connections/{id}", "DELETE")
                .route(web::delete().to(admin::close_connection)),
        )
        .service(resource("/api/admin/stats", "GET").route(web::get().to(admin::stats)))
        .service(resource("/api/admin/nodes", "GET").route(web::get().to(admin::nodes)))
        .service(resource("/", "GET, HEAD").route(get_or_head().to(assets::root)))
        .service(resource("/openapi.json", "GET, HEAD").route(get_or_head().to(api::openapi_json)));
    for path in assets::paths() {
        cfg.service(resource(path, "GET, HEAD").route(get_or_head().to(assets::serve)));
    }
    cfg.default_service(web::to(not_found));
}

/// CORS for browsers: the configured origins, with `Authorization` and
/// `Last-Event-ID` allowed as request headers, and `Idempotency-Key`, so
/// that a page may retry a publish safely too.
pub fn cors(allowed_origins: &[String]) -> Cors {
    let cors = Cors::default()
        .allowed_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("last-event-id"),
            header::HeaderName::from_static("idempotency-key"),
        ])
        // A page on another origin must see how long to wait after a 429.
        .expose_headers([header::RETRY_AFTER])
        .max_age(3600);
    if allowed_origins.iter().any(|o| o == "*") {
        cors.allow_any_origin()
    } else {
        allowed_origins
            .iter()
            .fold(cors, |cors, origin| cors.allowed_origin(origin))
    }
}

/// Middleware: refuses request targets over `layer_errors::MAX_URI_BYTES`
/// (414); errors answered outside our handlers (a CORS refusal, a caught
/// panic) become JSON `{"error", "code"}` like every other error.
///
/// # Errors
/// An inner error is passed on as an [`ApiError`], which renders as JSON.
pub async fn json_errors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody, BoxBody>>, actix_web::Error> {
    let target = req.uri().path_and_query().map_or(0, |t| t.as_str().len());
    if target > layer_errors::MAX_URI_BYTES {
        log::debug!("refused a request target of {target} bytes");
        return Err(ApiError::UriTooLong.into());
    }
    let response = match next.call(req).await {
        Ok(response) => response,
        Err(err) => return Err(ApiError::Internal(format!("request failed: {err}")).into()),
    };
    let foreign = response
        .response()
        .error()
        .filter(|e| e.as_error::<ApiError>().is_none());
    let Some(err) = foreign else {
        return Ok(response.map_into_left_body());
    };
    let status = response.status();
    let code = match status.as_u16() {
        400 => "BAD_REQUEST",
        404 => "NOT_FOUND",
        405 => "METHOD_NOT_ALLOWED",
        413 => "PAYLOAD_TOO_LARGE",
        _ => "INTERNAL_ERROR",
    };
    let message = match err.to_string() {
        text if text.is_empty() || status.is_server_error() => status.to_string(),
        text => text,
    };
    let (request, _) = response.into_parts();
    let json = HttpResponse::build(status).json(api::ErrorBody {
        error: message,
        code: code.to_owned(),
    });
    Ok(ServiceResponse::new(request, json).map_into_right_body())
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

async fn method_not_allowed(allow: &'static str) -> HttpResponse {
    let mut response = actix_web::ResponseError::error_response(&ApiError::MethodNotAllowed);
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    response
}

/// Who is calling, by the credential presented.
#[derive(Debug, Clone)]
pub enum Caller {
    Admin,
    Publisher,
    MapKey(KeyRecord),
    SseToken(TokenGrant),
}

impl Caller {
    /// The key a stream of `map` counts against, if this caller may read it
    /// (`None` for the admin, who counts against the map only).
    ///
    /// # Errors
    /// `UNAUTHORIZED` for a credential of another map or another role.
    pub fn reader_of(&self, map: &MapRecord) -> Result<Option<Ulid>, ApiError> {
        match self {
            Self::Admin => Ok(None),
            Self::MapKey(key) if key.map_id == map.id => Ok(Some(key.id)),
            Self::SseToken(grant) if grant.map_id == map.id => Ok(grant.key_id),
            _ => Err(ApiError::Unauthorized),
        }
    }

    /// # Errors
    /// `UNAUTHORIZED` unless this is the admin token.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Self::Admin => Ok(()),
            _ => Err(ApiError::Unauthorized),
        }
    }
}

/// Identifies the caller by its Bearer credential, or by a single-use SSE
/// token where `sse_token` is given (not used up here: only the stream it
/// opens uses it up, see `stream::open_stream`). A map key this node
/// does not know yet is looked up in the store (another process made it).
///
/// # Errors
/// `UNAUTHORIZED` when nothing is presented or nothing matches;
/// `STORE_UNAVAILABLE` when an unknown key cannot be looked up.
pub async fn authenticate(
    state: &AppState,
    req: &HttpRequest,
    sse_token: Option<&str>,
) -> Result<Caller, ApiError> {
    if let Some(token) = bearer_token(req.headers()) {
        let auth = &state.settings.auth;
        if secret_matches(token, &auth.admin_token) {
            return Ok(Caller::Admin);
        }
        if secret_in(token, &auth.publisher_tokens) {
            return Ok(Caller::Publisher);
        }
        return state
            .directory
            .find_key(token)
            .await?
            .map(Caller::MapKey)
            .ok_or(ApiError::Unauthorized);
    }
    let Some(token) = sse_token.filter(|t| !t.is_empty()) else {
        return Err(ApiError::Unauthorized);
    };
    state
        .sse_tokens
        .peek(token)
        .await?
        .map(Caller::SseToken)
        .ok_or(ApiError::Unauthorized)
}

/// The map a `{map}` path segment names (id or slug); one this node does
/// not know yet is looked up in the store.
///
/// # Errors
/// `MAP_NOT_FOUND`, or `STORE_UNAVAILABLE` when it cannot be looked up.
pub async fn resolve_map(state: &AppState, id_or_slug: &str) -> Result<Arc<MapRecord>, ApiError> {
    state
        .directory
        .find(id_or_slug)
        .await?
        .ok_or(ApiError::MapNotFound)
}

/// A request's query string, decoded once and validated on demand:
/// credentials (an SSE token may be in the query) are checked before input.
pub struct Query(Result<Vec<(String, String)>, String>);

impl Query {
    /// Decodes the query string (errors are kept for [`Query::params`]).
    pub fn of(req: &HttpRequest) -> Self {
        Self(serde_urlencoded::from_str(req.query_string()).map_err(|e| e.to_string()))
    }

    /// The `token` parameter (an SSE token), even in an otherwise bad query.
    pub fn token(&self) -> Option<&str> {
        let pairs = self.0.as_ref().ok()?;
        pairs
            .iter()
            .find(|(name, _)| name == "token")
            .map(|(_, value)| value.as_str())
    }

    /// Name → value (the first of repeated names wins).
    ///
    /// # Errors
    /// `INVALID_QUERY` for an undecodable query or too many parameters.
    pub fn params(self) -> Result<HashMap<String, String>, ApiError> {
        let pairs = self
            .0
            .map_err(|e| ApiError::InvalidQuery(format!("malformed query string: {e}")))?;
        if pairs.len() > MAX_QUERY_PARAMS {
            return Err(ApiError::InvalidQuery(format!(
                "more than {MAX_QUERY_PARAMS} query parameters"
            )));
        }
        let mut params = HashMap::with_capacity(pairs.len());
        for (name, value) in pairs {
            params.entry(name).or_insert(value);
        }
        Ok(params)
    }
}

/// The query string as name → value; see [`Query::params`].
///
/// # Errors
/// `INVALID_QUERY` for an undecodable query or too many parameters.
pub fn query_params(req: &HttpRequest) -> Result<HashMap<String, String>, ApiError> {
    Query::of(req).params()
}

/// A `limit`/`offset` query parameter within `range`.
///
/// # Errors
/// `INVALID_QUERY` naming the parameter.
pub fn int_param(
    params: &HashMap<String, String>,
    name: &str,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, ApiError> {
    // Empty counts as absent, as for every other parameter.
    let Some(text) = params.get(name).filter(|t| !t.trim().is_empty()) else {
        return Ok(default);
    };
    let text = text.trim();
    // Digits only: `parse` would take a sign (`+5`).
    text.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| text.parse::<usize>().ok())
        .flatten()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            ApiError::InvalidQuery(format!(
                "{name} must be an integer from {} to {}",
                range.start(),
                range.end()
            ))
        })
}

/// Body bytes reserved before they arrive: a client that announces a
/// large body and sends nothing holds no more than this.
const BODY_RESERVE: usize = 16 << 10;

/// Reads a request body of at most `limit` bytes, within
/// `server.request_timeout_secs`.
///
/// # Errors
/// `PAYLOAD_TOO_LARGE` past the limit; `REQUEST_TIMEOUT` when the body is
/// not all there in time; `INVALID_JSON` if the body breaks off.
pub async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let timeout = req
        .app_data::<web::Data<AppState>>()
        .map_or(10, |state| state.settings.server.request_timeout_secs);
    tokio::time::timeout(
        std::time::Duration::from_secs(timeout),
        read_body_untimed(req, payload, limit),
    )
    .await
    .unwrap_or_else(|_| {
        log::debug!("request body not received in {timeout} s");
        Err(ApiError::RequestTimeout)
    })
}

/// actix-http's answer to `Expect: 100-continue`: a body whose declared
/// length is over the limit of its route is refused (413) before the
/// client sends it, instead of `100 Continue` and a refusal after the
/// upload; anything else continues.
///
/// # Errors
/// The 413 answer, in JSON.
pub fn continue_unless_too_large(
    req: actix_http::Request,
    max_publish_body: usize,
) -> Result<actix_http::Request, actix_http::Response<actix_web::body::BoxBody>> {
    use actix_http::HttpMessage as _;
    let limit = if req.path().starts_with("/api/admin/") {
        MAX_ADMIN_BODY
    } else {
        max_publish_body
    };
    match declared_length(req.headers()) {
        Some(length) if length > limit => {
            let refusal =
                ApiError::PayloadTooLarge(format!("request body over the limit of {limit} bytes"));
            Err(actix_web::ResponseError::error_response(&refusal).into())
        }
        _ => Ok(req),
    }
}

/// The body length a request's `Content-Length` declares, if well formed.
fn declared_length(headers: &header::HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

async fn read_body_untimed(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large =
        || ApiError::PayloadTooLarge(format!("request body over the limit of {limit} bytes"));
    // A compressed body would otherwise be refused as JSON it is not.
    if let Some(coding) = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|coding| coding != "identity")
    {
        return Err(ApiError::BadRequest(format!(
            "Content-Encoding `{}` is not supported: send the body uncompressed",
            coding.chars().take(32).collect::<String>()
        )));
    }
    let declared = declared_length(req.headers());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0).min(BODY_RESERVE));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|err| match err {
            PayloadError::Overflow => too_large(),
            // A body cut short or chunked wrongly is the request's framing,
            // not its JSON.
            err => {
                log::debug!("request body unreadable: {err}");
                ApiError::BadRequest("the request body is incomplete or malformed".into())
            }
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

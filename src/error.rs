//! The API error type: every failure a client can see, with its status and
//! `code`, rendered once as `{"error", "code"}` by the single `ResponseError`.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};

use crate::store::StoreError;

/// Everything an HTTP handler can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid credential")]
    Unauthorized,
    #[error("map not found")]
    MapNotFound,
    #[error("API key not found")]
    KeyNotFound,
    #[error("connection not found")]
    ConnectionNotFound,
    #[error("{0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidEvent(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    InvalidLastEventId(String),
    #[error("{0}")]
    InvalidFilter(String),
    #[error("{0}")]
    InvalidQuery(String),
    #[error("{0}")]
    InvalidSlug(String),
    #[error("{0}")]
    InvalidLimits(String),
    #[error("{0}")]
    InvalidName(String),
    #[error("a map with this slug already exists")]
    MapExists,
    #[error("{0}")]
    InvalidIdempotencyKey(String),
    #[error("this Idempotency-Key was used with another request body")]
    IdempotencyKeyReused,
    #[error("too many requests; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("the server holds its maximum number of streams")]
    GlobalConnectionLimit,
    #[error("this map holds its maximum number of streams")]
    MapConnectionLimit,
    #[error("this API key holds its maximum number of streams")]
    ApiKeyConnectionLimit,
    #[error("server-sent event streams are disabled")]
    SseDisabled,
    #[error("the event store is unavailable; retry later")]
    StoreUnavailable,
    #[error("{0}")]
    BadRequest(String),
    #[error("the request head is too large")]
    HeadersTooLarge,
    #[error("the request target is too long")]
    UriTooLong,
    #[error("the request did not arrive in time")]
    RequestTimeout,
    #[error("no such resource")]
    NotFound,
    #[error("method not allowed on this resource")]
    MethodNotAllowed,
    /// The detail is logged, never shown.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized => "UNAUTHORIZED",
            Self::MapNotFound => "MAP_NOT_FOUND",
            Self::KeyNotFound => "KEY_NOT_FOUND",
            Self::ConnectionNotFound => "CONNECTION_NOT_FOUND",
            Self::InvalidJson(_) => "INVALID_JSON",
            Self::InvalidEvent(_) => "INVALID_EVENT",
            Self::PayloadTooLarge(_) => "PAYLOAD_TOO_LARGE",
            Self::InvalidLastEventId(_) => "INVALID_LAST_EVENT_ID",
            Self::InvalidFilter(_) => "INVALID_FILTER",
            Self::InvalidQuery(_) => "INVALID_QUERY",
            Self::InvalidSlug(_) => "INVALID_SLUG",
            Self::InvalidLimits(_) => "INVALID_LIMITS",
            Self::InvalidName(_) => "INVALID_NAME",
            Self::MapExists => "MAP_EXISTS",
            Self::InvalidIdempotencyKey(_) => "INVALID_IDEMPOTENCY_KEY",
            Self::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::GlobalConnectionLimit => "GLOBAL_CONNECTION_LIMIT",
            Self::MapConnectionLimit => "MAP_CONNECTION_LIMIT",
            Self::ApiKeyConnectionLimit => "API_KEY_CONNECTION_LIMIT",
            Self::SseDisabled => "SSE_DISABLED",
            Self::StoreUnavailable => "STORE_UNAVAILABLE",
            Self::BadRequest(_) => "BAD_REQUEST",
            Self::HeadersTooLarge => "HEADERS_TOO_LARGE",
            Self::UriTooLong => "URI_TOO_LONG",
            Self::RequestTimeout => "REQUEST_TIMEOUT",
            Self::NotFound => "NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::Internal(_) => "INTERNAL_ERROR",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::MapNotFound | Self::KeyNotFound | Self::ConnectionNotFound | Self::NotFound => {
                StatusCode::NOT_FOUND
            }
            Self::InvalidJson(_)
            | Self::InvalidEvent(_)
            | Self::InvalidLastEventId(_)
            | Self::InvalidFilter(_)
            | Self::InvalidQuery(_)
            | Self::InvalidSlug(_)
            | Self::InvalidLimits(_)
            | Self::InvalidIdempotencyKey(_)
            | Self::InvalidName(_)
            | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MapExists | Self::IdempotencyKeyReused => StatusCode::CONFLICT,
            Self::RateLimited { .. }
            | Self::GlobalConnectionLimit
            | Self::MapConnectionLimit
            | Self::ApiKeyConnectionLimit => StatusCode::TOO_MANY_REQUESTS,
            Self::SseDisabled | Self::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Internal(detail) = self {
            log::error!("internal error: {detail}");
        }
        let mut response = HttpResponse::build(self.status_code());
        match self {
            Self::Unauthorized => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            Self::RateLimited { retry_after_secs } => {
                response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            // The rest of the body may still come: the connection cannot
            // carry another request.
            Self::RequestTimeout => {
                response.force_close();
            }
            _ => {}
        }
        response.json(crate::http::api::ErrorBody {
            error: self.to_string(),
            code: self.code().to_owned(),
        })
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(detail) => {
                log::warn!("store unavailable: {detail}");
                Self::StoreUnavailable
            }
            StoreError::Conflict => Self::MapExists,
            StoreError::Corrupt(detail) => Self::Internal(detail),
        }
    }
}

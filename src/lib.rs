//! herald — an SSE event relay.
//!
//! - [`config`]: settings and their defaults.
//! - [`error`]: the API error type and its single HTTP mapping.
//! - [`event`]: publish-body validation, envelopes and SSE frames.
//! - [`filter`]: `events=` / `sources=` subscription filters.
//! - [`auth`]: secrets — generation, hashing, constant-time checks.
//! - [`store`]: the store trait with its PostgreSQL and SQLite implementations.

pub mod actors;
pub mod auth;
pub mod backfill;
pub mod config;
pub mod connections;
pub mod directory;
pub mod error;
pub mod event;
pub mod filter;
pub mod http;
pub mod metrics;
pub mod rate_limit;
pub mod server;
pub mod socket;
pub mod sse_tokens;
pub mod state;
pub mod store;

//! herald — an SSE event relay: internal services publish events for a map,
//! API clients hold SSE streams and get every event once, in order, across
//! reconnects (ULID `Last-Event-ID` backfill), admins steer connections.
//!
//! Module map, one job each:
//!
//! - [`server`]: start-up (store, directory, actors, HTTP) and graceful shutdown.
//! - [`actors`]: `MapHub` (fan-out and hot history per map), `Persistence`
//!   (group commit), `Feed` (committed events to the hubs, in id order),
//!   `Session` (one per stream, with its body).
//! - [`cluster`]: this node among the others on one PostgreSQL database —
//!   heartbeat, cluster-wide slots, admin views, notifications.
//! - [`http`]: routes and thin handlers, one file per resource.
//! - [`state`]: the shared handle handlers receive.
//! - [`store`]: the store trait with its PostgreSQL and SQLite implementations.
//! - [`backfill`]: which stored events a reconnecting client gets.
//! - [`event`]: publish-body validation, envelopes and SSE frames.
//! - [`filter`]: `events=` / `sources=` subscription filters.
//! - [`directory`]: maps and API keys in memory, written through to the store.
//! - [`connections`]: open streams and exact connection limits.
//! - [`outbox`]: the bounded queue from a hub to one stream.
//! - [`sse_tokens`]: single-use tokens for browsers.
//! - [`rate_limit`]: the per-IP request limit of the external endpoints.
//! - [`auth`]: secrets — generation, hashing, constant-time checks.
//! - [`socket`]: the TCP socket under a stream (user timeout, forced close).
//! - [`metrics`]: counters and Prometheus exposition.
//! - [`config`]: settings and their defaults.
//! - [`error`]: the API error type and its single HTTP mapping.

pub mod actors;
pub mod auth;
pub mod backfill;
pub mod cluster;
pub mod config;
pub mod connections;
pub mod directory;
pub mod error;
pub mod event;
pub mod filter;
pub mod http;
pub mod metrics;
pub mod outbox;
pub mod rate_limit;
pub mod server;
pub mod socket;
pub mod sse_tokens;
pub mod state;
pub mod store;

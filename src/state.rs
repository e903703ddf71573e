//! `AppState`: the cheap-to-clone handle every HTTP handler receives —
//! settings, store, directory, connection table, hubs, feed, persistence,
//! cluster, limits.

use std::sync::Arc;

use crate::actors::feed::FeedHandle;
use crate::actors::hub::Hubs;
use crate::actors::persistence::PersistenceHandle;
use crate::cluster::Cluster;
use crate::config::Settings;
use crate::connections::ConnectionTable;
use crate::directory::Directory;
use crate::metrics::Metrics;
use crate::rate_limit::RateLimiter;
use crate::sse_tokens::SseTokens;
use crate::store::SharedStore;

/// Shared services; every field is a reference-counted handle.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: SharedStore,
    pub directory: Arc<Directory>,
    pub connections: Arc<ConnectionTable>,
    pub hubs: Hubs,
    pub feed: FeedHandle,
    pub persistence: PersistenceHandle,
    pub cluster: Arc<Cluster>,
    pub metrics: Arc<Metrics>,
    pub sse_tokens: Arc<SseTokens>,
    pub rate_limiter: Arc<RateLimiter>,
}

//! Settings: every key of the spec with its default, loaded from
//! `settings.toml` (or `--config PATH`) and `HERALD__SECTION__KEY` variables.

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Deserializer};

/// Admin token shipped in the defaults and in `settings.toml`; refused on a
/// non-loopback bind so a demo setup can never face the network.
pub const DEMO_ADMIN_TOKEN: &str = "demo-admin-token";
/// Publisher token shipped in the defaults (same rule as the admin token).
pub const DEMO_PUBLISHER_TOKEN: &str = "demo-publisher-token";
/// Map key shipped for the `demo` map in `settings.toml` (same rule).
pub const DEMO_MAP_KEY: &str = "demo-map-key";

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub sse: SseSettings,
    pub history: HistorySettings,
    pub limits: LimitSettings,
    pub auth: AuthSettings,
    pub cors: CorsSettings,
    pub publish: PublishSettings,
    pub cluster: ClusterSettings,
    /// Maps created (with their key) at start when missing.
    pub maps: Vec<SeedMap>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Loopback by default: exposing the relay is a deliberate act.
    pub bind: String,
    /// HTTP worker threads; 0 = one per core.
    pub workers: usize,
    /// Time for a request's head and body: a client cannot hold a
    /// connection and a body buffer by sending slowly.
    pub request_timeout_secs: u64,
    /// Idle keep-alive connections stay open this long: longer than
    /// common HTTP clients keep idle connections (60 s and less), so a
    /// client never sends on a connection the server is closing.
    pub keep_alive_secs: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            workers: 0,
            request_timeout_secs: 10,
            keep_alive_secs: 75,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// SQLite needs no server, so a fresh checkout runs with no setup.
    pub url: String,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "sqlite://herald.db".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SseSettings {
    pub enabled: bool,
    /// Below the 30-60 s idle timeouts of common proxies and load balancers.
    pub keepalive_secs: u64,
    pub retry_ms: u64,
    /// Live events queued per stream before it is cut as a slow consumer.
    pub client_buffer: usize,
}

impl Default for SseSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            keepalive_secs: 15,
            retry_ms: 3000,
            client_buffer: 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistorySettings {
    /// Recent events per hub served to reconnecting clients without the store.
    pub hot_events: usize,
    pub retention_secs: u64,
    pub retention_count: u64,
    pub max_backfill: usize,
    pub prune_interval_secs: u64,
}

impl Default for HistorySettings {
    fn default() -> Self {
        Self {
            hot_events: 1000,
            retention_secs: 604_800,
            retention_count: 100_000,
            max_backfill: 10_000,
            prune_interval_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Below the 20,000 open files a process may hold on the reference machine.
    pub max_connections: u64,
    pub max_connections_per_map: u64,
    pub max_connections_per_key: u64,
    pub rate_per_minute: u32,
    pub rate_burst: u32,
    pub trust_forwarded_for: bool,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_map: 1000,
            max_connections_per_key: 100,
            rate_per_minute: 60,
            rate_burst: 10,
            trust_forwarded_for: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    pub admin_token: String,
    #[serde(deserialize_with = "string_or_list")]
    pub publisher_tokens: Vec<String>,
    pub sse_token_ttl_secs: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            admin_token: DEMO_ADMIN_TOKEN.into(),
            publisher_tokens: vec![DEMO_PUBLISHER_TOKEN.into()],
            sse_token_ttl_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsSettings {
    /// A list of origins, or `*` (as a string or a one-element list).
    #[serde(deserialize_with = "string_or_list")]
    pub allowed_origins: Vec<String>,
}

impl Default for CorsSettings {
    fn default() -> Self {
        Self {
            allowed_origins: vec!["*".into()],
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublishSettings {
    pub max_body_bytes: usize,
    pub max_event_bytes: usize,
    pub max_batch: usize,
    /// A day: longer than any sane retry loop, short enough to keep the
    /// table small.
    pub idempotency_ttl_secs: u64,
}

impl Default for PublishSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_event_bytes: 64 << 10,
            max_batch: 1000,
            idempotency_ttl_secs: 86_400,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// This node's name in admin views and logs; empty: host name and port.
    pub node_name: String,
    /// How often a node says it is alive: well below the timeout, so one
    /// late heartbeat never makes a node count as dead.
    pub heartbeat_secs: u64,
    /// Silence after which a node counts as dead and its slots are freed:
    /// five heartbeats, so a busy database does not make live nodes "die".
    pub node_timeout_secs: u64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            node_name: String::new(),
            heartbeat_secs: 2,
            node_timeout_secs: 10,
        }
    }
}

/// A map seeded from `[[maps]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedMap {
    pub slug: String,
    #[serde(default)]
    pub name: Option<String>,
    pub api_key: String,
}

/// Accepts `"a"`, `"a,b"` (what an environment variable gives) or `["a", "b"]`.
fn string_or_list<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(de)? {
        OneOrMany::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        OneOrMany::Many(v) => v,
    })
}

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Loads `path` (or `settings.toml` when present) and the environment.
    ///
    /// # Errors
    /// A missing explicit file, a malformed file or value, or an unsafe
    /// combination (see [`Settings::validate`]).
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let file = match path {
            Some(p) => config::File::from(p).required(true),
            None => config::File::with_name("settings.toml").required(false),
        };
        let env = config::Environment::with_prefix("HERALD")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true);
        let settings: Settings = config::Config::builder()
            .add_source(file)
            .add_source(env)
            .build()?
            .try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what serde cannot: usable addresses and no demo secret on a
    /// public bind.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bind: SocketAddr = self.server.bind.parse().map_err(|_| {
            ConfigError::Invalid(format!(
                "server.bind `{}` is not an IP:port address",
                self.server.bind
            ))
        })?;
        // Zero would make the relay refuse or drop everything, silently.
        let at_least_one = [
            (
                "server.request_timeout_secs",
                self.server.request_timeout_secs,
            ),
            ("sse.keepalive_secs", self.sse.keepalive_secs),
            ("sse.client_buffer", self.sse.client_buffer as u64),
            (
                "history.prune_interval_secs",
                self.history.prune_interval_secs,
            ),
            ("limits.max_connections", self.limits.max_connections),
            ("auth.sse_token_ttl_secs", self.auth.sse_token_ttl_secs),
            ("publish.max_body_bytes", self.publish.max_body_bytes as u64),
            (
                "publish.max_event_bytes",
                self.publish.max_event_bytes as u64,
            ),
            ("publish.max_batch", self.publish.max_batch as u64),
        ];
        if let Some((key, _)) = at_least_one.iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError::Invalid(format!("{key} must be at least 1")));
        }
        if self.publish.max_batch > crate::store::MAX_BOUND_IDS {
            return Err(ConfigError::Invalid(format!(
                "publish.max_batch must be at most {}",
                crate::store::MAX_BOUND_IDS
            )));
        }
        if let Some(origin) = self
            .cors
            .allowed_origins
            .iter()
            .find(|o| *o != "*" && !is_origin(o))
        {
            return Err(ConfigError::Invalid(format!(
                "cors.allowed_origins: `{origin}` is not an origin (scheme://host[:port], or *)"
            )));
        }
        if self.cluster.heartbeat_secs == 0
            || self.cluster.node_timeout_secs <= self.cluster.heartbeat_secs
        {
            return Err(ConfigError::Invalid(
                "cluster.heartbeat_secs must be at least 1 and below cluster.node_timeout_secs"
                    .into(),
            ));
        }
        if self.auth.admin_token.is_empty() {
            return Err(ConfigError::Invalid(
                "auth.admin_token must not be empty".into(),
            ));
        }
        if !bind.ip().is_loopback() {
            let demo = self.auth.admin_token == DEMO_ADMIN_TOKEN
                || self
                    .auth
                    .publisher_tokens
                    .iter()
                    .any(|t| t == DEMO_PUBLISHER_TOKEN)
                || self.maps.iter().any(|m| m.api_key == DEMO_MAP_KEY);
            if demo {
                return Err(ConfigError::Invalid(format!(
                    "refusing to bind {bind} with the shipped demo tokens: set auth.admin_token, \
                     auth.publisher_tokens and the [[maps]] api_key to your own secrets \
                     (or bind 127.0.0.1)"
                )));
            }
        }
        Ok(())
    }
}

/// Whether `text` is a browser origin, `http(s)://host[:port]` with
/// nothing after: an `Origin` header is compared with it byte for byte.
fn is_origin(text: &str) -> bool {
    let Some(authority) = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
    else {
        return false;
    };
    !authority.is_empty()
        && authority
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_spec() {
        let s = Settings::default();
        assert_eq!(s.server.bind, "127.0.0.1:8080");
        assert_eq!(s.server.request_timeout_secs, 10);
        assert_eq!(s.server.keep_alive_secs, 75);
        assert_eq!(s.database.url, "sqlite://herald.db");
        assert_eq!(s.sse.client_buffer, 1024);
        assert_eq!(s.history.max_backfill, 10_000);
        assert_eq!(s.limits.rate_per_minute, 60);
        assert_eq!(s.publish.max_body_bytes, 1_048_576);
        assert_eq!(s.cors.allowed_origins, vec!["*"]);
        assert_eq!(s.publish.idempotency_ttl_secs, 86_400);
        assert_eq!(s.cluster.heartbeat_secs, 2);
        assert_eq!(s.cluster.node_timeout_secs, 10);
        assert!(s.cluster.node_name.is_empty());
    }

    #[test]
    fn values_that_would_refuse_everything_are_refused() {
        let refused = |change: fn(&mut Settings), key: &str| {
            let mut s = Settings::default();
            change(&mut s);
            let err = s.validate().expect_err(key).to_string();
            assert!(err.contains(key), "{err}");
        };
        refused(|s| s.limits.max_connections = 0, "limits.max_connections");
        refused(|s| s.publish.max_batch = 0, "publish.max_batch");
        refused(
            |s| s.publish.max_batch = crate::store::MAX_BOUND_IDS + 1,
            "publish.max_batch",
        );
        refused(|s| s.publish.max_body_bytes = 0, "publish.max_body_bytes");
        refused(|s| s.auth.sse_token_ttl_secs = 0, "auth.sse_token_ttl_secs");
        refused(
            |s| s.history.prune_interval_secs = 0,
            "history.prune_interval_secs",
        );
        refused(
            |s| s.cors.allowed_origins = vec!["not-an-origin".into()],
            "not-an-origin",
        );
        refused(
            |s| s.cors.allowed_origins = vec!["https://app.example/".into()],
            "https://app.example/",
        );
        let mut s = Settings::default();
        s.cors.allowed_origins = vec![
            "https://app.example".into(),
            "http://127.0.0.1:8000".into(),
            "http://[::1]:3000".into(),
        ];
        s.validate().expect("origins");
    }

    #[test]
    fn demo_tokens_refuse_a_public_bind() {
        let mut s = Settings::default();
        s.server.bind = "0.0.0.0:8080".into();
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("demo tokens"), "{err}");
        s.auth.admin_token = "a-real-secret".into();
        s.auth.publisher_tokens = vec!["another-secret".into()];
        s.validate().expect("own secrets may bind anywhere");
    }
}

//! Starting and stopping the relay: open and migrate the store, load the
//! directory, start the actors and background tasks, serve HTTP, and shut
//! down gracefully on SIGTERM/SIGINT (stop accepting, end every stream,
//! flush the pending batch, exit).

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use actix::Arbiter;
use actix_web::{web, App, HttpServer};
use ulid::Ulid;

use crate::actors::hub::{HubConfig, Hubs};
use crate::actors::persistence::PersistenceHandle;
use crate::config::Settings;
use crate::connections::ConnectionTable;
use crate::directory::{Directory, DirectoryError};
use crate::metrics::Metrics;
use crate::rate_limit::RateLimiter;
use crate::sse_tokens::SseTokens;
use crate::state::AppState;
use crate::store::{self, SharedStore, StoreError};

/// Streams are ended by us on shutdown; this only bounds what remains
/// (requests in flight) so the process exits well within 10 s.
const SHUTDOWN_TIMEOUT_SECS: u64 = 5;
/// How often idle rate-limit buckets are forgotten.
const RATE_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot seed maps: {0}")]
    Seed(#[from] DirectoryError),
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
}

/// Opens the store named in the settings and applies pending migrations.
///
/// # Errors
/// The database is unreachable or a migration fails.
pub async fn open_store(settings: &Settings) -> Result<SharedStore, StoreError> {
    let store = store::open(&settings.database.url).await?;
    store.migrate().await?;
    Ok(store)
}

/// Runs the relay until a shutdown signal; returns once it has stopped.
///
/// # Errors
/// The store cannot be opened, seeding fails, or the address cannot be bound.
pub async fn serve(settings: Settings) -> Result<(), StartError> {
    let settings = Arc::new(settings);
    let store = open_store(&settings).await?;
    let directory = Arc::new(Directory::load(Arc::clone(&store)).await?);
    directory.seed(&settings.maps).await?;

    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let workers = if settings.server.workers == 0 {
        threads
    } else {
        settings.server.workers
    };
    // Hubs get their own threads so fan-out never stalls request handling.
    let hub_arbiters: Vec<Arbiter> = (0..threads).map(|_| Arbiter::new()).collect();
    let hubs = Hubs::new(
        Arc::clone(&store),
        HubConfig {
            hot_events: settings.history.hot_events,
            max_backfill: settings.history.max_backfill,
        },
        hub_arbiters.iter().map(Arbiter::handle).collect(),
    );
    let metrics = Arc::new(Metrics::default());
    let last_id = store.newest_event_id(None).await?.unwrap_or_default();
    let persistence = PersistenceHandle::start(
        Arc::clone(&store),
        hubs.clone(),
        Arc::clone(&metrics),
        last_id,
    );
    let state = AppState {
        settings: Arc::clone(&settings),
        store: Arc::clone(&store),
        directory,
        connections: Arc::new(ConnectionTable::default()),
        hubs,
        persistence,
        metrics,
        sse_tokens: Arc::new(SseTokens::new(Duration::from_secs(
            settings.auth.sse_token_ttl_secs,
        ))),
        rate_limiter: Arc::new(RateLimiter::new(&settings.limits)),
    };

    let app_state = state.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(app_state.clone()))
            // A panicking handler answers 500 instead of dropping the connection.
            .wrap(actix_web_lab::middleware::CatchPanic::default())
            .wrap(crate::http::cors(&app_state.settings.cors.allowed_origins))
            .wrap(actix_web::middleware::from_fn(crate::http::json_errors))
            .configure(crate::http::configure)
    })
    .workers(workers)
    .max_connections(25_000)
    .backlog(4096)
    // Notice vanished clients on read, not at the next keep-alive write.
    .h1_allow_half_closed(false)
    .on_connect(crate::socket::on_connect(Duration::from_secs(
        settings.sse.keepalive_secs,
    )))
    .disable_signals()
    .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS)
    .bind(settings.server.bind.as_str())?;
    for addr in server.addrs() {
        log::info!("herald listening on http://{addr}");
        // Tests and scripts read the bound port (the bind may ask for port 0).
        println!("herald listening on http://{addr}");
    }
    let _ = std::io::stdout().flush();
    let server = server.run();

    actix_web::rt::spawn(prune_forever(Arc::clone(&store), Arc::clone(&settings)));
    actix_web::rt::spawn(sweep_rate_limits(Arc::clone(&state.rate_limiter)));
    actix_web::rt::spawn(stop_on_signal(state, server.handle()));
    server.await?;
    for arbiter in hub_arbiters {
        arbiter.stop();
    }
    log::info!("herald stopped");
    Ok(())
}

async fn stop_on_signal(state: AppState, server: actix_web::dev::ServerHandle) {
    wait_for_signal().await;
    log::info!(
        "shutdown: closing {} streams, flushing pending events",
        state.connections.total()
    );
    // Stop accepting first (the command is sent now), then end the streams
    // so their connections can close, then commit what is queued.
    let stopped = server.stop(true);
    state.connections.close_all();
    state.persistence.flush().await;
    // Streams that arrived on kept-alive connections meanwhile end too.
    state.connections.close_all();
    stopped.await;
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            log::error!("cannot install signal handlers; falling back to Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn prune_forever(store: SharedStore, settings: Arc<Settings>) {
    let history = &settings.history;
    let mut interval =
        tokio::time::interval(Duration::from_secs(history.prune_interval_secs.max(1)));
    loop {
        interval.tick().await;
        let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
        let cutoff = Ulid::from_parts(
            now_ms.saturating_sub(history.retention_secs.saturating_mul(1000)),
            0,
        );
        match store.prune(cutoff, history.retention_count).await {
            Ok(0) => {}
            Ok(n) => log::info!("retention removed {n} events"),
            Err(err) => log::warn!("retention pass failed: {err}"),
        }
    }
}

async fn sweep_rate_limits(limiter: Arc<RateLimiter>) {
    let mut interval = tokio::time::interval(RATE_SWEEP_INTERVAL);
    loop {
        interval.tick().await;
        limiter.sweep();
    }
}

//! Starting and stopping the relay: open and migrate the store, load the
//! directory, join the cluster, start the actors and background tasks,
//! serve HTTP, and shut down gracefully on SIGTERM/SIGINT (stop accepting,
//! end every stream, flush the pending batch, leave the cluster, exit).

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;

use actix::Arbiter;
use actix_http::error::DispatchError;
use actix_http::Protocol;
use actix_server::{GracefulShutdownSignal, Server};
use actix_service::{
    fn_factory, fn_service, map_config, ServiceExt, ServiceFactory, ServiceFactoryExt,
};
use actix_web::dev::{AppConfig, Extensions, ServiceResponse};
use actix_web::rt::net::TcpStream;
use ulid::Ulid;

use crate::actors::feed::FeedHandle;
use crate::actors::hub::{HubConfig, Hubs};
use crate::actors::persistence::PersistenceHandle;
use crate::cluster::{default_node_name, Cluster};
use crate::config::Settings;
use crate::connections::ConnectionTable;
use crate::directory::{Directory, DirectoryError};
use crate::http::layer_errors::JsonErrors;
use crate::http::stream_conn::{self, Front};
use crate::metrics::Metrics;
use crate::rate_limit::RateLimiter;
use crate::sse_tokens::SseTokens;
use crate::state::AppState;
use crate::store::offload::{Offloaded, StoreRuntime};
use crate::store::{self, SharedStore, StoreError};

/// Streams are ended by us on shutdown; this only bounds what remains
/// (requests in flight) so the process exits well within 10 s.
const SHUTDOWN_TIMEOUT_SECS: u64 = 5;
/// Connections one worker accepts at most (streams are limited below that
/// by `limits.max_connections`).
const MAX_CONNECTIONS: usize = 25_000;
/// Pending connections the kernel queues (a burst of reconnecting clients).
const BACKLOG: u32 = 4096;
/// How long a closing connection may take to flush (actix-web's default).
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);
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
    #[error(
        "another `herald serve` is running on the database file {}: herald on SQLite is one \
         process (use PostgreSQL for several nodes)",
        .0.display()
    )]
    AlreadyServing(std::path::PathBuf),
}

/// Opens the store named in the settings and applies pending migrations.
///
/// # Errors
/// The database is unreachable or a migration fails.
pub async fn open_store(settings: &Settings) -> Result<SharedStore, StoreError> {
    let url = &settings.database.url;
    let opened = async {
        let store = store::open(url).await?;
        store.migrate().await?;
        Ok(store)
    };
    opened.await.map_err(|err| match err {
        StoreError::Unavailable(cause) => StoreError::Unavailable(format!(
            "{} cannot be reached: {cause}",
            store::describe(url)
        )),
        other => other,
    })
}

/// Runs the relay until a shutdown signal; returns once it has stopped.
///
/// # Errors
/// The store cannot be opened, seeding fails, another server holds the
/// SQLite file, or the address cannot be bound.
pub async fn serve(settings: Settings) -> Result<(), StartError> {
    let settings = Arc::new(settings);
    let url = settings.database.url.as_str();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let opened = open_store(&settings).await?;
    let _serving = lock_sqlite(url)?;
    let runtime = StoreRuntime::start(threads)
        .map_err(|e| StoreError::Unavailable(format!("store threads: {e}")))?;
    let store: SharedStore = Arc::new(Offloaded::new(opened, Arc::clone(&runtime)));
    let directory = Arc::new(Directory::load(Arc::clone(&store), store::is_postgres(url)).await?);
    directory.seed(&settings.maps).await?;

    let mut listeners = Vec::new();
    for addr in settings.server.bind.as_str().to_socket_addrs()? {
        let listener = bind(addr)?;
        let local = listener.local_addr()?;
        listeners.push((listener, local));
    }
    let node_name = match (&settings.cluster.node_name, listeners.first()) {
        (name, _) if !name.is_empty() => name.clone(),
        (_, Some((_, local))) => default_node_name(local.port()),
        (_, None) => default_node_name(0),
    };
    let cluster = Arc::new(if store::is_postgres(url) {
        Cluster::join(url, node_name, &settings.cluster, runtime).await?
    } else {
        Cluster::single(node_name, &settings.cluster)
    });

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
    let newest = store.newest_event_id(None).await?.unwrap_or_default();
    let feed = FeedHandle::start(Arc::clone(&store), hubs.clone(), newest);
    let persistence = PersistenceHandle::start(
        Arc::clone(&store),
        feed.clone(),
        Arc::clone(&cluster),
        Arc::clone(&metrics),
        Duration::from_secs(settings.publish.idempotency_ttl_secs),
    );
    let connections = Arc::new(if cluster.is_shared() {
        ConnectionTable::with_release_queue(cluster.release_queue())
    } else {
        ConnectionTable::default()
    });
    let state = AppState {
        settings: Arc::clone(&settings),
        store: Arc::clone(&store),
        directory,
        connections,
        hubs,
        feed,
        persistence,
        cluster: Arc::clone(&cluster),
        metrics,
        sse_tokens: Arc::new(SseTokens::shared(
            Duration::from_secs(settings.auth.sse_token_ttl_secs),
            Arc::clone(&cluster),
        )),
        rate_limiter: Arc::new(RateLimiter::new(&settings.limits)),
    };

    let user_timeout = Duration::from_secs(settings.sse.keepalive_secs);
    let mut builder = Server::build()
        .workers(workers)
        .max_concurrent_connections(MAX_CONNECTIONS)
        .backlog(BACKLOG)
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS);
    let shutdown_signal = builder.graceful_shutdown_signal();
    for (listener, local) in listeners {
        let state = state.clone();
        let shutdown_signal = shutdown_signal.clone();
        builder = builder.listen("herald", listener, move || {
            worker_service(state.clone(), local, shutdown_signal.clone(), user_timeout)
        })?;
        log::info!("herald node {} listening on http://{local}", cluster.name);
        // Tests and scripts read the bound port (the bind may ask for port 0).
        println!("herald listening on http://{local}");
    }
    let _ = std::io::stdout().flush();
    let server = builder.run();

    cluster.start(&state);
    actix_web::rt::spawn(prune_forever(
        Arc::clone(&store),
        Arc::clone(&settings),
        Arc::clone(&cluster),
    ));
    actix_web::rt::spawn(sweep_rate_limits(Arc::clone(&state.rate_limiter)));
    actix_web::rt::spawn(sample_rates(Arc::clone(&state.metrics)));
    actix_web::rt::spawn(stop_on_signal(state, server.handle()));
    server.await?;
    for arbiter in hub_arbiters {
        arbiter.stop();
    }
    log::info!("herald stopped");
    Ok(())
}

/// Holds the SQLite database file for this server: herald on SQLite is one
/// process (ids are handed out from its memory), so a second `serve` on the
/// same file must not start. `migrate` and `map create` do not take it.
/// The lock (flock, which SQLite's own fcntl locks do not see) goes with
/// the process, however it ends.
fn lock_sqlite(url: &str) -> Result<Option<std::fs::File>, StartError> {
    use std::os::fd::AsRawFd;
    let Some(path) = store::sqlite::SqliteStore::file(url).filter(|_| url.starts_with("sqlite:"))
    else {
        return Ok(None);
    };
    let file = std::fs::File::open(&path)?;
    // SAFETY: `file` is an open descriptor for the duration of the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(StartError::AlreadyServing(path));
    }
    Ok(Some(file))
}

/// A listening socket with our backlog.
fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)?.into_std()
}

/// One worker's connection service: stream connections take the lean path
/// of [`stream_conn`], the others go to actix-http (configured as actix-web's
/// `HttpServer` would). A request whose client half-closed the connection
/// after sending it is still answered (a publish's events are committed,
/// its 201 must not be lost); a stream on such a connection ends when its
/// client closes (see `layer_errors`).
fn worker_service(
    state: AppState,
    local: SocketAddr,
    shutdown_signal: GracefulShutdownSignal,
    user_timeout: Duration,
) -> impl ServiceFactory<TcpStream, Config = (), Response = (), Error = (), InitError = ()> {
    let server = &state.settings.server;
    let request_timeout = Duration::from_secs(server.request_timeout_secs);
    let max_publish_body = state.settings.publish.max_body_bytes;
    let http = actix_http::HttpService::build()
        .expect(fn_service(move |req| async move {
            crate::http::continue_unless_too_large(req, max_publish_body)
        }))
        .client_request_timeout(request_timeout)
        .client_disconnect_timeout(DISCONNECT_TIMEOUT)
        .keep_alive(Duration::from_secs(server.keep_alive_secs))
        .h1_allow_half_closed(true)
        .local_addr(local)
        .on_connect_ext(move |io: &JsonErrors<TcpStream>, data: &mut Extensions| {
            data.insert(crate::socket::configure(io.get_ref(), user_timeout));
            data.insert(io.carries_stream());
        })
        .graceful_shutdown_signal(move || {
            let signal = shutdown_signal.clone();
            async move { signal.notified().await }
        })
        .finish(map_config(crate::http::app(state.clone()), |()| {
            AppConfig::default()
        }));
    // actix-http's own error answers become JSON (see `layer_errors`).
    let http = ServiceFactoryExt::and_then(
        fn_service(|io: TcpStream| async move {
            let peer = io.peer_addr().ok();
            Ok::<_, DispatchError>((JsonErrors::new(io, peer), Protocol::Http1, peer))
        }),
        http,
    );
    fn_factory(move || {
        let http = http.new_service(());
        let app = actix_service::IntoServiceFactory::into_factory(crate::http::app(state.clone()))
            .new_service(AppConfig::default());
        async move {
            let http = http.await?;
            let app = app.await?;
            let front = Rc::new(Front {
                app: actix_service::boxed::service(
                    app.map(|res: ServiceResponse<_>| res.map_into_boxed_body().into()),
                ),
                http: actix_service::boxed::service(http),
                request_timeout,
                user_timeout,
            });
            Ok(fn_service(move |io: TcpStream| {
                stream_conn::serve(io, Rc::clone(&front))
            }))
        }
    })
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
    // Other nodes may admit this node's clients at once.
    state.cluster.leave().await;
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

/// Retention of events and of idempotency keys, every
/// `history.prune_interval_secs`.
async fn prune_forever(store: SharedStore, settings: Arc<Settings>, cluster: Arc<Cluster>) {
    let history = &settings.history;
    let mut interval =
        tokio::time::interval(Duration::from_secs(history.prune_interval_secs.max(1)));
    loop {
        interval.tick().await;
        // The database's clock: every node cuts at the same age.
        let now_ms = cluster.now_ms();
        let cutoff = Ulid::from_parts(
            now_ms.saturating_sub(history.retention_secs.saturating_mul(1000)),
            0,
        );
        match store.prune(cutoff, history.retention_count).await {
            Ok(0) => {}
            Ok(n) => log::info!("retention removed {n} events"),
            Err(err) => log::warn!("retention pass failed: {err}"),
        }
        let ttl_ms = settings.publish.idempotency_ttl_secs.saturating_mul(1000);
        match store.prune_idempotency(now_ms.saturating_sub(ttl_ms)).await {
            Ok(0) => {}
            Ok(n) => log::info!("forgot {n} expired idempotency keys"),
            Err(err) => log::warn!("idempotency key expiry failed: {err}"),
        }
    }
}

/// Feeds the published and delivered rates of `/api/admin/stats`.
async fn sample_rates(metrics: Arc<Metrics>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        interval.tick().await;
        metrics.sample_rates();
    }
}

async fn sweep_rate_limits(limiter: Arc<RateLimiter>) {
    let mut interval = tokio::time::interval(RATE_SWEEP_INTERVAL);
    loop {
        interval.tick().await;
        limiter.sweep();
    }
}

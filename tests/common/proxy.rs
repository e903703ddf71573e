//! A TCP proxy in front of PostgreSQL that can hold back what the server
//! says (server → client bytes) and later release it, while what the client
//! says still goes through: a commit that happens but whose answer is late.
//!
//! It reads the server's side message by message (PostgreSQL's wire
//! protocol: a type byte and a length), so it can start holding exactly at
//! the answer to the commit of one marked event
//! ([`PgProxy::hold_after_commit_of`]), whatever else the node is doing.
//! Point a node at it with [`PgProxy::url_for`] (TLS off, so the bytes can
//! be read).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// The proxy; every task it started ends when it is dropped.
pub struct PgProxy {
    addr: SocketAddr,
    state: Arc<State>,
}

struct State {
    upstream: String,
    /// While true, no server bytes reach any client.
    hold: watch::Sender<bool>,
    /// Bytes whose appearance in what a client sends arms that connection.
    marker: Mutex<Option<Vec<u8>>>,
    /// The marked commit's answer was reached and holding began.
    triggered: AtomicBool,
    tasks: Mutex<Vec<AbortHandle>>,
    connections: AtomicUsize,
}

/// One proxied connection.
#[derive(Default)]
struct Conn {
    /// The client opened with an SSLRequest: the server answers one byte.
    ssl_probe: AtomicBool,
    /// The client sent the marker: hold at this connection's next commit.
    marked: AtomicBool,
}

/// PostgreSQL's SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

impl PgProxy {
    /// Listens on a free local port and forwards every connection to
    /// `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (hold, _) = watch::channel(false);
        let state = Arc::new(State {
            upstream: upstream.to_owned(),
            hold,
            marker: Mutex::new(None),
            triggered: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
        });
        let accept = {
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    state.connections.fetch_add(1, Ordering::Relaxed);
                    let task = tokio::spawn(serve(client, Arc::clone(&state)));
                    state.tasks.lock().unwrap().push(task.abort_handle());
                }
            })
        };
        state.tasks.lock().unwrap().push(accept.abort_handle());
        Self { addr, state }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `database_url` with its host and port replaced by the proxy's, and
    /// `sslmode=disable` (the proxy reads the protocol).
    pub fn url_for(&self, database_url: &str) -> String {
        let mut url = reqwest::Url::parse(database_url).expect("database URL");
        url.set_host(Some("127.0.0.1")).expect("host");
        url.set_port(Some(self.addr.port())).expect("port");
        let query = match url.query() {
            Some(q) if !q.is_empty() => format!("{q}&sslmode=disable"),
            _ => "sslmode=disable".to_owned(),
        };
        url.set_query(Some(&query));
        url.to_string()
    }

    /// Holds back every server byte from now on, on every connection.
    pub fn hold(&self) {
        self.state.hold.send_replace(true);
    }

    /// Arms the proxy: the connection on which a client sends `marker` (e.g.
    /// a unique string in an event's type or payload) lets the server's
    /// answers through up to the end of that transaction — the answer to
    /// its `COMMIT`, or the `ReadyForQuery` (idle) that ends an implicit
    /// one — and from that message on every connection is held.
    pub fn hold_after_commit_of(&self, marker: &str) {
        self.state.triggered.store(false, Ordering::SeqCst);
        *self.state.marker.lock().unwrap() = Some(marker.as_bytes().to_vec());
    }

    /// Whether the armed commit was reached (and holding began).
    pub fn triggered(&self) -> bool {
        self.state.triggered.load(Ordering::SeqCst)
    }

    /// Whether server bytes are being held now.
    pub fn holding(&self) -> bool {
        *self.state.hold.borrow()
    }

    /// Lets everything held (and everything after it) through; disarms.
    pub fn release(&self) {
        *self.state.marker.lock().unwrap() = None;
        self.state.hold.send_replace(false);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::Relaxed)
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        for task in self.state.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

async fn serve(client: TcpStream, state: Arc<State>) {
    let Ok(server) = TcpStream::connect(&state.upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let conn = Arc::new(Conn::default());
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = tokio::spawn(client_to_server(
        client_read,
        server_write,
        Arc::clone(&state),
        Arc::clone(&conn),
    ));
    state.tasks.lock().unwrap().push(up.abort_handle());
    server_to_client(server_read, client_write, &state, &conn).await;
}

/// Forwards the client's bytes as they come, watching for the marker.
async fn client_to_server(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<State>,
    conn: Arc<Conn>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    // The end of the previous chunk, so a marker split across reads is seen.
    let mut tail: Vec<u8> = Vec::new();
    let mut first = true;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        if first && chunk.starts_with(&SSL_REQUEST) {
            conn.ssl_probe.store(true, Ordering::SeqCst);
        }
        first = false;
        let marker = state.marker.lock().unwrap().clone();
        if let Some(marker) = marker {
            let mut window = std::mem::take(&mut tail);
            window.extend_from_slice(chunk);
            if window.windows(marker.len()).any(|w| w == marker.as_slice()) {
                conn.marked.store(true, Ordering::SeqCst);
            }
            let keep = marker.len().saturating_sub(1).min(window.len());
            tail = window[window.len() - keep..].to_vec();
        }
        if to.write_all(chunk).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Forwards the server's messages one by one, holding them while told to.
async fn server_to_client(
    from: tokio::net::tcp::OwnedReadHalf,
    to: tokio::net::tcp::OwnedWriteHalf,
    state: &State,
    conn: &Conn,
) {
    let mut from = BufReader::with_capacity(64 * 1024, from);
    let mut to = BufWriter::with_capacity(64 * 1024, to);
    let mut hold = state.hold.subscribe();
    let mut first = true;
    loop {
        if first && conn.ssl_probe.load(Ordering::SeqCst) {
            // The one-byte answer to SSLRequest; on 'S' the rest is TLS,
            // which this proxy cannot read: pass it through unparsed.
            let mut answer = [0u8; 1];
            if from.read_exact(&mut answer).await.is_err() {
                break;
            }
            if !pass(&mut to, &mut hold, &[&answer], from.buffer().is_empty()).await {
                break;
            }
            if answer[0] == b'S' {
                let _ = to.flush().await;
                let _ = tokio::io::copy(&mut from, &mut to).await;
                break;
            }
        }
        first = false;
        let mut header = [0u8; 5];
        if from.read_exact(&mut header).await.is_err() {
            break;
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        if from.read_exact(&mut body).await.is_err() {
            break;
        }
        if conn.marked.load(Ordering::SeqCst) && ends_transaction(header[0], &body) {
            conn.marked.store(false, Ordering::SeqCst);
            if state.marker.lock().unwrap().take().is_some() {
                state.triggered.store(true, Ordering::SeqCst);
                state.hold.send_replace(true);
            }
        }
        if !pass(
            &mut to,
            &mut hold,
            &[&header, &body],
            from.buffer().is_empty(),
        )
        .await
        {
            break;
        }
    }
    let _ = to.flush().await;
    let _ = to.shutdown().await;
}

/// `CommandComplete "COMMIT"`, or `ReadyForQuery` idle (the end of an
/// implicit transaction).
fn ends_transaction(kind: u8, body: &[u8]) -> bool {
    (kind == b'C' && body.starts_with(b"COMMIT\0")) || (kind == b'Z' && body == b"I")
}

/// Writes `parts` once nothing is held; flushes when `idle` (nothing more
/// buffered from the server) or before waiting. False when the client is
/// gone.
async fn pass(
    to: &mut BufWriter<tokio::net::tcp::OwnedWriteHalf>,
    hold: &mut watch::Receiver<bool>,
    parts: &[&[u8]],
    idle: bool,
) -> bool {
    if *hold.borrow() {
        if to.flush().await.is_err() {
            return false;
        }
        if hold.wait_for(|held| !*held).await.is_err() {
            return false;
        }
    }
    for part in parts {
        if to.write_all(part).await.is_err() {
            return false;
        }
    }
    !idle || to.flush().await.is_ok()
}

//! The TCP socket under a stream. Two things need it that the HTTP layers
//! (actix-http, or `http::stream_conn`) do not offer: a vanished peer must be noticed within `2 × sse.keepalive_secs`
//! (`TCP_USER_TIMEOUT` of one keep-alive period: a keep-alive written at the
//! latest one period into a silence and not acknowledged one period later
//! fails the connection; so does a client whose window stays shut), and
//! a stream whose client stopped reading must be closed even though its
//! body is no longer polled (`shutdown(2)` makes the pending write fail).

use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use actix_web::rt::net::TcpStream;

/// The raw socket of one HTTP connection, stored in its connection data.
///
/// Only valid while the connection lives: callers use it from the
/// connection's own worker thread, and only while the response body that
/// proves the connection is open still exists.
#[derive(Debug, Clone, Copy)]
pub struct StreamSocket(RawFd);

/// Sets the user timeout on a connection's socket and returns its fd.
pub fn configure(tcp: &TcpStream, user_timeout: Duration) -> StreamSocket {
    let timeout_ms = libc::c_uint::try_from(user_timeout.as_millis()).unwrap_or(libc::c_uint::MAX);
    let fd = tcp.as_raw_fd();
    // SAFETY: `fd` is an open TCP socket owned by `tcp`; the option value is
    // a valid `c_uint` of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            std::ptr::addr_of!(timeout_ms).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        log::debug!(
            "TCP_USER_TIMEOUT not set: {}",
            std::io::Error::last_os_error()
        );
    }
    StreamSocket(fd)
}

/// The socket of the connection a request came on: in the connection data
/// under actix-http, in the request extensions under [`crate::http::stream_conn`].
pub fn of_request(req: &actix_web::HttpRequest) -> Option<StreamSocket> {
    use actix_web::HttpMessage;
    req.conn_data::<StreamSocket>()
        .copied()
        .or_else(|| req.extensions().get::<StreamSocket>().copied())
}

impl StreamSocket {
    /// Shuts the connection down in both directions: the pending write
    /// fails and the connection is dropped.
    pub fn shutdown(self) {
        // SAFETY: see the type's contract — the caller guarantees the fd
        // still belongs to this connection.
        unsafe {
            libc::shutdown(self.0, libc::SHUT_RDWR);
        }
    }
}

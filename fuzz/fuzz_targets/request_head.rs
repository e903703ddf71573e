//! Arbitrary bytes as the start of a stream connection: `parse_head` (the
//! hand-written request-head path of `http::stream_conn`) never panics; it
//! refuses with one of the HTTP layer's codes, waits for more, or gives a
//! request whose method, target and headers are the ones httparse reads;
//! the framing of what it accepts is unambiguous; a complete head stays
//! complete (and the same) with bytes after it, and every shorter prefix of
//! it is still partial or refused, never a different request.

#![no_main]

use actix_http::HttpMessage as _;
use arbitrary::Arbitrary;
use herald::http::stream_conn::{parse_head, Head};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Input {
    /// Any bytes.
    Raw(Vec<u8>),
    /// A head built from parts, so most inputs get past the request line.
    Built {
        method: String,
        target: Vec<u8>,
        http10: bool,
        headers: Vec<(String, Vec<u8>)>,
        /// Repeats of a long header, to reach the size limits.
        padding: u16,
        tail: Vec<u8>,
    },
}

fn build(
    method: &str,
    target: &[u8],
    http10: bool,
    headers: &[(String, Vec<u8>)],
    padding: u16,
) -> Vec<u8> {
    let mut head = Vec::new();
    head.extend_from_slice(method.as_bytes());
    head.push(b' ');
    head.extend_from_slice(target);
    head.extend_from_slice(if http10 { b" HTTP/1.0\r\n" } else { b" HTTP/1.1\r\n" });
    for (name, value) in headers {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    for _ in 0..padding % 512 {
        head.extend_from_slice(b"X-Pad: ");
        head.extend_from_slice(&[b'p'; 100]);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

fn same(a: &actix_http::Request, b: &actix_http::Request) -> bool {
    a.method() == b.method()
        && a.uri() == b.uri()
        && a.version() == b.version()
        && a.headers().len() == b.headers().len()
        && a.headers().iter().all(|(k, v)| b.headers().get_all(k).any(|w| w == v))
}

fn check(bytes: &[u8]) {
    match parse_head(bytes, None) {
        Head::Partial => assert!(bytes.len() < 16 << 10, "partial beyond the limit"),
        Head::Refused(err) => assert!(
            matches!(
                err.code(),
                "BAD_REQUEST" | "HEADERS_TOO_LARGE" | "URI_TOO_LONG"
            ),
            "refused with {}",
            err.code()
        ),
        Head::Complete(request) => {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut reference = httparse::Request::new(&mut headers);
            let Ok(httparse::Status::Complete(end)) = reference.parse(bytes) else {
                panic!("accepted what httparse does not read as a whole head");
            };
            assert_eq!(Some(request.method().as_str()), reference.method);
            assert_eq!(request.uri().to_string().len() <= end, true);
            assert_eq!(request.headers().len(), reference.headers.len());
            let lengths = request.headers().get_all("content-length").count();
            let chunked = request.headers().contains_key("transfer-encoding");
            assert!(lengths <= 1, "two Content-Lengths accepted");
            assert!(!(lengths == 1 && chunked), "Content-Length with Transfer-Encoding accepted");
            // More bytes after the head change nothing.
            let mut longer = bytes[..end].to_vec();
            longer.extend_from_slice(b"GET / HTTP/1.1\r\n");
            match parse_head(&longer, None) {
                Head::Complete(again) => assert!(same(&request, &again)),
                other => panic!("a complete head followed by bytes became {other:?}"),
            }
            // A shorter prefix is never a (different) complete request.
            for cut in [end / 2, end.saturating_sub(1)] {
                if let Head::Complete(early) = parse_head(&bytes[..cut], None) {
                    panic!("prefix of {cut} bytes complete: {early:?}");
                }
            }
        }
    }
}

fuzz_target!(|input: Input| match input {
    Input::Raw(bytes) => check(&bytes),
    Input::Built {
        method,
        target,
        http10,
        headers,
        padding,
        tail,
    } => {
        let mut bytes = build(&method, &target, http10, &headers, padding);
        check(&bytes);
        bytes.extend_from_slice(&tail);
        check(&bytes);
    }
});

//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz): thin `pub`
//! wrappers over the HTTP/1.1 byte codec's crate-private parsers, so the
//! targets call exactly the code the fast path runs. Not part of the
//! crate's API (doc-hidden); nothing here has logic of its own beyond the
//! checks the fast path makes before it calls the same functions.

use std::net::{IpAddr, Ipv4Addr};

use crate::{framing, h1, relay};

/// [`framing::head_end`]: the length of the head at the start of `buf`,
/// searching from `from` (where the last search stopped, less three bytes).
pub fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    framing::head_end(buf, from)
}

/// [`h1::could_be_a_request`]: whether an incomplete head may still
/// become a valid request.
pub fn could_be_a_request(buf: &[u8]) -> bool {
    h1::could_be_a_request(buf)
}

/// The fast path's handling of a request head (`exchange` in `h1`): parsed
/// by httparse, refused (`false`: the general path takes it) unless it is an
/// HTTP/1.1 request without a body or with a `Content-Length` one, with one
/// valid `Host` and an origin-form target, else rewritten into `out` as the
/// upstream gets it
/// (client 192.0.2.1, no trusted proxy, a fixed request id).
pub fn rewrite_request_head(head: &[u8], out: &mut Vec<u8>) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        _ => return false,
    }
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return false;
    };
    let scan = h1::RequestScan::of(req.headers);
    if !scan.takes(path) {
        return false;
    }
    // Routing (`pipeline::decide`) forwards only a host that normalises.
    let Some(host) = scan
        .host
        .and_then(|h| std::str::from_utf8(h).ok())
        .filter(|h| portico_model::normalize_request_host(h).is_ok())
    else {
        return false;
    };
    let peer = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    h1::write_upstream_head(
        out,
        method,
        path,
        req.headers,
        &scan,
        h1::Forwarded {
            peer,
            client: peer,
            extend: false,
            https: false,
        },
        host.as_bytes(),
        &[b'0'; 32],
    );
    true
}

/// How a response's body is framed for the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// What [`rewrite_response_head`] found in an upstream's response head.
#[derive(Clone, Copy, Debug)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub framing: Framing,
    pub reusable: bool,
}

/// [`relay::rewrite_response_head`]: parses an upstream's response head and
/// writes the client's version into `out` (without the proxy's own headers
/// and the final empty line). `Ok(None)` for an interim (1xx) response.
pub fn rewrite_response_head(
    head: &[u8],
    out: &mut Vec<u8>,
    hide: bool,
) -> Result<Option<ResponseHead>, String> {
    match relay::rewrite_response_head(head, out, hide, false) {
        Ok(Some(h)) => Ok(Some(ResponseHead {
            len: h.len,
            status: h.status,
            framing: match h.framing {
                framing::Framing::Empty => Framing::Empty,
                framing::Framing::Length(n) => Framing::Length(n),
                framing::Framing::Chunked => Framing::Chunked,
                framing::Framing::UntilClose => Framing::UntilClose,
            },
            reusable: h.reusable,
        })),
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// [`framing::Chunked`]: follows a chunked body's framing as it is relayed.
#[derive(Default, Debug)]
pub struct Chunked(framing::Chunked);

impl Chunked {
    /// Consumes bytes of the body; how many belong to it (fewer than given
    /// only once it is done), or `None` for a malformed body.
    pub fn feed(&mut self, input: &[u8]) -> Option<usize> {
        self.0.feed(input).ok()
    }

    /// Whether the body's end (the last chunk and trailers) has been seen.
    pub fn done(&self) -> bool {
        self.0.done()
    }
}

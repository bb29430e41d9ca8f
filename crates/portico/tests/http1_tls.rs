//! The HTTP/1.1 wire tests (`wire/`) over TLS: every client connection
//! goes to the HTTPS listener (ALPN `http/1.1`), which serves HTTP/1.1 on
//! the same two request paths as cleartext: the fast path for body-less
//! requests and bodies framed by a Content-Length, hyper for the rest
//! (chunked bodies, `Expect`, upgrades, HTTP/1.0).

/// Requests are not forced onto the general path.
const GENERAL_PATH: bool = false;

/// Clients connect over TLS.
const TLS: bool = true;

#[path = "wire/mod.rs"]
mod wire;

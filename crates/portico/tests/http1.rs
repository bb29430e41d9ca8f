//! The HTTP/1.1 wire tests (`wire/`), on both request paths as they are
//! used in production: the fast path for body-less requests and bodies
//! framed by a Content-Length, hyper for the rest (chunked bodies, `Expect`,
//! upgrades, HTTP/1.0).

/// Requests are not forced onto the general path.
const GENERAL_PATH: bool = false;

/// Clients connect in cleartext (`http1_tls` runs the same tests over TLS).
const TLS: bool = false;

mod wire;

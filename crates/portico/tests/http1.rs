//! The HTTP/1.1 wire tests (`wire/`), on both request paths as they are
//! used in production: the fast path for body-less GETs, hyper for the rest.

/// Requests are not forced onto the general path.
const GENERAL_PATH: bool = false;

/// Clients connect in cleartext (`http1_tls` runs the same tests over TLS).
const TLS: bool = false;

mod wire;

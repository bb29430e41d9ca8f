//! The HTTP/1.1 wire tests (`wire/`), on both request paths as they are
//! used in production: the fast path for body-less GETs, hyper for the rest.

/// Requests are not forced onto the general path.
const GENERAL_PATH: bool = false;

mod wire;

//! The HTTP/1.1 wire tests (`wire/`), with every request forced onto the
//! general (hyper) path: both request paths must show the same behaviour.

/// Every request takes the general path.
const GENERAL_PATH: bool = true;

/// Clients connect in cleartext (`http1_tls` runs the same tests over TLS).
const TLS: bool = false;

#[path = "wire/mod.rs"]
mod wire;

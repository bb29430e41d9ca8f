//! The HTTP/1.1 wire tests (`wire/`), with every request forced onto the
//! general (hyper) path: both request paths must show the same behaviour.

/// Every request takes the general path.
const GENERAL_PATH: bool = true;

#[path = "wire/mod.rs"]
mod wire;

//! Where routes come from, and how changes to them become config versions.
//!
//! Providers (a TOML file, the Docker engine) watch a source and produce
//! what should be routed;
//! the [`Controller`] gives each a content version, drops the ones that
//! change nothing, logs the ones that do in Interlock's words
//! (`msg="update detected" currentVersion=… updatedVersion=…`) and hands
//! them on to be applied.
//!
//! # Layout
//! - [`controller`]: versioning and change detection, independent of the source.
//! - [`docker`]: the Docker provider: Swarm services, tasks and containers by
//!   their `com.docker.lb.*` labels; events plus periodic resync; flap damping;
//!   merging with the file's services.
//! - [`engine`]: a small Docker Engine API client (unix socket or TCP/TLS).
//! - [`file`]: the TOML file provider: load, watch the file's directory,
//!   debounce, reload on demand (SIGHUP).
#![forbid(unsafe_code)]

pub mod controller;
pub mod docker;
pub mod engine;
pub mod file;

pub use controller::Controller;

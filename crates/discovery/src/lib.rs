//! Where routes come from, and how changes to them become config versions.
//!
//! Providers watch a source and produce whole [`Config`](portico_model::Config)s;
//! the [`Controller`] gives each a content version, drops the ones that
//! change nothing, logs the ones that do in Interlock's words
//! (`msg="update detected" currentVersion=… updatedVersion=…`) and hands
//! them on to be applied.
//!
//! # Layout
//! - [`controller`]: versioning and change detection, independent of the source.
//! - [`file`]: the TOML file provider: load, watch the file's directory,
//!   debounce, reload on demand (SIGHUP).
#![forbid(unsafe_code)]

pub mod controller;
pub mod file;

pub use controller::Controller;

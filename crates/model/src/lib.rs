//! Portico's routing model: what the proxy should do, with no I/O.
//!
//! Providers (the TOML file, Docker) produce text or labels; this crate
//! turns them into a validated [`Config`], gives it a content [`Version`],
//! and compiles it into a [`RoutingTable`] that the proxy consults once per
//! request. Nothing here opens a socket or spawns a task, so all of it is
//! tested by fast unit tests.
//!
//! # Layout
//! - [`config`]: the TOML schema, parsed with source spans, then validated;
//!   every problem is reported with file, line, column and field.
//! - [`diff`]: what changed between two configs (services, hosts,
//!   upstreams, settings, file contents), for people and the admin API.
//! - [`host`]: host-name rules shared by config validation and request
//!   routing (case, ports, wildcards).
//! - [`labels`]: Interlock's `com.docker.lb.*` labels → services, with findings.
//! - [`rules`]: service rules written once for every provider: how values
//!   are read, what one service may not combine, and what services sharing a
//!   host (or a host and path) must agree on.
//! - [`table`]: the compiled table: host → site (the hosts one set of
//!   services claims: certificate, passthrough, redirects) → the longest
//!   matching path rule → route (the pool of the services on that host and
//!   path), and the default backend for hosts nobody claims.
//! - [`version`]: content digests, so unchanged configs are recognised.
//! - [`wire`]: a config as JSON and back (a cluster controller's snapshots
//!   for its proxies), checked on arrival as the file is.
#![forbid(unsafe_code)]

pub mod config;
pub mod diff;
pub mod host;
pub mod labels;
pub mod rules;
pub mod table;
pub mod version;
pub mod wire;

pub use config::{
    AccessLogFormat, AdminSettings, Balance, Cidr, Config, ConfigError, ConfigErrors,
    ControllerSettings, DockerSettings, FileData, HealthCheck, ProxySettings, Redirect, Service,
    TlsFiles, TlsProfile, UpstreamOptions, UpstreamProtocol, UpstreamTls,
};
pub use diff::{Change, ConfigDiff, ServiceDiff};
pub use host::{normalize_request_host, HostPattern, RequestHostError};
pub use rules::{Claims, Disagreement, Problem, Scope};
pub use table::{Lookup, Route, RouteId, RoutingTable, Site, SiteId};
pub use version::Version;

//! `portico trace`: the functional test of the KB000998 support article,
//! built in. When a request to a service behind the proxy fails, check each
//! component in turn, innermost first, and name the first that fails:
//!
//! 1. **route**: which service and upstreams the active config has for the
//!    host (the proxy's admin API), or the nearest configured host names;
//! 2. **upstream**: each task, probed by the proxy itself (`POST /probe`),
//!    since only the proxy is sure to reach the service's network;
//! 3. **version**: with a cluster's controller (`--controller-admin`), each
//!    proxy's config version as the controller sees it: the one published
//!    to its service cluster, behind it, refusing it (NACK, with the
//!    reason), or gone from the controller;
//! 4. **proxy**: each proxy node (each `--proxy`, and every proxy the
//!    controller lists, at the listener it announced) with the crafted
//!    `Host` header (and, for HTTPS, SNI = host, as `curl --resolve` does):
//!    status, `x-upstream-addr` among the route's upstreams, `x-proxy-id`,
//!    certificate names, chain and expiry;
//! 5. **lb**: the same through each external load balancer address;
//! 6. **dns**: what the name resolves to, and whether that is the LB;
//! 7. **client**: the request by name, as a client sends it.
//!
//! Every hop is bounded by the timeout, so a trace always ends. Without an
//! admin API (a proxy that isn't Portico) the route and upstream hops are
//! reported as not checked and the rest still runs.
//!
//! # Layout
//! - [`options`]: the target and the hops to check, from curl-like arguments.
//! - [`run`]: the walk, and the judgement of each hop in the system's terms.
//! - [`report`]: rows, the verdict, the table and the JSON document.
//! - [`http`]: one timed HTTP exchange over a fresh connection.
//! - [`tls`]: a TLS client that records what is wrong with a certificate
//!   instead of hanging up on it.
//! - [`dns`]: A/AAAA lookups through a chosen server or the system resolver.
//! - [`api`]: the admin API's JSON documents (shared with the server in the
//!   `portico` binary) and its client.
#![forbid(unsafe_code)]

pub mod api;
pub mod dns;
pub mod http;
pub mod options;
pub mod report;
pub mod run;
pub mod tls;

pub use options::{Options, Resolve, Target, UsageError};
pub use report::{Hop, HopResult, Outcome, ProxySummary, Report, Verdict};
pub use run::trace;

//! Portico's cluster mode: how one controller and many proxies come to
//! trust each other (with no state on any one node's disk but what Docker
//! secrets carry), and the stream over which the controller feeds them.
//!
//! `portico controller init` generates a cluster CA ([`ClusterCa`]) and a
//! join token ([`JoinToken`]: `PORTICO-1-<CA digest>-<secret>`), and writes
//! both to files that the stack turns into secrets. A controller started on
//! any manager loads them, issues itself a server certificate, and listens
//! with [`tls::controller_server_config`]. A proxy holding only the token
//! dials out with [`tls::first_contact_client_config`], which accepts the
//! controller only if its chain leads to the CA the token's digest names;
//! it sends a [`JoinRequest`] (a CSR and a proof that it knows the secret),
//! the controller checks it with [`verify_join`] and answers with a client
//! certificate, and from then on the proxy connects with
//! [`tls::joined_client_config`] and the controller knows it by
//! [`tls::peer`].
//!
//! Then the snapshot stream: [`controller::Controller`] serves joins and
//! streams and publishes a config per service cluster;
//! [`proxy::ProxyClient`] joins (once), holds its stream, applies each
//! snapshot through the caller's `apply`, ACKs or NACKs it, persists the
//! last good one, and reconnects with backoff when the controller is away.
//!
//! # Why HTTP/2 with JSON lines, not gRPC
//! The stream is one long `POST /v1/stream` over HTTP/2 (ALPN `h2`, the
//! TLS configs of [`tls`]): the proxy's request body carries its messages
//! up, the response body carries snapshots down, one JSON object per line
//! ([`stream`]). The alternative was tonic gRPC. Reasons for this one:
//! - no new dependencies: hyper 1, rustls and serde are what Portico is
//!   built on already; tonic brings prost, a protobuf schema and its build
//!   step, and tower layers we would use none of;
//! - the snapshot already has a wire form: the config's JSON
//!   ([`portico_model::wire`]), validated on arrival by the rules a file
//!   is checked with; protobuf would be a second schema of the whole
//!   config to keep in step with the first, for one message type;
//! - HTTP/2 still gives what gRPC would: flow control (a slow proxy holds
//!   back the controller's writes, bounded, instead of growing a buffer),
//!   one TLS connection, pings; and the endpoints answer plain HTTP
//!   statuses (401, 403 with a reason) that `curl --http2` can show.
//!
//! What gRPC would have given for free is written here: framing by
//! newline with a bound per message (64 MiB for a snapshot, 64 KiB for
//! anything else), heartbeats both ways, and reconnection with backoff.
//!
//! # Layout
//! - [`ca`]: the cluster CA (generate, save/load a state directory, issue
//!   server and client certificates, the CSR policy), [`CaDigest`].
//! - [`token`]: join tokens: parse (with errors that say what is wrong),
//!   generate, the 0600 token file, constant-time secret comparison.
//! - [`join`]: the join exchange's messages and checks on both sides.
//! - [`tls`]: the rustls configs (TLS 1.3, aws-lc-rs), the digest-pinning
//!   verifier, what a client presented.
//! - [`id`]: proxy ids and their rules.
//! - [`stream`]: the stream's messages, framing and bounds, and the
//!   endpoints a proxy announces.
//! - [`controller`]: the controller's server, its published configs and
//!   its list of connected (and lately departed) proxies.
//! - [`proxy`]: a proxy's join, stream, state directory and backoff.
//! - `base32` and `state` (private): the token's encoding; atomic, mode-setting
//!   file writes.
//!
//! Modules depend one way: `ca` (on `base32`, `state`, `id`) ← `token`
//! and `tls` ← `join` ← `controller` and `proxy` (both on `stream`).
#![forbid(unsafe_code)]

mod base32;
pub mod ca;
pub mod controller;
pub mod id;
pub mod join;
pub mod proxy;
mod state;
pub mod stream;
pub mod tls;
pub mod token;

pub use ca::{CaDigest, CaError, ClusterCa, Credentials, CsrError, IssuedCert};
pub use controller::{
    Controller, ControllerOptions, ControllerState, DepartedProxy, Nack, ProxyStatus, SyncState,
};
pub use id::{ProxyId, ProxyIdError};
pub use join::{verify_join, JoinError, JoinRequest, JoinResponse, JoinedProxy, PendingJoin};
pub use proxy::{Enrollment, LinkStatus, ProxyClient, ProxyOptions};
pub use stream::{Endpoint, Heartbeat};
pub use tls::{Peer, TlsError};
pub use token::{JoinToken, Secret, TokenError, TokenParseError};

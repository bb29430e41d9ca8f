//! The cluster's credentials: how one controller and many proxies come to
//! trust each other, with no state on any one node's disk but what Docker
//! secrets carry.
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
//! Nothing here does network I/O; the controller and proxy roles wire it in.
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
//! - `base32` and `state` (private): the token's encoding; atomic, mode-setting
//!   file writes.
//!
//! Modules depend one way: `ca` (on `base32`, `state`, `id`) ← `token`
//! and `tls` ← `join`.
#![forbid(unsafe_code)]

mod base32;
pub mod ca;
pub mod id;
pub mod join;
mod state;
pub mod tls;
pub mod token;

pub use ca::{CaDigest, CaError, ClusterCa, Credentials, CsrError, IssuedCert};
pub use id::{ProxyId, ProxyIdError};
pub use join::{verify_join, JoinError, JoinRequest, JoinResponse, JoinedProxy, PendingJoin};
pub use tls::{Peer, TlsError};
pub use token::{JoinToken, Secret, TokenError, TokenParseError};

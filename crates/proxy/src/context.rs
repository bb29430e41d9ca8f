//! What a connection knows, shared by its requests: the proxy, the client's
//! address, and over TLS the server name the connection was opened for.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;

use crate::admission::Slot;
use crate::headers::ip_value;
use crate::io::SendTimedOut;
use crate::Proxy;

/// What the request's connection says about it.
pub(crate) struct ConnInfo {
    pub proxy: Arc<Proxy>,
    pub client: SocketAddr,
    /// `client`'s IP as a header value, made once for the connection's requests.
    pub client_ip: HeaderValue,
    /// Set on connections that came in over TLS.
    pub tls: Option<TlsInfo>,
    /// Set once the client took none of its responses for
    /// `client_send_timeout` (on hyper's connections).
    pub send_timed_out: Arc<SendTimedOut>,
    /// The connection's place under `max_client_connections`, for a
    /// websocket tunnel to hold as long as it holds the descriptor.
    pub slot: Option<Arc<Slot>>,
}

impl ConnInfo {
    pub fn new(
        proxy: Arc<Proxy>,
        client: SocketAddr,
        tls: Option<TlsInfo>,
        slot: Option<Arc<Slot>>,
    ) -> ConnInfo {
        ConnInfo {
            proxy,
            client,
            client_ip: ip_value(client.ip()),
            tls,
            send_timed_out: Arc::default(),
            slot,
        }
    }
}

pub(crate) struct TlsInfo {
    /// The ClientHello's server name, lower case.
    pub sni: Option<String>,
}

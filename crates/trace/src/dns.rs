//! The DNS hop: what a name resolves to, through a given server (`--dns`,
//! asked directly over UDP for A and AAAA, so the answer is that server's and
//! nobody's cache) or through the system resolver (`getaddrinfo`, which is
//! what curl and most clients use, `/etc/hosts` included).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;

/// What a lookup found.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Resolution {
    /// `127.0.0.1:53` or `system resolver`.
    pub source: String,
    pub addresses: Vec<IpAddr>,
    pub elapsed_ms: f64,
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum DnsError {
    #[error("{name} does not exist (NXDOMAIN from {server})")]
    NxDomain { name: String, server: String },
    #[error("{server} has no A or AAAA record for {name}")]
    NoRecords { name: String, server: String },
    #[error("{server} answered {code} for {name}")]
    Failed {
        name: String,
        server: String,
        code: String,
    },
    #[error("no answer from {server} within {timeout}")]
    Timeout { server: String, timeout: String },
    #[error("{0}")]
    Other(String),
}

/// Resolves `name` through `server` (when given) or the system resolver.
pub async fn resolve(
    name: &str,
    server: Option<SocketAddr>,
    timeout: Duration,
) -> Result<Resolution, DnsError> {
    let started = Instant::now();
    let (source, addresses) = match server {
        Some(server) => (server.to_string(), query(server, name, timeout).await?),
        None => ("system resolver".to_owned(), system(name, timeout).await?),
    };
    Ok(Resolution {
        source,
        addresses,
        elapsed_ms: crate::http::ms(started.elapsed()),
    })
}

async fn system(name: &str, timeout: Duration) -> Result<Vec<IpAddr>, DnsError> {
    let source = "system resolver".to_owned();
    let found = tokio::time::timeout(timeout, tokio::net::lookup_host((name, 0)))
        .await
        .map_err(|_| DnsError::Timeout {
            server: source.clone(),
            timeout: format!("{timeout:?}"),
        })?
        .map_err(|e| DnsError::Failed {
            name: name.to_owned(),
            server: source.clone(),
            code: e.to_string(),
        })?;
    let mut addrs: Vec<IpAddr> = Vec::new();
    for a in found {
        if !addrs.contains(&a.ip()) {
            addrs.push(a.ip());
        }
    }
    if addrs.is_empty() {
        return Err(DnsError::NoRecords {
            name: name.to_owned(),
            server: source,
        });
    }
    Ok(addrs)
}

/// Asks `server` for A and AAAA records of `name`, over UDP.
pub async fn query(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<Vec<IpAddr>, DnsError> {
    let source = server.to_string();
    let fqdn = Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
        .map_err(|e| DnsError::Other(format!("{name:?} is not a DNS name: {e}")))?;
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let socket = UdpSocket::bind(bind)
        .await
        .map_err(|e| DnsError::Other(format!("cannot open a UDP socket: {e}")))?;
    socket
        .connect(server)
        .await
        .map_err(|e| DnsError::Other(format!("cannot reach {server}: {e}")))?;
    let mut pending = Vec::new();
    for rtype in [RecordType::A, RecordType::AAAA] {
        let id = fastrand::u16(..);
        let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(fqdn.clone(), rtype));
        let bytes = msg
            .to_vec()
            .map_err(|e| DnsError::Other(format!("cannot encode the query: {e}")))?;
        socket
            .send(&bytes)
            .await
            .map_err(|e| DnsError::Other(format!("cannot send to {server}: {e}")))?;
        pending.push(id);
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut addrs = Vec::new();
    let mut codes = Vec::new();
    let mut buf = vec![0u8; 4096];
    while !pending.is_empty() {
        let n = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            Ok(Ok(n)) => n,
            // An ICMP port unreachable surfaces as a refused recv.
            Ok(Err(e)) => return Err(DnsError::Other(format!("no DNS server at {server}: {e}"))),
            Err(_) => {
                if !codes.is_empty() {
                    break;
                }
                return Err(DnsError::Timeout {
                    server: source,
                    timeout: format!("{timeout:?}"),
                });
            }
        };
        let Ok(reply) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let Some(pos) = pending.iter().position(|id| *id == reply.metadata.id) else {
            continue;
        };
        pending.swap_remove(pos);
        codes.push(reply.metadata.response_code);
        for record in &reply.answers {
            match &record.data {
                RData::A(a) => addrs.push(IpAddr::V4(a.0)),
                RData::AAAA(a) => addrs.push(IpAddr::V6(a.0)),
                _ => {}
            }
        }
    }
    if !addrs.is_empty() {
        return Ok(addrs);
    }
    if codes.contains(&ResponseCode::NXDomain) {
        return Err(DnsError::NxDomain {
            name: name.to_owned(),
            server: source,
        });
    }
    match codes.iter().find(|c| **c != ResponseCode::NoError) {
        Some(code) => Err(DnsError::Failed {
            name: name.to_owned(),
            server: source,
            code: code.to_string(),
        }),
        None => Err(DnsError::NoRecords {
            name: name.to_owned(),
            server: source,
        }),
    }
}

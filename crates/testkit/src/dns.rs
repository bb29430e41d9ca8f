//! A tiny authoritative DNS server for tests: answers A and AAAA queries
//! over UDP from a fixed table, NXDOMAIN for any other name. Binds
//! 127.0.0.1:0 and stops when dropped.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

pub struct DnsServer {
    pub addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl DnsServer {
    /// Serves `records` (name → addresses; names without the trailing dot,
    /// matched without case).
    pub async fn start(records: &[(&str, IpAddr)]) -> DnsServer {
        let mut table: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for (name, ip) in records {
            table
                .entry(name.trim_end_matches('.').to_ascii_lowercase())
                .or_default()
                .push(*ip);
        }
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
        let addr = socket.local_addr().unwrap();
        let stop = CancellationToken::new();
        let queries = Arc::new(AtomicUsize::new(0));
        let (s, q) = (stop.clone(), queries.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, peer) = tokio::select! {
                    _ = s.cancelled() => return,
                    r = socket.recv_from(&mut buf) => match r { Ok(x) => x, Err(_) => continue },
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                q.fetch_add(1, Ordering::SeqCst);
                let reply = answer(&table, &query);
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        DnsServer {
            addr,
            queries,
            stop,
        }
    }

    /// Queries received so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

fn answer(table: &HashMap<String, Vec<IpAddr>>, query: &Message) -> Message {
    let mut reply = Message::new(
        query.metadata.id,
        MessageType::Response,
        query.metadata.op_code,
    );
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    let Some(q) = query.queries.first() else {
        reply.metadata.response_code = ResponseCode::FormErr;
        return reply;
    };
    reply.add_query(q.clone());
    let name = q.name().to_ascii();
    let key = name.trim_end_matches('.').to_ascii_lowercase();
    let Some(addrs) = table.get(&key) else {
        reply.metadata.response_code = ResponseCode::NXDomain;
        return reply;
    };
    for ip in addrs {
        let data = match (ip, q.query_type()) {
            (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
            (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
            _ => continue,
        };
        reply.add_answer(Record::from_rdata(q.name().clone(), 60, data));
    }
    reply
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

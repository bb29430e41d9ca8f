//! A controller and proxies over real sockets on 127.0.0.1, with the
//! crate's TLS configs and a line-of-JSON join endpoint standing in for the
//! real stream.
#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use portico_cluster::tls::{self, Peer};
use portico_cluster::{
    verify_join, ClusterCa, Credentials, JoinRequest, JoinResponse, JoinToken, JoinedProxy,
    PendingJoin, ProxyId,
};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Every wait in these tests is bounded by this: a hang is a failure.
pub const WAIT: Duration = Duration::from_secs(10);

/// The names the controller's certificate carries; proxies dial the first.
pub const CONTROLLER_NAMES: [&str; 2] = ["portico-controller", "127.0.0.1"];

/// A controller listening on 127.0.0.1:0 with [`tls::controller_server_config`].
/// For each connection it records what the handshake presented (or why it
/// failed); an anonymous peer may send one join request, a verified proxy is
/// greeted by its id.
pub struct Controller {
    pub addr: SocketAddr,
    outcomes: mpsc::UnboundedReceiver<Result<Peer, String>>,
    task: JoinHandle<()>,
}

impl Controller {
    pub async fn start(ca: Arc<ClusterCa>, token: JoinToken) -> Self {
        let server = ca.issue_server(&CONTROLLER_NAMES).unwrap();
        Controller::start_with(ca, token, server).await
    }

    /// With a given server certificate (one from another CA, to play an
    /// impostor).
    pub async fn start_with(ca: Arc<ClusterCa>, token: JoinToken, server: Credentials) -> Self {
        let config = tls::controller_server_config(ca.cert_der(), &server).unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, outcomes) = mpsc::unbounded_channel();
        let token = Arc::new(token);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, ca, token, tx) =
                    (acceptor.clone(), ca.clone(), token.clone(), tx.clone());
                tokio::spawn(async move {
                    serve(acceptor, tcp, &ca, &token, tx).await;
                });
            }
        });
        Controller {
            addr,
            outcomes,
            task,
        }
    }

    /// What the next connection's handshake presented, or its error.
    pub async fn next_outcome(&mut self) -> Result<Peer, String> {
        tokio::time::timeout(WAIT, self.outcomes.recv())
            .await
            .expect("no connection reached the controller in time")
            .expect("the controller stopped")
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Records what the handshake presented as soon as it is known (a client
/// that only checks it can connect may hang up right after), then answers.
async fn serve(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    ca: &ClusterCa,
    token: &JoinToken,
    outcomes: mpsc::UnboundedSender<Result<Peer, String>>,
) {
    let tls = match acceptor.accept(tcp).await {
        Ok(tls) => tls,
        Err(e) => {
            let _ = outcomes.send(Err(e.to_string()));
            return;
        }
    };
    let peer = tls::peer(tls.get_ref().1).map_err(|e| e.to_string());
    let _ = outcomes.send(peer.clone());
    let Ok(peer) = peer else {
        return;
    };
    // Errors from here on are the client's business (it hung up).
    let _ = answer(BufReader::new(tls), &peer, ca, token).await;
}

async fn answer(
    mut tls: BufReader<tokio_rustls::server::TlsStream<TcpStream>>,
    peer: &Peer,
    ca: &ClusterCa,
    token: &JoinToken,
) -> io::Result<()> {
    match peer {
        // The caller's decision this crate leaves open: no certificate,
        // only the join endpoint.
        Peer::Anonymous => {
            let mut line = String::new();
            if tls.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let answer = match serde_json::from_str::<JoinRequest>(&line) {
                Ok(request) => match verify_join(&request, token, ca) {
                    Ok(cert) => serde_json::to_string(&JoinResponse::new(&cert, ca)).unwrap(),
                    Err(e) => format!("refused: {e}"),
                },
                Err(e) => format!("refused: {e}"),
            };
            tls.write_all(format!("{answer}\n").as_bytes()).await?;
        }
        Peer::Proxy(id) => {
            tls.write_all(format!("hello {id}\n").as_bytes()).await?;
        }
    }
    tls.shutdown().await
}

/// A TLS connection to `addr`, asking for `name`.
pub async fn connect(
    addr: SocketAddr,
    config: rustls::ClientConfig,
    name: &str,
) -> io::Result<TlsStream<TcpStream>> {
    let connector = TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(name.to_owned()).unwrap();
    tokio::time::timeout(WAIT, async {
        let tcp = TcpStream::connect(addr).await?;
        connector.connect(name, tcp).await
    })
    .await
    .expect("the handshake did not finish in time")
}

/// Reads one line from a connection (the controller's greeting or answer).
pub async fn read_line(tls: &mut TlsStream<TcpStream>) -> io::Result<String> {
    let mut reader = BufReader::new(tls);
    let mut line = String::new();
    tokio::time::timeout(WAIT, reader.read_line(&mut line))
        .await
        .expect("no answer in time")?;
    Ok(line.trim_end().to_owned())
}

/// The whole join, as a proxy with only its token does it: first contact
/// pinned by the token's digest, a CSR and proof, the answer checked.
pub async fn join(addr: SocketAddr, token: &JoinToken, id: &str) -> JoinedProxy {
    let pending = PendingJoin::new(token, ProxyId::new(id).unwrap()).unwrap();
    let config = tls::first_contact_client_config(*token.ca_digest()).unwrap();
    let mut tls = connect(addr, config, CONTROLLER_NAMES[0]).await.unwrap();
    let request = serde_json::to_string(pending.request()).unwrap();
    tls.write_all(format!("{request}\n").as_bytes())
        .await
        .unwrap();
    let answer = read_line(&mut tls).await.unwrap();
    let response: JoinResponse = serde_json::from_str(&answer)
        .unwrap_or_else(|_| panic!("the controller did not answer a response: {answer}"));
    pending.finish(&response).unwrap()
}

/// The `rustls::Error` inside a tokio-rustls I/O error.
pub fn rustls_error(e: &io::Error) -> &rustls::Error {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a TLS error: {e}"))
}

//! HTTP/1.x at the byte level, for tests where the exact wire matters
//! (pipelining, framing, misbehaving upstreams): [`Wire`] reads and writes
//! messages on a TCP connection, or on TLS over one, with a bounded wait on
//! every read, and [`RawBackend`] is an upstream whose every connection runs
//! a script the test writes.
//!
//! The parsing here is deliberately independent of hyper: it is what a
//! strict peer sees, so a change in how Portico frames messages shows up.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::TestCa;

/// How long any single read waits for bytes before giving up.
pub const WAIT: Duration = Duration::from_secs(5);

/// A message head: the start line and the header fields, as sent.
#[derive(Clone, Debug, Default)]
pub struct Head {
    /// The head's bytes, from the start line to the blank line included.
    pub raw: Vec<u8>,
    /// The first line, without its CRLF.
    pub start_line: String,
    /// Header fields in order: lower-cased name, value bytes without the
    /// surrounding whitespace.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Head {
    fn parse(raw: Vec<u8>) -> Head {
        let text = &raw[..raw.len().saturating_sub(4)];
        let mut lines = text
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let start_line = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
        let headers = lines
            .map(|line| match line.iter().position(|&b| b == b':') {
                Some(i) => (
                    String::from_utf8_lossy(&line[..i]).to_ascii_lowercase(),
                    trim(&line[i + 1..]).to_vec(),
                ),
                None => (
                    String::from_utf8_lossy(line).to_ascii_lowercase(),
                    Vec::new(),
                ),
            })
            .collect();
        Head {
            raw,
            start_line,
            headers,
        }
    }

    /// The first value of `name` (lower case), if it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The first value of `name` (lower case), as bytes.
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Every value of `name` (lower case), lossily as text.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.headers.iter().any(|(k, _)| k == name)
    }

    /// The head as text, for assertion messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    /// Whether a `Connection` value lists `token`.
    pub fn connection_has(&self, token: &str) -> bool {
        self.all("connection")
            .iter()
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// How a message's body was delimited on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body by rule: a request without length, a response to HEAD, 1xx, 204, 304.
    None,
    /// `Content-Length` of that many bytes.
    Length(usize),
    /// `Transfer-Encoding: chunked`, with how many non-empty chunks and the
    /// trailer fields (lower-cased names).
    Chunked {
        chunks: usize,
        trailers: Vec<(String, Vec<u8>)>,
    },
    /// No length: the body ran until the sender closed the connection.
    Close,
}

#[derive(Clone, Debug)]
pub struct RawResponse {
    pub head: Head,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    pub status: u16,
    pub body: Vec<u8>,
    pub framing: Framing,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Clone, Debug)]
pub struct RawRequest {
    pub head: Head,
    pub method: String,
    /// The request target exactly as sent (origin form: path and query).
    pub target: String,
    pub version: String,
    pub body: Vec<u8>,
    pub framing: Framing,
}

impl RawRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }
}

/// What a [`Wire`] reads and writes: a TCP stream, or a TLS stream over one.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// How a [`Wire`]'s peer ended the connection, once it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// The end of the stream: a TCP FIN, or over TLS the peer's
    /// close_notify alert.
    Clean,
    /// Over TLS: the TCP connection ended without a close_notify alert
    /// first, which a TLS client cannot tell from a truncation by an
    /// attacker (RFC 8446 §6.1, RFC 9112 §9.8).
    NoCloseNotify,
    /// A TCP reset.
    Reset,
}

/// One connection read as HTTP/1.x messages. Every read waits at most
/// [`WAIT`]; a read that times out fails with `ErrorKind::TimedOut`.
///
/// Over TLS, the peer's end of the connection reads as it does over TCP
/// (end of stream, or a reset); [`Wire::close`] tells whether a TLS peer
/// sent its close_notify first.
pub struct Wire {
    stream: Box<dyn Stream>,
    /// The peer's address, where the stream had one.
    peer: Option<SocketAddr>,
    tls: bool,
    close: Option<Close>,
    buf: Vec<u8>,
}

impl Wire {
    pub fn new(stream: TcpStream) -> Wire {
        let peer = stream.peer_addr().ok();
        Wire {
            stream: Box::new(stream),
            peer,
            tls: false,
            close: None,
            buf: Vec::new(),
        }
    }

    pub async fn connect(addr: SocketAddr) -> Wire {
        Wire::new(tcp(addr).await)
    }

    /// A TLS connection to `addr`, asking for `server_name` (SNI, and the
    /// name the certificate must carry) with `config` (see [`tls_client`]).
    /// Panics if the handshake fails.
    pub async fn connect_tls(
        addr: SocketAddr,
        server_name: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Wire {
        let tcp = tcp(addr).await;
        let peer = tcp.peer_addr().ok();
        let name = ServerName::try_from(server_name.to_owned()).expect("a valid server name");
        let stream = tokio::time::timeout(
            WAIT,
            tokio_rustls::TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .expect("TLS handshake timed out")
        .unwrap_or_else(|e| panic!("TLS handshake for {server_name}: {e}"));
        Wire {
            stream: Box::new(stream),
            peer,
            tls: true,
            close: None,
            buf: Vec::new(),
        }
    }

    /// Whether this connection runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// How the peer ended the connection, once a read has seen it.
    pub fn close(&self) -> Option<Close> {
        self.close
    }

    /// The peer's address (over TLS, the TCP peer's).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// One read from the stream: the end of the stream reads as `Ok(0)`,
    /// over TLS too when no close_notify came first, and how it ended is
    /// recorded in [`Wire::close`]. Resets stay errors (callers decide).
    async fn read_some(&mut self, chunk: &mut [u8]) -> io::Result<usize> {
        match self.stream.read(chunk).await {
            Ok(0) => {
                self.close.get_or_insert(Close::Clean);
                Ok(0)
            }
            Ok(n) => Ok(n),
            // rustls reports a TCP end without close_notify this way (a
            // TCP stream never does: its end of stream is `Ok(0)`).
            Err(e) if self.tls && e.kind() == io::ErrorKind::UnexpectedEof => {
                self.close.get_or_insert(Close::NoCloseNotify);
                Ok(0)
            }
            Err(e) => {
                if e.kind() == io::ErrorKind::ConnectionReset {
                    self.close.get_or_insert(Close::Reset);
                }
                Err(e)
            }
        }
    }

    /// Writes all of `bytes` and flushes.
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) -> io::Result<()> {
        tokio::time::timeout(WAIT, async {
            self.stream.write_all(bytes.as_ref()).await?;
            self.stream.flush().await
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))?
    }

    /// Bytes received but not yet consumed as part of a message.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Waits, without a limit, for a byte to be buffered: false when the
    /// peer closed first. For a server between requests, where waiting is
    /// normal (its task is stopped from outside).
    pub async fn await_data(&mut self) -> io::Result<bool> {
        if !self.buf.is_empty() {
            return Ok(true);
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = match self.read_some(&mut chunk).await {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => 0,
            Err(e) => return Err(e),
        };
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// Reads once more into the buffer: the byte count, 0 at end of stream.
    async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(WAIT, self.read_some(&mut chunk))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no bytes within {WAIT:?}; buffered: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                )
            })??;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    fn eof_error(&self, what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "connection closed {what}; buffered: {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
        )
    }

    /// A head up to and including its blank line; `None` when the peer
    /// closed before sending a byte of it.
    pub async fn read_head(&mut self) -> io::Result<Option<Head>> {
        loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let raw: Vec<u8> = self.buf.drain(..i + 4).collect();
                return Ok(Some(Head::parse(raw)));
            }
            let n = match self.fill().await {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset && self.buf.is_empty() => 0,
                Err(e) => return Err(e),
            };
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(self.eof_error("in the middle of a head"));
            }
        }
    }

    /// One line without its CRLF.
    async fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let mut line: Vec<u8> = self.buf.drain(..i + 2).collect();
                line.truncate(i);
                return Ok(line);
            }
            if self.fill().await? == 0 {
                return Err(self.eof_error("in the middle of a line"));
            }
        }
    }

    /// Exactly `n` bytes.
    pub async fn read_exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(self.eof_error(&format!("after {} of {n} body bytes", self.buf.len())));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Everything until the peer closes (a reset counts as a close).
    pub async fn read_to_eof(&mut self) -> io::Result<Vec<u8>> {
        loop {
            match self.fill().await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e) => return Err(e),
            }
        }
        Ok(std::mem::take(&mut self.buf))
    }

    /// Reads until `needle` has arrived (without consuming anything).
    pub async fn wait_for(&mut self, needle: &[u8]) -> io::Result<()> {
        while !self.buf.windows(needle.len()).any(|w| w == needle) {
            if self.fill().await? == 0 {
                return Err(self.eof_error(&format!(
                    "before {:?} arrived",
                    String::from_utf8_lossy(needle)
                )));
            }
        }
        Ok(())
    }

    /// Reads until at least `n` bytes are buffered (without consuming them).
    pub async fn fill_to(&mut self, n: usize) -> io::Result<()> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(self.eof_error("early"));
            }
        }
        Ok(())
    }

    /// Waits for the peer to close the connection. Fails if it sends any
    /// further bytes or keeps the connection open past [`WAIT`].
    pub async fn closed(&mut self) -> Result<(), String> {
        loop {
            match self.fill().await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e) => return Err(format!("the connection stayed open: {e}")),
            }
        }
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "closed after unexpected bytes: {:?}",
                String::from_utf8_lossy(&self.buf)
            ))
        }
    }

    /// A chunked body: the data, the chunk count and the trailer fields.
    async fn read_chunked(&mut self) -> io::Result<(Vec<u8>, Framing)> {
        let mut body = Vec::new();
        let mut chunks = 0;
        loop {
            let line = self.read_line().await?;
            let size = line.split(|&b| b == b';').next().unwrap_or_default();
            let size = std::str::from_utf8(trim(size))
                .ok()
                .and_then(|s| usize::from_str_radix(s, 16).ok())
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad chunk size line {:?}", String::from_utf8_lossy(&line)),
                    )
                })?;
            if size == 0 {
                break;
            }
            chunks += 1;
            body.extend(self.read_exact(size).await?);
            let end = self.read_line().await?;
            if !end.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "chunk data not followed by CRLF: {:?}",
                        String::from_utf8_lossy(&end)
                    ),
                ));
            }
        }
        let mut trailers = Vec::new();
        loop {
            let line = self.read_line().await?;
            if line.is_empty() {
                break;
            }
            if let Some(i) = line.iter().position(|&b| b == b':') {
                trailers.push((
                    String::from_utf8_lossy(&line[..i]).to_ascii_lowercase(),
                    trim(&line[i + 1..]).to_vec(),
                ));
            }
        }
        Ok((body, Framing::Chunked { chunks, trailers }))
    }

    /// The body a message with `head` carries, by RFC 9112 §6.3. `no_body`
    /// is the rule's first case (HEAD responses, 1xx, 204, 304).
    async fn read_body(
        &mut self,
        head: &Head,
        no_body: bool,
        is_response: bool,
    ) -> io::Result<(Vec<u8>, Framing)> {
        if no_body {
            return Ok((Vec::new(), Framing::None));
        }
        if let Some(te) = head.header("transfer-encoding") {
            let last = te.rsplit(',').next().unwrap_or_default().trim();
            if last.eq_ignore_ascii_case("chunked") {
                return self.read_chunked().await;
            }
        }
        if let Some(cl) = head.header("content-length") {
            let n: usize = cl.trim().parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad Content-Length {cl:?}"),
                )
            })?;
            return Ok((self.read_exact(n).await?, Framing::Length(n)));
        }
        if is_response {
            return Ok((self.read_to_eof().await?, Framing::Close));
        }
        Ok((Vec::new(), Framing::None))
    }

    /// The next response, its body read as its framing says; `method` is
    /// the request's (HEAD responses have no body). Interim (1xx) responses
    /// are returned like any other: read again for the final one.
    pub async fn read_response(&mut self, method: &str) -> io::Result<RawResponse> {
        let head = self
            .read_head()
            .await?
            .ok_or_else(|| self.eof_error("before a response"))?;
        let mut parts = head.start_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_owned();
        let status: u16 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {:?}", head.start_line),
            )
        })?;
        let no_body =
            method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304;
        let (body, framing) = self.read_body(&head, no_body, true).await?;
        Ok(RawResponse {
            head,
            version,
            status,
            body,
            framing,
        })
    }

    /// The next final (non-1xx) response, and the interim ones before it.
    pub async fn read_final_response(
        &mut self,
        method: &str,
    ) -> io::Result<(Vec<RawResponse>, RawResponse)> {
        let mut interim = Vec::new();
        loop {
            let r = self.read_response(method).await?;
            if (100..200).contains(&r.status) {
                interim.push(r);
            } else {
                return Ok((interim, r));
            }
        }
    }

    /// The next request and its body; `None` when the peer closed between
    /// requests.
    pub async fn read_request(&mut self) -> io::Result<Option<RawRequest>> {
        let Some(head) = self.read_head().await? else {
            return Ok(None);
        };
        let mut parts = head.start_line.splitn(3, ' ');
        let method = parts.next().unwrap_or_default().to_owned();
        let target = parts.next().unwrap_or_default().to_owned();
        let version = parts.next().unwrap_or_default().to_owned();
        let (body, framing) = self.read_body(&head, false, false).await?;
        Ok(Some(RawRequest {
            head,
            method,
            target,
            version,
            body,
            framing,
        }))
    }

    /// The stream under the reader, to write or shut down directly.
    pub fn stream_mut(&mut self) -> &mut dyn Stream {
        &mut *self.stream
    }
}

async fn tcp(addr: SocketAddr) -> TcpStream {
    let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    let _ = stream.set_nodelay(true);
    stream
}

/// A rustls client config (aws-lc-rs) trusting only `ca`, offering `alpn`
/// (e.g. `&[b"http/1.1"]`; none when empty), for [`Wire::connect_tls`].
pub fn tls_client(ca: &TestCa, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes()) {
        roots
            .add(cert.expect("the CA's PEM"))
            .expect("the CA certificate");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("aws-lc-rs supports the default versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// What a [`RawBackend`] script gets for each accepted connection.
pub struct BackendConn {
    pub wire: Wire,
    /// 0 for the backend's first connection, 1 for the second...
    pub index: usize,
    requests: Arc<Mutex<Vec<RawRequest>>>,
}

impl BackendConn {
    /// The next request (recorded in the backend's log); `None` when the
    /// proxy closed the connection. Waits as long as it takes for a request
    /// to begin; panics if one then stalls or is malformed.
    pub async fn next_request(&mut self) -> Option<RawRequest> {
        if !self
            .wire
            .await_data()
            .await
            .unwrap_or_else(|e| panic!("backend connection {}: {e}", self.index))
        {
            return None;
        }
        let req = self
            .wire
            .read_request()
            .await
            .unwrap_or_else(|e| panic!("backend connection {}: {e}", self.index))?;
        self.requests.lock().unwrap().push(req.clone());
        Some(req)
    }

    /// Writes `bytes`; errors (the proxy went away) are ignored.
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        let _ = self.wire.send(bytes).await;
    }

    /// Reads requests until the proxy closes, answering each with what
    /// `answer` makes of it.
    pub async fn serve(&mut self, answer: impl Fn(&RawRequest) -> Vec<u8>) {
        while let Some(req) = self.next_request().await {
            let bytes = answer(&req);
            if self.wire.send(bytes).await.is_err() {
                return;
            }
        }
    }
}

/// An upstream on 127.0.0.1:0 that runs `script` on every connection it
/// accepts, and records the requests scripts read. Stops when dropped.
pub struct RawBackend {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<RawRequest>>>,
    stop: CancellationToken,
}

impl RawBackend {
    pub async fn start<F, Fut>(script: F) -> RawBackend
    where
        F: Fn(BackendConn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind raw backend");
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (c, r, s) = (connections.clone(), requests.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = s.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let _ = stream.set_nodelay(true);
                let index = c.fetch_add(1, Ordering::SeqCst);
                let conn = BackendConn {
                    wire: Wire::new(stream),
                    index,
                    requests: r.clone(),
                };
                let run = script(conn);
                let stop = s.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = run => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        RawBackend {
            addr,
            connections,
            requests,
            stop,
        }
    }

    /// A keep-alive backend answering every request with `answer(request)`.
    pub async fn answering<A>(answer: A) -> RawBackend
    where
        A: Fn(&RawRequest) -> Vec<u8> + Send + Sync + 'static,
    {
        let answer = Arc::new(answer);
        RawBackend::start(move |mut conn| {
            let answer = answer.clone();
            async move { conn.serve(|r| answer(r)).await }
        })
        .await
    }

    /// A keep-alive backend answering every request with the same bytes.
    pub async fn fixed(response: impl Into<Vec<u8>>) -> RawBackend {
        let response = response.into();
        RawBackend::answering(move |_| response.clone()).await
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The requests scripts have read so far, in order.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A `200 OK` with `Content-Length` and `body`, plus any `extra` header
/// lines (each ending in CRLF).
pub fn ok_with(body: &[u8], extra: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

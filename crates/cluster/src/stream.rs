//! The snapshot stream's wire: the messages, their framing (one JSON
//! object per line), the bounds on each, and the two body halves both
//! roles share (a line reader over a received body, a channel-fed body to
//! send).
//!
//! ```text
//! proxy                                          controller
//!   POST /v1/stream (request body, up):
//!     {"type":"hello","proxy_id":"lb-1","service_cluster":"default","applied_version":null,
//!      "listeners":["http://0.0.0.0:80","https://0.0.0.0:443"],"admin":"http://10.0.0.5:9090"}
//!     {"type":"heartbeat"}
//!     {"type":"ack","version":"3edc6f…"}
//!     {"type":"nack","version":"6e1626…","reason":"…"}
//!   200 (response body, down):
//!     {"type":"heartbeat"}
//!     {"type":"snapshot","version":"3edc6f…","config_json":"{\"proxy\":…}"}
//! ```
//!
//! Versions travel as [`Version::full`] (64 hex digits). Unknown fields
//! in a message are ignored (a newer peer may add some); an unknown
//! message type ends the stream. The config inside a snapshot is the
//! other way round: it is read by [`Config::from_json`](portico_model::Config::from_json),
//! which refuses anything it does not know.

use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use portico_model::Version;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// The one ALPN protocol cluster connections speak.
pub const ALPN_H2: &[u8] = b"h2";

/// Where a proxy without a certificate exchanges its join token for one.
pub const JOIN_PATH: &str = "/v1/join";
/// Where a joined proxy holds its stream.
pub const STREAM_PATH: &str = "/v1/stream";

/// The largest snapshot line (the config's JSON, escaped, inside the
/// message): room for thousands of services and their certificates, and a
/// bound on what a controller can make a proxy buffer.
pub const MAX_SNAPSHOT_LINE: usize = 64 << 20;
/// The largest line a proxy sends, and the largest join request or answer
/// (a CSR, a certificate): every message but a snapshot is small.
pub const MAX_SMALL_MESSAGE: usize = 64 << 10;
/// A NACK's reason is cut to this many bytes: it is logged and listed by
/// the controller, not a transport for whole error reports.
pub const MAX_REASON: usize = 4096;

/// How often each side sends a heartbeat, and how many it may miss before
/// the other side gives up on it. Both sides must use the same values (the
/// defaults do): the controller's patience is measured in its own interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub interval: Duration,
    /// A peer silent for `interval × missed` is gone.
    pub missed: u32,
}

impl Heartbeat {
    /// How long a silent peer is given.
    pub fn patience(&self) -> Duration {
        self.interval.saturating_mul(self.missed.max(1))
    }
}

impl Default for Heartbeat {
    /// Every 5 s, gone after 15 s of silence: the issue asks for a silent
    /// stream to be noticed "within seconds", and a heartbeat every 5 s
    /// costs nothing on a link that already carries TLS.
    fn default() -> Self {
        Heartbeat {
            interval: Duration::from_secs(5),
            missed: 3,
        }
    }
}

/// What a proxy sends up its request body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Up {
    /// The first message, and only the first: who it is (the same id as
    /// its certificate's), which service cluster it serves, and the
    /// version it already serves (so a controller that has the same sends
    /// nothing).
    Hello {
        proxy_id: String,
        service_cluster: String,
        applied_version: Option<String>,
        /// Where it serves traffic, as [`Endpoint`]s (`http://0.0.0.0:80`),
        /// so that the controller can say where each proxy is reached (a
        /// proxy dials out: the controller learns no address otherwise
        /// but the stream's). Strings, not endpoints, on the wire: one the
        /// controller cannot read is left out of its listing, not a reason
        /// to refuse the stream. Absent from older proxies' hellos.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        listeners: Vec<String>,
        /// Its admin API (`http://IP:PORT`), if it serves one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        admin: Option<String>,
    },
    /// The snapshot of `version` is applied (and persisted).
    Ack {
        version: String,
    },
    /// The snapshot of `version` was refused; the proxy keeps what it had.
    Nack {
        version: String,
        reason: String,
    },
    Heartbeat,
}

/// What the controller sends down the response body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Down {
    /// The whole config of the proxy's service cluster, in
    /// [`portico_model::wire`] form, named by its [`Version`].
    Snapshot {
        version: String,
        config_json: String,
    },
    Heartbeat,
}

/// The most listeners a hello's are read for: a proxy has two (HTTP and
/// HTTPS); the bound keeps a peer from growing the controller's listing.
pub const MAX_LISTENERS: usize = 16;

/// A listener a proxy announces: `http://IP:PORT` or `https://IP:PORT`.
/// The admin API is always `http`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Endpoint {
    pub https: bool,
    pub addr: SocketAddr,
}

impl Endpoint {
    pub fn http(addr: SocketAddr) -> Endpoint {
        Endpoint { https: false, addr }
    }

    pub fn https(addr: SocketAddr) -> Endpoint {
        Endpoint { https: true, addr }
    }

    /// The endpoint as reached from elsewhere: a listener on every address
    /// (`0.0.0.0`, `::`) is reached at the address its stream came from.
    /// An IPv4 peer seen through an IPv6 socket is written as IPv4.
    pub fn reachable(self, peer: IpAddr) -> Endpoint {
        if !self.addr.ip().is_unspecified() {
            return self;
        }
        Endpoint {
            addr: SocketAddr::new(peer.to_canonical(), self.addr.port()),
            ..self
        }
    }
}

impl Endpoint {
    /// The endpoint as the controller lists it for a peer whose stream
    /// comes from `peer`: [`reachable`](Endpoint::reachable), except that
    /// one on a loopback address (127.0.0.0/8, `::1`) is dropped unless the
    /// stream itself comes from loopback. From elsewhere it names the
    /// machine of whoever reads the listing (`portico trace` would talk to
    /// its own 127.0.0.1), not the peer's; logged at debug.
    pub fn listed_for(self, peer: IpAddr) -> Option<Endpoint> {
        let loopback = |ip: IpAddr| ip.to_canonical().is_loopback();
        if loopback(self.addr.ip()) && !loopback(peer) {
            tracing::debug!(
                peer = %peer,
                endpoint = %self,
                "a loopback endpoint announced from another machine; not listed"
            );
            return None;
        }
        Some(self.reachable(peer))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.addr)
    }
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Endpoint, String> {
        let (https, rest) = if let Some(rest) = s.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = s.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err("expected http://IP:PORT or https://IP:PORT".to_owned());
        };
        let addr = rest
            .parse()
            .map_err(|_| "expected http://IP:PORT or https://IP:PORT".to_owned())?;
        Ok(Endpoint { https, addr })
    }
}

impl TryFrom<String> for Endpoint {
    type Error = String;

    fn try_from(s: String) -> Result<Endpoint, String> {
        s.parse()
    }
}

impl From<Endpoint> for String {
    fn from(e: Endpoint) -> String {
        e.to_string()
    }
}

/// One message as a line: its JSON and a `\n`.
pub fn encode<T: Serialize>(message: &T) -> Bytes {
    let mut line = serde_json::to_vec(message).expect("stream messages always serialize");
    line.push(b'\n');
    Bytes::from(line)
}

/// Whether `text` is a version as the stream writes them ([`Version::full`]).
/// What a peer sends is checked before it is listed or logged.
pub fn is_version(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The stream's form of a version.
pub fn version_text(version: &Version) -> String {
    version.full()
}

/// Checks a service cluster name: a proxy id's rules (1 to 63 of ASCII
/// letters, digits, `-`, `_`, `.`, starting with a letter or digit), for
/// the same reasons.
pub fn check_cluster_name(name: &str) -> Result<(), String> {
    // The services' `service_cluster` is read by the same rule.
    portico_model::rules::parse_service_cluster(name).map(drop)
}

/// `reason` cut to at most [`MAX_REASON`] bytes, on a character boundary.
pub fn bounded_reason(reason: &str) -> String {
    if reason.len() <= MAX_REASON {
        return reason.to_owned();
    }
    let mut end = MAX_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &reason[..end])
}

/// Why a stream's input could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("a message is longer than the {limit}-byte limit")]
    TooLong { limit: usize },
    #[error("the stream ended in the middle of a message")]
    Truncated,
    #[error("a message does not parse: {0}")]
    Malformed(serde_json::Error),
    #[error("the stream broke: {0}")]
    Body(String),
}

/// Reads newline-delimited JSON messages from a body, each at most `limit`
/// bytes.
///
/// [`LineReader::next`] is cancel-safe (it may lose a `select!`): its only
/// await is the body's next frame, which hands out data only when it
/// returns, and the buffer lives here, not in the future.
pub struct LineReader<B> {
    body: B,
    buf: BytesMut,
    /// How much of `buf` is known to hold no newline.
    scanned: usize,
    limit: usize,
}

impl<B> LineReader<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: fmt::Display,
{
    pub fn new(body: B, limit: usize) -> Self {
        LineReader {
            body,
            buf: BytesMut::new(),
            scanned: 0,
            limit,
        }
    }

    /// The next message, or `None` when the body ended cleanly between two.
    /// Blank lines are skipped.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ReadError> {
        loop {
            if let Some(at) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let line = self.buf.split_to(self.scanned + at + 1);
                self.scanned = 0;
                let line = &line[..line.len() - 1];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(line)
                    .map(Some)
                    .map_err(ReadError::Malformed);
            }
            self.scanned = self.buf.len();
            if self.buf.len() > self.limit {
                return Err(ReadError::TooLong { limit: self.limit });
            }
            match self.body.frame().await {
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(ReadError::Truncated),
                Some(Err(e)) => return Err(ReadError::Body(e.to_string())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// A body fed line by line from a channel: the sending half of a stream.
/// It ends when every sender is dropped.
pub struct Lines {
    rx: mpsc::Receiver<Bytes>,
}

impl Lines {
    /// A body and its sender. `depth` lines may wait unsent: a peer that
    /// stops reading makes the sender wait (bounded by its caller), rather
    /// than making this side buffer without end.
    pub fn channel(depth: usize) -> (mpsc::Sender<Bytes>, Lines) {
        let (tx, rx) = mpsc::channel(depth);
        (tx, Lines { rx })
    }
}

impl Body for Lines {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|line| line.map(|l| Ok(Frame::data(l))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[tokio::test]
    async fn lines_split_across_frames_and_joined_in_one_are_read_in_order() {
        let (tx, lines) = Lines::channel(4);
        tx.send(Bytes::from_static(b"{\"type\":\"heart"))
            .await
            .unwrap();
        tx.send(Bytes::from_static(
            b"beat\"}\n\n{\"type\":\"ack\",\"version\":\"v\"}\n{\"type\":\"heartbeat\"}\n",
        ))
        .await
        .unwrap();
        drop(tx);
        let mut reader = LineReader::new(lines, 1024);
        assert_eq!(reader.next::<Up>().await.unwrap(), Some(Up::Heartbeat));
        assert_eq!(
            reader.next::<Up>().await.unwrap(),
            Some(Up::Ack {
                version: "v".into()
            })
        );
        assert_eq!(reader.next::<Up>().await.unwrap(), Some(Up::Heartbeat));
        assert_eq!(reader.next::<Up>().await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_line_over_the_limit_or_cut_short_is_an_error() {
        let (tx, lines) = Lines::channel(4);
        tx.send(Bytes::from(vec![b'x'; 100])).await.unwrap();
        let mut reader = LineReader::new(lines, 64);
        assert!(matches!(
            reader.next::<Up>().await,
            Err(ReadError::TooLong { limit: 64 })
        ));
        let (tx, lines) = Lines::channel(4);
        tx.send(Bytes::from_static(b"{\"type\":")).await.unwrap();
        drop(tx);
        let mut reader = LineReader::new(lines, 64);
        assert!(matches!(
            reader.next::<Up>().await,
            Err(ReadError::Truncated)
        ));
        let (tx, lines) = Lines::channel(4);
        tx.send(Bytes::from_static(b"{\"type\":\"launch\"}\n"))
            .await
            .unwrap();
        let mut reader = LineReader::new(lines, 64);
        assert!(matches!(
            reader.next::<Up>().await,
            Err(ReadError::Malformed(_))
        ));
    }

    #[test]
    fn messages_have_the_documented_form() {
        assert_eq!(encode(&Up::Heartbeat), "{\"type\":\"heartbeat\"}\n");
        assert_eq!(
            encode(&Up::Hello {
                proxy_id: "lb-1".into(),
                service_cluster: "default".into(),
                applied_version: None,
                listeners: Vec::new(),
                admin: None,
            }),
            "{\"type\":\"hello\",\"proxy_id\":\"lb-1\",\"service_cluster\":\"default\",\"applied_version\":null}\n"
        );
        // What the proxy serves on, when it says (older proxies do not).
        let hello: Up = serde_json::from_str(
            r#"{"type":"hello","proxy_id":"lb-1","service_cluster":"default","applied_version":null,"listeners":["http://0.0.0.0:80"],"admin":"http://10.0.0.5:9090"}"#,
        )
        .unwrap();
        let Up::Hello {
            listeners, admin, ..
        } = hello
        else {
            panic!("a hello")
        };
        assert_eq!(listeners, ["http://0.0.0.0:80"]);
        assert_eq!(admin.as_deref(), Some("http://10.0.0.5:9090"));
        // A newer peer's extra field is ignored.
        let down: Down = serde_json::from_str(
            r#"{"type":"snapshot","version":"v","config_json":"{}","compressed":false}"#,
        )
        .unwrap();
        assert_eq!(
            down,
            Down::Snapshot {
                version: "v".into(),
                config_json: "{}".into()
            }
        );
    }

    #[test]
    fn endpoints_read_back_and_are_reachable_at_the_peer() {
        let any: Endpoint = "https://0.0.0.0:8443".parse().unwrap();
        assert_eq!(any, Endpoint::https("0.0.0.0:8443".parse().unwrap()));
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        assert_eq!(any.reachable(peer).to_string(), "https://10.0.0.5:8443");
        // Seen through a dual-stack socket, the peer is written as IPv4.
        let mapped: IpAddr = "::ffff:10.0.0.5".parse().unwrap();
        let v6: Endpoint = "http://[::]:80".parse().unwrap();
        assert_eq!(v6.reachable(mapped).to_string(), "http://10.0.0.5:80");
        // A listener on one address is reached there.
        let one: Endpoint = "http://192.168.1.2:80".parse().unwrap();
        assert_eq!(one.reachable(peer), one);
        for bad in [
            "0.0.0.0:80",
            "ftp://1.2.3.4:21",
            "http://host:80",
            "http://1.2.3.4",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
        assert_eq!(
            serde_json::to_string(&one).unwrap(),
            "\"http://192.168.1.2:80\""
        );
    }

    #[test]
    fn loopback_endpoints_are_listed_only_for_a_peer_on_loopback() {
        let remote: IpAddr = "10.0.0.5".parse().unwrap();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let local_v6: IpAddr = "::1".parse().unwrap();
        let mapped_local: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        for text in [
            "http://127.0.0.1:9090",
            "http://127.1.2.3:9090",
            "http://[::1]:9090",
            "http://[::ffff:127.0.0.1]:9090",
        ] {
            let e: Endpoint = text.parse().unwrap();
            assert_eq!(e.listed_for(remote), None, "{text}");
            for peer in [local, local_v6, mapped_local] {
                assert_eq!(e.listed_for(peer), Some(e), "{text} from {peer}");
            }
        }
        // Anything else is listed as reachable() has it.
        let any: Endpoint = "https://0.0.0.0:8443".parse().unwrap();
        assert_eq!(
            any.listed_for(remote).unwrap().to_string(),
            "https://10.0.0.5:8443"
        );
        assert_eq!(
            any.listed_for(local).unwrap().to_string(),
            "https://127.0.0.1:8443"
        );
        let one: Endpoint = "http://192.168.1.2:80".parse().unwrap();
        assert_eq!(one.listed_for(remote), Some(one));
    }

    #[test]
    fn reasons_are_bounded_on_a_character_boundary() {
        let long = "é".repeat(MAX_REASON);
        let cut = bounded_reason(&long);
        assert!(cut.len() <= MAX_REASON + '…'.len_utf8());
        assert!(cut.ends_with('…'));
        assert_eq!(bounded_reason("short"), "short");
    }

    #[test]
    fn versions_and_cluster_names_are_checked() {
        assert!(is_version(&"a".repeat(64)));
        assert!(!is_version(&"A".repeat(64)));
        assert!(!is_version("abc"));
        assert!(check_cluster_name("us-east").is_ok());
        let e = check_cluster_name("../x").unwrap_err();
        assert!(e.contains("service cluster name"), "{e}");
    }
}

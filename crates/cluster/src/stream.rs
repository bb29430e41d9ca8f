//! The snapshot stream's wire: the messages, their framing (one JSON
//! object per line), the bounds on each, and the two body halves both
//! roles share (a line reader over a received body, a channel-fed body to
//! send).
//!
//! ```text
//! proxy                                          controller
//!   POST /v1/stream (request body, up):
//!     {"type":"hello","proxy_id":"lb-1","service_cluster":"default","applied_version":null}
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
use std::pin::Pin;
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
/// Service cluster names follow proxy ids' rules and length: they end up in
/// the same logs and listings.
pub const MAX_CLUSTER_NAME: usize = crate::id::MAX_LEN;
/// The cluster a proxy belongs to when it names none
/// (`com.docker.lb.service_cluster` unset).
pub const DEFAULT_CLUSTER: &str = "default";

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
    crate::id::ProxyId::new(name)
        .map(|_| ())
        .map_err(|e| e.to_string().replace("proxy id", "service cluster name"))
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
                applied_version: None
            }),
            "{\"type\":\"hello\",\"proxy_id\":\"lb-1\",\"service_cluster\":\"default\",\"applied_version\":null}\n"
        );
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

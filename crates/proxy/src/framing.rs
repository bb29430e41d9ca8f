//! HTTP/1.1 message framing as bytes, shared by the fast path and the
//! relay: where a head ends, the tokens of a `Connection` header, and a
//! chunked body's framing (RFC 9112 §7.1), followed or decoded.

use std::ops::Range;

/// The length of the head at the start of `buf` (through the empty line
/// that ends it), if it is all there. `from` is where the last search
/// stopped, less the three bytes an end could straddle.
pub(crate) fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let at = i + p;
        match buf.get(at + 1) {
            Some(b'\n') => return Some(at + 2),
            Some(b'\r') => match buf.get(at + 2) {
                Some(b'\n') => return Some(at + 3),
                None => return None,
                _ => {}
            },
            None => return None,
            _ => {}
        }
        i = at + 1;
    }
    None
}

/// Writes one header field line of a head.
pub(crate) fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The values of up to eight `Connection` header lines: the names they
/// list are hop-by-hop for this message. More lines than that are unusual
/// enough to leave to the general path (requests) or refuse (responses).
#[derive(Default)]
pub(crate) struct Listed<'a> {
    values: [&'a [u8]; 8],
    len: usize,
}

impl<'a> Listed<'a> {
    pub(crate) fn push(&mut self, value: &'a [u8]) -> bool {
        if self.len == self.values.len() {
            return false;
        }
        self.values[self.len] = value;
        self.len += 1;
        true
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.values[..self.len]
            .iter()
            .any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case(name.as_bytes())))
    }
}

/// Splits a comma-separated header value into trimmed, non-empty tokens.
pub(crate) fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// The upstream response's framing, as far as the client side is concerned.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    Length(u64),
    /// Passed through as it came, its framing checked on the way.
    Chunked,
    /// Ends when the upstream closes; the client connection closes after it.
    UntilClose,
}

/// What is still to come of a response body, and how its end is found:
/// one rule for the fast path, which passes the bytes on as they came, and
/// the relay, which decodes them.
#[derive(Debug, Clone)]
pub(crate) enum Rest {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

/// How the upstream's close cut a body short.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Cut {
    /// This many bytes of a `Content-Length` body never came.
    Short(u64),
    /// It closed inside a chunked body.
    InChunked,
}

impl Rest {
    pub(crate) fn new(framing: Framing) -> Rest {
        match framing {
            Framing::Empty | Framing::Length(0) => Rest::Done,
            Framing::Length(n) => Rest::Length(n),
            Framing::Chunked => Rest::Chunked(Chunked::default()),
            Framing::UntilClose => Rest::UntilClose,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(self, Rest::Done)
    }

    /// The bytes still to come, when the head said.
    pub(crate) fn known_left(&self) -> Option<u64> {
        match self {
            Rest::Length(n) => Some(*n),
            Rest::Done => Some(0),
            Rest::Chunked(_) | Rest::UntilClose => None,
        }
    }

    /// Takes the body's bytes from the start of `input`, as they are (a
    /// chunked body's framing is checked, not removed): how many belong
    /// to it, fewer than given only once it is over.
    pub(crate) fn pass(&mut self, input: &[u8]) -> Result<usize, ()> {
        let used = match self {
            Rest::Done => 0,
            Rest::Length(left) => {
                let take = input
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= take as u64;
                take
            }
            Rest::Chunked(chunks) => chunks.feed(input)?,
            Rest::UntilClose => input.len(),
        };
        self.settle();
        Ok(used)
    }

    /// Marks the body over once nothing is left of it.
    pub(crate) fn settle(&mut self) {
        let over = match self {
            Rest::Length(left) => *left == 0,
            Rest::Chunked(chunks) => chunks.done(),
            Rest::UntilClose | Rest::Done => false,
        };
        if over {
            *self = Rest::Done;
        }
    }

    /// The upstream closed the connection: that ends a body framed by the
    /// close, and cuts any other short.
    pub(crate) fn close(&mut self) -> Result<(), Cut> {
        match self {
            Rest::Length(left) => Err(Cut::Short(*left)),
            Rest::Chunked(_) => Err(Cut::InChunked),
            Rest::UntilClose | Rest::Done => {
                *self = Rest::Done;
                Ok(())
            }
        }
    }
}

/// Follows a chunked body's framing (RFC 9112 §7.1) without changing it,
/// to know where it ends. The body reaches the client as it came, so this
/// is as strict as hyper's decoder: lines end in CRLF only, a size may be
/// followed by whitespace and then only extensions, and extensions and
/// trailers are bounded. Anything else is an error, never passed on.
#[derive(Default, Debug, Clone)]
pub(crate) struct Chunked {
    state: ChunkState,
    size: u64,
    size_digits: u8,
    /// Extension bytes of the current size line, or trailer bytes so far.
    extra: usize,
}

/// Extension bytes allowed on one size line.
const MAX_CHUNK_EXTENSION: usize = 4 * 1024;

/// Trailer section bytes allowed.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Default, Debug, PartialEq, Clone, Copy)]
enum ChunkState {
    /// Hex digits of a chunk size.
    #[default]
    Size,
    /// Whitespace after the size: then `;` or the line's end.
    SizeWs,
    /// Extensions after the size, up to the line's end.
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

impl Chunked {
    pub(crate) fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes bytes of the body from `input`; returns how many belong to
    /// it (fewer than given only once it is done).
    pub(crate) fn feed(&mut self, input: &[u8]) -> Result<usize, ()> {
        self.run(input, false).map(|(used, _)| used)
    }

    /// Consumes bytes of the body from `input` up to the end of the first
    /// run of chunk data in it: how many it consumed, and where in `input`
    /// that data is (none when `input` held only framing, or the end).
    pub(crate) fn next_data(&mut self, input: &[u8]) -> Result<(usize, Option<Range<usize>>), ()> {
        self.run(input, true)
    }

    fn run(
        &mut self,
        input: &[u8],
        stop_at_data: bool,
    ) -> Result<(usize, Option<Range<usize>>), ()> {
        use ChunkState::*;
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        self.size_digits += 1;
                        if self.size_digits > 15 {
                            return Err(());
                        }
                        let digit = (b as char).to_digit(16).unwrap_or(0);
                        self.size = self.size * 16 + u64::from(digit);
                    }
                    b' ' | b'\t' if self.size_digits > 0 => self.state = SizeWs,
                    b';' if self.size_digits > 0 => self.state = Extension,
                    b'\r' if self.size_digits > 0 => self.state = SizeLf,
                    _ => return Err(()),
                },
                SizeWs => match b {
                    b' ' | b'\t' => {}
                    b';' => self.state = Extension,
                    b'\r' => self.state = SizeLf,
                    _ => return Err(()),
                },
                Extension => match b {
                    b'\r' => self.state = SizeLf,
                    b'\n' => return Err(()),
                    _ => {
                        self.extra += 1;
                        if self.extra > MAX_CHUNK_EXTENSION {
                            return Err(());
                        }
                    }
                },
                SizeLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.extra = 0;
                    self.state = if self.size == 0 { TrailerStart } else { Data };
                }
                Data => {
                    let take =
                        (input.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    self.size -= take as u64;
                    let start = i;
                    i += take;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    if stop_at_data {
                        return Ok((i, Some(start..i)));
                    }
                    continue;
                }
                DataCr => {
                    if b != b'\r' {
                        return Err(());
                    }
                    self.state = DataLf;
                }
                DataLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = Size;
                    self.size = 0;
                    self.size_digits = 0;
                }
                TrailerStart => match b {
                    b'\r' => self.state = EndLf,
                    b'\n' => return Err(()),
                    _ => self.trailer_byte(TrailerLine)?,
                },
                TrailerLine => match b {
                    b'\r' => self.state = TrailerLf,
                    b'\n' => return Err(()),
                    _ => self.trailer_byte(TrailerLine)?,
                },
                TrailerLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = TrailerStart;
                }
                EndLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = Done;
                }
                Done => return Ok((i, None)),
            }
            i += 1;
            if self.state == Done {
                return Ok((i, None));
            }
        }
        Ok((i, None))
    }

    fn trailer_byte(&mut self, next: ChunkState) -> Result<(), ()> {
        self.extra += 1;
        if self.extra > MAX_TRAILERS {
            return Err(());
        }
        self.state = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rest_of_a_body_ends_where_its_framing_says() {
        let mut rest = Rest::new(Framing::Length(5));
        assert_eq!(rest.pass(b"abc"), Ok(3));
        assert_eq!(rest.known_left(), Some(2));
        assert_eq!(rest.pass(b"defgh"), Ok(2), "what follows is not the body's");
        assert!(rest.is_done());
        assert!(Rest::new(Framing::Empty).is_done());
        assert_eq!(Rest::new(Framing::Length(4)).close(), Err(Cut::Short(4)));

        let mut rest = Rest::new(Framing::Chunked);
        assert_eq!(rest.pass(b"3\r\nabc\r\n"), Ok(8));
        assert_eq!(rest.known_left(), None);
        assert_eq!(rest.close(), Err(Cut::InChunked));
        assert_eq!(rest.pass(b"0\r\n\r\nGET"), Ok(5));
        assert!(rest.is_done());
        assert_eq!(Rest::new(Framing::Chunked).pass(b"x\r\n"), Err(()));

        let mut rest = Rest::new(Framing::UntilClose);
        assert_eq!(rest.pass(b"anything"), Ok(8));
        assert!(!rest.is_done());
        assert_eq!(rest.close(), Ok(()));
        assert!(rest.is_done());
    }

    #[test]
    fn finds_the_end_of_a_head_across_reads() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next";
        assert_eq!(head_end(head, 0), Some(27));
        assert_eq!(head_end(&head[..26], 0), None);
        assert_eq!(head_end(&head[..25], 0), None);
        // Resumed three bytes before where the last search stopped.
        assert_eq!(head_end(head, 22), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\nrest", 0), Some(24));
    }

    fn chunked_len(body: &[u8]) -> Result<(usize, bool), ()> {
        let mut c = Chunked::default();
        let n = c.feed(body)?;
        Ok((n, c.done()))
    }

    #[test]
    fn follows_chunked_framing() {
        let body =
            b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-sum: 1\r\n\r\nNEXT";
        assert_eq!(chunked_len(body), Ok((body.len() - 4, true)));
        assert_eq!(chunked_len(b"0\r\n\r\n"), Ok((5, true)));
        assert_eq!(chunked_len(b"5\r\nhel"), Ok((6, false)));
        assert_eq!(chunked_len(b"zz\r\n"), Err(()));
        assert_eq!(chunked_len(b"5\r\nhelloX"), Err(()));
        assert_eq!(chunked_len(b"ffffffffffffffff0\r\n"), Err(()));
        // Stricter than "be liberal": what passes on must parse the same
        // way everywhere downstream.
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"2;\nxx\r\n0\r\n\r\n",
            b"5 x\r\nhello\r\n",
            b"5 5\r\nhello\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"0\r\n\n",
            b"0\r\nx-a: 1\n\r\n",
        ] {
            assert_eq!(
                chunked_len(bad),
                Err(()),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(chunked_len(b"5 ;a=b\r\nhello\r\n0\r\n\r\n"), Ok((20, true)));
        let long_ext = [&b"1;"[..], &[b'x'; 5000], b"\r\n"].concat();
        assert_eq!(chunked_len(&long_ext), Err(()));
        // Byte by byte gives the same result.
        let mut c = Chunked::default();
        let mut used = 0;
        for b in body.iter() {
            used += c.feed(std::slice::from_ref(b)).unwrap();
        }
        assert!(c.done());
        assert_eq!(used, body.len() - 4);
    }
}

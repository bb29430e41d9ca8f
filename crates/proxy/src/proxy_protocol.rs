//! The PROXY protocol header that a layer 4 load balancer in front of
//! Portico (an AWS NLB, HAProxy, ...) sends first on each TCP connection.
//!
//! Behind such a balancer every connection's peer address is the
//! balancer's, so `X-Forwarded-For`, the access log and `ip_hash` would all
//! see it instead of the client. With `http_proxy_protocol` or
//! `https_proxy_protocol` set, a listener reads this header before anything
//! else (before the HTTP request, before the TLS ClientHello) and takes the
//! client's address from it.
//!
//! Follows HAProxy's specification, versions 1 and 2
//! (<https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>):
//! - v1 is one text line, `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n`
//!   or `PROXY UNKNOWN ...\r\n`, of at most 107 bytes with its CRLF.
//! - v2 is binary: a 12-byte signature, a version/command byte, a
//!   family/transport byte, a big-endian length, then that many bytes of
//!   addresses followed by TLVs (which are skipped here).
//!
//! v1 `UNKNOWN`, v2 `LOCAL` (the balancer's own health checks) and the v2
//! `AF_UNSPEC` family carry no client address: the connection's peer
//! address is the one to use. Only TCP over IPv4 or IPv6 is accepted
//! otherwise; anything else fails the connection, since a header that is
//! not understood cannot be told apart from a client forging one.
//!
//! The header is read exactly, never a byte past it: what follows belongs
//! to HTTP or TLS, which take the stream as it is left. The rules live once,
//! in [`parse`]; [`read_header`] only decides how much it may read next
//! without overshooting and asks [`parse`] about what it has.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// The spec's bound on a v1 line, CRLF included: `PROXY UNKNOWN` followed
/// by two full-length IPv6 addresses and two 5-digit ports.
const V1_MAX_LINE: usize = 107;
/// `PROXY UNKNOWN\r\n`, the shortest valid v1 line.
const V1_MIN_LINE: usize = 15;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/transport, length.
const V2_FIXED: usize = 16;
/// Largest v2 address-and-TLV block accepted. The spec allows 65535 bytes,
/// but real senders put at most a few hundred there (addresses plus TLVs
/// such as AWS's VPC endpoint ID), and a bound keeps an unauthenticated
/// peer from making each connection hold 64 KiB.
pub(crate) const V2_MAX_LEN: usize = 4096;

/// What the header says about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Header {
    /// The connection was relayed for `source` (the client), which
    /// connected to `destination` (the balancer's listening address).
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// v1 `UNKNOWN`, v2 `LOCAL` (health checks) or v2 `AF_UNSPEC`: no client
    /// address is given; use the connection's peer address.
    Local,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("not a PROXY protocol header")]
    NotProxyProtocol,
    #[error("PROXY protocol v1 line longer than {V1_MAX_LINE} bytes")]
    V1TooLong,
    #[error("malformed PROXY protocol v1 line: {0}")]
    V1Malformed(&'static str),
    #[error("PROXY protocol v2 header has version {0}, not 2")]
    V2Version(u8),
    #[error("PROXY protocol v2 header has command {0}, neither LOCAL (0) nor PROXY (1)")]
    V2Command(u8),
    #[error(
        "PROXY protocol v2 header announces {0} bytes of addresses and TLVs, more than the {V2_MAX_LEN} accepted"
    )]
    V2TooLong(usize),
    #[error(
        "PROXY protocol v2 address block of {len} bytes is too short for {family}, which needs {need}"
    )]
    V2AddressesTooShort {
        family: &'static str,
        len: usize,
        need: usize,
    },
    #[error("unsupported address family in PROXY protocol header: {0}")]
    Unsupported(&'static str),
    #[error("connection closed after {0} bytes of a PROXY protocol header")]
    Truncated(usize),
    #[error("timed out waiting for the PROXY protocol header")]
    TimedOut,
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads exactly the header from `stream` (never a byte more: what follows
/// belongs to HTTP or TLS), within `timeout`.
///
/// Reads in pieces no longer than the shortest header the bytes so far
/// could still turn out to be, so it never needs to peek or put bytes back,
/// and works on any stream.
pub(crate) async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<Header, Error> {
    tokio::time::timeout(timeout, read_exactly(stream))
        .await
        .map_err(|_| Error::TimedOut)?
}

async fn read_exactly<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Header, Error> {
    let mut buf = Vec::with_capacity(V1_MAX_LINE);
    loop {
        if let Some((header, consumed)) = parse(&buf)? {
            debug_assert_eq!(consumed, buf.len(), "read past the header");
            return Ok(header);
        }
        let filled = buf.len();
        buf.resize(filled + safe_to_read(&buf), 0);
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(Error::Truncated(filled));
        }
        buf.truncate(filled + n);
    }
}

/// How many bytes may be read after `buf`, which [`parse`] found to be an
/// incomplete header, without reading into what follows the header.
fn safe_to_read(buf: &[u8]) -> usize {
    match buf.first() {
        // Both versions are at least this long (v2: its fixed part).
        None => V1_MIN_LINE,
        Some(b'\r') if buf.len() < V2_FIXED => V2_FIXED - buf.len(),
        Some(b'\r') => {
            let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
            V2_FIXED + len - buf.len()
        }
        Some(_) if buf.len() < V1_MIN_LINE => V1_MIN_LINE - buf.len(),
        // The CRLF can end one byte on at the earliest if the line so far
        // ends with CR, two bytes on otherwise.
        Some(_) if buf.ends_with(b"\r") => 1,
        Some(_) => 2,
    }
}

/// Parses the header at the start of `buf`: `Ok(None)` while `buf` is a
/// valid but incomplete beginning of one, `Ok(Some((header, consumed)))`
/// once it is complete, `consumed` being the header's length (the bytes
/// after it are not looked at). Errors as soon as `buf` cannot begin a
/// valid header.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, Error> {
    let starts_like = |signature: &[u8]| {
        let n = buf.len().min(signature.len());
        buf[..n] == signature[..n]
    };
    // The two signatures differ in their first byte, so one byte decides;
    // until then (an empty buffer) both are possible.
    if starts_like(V1_PREFIX) {
        if buf.len() < V1_PREFIX.len() {
            return Ok(None);
        }
        parse_v1(buf)
    } else if starts_like(V2_SIGNATURE) {
        if buf.len() < V2_FIXED {
            return Ok(None);
        }
        parse_v2(buf)
    } else {
        Err(Error::NotProxyProtocol)
    }
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, Error> {
    let window = &buf[..buf.len().min(V1_MAX_LINE)];
    let end = match window.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(i) if window[i] == b'\n' => {
            return Err(Error::V1Malformed("line ends with LF, not CRLF"))
        }
        Some(i) => match window.get(i + 1) {
            Some(b'\n') => i,
            Some(_) => return Err(Error::V1Malformed("CR not followed by LF")),
            // The LF would be byte 108.
            None if window.len() == V1_MAX_LINE => return Err(Error::V1TooLong),
            None => return Ok(None),
        },
        None if window.len() == V1_MAX_LINE => return Err(Error::V1TooLong),
        None => return Ok(None),
    };
    let header = parse_v1_fields(&buf[V1_PREFIX.len()..end])?;
    Ok(Some((header, end + 2)))
}

/// `line` is what comes between `PROXY ` and the CRLF.
fn parse_v1_fields(line: &[u8]) -> Result<Header, Error> {
    let mut fields = line.split(|&b| b == b' ');
    let v6 = match fields.next().unwrap_or_default() {
        // The spec has the receiver ignore whatever follows UNKNOWN.
        b"UNKNOWN" => return Ok(Header::Local),
        b"TCP4" => false,
        b"TCP6" => true,
        b"" => return Err(Error::V1Malformed("fields not separated by single spaces")),
        _ => return Err(Error::V1Malformed("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(Error::V1Malformed(
            "expected 4 fields after the protocol: source, destination, source port, destination port",
        ));
    };
    if [src, dst, sport, dport].iter().any(|f| f.is_empty()) {
        return Err(Error::V1Malformed("fields not separated by single spaces"));
    }
    let (src, dst) = if v6 {
        (
            v1_ipv6(src).ok_or(Error::V1Malformed("TCP6 source is not an IPv6 address"))?,
            v1_ipv6(dst).ok_or(Error::V1Malformed(
                "TCP6 destination is not an IPv6 address",
            ))?,
        )
    } else {
        (
            v1_ipv4(src).ok_or(Error::V1Malformed("TCP4 source is not an IPv4 address"))?,
            v1_ipv4(dst).ok_or(Error::V1Malformed(
                "TCP4 destination is not an IPv4 address",
            ))?,
        )
    };
    let sport = v1_port(sport).ok_or(Error::V1Malformed(
        "source port is not a decimal number from 0 to 65535",
    ))?;
    let dport = v1_port(dport).ok_or(Error::V1Malformed(
        "destination port is not a decimal number from 0 to 65535",
    ))?;
    Ok(Header::Proxied {
        source: SocketAddr::new(src, sport),
        destination: SocketAddr::new(dst, dport),
    })
}

/// std's parser already refuses what the spec refuses: leading zeros
/// (octal look-alikes), fewer than four parts.
fn v1_ipv4(field: &[u8]) -> Option<IpAddr> {
    let addr: Ipv4Addr = std::str::from_utf8(field).ok()?.parse().ok()?;
    Some(IpAddr::V4(addr))
}

fn v1_ipv6(field: &[u8]) -> Option<IpAddr> {
    let addr: Ipv6Addr = std::str::from_utf8(field).ok()?.parse().ok()?;
    Some(IpAddr::V6(addr))
}

/// Digits only: `u16::from_str` would also take a leading `+`.
fn v1_port(field: &[u8]) -> Option<u16> {
    if field.is_empty() || field.len() > 5 || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = field
        .iter()
        .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    u16::try_from(value).ok()
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Header, usize)>, Error> {
    let version = buf[12] >> 4;
    let command = buf[12] & 0x0f;
    let family = buf[13];
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if version != 2 {
        return Err(Error::V2Version(version));
    }
    if command > 1 {
        return Err(Error::V2Command(command));
    }
    // Checked before waiting for the block, so an oversized one is refused
    // without being read.
    if len > V2_MAX_LEN {
        return Err(Error::V2TooLong(len));
    }
    let consumed = V2_FIXED + len;
    let Some(block) = buf.get(V2_FIXED..consumed) else {
        return Ok(None);
    };
    // LOCAL: the spec has the receiver ignore the family and the block.
    if command == 0 {
        return Ok(Some((Header::Local, consumed)));
    }
    let header = match family {
        0x00..=0x0f => Header::Local,
        0x11 => v2_proxied::<4>(block, "AF_INET")?,
        0x21 => v2_proxied::<16>(block, "AF_INET6")?,
        0x12 | 0x22 => return Err(Error::Unsupported("UDP (DGRAM); only TCP is proxied")),
        0x10 | 0x20 => return Err(Error::Unsupported("AF_INET/AF_INET6 with no transport")),
        0x30..=0x3f => return Err(Error::Unsupported("AF_UNIX")),
        _ => return Err(Error::Unsupported("unknown family or transport")),
    };
    // Any TLVs follow the addresses inside `len`, and are skipped with it.
    Ok(Some((header, consumed)))
}

/// The block starts with the source address, the destination address (`N`
/// bytes each), the source port and the destination port.
fn v2_proxied<const N: usize>(block: &[u8], family: &'static str) -> Result<Header, Error>
where
    IpAddr: From<[u8; N]>,
{
    let need = 2 * N + 4;
    let Some(addresses) = block.get(..need) else {
        return Err(Error::V2AddressesTooShort {
            family,
            len: block.len(),
            need,
        });
    };
    let ip = |at: usize| {
        let mut octets = [0; N];
        octets.copy_from_slice(&addresses[at..at + N]);
        IpAddr::from(octets)
    };
    let port = |at: usize| u16::from_be_bytes([addresses[at], addresses[at + 1]]);
    Ok(Header::Proxied {
        source: SocketAddr::new(ip(0), port(2 * N)),
        destination: SocketAddr::new(ip(N), port(2 * N + 2)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn proxied(source: &str, destination: &str) -> Header {
        Header::Proxied {
            source: addr(source),
            destination: addr(destination),
        }
    }

    /// A v2 header: `ver_cmd`, `family`, then `block` (addresses and TLVs).
    fn v2(ver_cmd: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(ver_cmd);
        h.push(family);
        h.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
        h.extend_from_slice(block);
        h
    }

    fn v2_ipv4_block() -> Vec<u8> {
        let mut b = vec![192, 0, 2, 1, 10, 0, 0, 5];
        b.extend_from_slice(&51234u16.to_be_bytes());
        b.extend_from_slice(&443u16.to_be_bytes());
        b
    }

    fn v2_ipv6_block() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&"2001:db8::ff:2".parse::<Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&65535u16.to_be_bytes());
        b.extend_from_slice(&80u16.to_be_bytes());
        b
    }

    /// Asserts `header` parses whole to `expected`, and that every shorter
    /// prefix of it is reported as incomplete rather than an error.
    fn assert_parses(header: &[u8], expected: Header) {
        for n in 0..header.len() {
            assert!(
                matches!(parse(&header[..n]), Ok(None)),
                "prefix of {n} bytes of {header:?}: {:?}",
                parse(&header[..n])
            );
        }
        let mut with_request = header.to_vec();
        with_request.extend_from_slice(REQUEST);
        for buf in [header, &with_request[..]] {
            let (parsed, consumed) = parse(buf).unwrap().unwrap();
            assert_eq!(parsed, expected);
            assert_eq!(consumed, header.len());
        }
    }

    fn parse_err(buf: &[u8]) -> Error {
        match parse(buf) {
            Err(e) => e,
            Ok(r) => panic!("{:?} parsed: {r:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn v1_tcp4() {
        assert_parses(
            b"PROXY TCP4 192.0.2.1 10.0.0.5 51234 443\r\n",
            proxied("192.0.2.1:51234", "10.0.0.5:443"),
        );
        assert_parses(
            b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
            proxied("0.0.0.0:0", "255.255.255.255:65535"),
        );
    }

    #[test]
    fn v1_tcp6() {
        assert_parses(
            b"PROXY TCP6 2001:db8::1 ::1 65535 80\r\n",
            proxied("[2001:db8::1]:65535", "[::1]:80"),
        );
    }

    #[test]
    fn v1_longest_lines_are_accepted() {
        let addr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let line = format!("PROXY TCP6 {addr} {addr} 65535 65535\r\n");
        let expected = format!("[{addr}]:65535");
        assert_parses(line.as_bytes(), proxied(&expected, &expected));
        let line = format!("PROXY UNKNOWN {addr} {addr} 65535 65535\r\n");
        assert_eq!(line.len(), V1_MAX_LINE);
        assert_parses(line.as_bytes(), Header::Local);
    }

    #[test]
    fn v1_unknown_is_local() {
        assert_parses(b"PROXY UNKNOWN\r\n", Header::Local);
        assert_parses(
            b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
            Header::Local,
        );
    }

    #[test]
    fn v2_proxy_ipv4() {
        assert_parses(
            &v2(0x21, 0x11, &v2_ipv4_block()),
            proxied("192.0.2.1:51234", "10.0.0.5:443"),
        );
    }

    #[test]
    fn v2_proxy_ipv6() {
        assert_parses(
            &v2(0x21, 0x21, &v2_ipv6_block()),
            proxied("[2001:db8::1]:65535", "[2001:db8::ff:2]:80"),
        );
    }

    #[test]
    fn v2_local_and_unspec_are_local() {
        assert_parses(&v2(0x20, 0x00, &[]), Header::Local);
        // LOCAL ignores the family and the block, whatever they hold.
        assert_parses(&v2(0x20, 0x11, &v2_ipv4_block()), Header::Local);
        assert_parses(&v2(0x20, 0x31, &[0; 216]), Header::Local);
        assert_parses(&v2(0x21, 0x00, &[]), Header::Local);
    }

    #[test]
    fn v2_tlvs_are_skipped() {
        let mut block = v2_ipv4_block();
        // PP2_TYPE_AWS (0xEA) with a VPC endpoint ID, then PP2_TYPE_NOOP.
        let vpce = b"\x01vpce-08d2bf15fac5001c9";
        block.push(0xea);
        block.extend_from_slice(&u16::try_from(vpce.len()).unwrap().to_be_bytes());
        block.extend_from_slice(vpce);
        block.extend_from_slice(&[0x04, 0x00, 0x03, 0, 0, 0]);
        assert_parses(
            &v2(0x21, 0x11, &block),
            proxied("192.0.2.1:51234", "10.0.0.5:443"),
        );
        let mut block = v2_ipv6_block();
        block.extend_from_slice(&[0x04, 0x00, 0x01, 0]);
        assert_parses(
            &v2(0x21, 0x21, &block),
            proxied("[2001:db8::1]:65535", "[2001:db8::ff:2]:80"),
        );
    }

    #[test]
    fn garbage_is_not_a_header() {
        for buf in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01\x02\x00",
            b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY\tTCP4",
            b"PROXYTCP4",
            b"\r\n\r\n\0\r\nQUIT\r",
            b"\r\n\r\n\0\r\nquit\n",
            b"\n",
            b"\0",
        ] {
            assert!(matches!(parse_err(buf), Error::NotProxyProtocol), "{buf:?}");
        }
    }

    #[test]
    fn v1_overlong_line() {
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(V1_MAX_LINE, b'x');
        assert!(matches!(parse_err(&line), Error::V1TooLong));
        // A CRLF that would end at byte 108 is too late as well.
        line.truncate(V1_MAX_LINE - 1);
        line.extend_from_slice(b"\r\n");
        assert!(matches!(parse_err(&line), Error::V1TooLong));
        // ... while one ending at byte 107 is on time.
        line.truncate(V1_MAX_LINE - 2);
        line.extend_from_slice(b"\r\n");
        assert_eq!(parse(&line).unwrap(), Some((Header::Local, V1_MAX_LINE)));
    }

    #[test]
    fn v1_bad_ports() {
        for port in ["65536", "+80", "-1", "8a", "123456", "0x50", "99999", " 80"] {
            let line = format!("PROXY TCP4 192.0.2.1 10.0.0.5 {port} 443\r\n");
            assert!(
                matches!(parse_err(line.as_bytes()), Error::V1Malformed(_)),
                "{line:?}"
            );
            let line = format!("PROXY TCP4 192.0.2.1 10.0.0.5 443 {port}\r\n");
            assert!(
                matches!(parse_err(line.as_bytes()), Error::V1Malformed(_)),
                "{line:?}"
            );
        }
    }

    #[test]
    fn v1_wrong_family_and_malformed_lines() {
        for line in [
            &b"PROXY TCP4 2001:db8::1 10.0.0.5 1 2\r\n"[..],
            b"PROXY TCP4 192.0.2.1 ::1 1 2\r\n",
            b"PROXY TCP6 192.0.2.1 ::1 1 2\r\n",
            b"PROXY TCP6 ::1 10.0.0.5 1 2\r\n",
            b"PROXY TCP4 192.0.2.01 10.0.0.5 1 2\r\n",
            b"PROXY TCP4 192.0.2 10.0.0.5 1 2\r\n",
            b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
            b"PROXY UDP4 192.0.2.1 10.0.0.5 1 2\r\n",
            b"PROXY TCP4 192.0.2.1  10.0.0.5 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 10.0.0.5 1 2 \r\n",
            b"PROXY  TCP4 192.0.2.1 10.0.0.5 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 10.0.0.5 1\r\n",
            b"PROXY TCP4 192.0.2.1 10.0.0.5 1 2 3\r\n",
            b"PROXY TCP4\r\n",
            b"PROXY \r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY TCP4 192.0.2.1 10.0.0.5 1 2\n",
            b"PROXY TCP4 192.0.2.1 10.0.0.5 1 2\rX",
        ] {
            assert!(
                matches!(parse_err(line), Error::V1Malformed(_)),
                "{:?}: {}",
                String::from_utf8_lossy(line),
                parse_err(line)
            );
        }
    }

    #[test]
    fn v2_bad_version_command_family_and_length() {
        let block = v2_ipv4_block();
        for ver_cmd in [0x11, 0x31, 0x01, 0xf1] {
            assert!(matches!(
                parse_err(&v2(ver_cmd, 0x11, &block)),
                Error::V2Version(v) if v == ver_cmd >> 4
            ));
        }
        // Refused on the fixed part alone.
        assert!(matches!(
            parse_err(&v2(0x11, 0x11, &block)[..V2_FIXED]),
            Error::V2Version(1)
        ));
        assert!(matches!(
            parse_err(&v2(0x22, 0x11, &block)),
            Error::V2Command(2)
        ));
        for family in [0x31, 0x32, 0x12, 0x22, 0x10, 0x20, 0x13, 0x41, 0xff] {
            assert!(matches!(
                parse_err(&v2(0x21, family, &[0; 216])),
                Error::Unsupported(_)
            ));
        }
        assert!(matches!(
            parse_err(&v2(0x21, 0x11, &block[..11])),
            Error::V2AddressesTooShort { need: 12, .. }
        ));
        assert!(matches!(
            parse_err(&v2(0x21, 0x21, &block)),
            Error::V2AddressesTooShort { need: 36, .. }
        ));
        let big = v2(0x21, 0x11, &[0; V2_MAX_LEN + 1]);
        assert!(matches!(
            parse_err(&big[..V2_FIXED]),
            Error::V2TooLong(n) if n == V2_MAX_LEN + 1
        ));
        assert!(parse(&v2(0x21, 0x11, &[0; V2_MAX_LEN])).unwrap().is_some());
    }

    #[test]
    fn mutated_headers_never_panic_or_overrun() {
        let mut tlvs = v2_ipv6_block();
        tlvs.extend_from_slice(&[0x04, 0x00, 0x01, 0]);
        let headers = [
            b"PROXY TCP4 192.0.2.1 10.0.0.5 51234 443\r\n".to_vec(),
            b"PROXY TCP6 2001:db8::1 ::1 65535 80\r\n".to_vec(),
            v2(0x21, 0x11, &v2_ipv4_block()),
            v2(0x21, 0x21, &tlvs),
        ];
        for header in headers {
            for at in 0..header.len() {
                for byte in [0, 1, b' ', b'\r', b'\n', b'0', b':', 0x7f, 0xff] {
                    let mut buf = header.clone();
                    buf[at] = byte;
                    for n in 0..=buf.len() {
                        if let Ok(Some((_, consumed))) = parse(&buf[..n]) {
                            assert!(consumed <= n);
                        }
                    }
                }
            }
        }
    }

    /// Writes `header` then `REQUEST` to a duplex stream at once, and checks
    /// `read_header` returns `expected` and leaves `REQUEST` unread.
    async fn read_then_request(header: &[u8], expected: Header) {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(&[header, REQUEST].concat()).await.unwrap();
        drop(client);
        let got = read_header(&mut server, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got, expected);
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, REQUEST);
    }

    #[tokio::test]
    async fn read_header_leaves_what_follows_unread() {
        read_then_request(
            b"PROXY TCP4 192.0.2.1 10.0.0.5 51234 443\r\n",
            proxied("192.0.2.1:51234", "10.0.0.5:443"),
        )
        .await;
        read_then_request(b"PROXY UNKNOWN\r\n", Header::Local).await;
        read_then_request(
            b"PROXY TCP6 2001:db8::1 ::1 65535 80\r\n",
            proxied("[2001:db8::1]:65535", "[::1]:80"),
        )
        .await;
        let mut block = v2_ipv4_block();
        block.extend_from_slice(&[0x04, 0x00, 0x02, 0, 0]);
        read_then_request(
            &v2(0x21, 0x11, &block),
            proxied("192.0.2.1:51234", "10.0.0.5:443"),
        )
        .await;
        read_then_request(&v2(0x20, 0x00, &[]), Header::Local).await;
    }

    #[tokio::test]
    async fn read_header_byte_by_byte() {
        let header = b"PROXY TCP6 2001:db8::1 ::1 65535 80\r\n";
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for &b in header.iter().chain(REQUEST) {
                client.write_all(&[b]).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let got = read_header(&mut server, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got, proxied("[2001:db8::1]:65535", "[::1]:80"));
        writer.await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, REQUEST);
    }

    #[tokio::test]
    async fn read_header_errors() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(REQUEST).await.unwrap();
        let err = read_header(&mut server, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotProxyProtocol), "{err}");

        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"PROXY TCP4 192.0.2.1").await.unwrap();
        drop(client);
        let err = read_header(&mut server, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Truncated(20)), "{err}");

        let (mut client, mut server) = tokio::io::duplex(1024);
        client
            .write_all(&v2(0x21, 0x11, &v2_ipv4_block())[..20])
            .await
            .unwrap();
        drop(client);
        let err = read_header(&mut server, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Truncated(20)), "{err}");

        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(200, b'x');
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(&line).await.unwrap();
        let err = read_header(&mut server, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::V1TooLong), "{err}");
    }

    // Would rather run on paused time (`start_paused = true`), but that
    // needs tokio's `test-util` feature, which the crate does not enable;
    // the timeout is short enough that the real wait does not matter.
    #[tokio::test]
    async fn read_header_times_out() {
        let (client, mut server) = tokio::io::duplex(1024);
        let err = read_header(&mut server, Duration::from_millis(10))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::TimedOut), "{err}");
        assert_eq!(
            err.to_string(),
            "timed out waiting for the PROXY protocol header"
        );

        // A header begun and never finished times out the same way.
        let (mut client2, mut server) = tokio::io::duplex(1024);
        client2.write_all(b"PROXY TCP4 ").await.unwrap();
        let err = read_header(&mut server, Duration::from_millis(10))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::TimedOut), "{err}");
        drop((client, client2));
    }
}

//! A paced HTTP/1.1 client for `bench/bench.py`'s many-connections scenario:
//! N keep-alive connections, opened evenly over a ramp, each sending one GET
//! every interval (a second) and waiting for its answer, a fixed number of
//! times; then a per-request log and a summary.
//!
//! wrk cannot pace, and h2load (`--rps`) cannot either at this scale: every
//! connection goes from 127.0.0.1 to the same address and port, and once the
//! kernel's even ephemeral ports for that pair run out (about 14,000 of the
//! default range) each `connect` scans them all. This client binds each
//! connection to one of `--sources` loopback addresses (127.0.0.2, ...), so
//! each address holds a few hundred of them.
//!
//! ```text
//! bench-paced --connect 127.0.0.1:18380 --host foo.app.test --path /100.bin \
//!     --connections 18000 --requests 7 [--interval-ms 1000] [--ramp-ms 1000] \
//!     [--sources 64] [--timeout-ms 5000] [--grace-ms 2000] [--threads 1] [--log FILE]
//! ```
//!
//! The log (`--log`) has one line per request, as h2load's `--log-file`:
//! start time in microseconds since the epoch, status (-1: no answer) and
//! microseconds until the end of the answer, tab-separated. The summary on
//! stdout ends with `requests: T total, S sent, K ok, E errors`. Bounded in
//! time: a connection that fails or times out stops there, and nothing is
//! sent or waited for past the deadline (`--grace-ms`, 2 s by default, after
//! the last request is due): what is left counts as errors.
#![forbid(unsafe_code)]

use std::io::{Error, ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{sleep_until, timeout, Instant};

struct Args {
    connect: SocketAddr,
    host: String,
    path: String,
    connections: usize,
    requests: usize,
    interval: Duration,
    ramp: Duration,
    sources: usize,
    timeout: Duration,
    grace: Duration,
    threads: usize,
    log: Option<String>,
}

const USAGE: &str = "usage: bench-paced --connect IP:PORT --host HOST --path PATH --connections N \
--requests R [--interval-ms 1000] [--ramp-ms 1000] [--sources 64] [--timeout-ms 5000] [--grace-ms 2000] \
[--threads 1] [--log FILE]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        connect: SocketAddr::from(([127, 0, 0, 1], 80)),
        host: String::new(),
        path: "/".into(),
        connections: 0,
        requests: 0,
        interval: Duration::from_secs(1),
        ramp: Duration::from_secs(1),
        sources: 64,
        timeout: Duration::from_secs(5),
        grace: Duration::from_secs(2),
        threads: 1,
        log: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        let millis = |v: &str| v.parse::<u64>().map(Duration::from_millis);
        match flag.as_str() {
            "--connect" => args.connect = value.parse().map_err(|e| bad(&e))?,
            "--host" => args.host = value,
            "--path" => args.path = value,
            "--connections" => args.connections = value.parse().map_err(|e| bad(&e))?,
            "--requests" => args.requests = value.parse().map_err(|e| bad(&e))?,
            "--interval-ms" => args.interval = millis(&value).map_err(|e| bad(&e))?,
            "--ramp-ms" => args.ramp = millis(&value).map_err(|e| bad(&e))?,
            "--sources" => args.sources = value.parse().map_err(|e| bad(&e))?,
            "--timeout-ms" => args.timeout = millis(&value).map_err(|e| bad(&e))?,
            "--grace-ms" => args.grace = millis(&value).map_err(|e| bad(&e))?,
            "--threads" => args.threads = value.parse().map_err(|e| bad(&e))?,
            "--log" => args.log = Some(value),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if args.host.is_empty() || args.connections == 0 || args.requests == 0 {
        return Err("--host, --connections and --requests are required".into());
    }
    if !(1..=250).contains(&args.sources) || args.threads == 0 {
        return Err("--sources must be 1 to 250 and --threads at least 1".into());
    }
    Ok(args)
}

/// What one connection saw.
#[derive(Default)]
struct Tally {
    connect_failed: u64,
    sent: u64,
    ok: u64,
    bad_status: u64,
    io_errors: u64,
    timeouts: u64,
    /// (start, µs since the epoch; status or -1; µs to the end of the answer)
    log: Vec<(u64, i32, u64)>,
}

impl Tally {
    fn add(&mut self, t: Tally) {
        self.connect_failed += t.connect_failed;
        self.sent += t.sent;
        self.ok += t.ok;
        self.bad_status += t.bad_status;
        self.io_errors += t.io_errors;
        self.timeouts += t.timeouts;
        self.log.extend(t.log);
    }
}

fn epoch_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

async fn open(args: &Args, i: usize) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    // Ports held in TIME_WAIT by an earlier run from this address are reused.
    socket.set_reuseaddr(true)?;
    let source = Ipv4Addr::new(127, 0, 0, 2 + (i % args.sources) as u8);
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let stream = socket.connect(args.connect).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The end of a chunked body starting at `buf[from..]`, once all of it is
/// in `buf`.
fn chunked_end(buf: &[u8], mut from: usize) -> Result<Option<usize>, Error> {
    loop {
        let Some(line) = find(&buf[from..], b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&buf[from..from + line])
            .map_err(|_| Error::new(ErrorKind::InvalidData, "bad chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| Error::new(ErrorKind::InvalidData, "bad chunk size"))?;
        from += line + 2;
        if size == 0 {
            // Trailers, if any, then an empty line.
            return Ok(find(&buf[from..], b"\r\n").and_then(|_| {
                if buf[from..].starts_with(b"\r\n") {
                    Some(from + 2)
                } else {
                    find(&buf[from..], b"\r\n\r\n").map(|e| from + e + 4)
                }
            }));
        }
        if buf.len() < from + size + 2 {
            return Ok(None);
        }
        from += size + 2;
    }
}

/// One request and its whole answer; the answer's status.
async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> std::io::Result<i32> {
    stream.write_all(request).await?;
    buf.clear();
    let head_end = loop {
        if let Some(e) = find(buf, b"\r\n\r\n") {
            break e + 4;
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: i32 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::new(ErrorKind::InvalidData, "no status"))?;
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        loop {
            if chunked_end(buf, head_end)?.is_some() {
                return Ok(status);
            }
            if stream.read_buf(buf).await? == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
        }
    }
    let length: usize = match header("content-length:") {
        Some(v) => v
            .parse()
            .map_err(|_| Error::new(ErrorKind::InvalidData, "bad content-length"))?,
        None => 0,
    };
    while buf.len() < head_end + length {
        if stream.read_buf(buf).await? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(status)
}

/// How long to wait for something: `--timeout-ms`, or less near the deadline.
fn limit(args: &Args, deadline: Instant) -> Duration {
    args.timeout
        .min(deadline.saturating_duration_since(Instant::now()))
}

async fn connection(args: Arc<Args>, i: usize, start: Instant) -> Tally {
    let mut tally = Tally::default();
    let offset = args.ramp.mul_f64(i as f64 / args.connections as f64);
    let deadline = start + args.ramp + args.interval * (args.requests as u32 - 1) + args.grace;
    sleep_until(start + offset).await;
    let mut stream = match timeout(limit(&args, deadline), open(&args, i)).await {
        Ok(Ok(s)) => s,
        _ => {
            tally.connect_failed = 1;
            return tally;
        }
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: bench-paced\r\n\r\n",
        args.path, args.host
    );
    let mut buf = Vec::with_capacity(4096);
    for k in 0..args.requests {
        // On schedule; right away when the answer before came late.
        let due = start + offset + args.interval * k as u32;
        if due >= deadline || Instant::now() >= deadline {
            break;
        }
        sleep_until(due).await;
        let (wall, t0) = (epoch_us(), Instant::now());
        tally.sent += 1;
        let outcome = timeout(
            limit(&args, deadline),
            exchange(&mut stream, request.as_bytes(), &mut buf),
        )
        .await;
        let took = t0.elapsed().as_micros() as u64;
        match outcome {
            Ok(Ok(status)) => {
                tally.log.push((wall, status, took));
                if (200..400).contains(&status) {
                    tally.ok += 1;
                } else {
                    tally.bad_status += 1;
                }
            }
            Ok(Err(_)) => {
                tally.log.push((wall, -1, took));
                tally.io_errors += 1;
                break;
            }
            Err(_) => {
                tally.log.push((wall, -1, took));
                tally.timeouts += 1;
                break;
            }
        }
    }
    tally
}

async fn run(args: Arc<Args>) -> Tally {
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.connections {
        tasks.spawn(connection(args.clone(), i, start));
    }
    let mut all = Tally::default();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(t) => all.add(t),
            Err(_) => all.io_errors += 1,
        }
    }
    all
}

fn main() {
    let args = match parse_args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("bench-paced: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let runtime = runtime.unwrap_or_else(|e| {
        eprintln!("bench-paced: {e}");
        std::process::exit(1);
    });
    let began = std::time::Instant::now();
    let mut tally = runtime.block_on(run(args.clone()));
    let elapsed = began.elapsed();
    if let Some(path) = &args.log {
        tally.log.sort_unstable_by_key(|r| r.0);
        let written = std::fs::File::create(path).and_then(|f| {
            let mut w = std::io::BufWriter::new(f);
            for (start, status, took) in &tally.log {
                writeln!(w, "{start}\t{status}\t{took}")?;
            }
            w.flush()
        });
        if let Err(e) = written {
            eprintln!("bench-paced: {path}: {e}");
            std::process::exit(1);
        }
    }
    let mut lat: Vec<u64> = tally.log.iter().filter(|r| r.1 > 0).map(|r| r.2).collect();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let total = (args.connections * args.requests) as u64;
    let errors = total - tally.ok;
    println!(
        "connections: {} opened, {} failed to connect",
        args.connections as u64 - tally.connect_failed,
        tally.connect_failed
    );
    println!(
        "answers: {} ok, {} bad status, {} i/o errors, {} timeouts; {} never sent",
        tally.ok,
        tally.bad_status,
        tally.io_errors,
        tally.timeouts,
        total - tally.sent
    );
    let mut statuses = std::collections::BTreeMap::new();
    for r in &tally.log {
        *statuses.entry(r.1).or_insert(0u64) += 1;
    }
    let statuses: Vec<String> = statuses.iter().map(|(s, n)| format!("{s}={n}")).collect();
    println!("statuses: {} (-1: no answer)", statuses.join(" "));
    println!("latency: p50 {} us, p99 {} us", pct(0.5), pct(0.99));
    println!("elapsed: {:.2} s", elapsed.as_secs_f64());
    println!(
        "requests: {total} total, {} sent, {} ok, {errors} errors",
        tally.sent, tally.ok
    );
}

//! The `portico` binary as a child process, for end-to-end tests.
//!
//! Its stdout and stderr are read line by line in the background; tests wait
//! on what it prints (with bounded timeouts) instead of sleeping. The child
//! is killed when the [`Portico`] is dropped, so a failing test leaves no
//! process behind.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

/// The lines one output stream has printed so far.
#[derive(Default)]
struct Stream {
    lines: Mutex<Vec<String>>,
    /// Woken after each new line and at end of stream.
    changed: Notify,
    /// Set at end of stream (the child exited or closed it).
    closed: AtomicBool,
}

impl Stream {
    fn snapshot(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn find(&self, pred: &dyn Fn(&str) -> bool) -> Option<String> {
        self.find_from(0, pred).map(|(_, line)| line)
    }

    /// The first line at or after index `start` satisfying `pred`, with its index.
    fn find_from(&self, start: usize, pred: &dyn Fn(&str) -> bool) -> Option<(usize, String)> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .enumerate()
            .skip(start)
            .find(|(_, l)| pred(l))
            .map(|(i, l)| (i, l.clone()))
    }

    fn len(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    fn count(&self, pred: &dyn Fn(&str) -> bool) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| pred(l))
            .count()
    }

    /// Waits until `done` holds for the lines (checked after every change),
    /// or the stream ends, or `timeout` passes. Returns whether it held.
    async fn wait(&self, timeout: Duration, done: impl Fn(&Self) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            // Register for the wake-up before checking, so a line pushed
            // between the check and the wait is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done(self) {
                return true;
            }
            if self.closed.load(Ordering::SeqCst) {
                return done(self);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, changed).await.is_err() {
                return done(self);
            }
        }
    }

    fn spawn_reader(self: &Arc<Self>, pipe: impl AsyncRead + Unpin + Send + 'static) {
        let stream = self.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        let line = line.trim_end_matches(['\n', '\r']).to_owned();
                        stream.lines.lock().unwrap().push(line);
                        stream.changed.notify_waiters();
                    }
                }
            }
            stream.closed.store(true, Ordering::SeqCst);
            stream.changed.notify_waiters();
        });
    }
}

/// A running `portico` child process.
pub struct Portico {
    child: Child,
    pid: u32,
    stdout: Arc<Stream>,
    stderr: Arc<Stream>,
}

impl Portico {
    /// Starts `binary` with `args` (stdin empty, stdout and stderr captured).
    /// Must be called inside a Tokio runtime: the output readers are tasks.
    /// `PORTICO_LOG` is cleared so the log level is the default, info,
    /// whatever the environment running the tests says.
    pub fn spawn(binary: &Path, args: &[&str]) -> Portico {
        Portico::spawn_with_env(binary, args, &[])
    }

    /// Like [`Portico::spawn`], with extra environment variables (such as
    /// `PORTICO_LOG=info,portico_discovery=debug`).
    pub fn spawn_with_env(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> Portico {
        let mut child = Command::new(binary)
            .args(args)
            .env_remove("PORTICO_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let pid = child.id().expect("a child that was just spawned has a pid");
        let stdout = Arc::new(Stream::default());
        let stderr = Arc::new(Stream::default());
        stdout.spawn_reader(child.stdout.take().expect("stdout is piped"));
        stderr.spawn_reader(child.stderr.take().expect("stderr is piped"));
        Portico {
            child,
            pid,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Every stderr line so far (the log).
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.snapshot()
    }

    /// Every stdout line so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.snapshot()
    }

    /// How many stderr lines so far satisfy `pred`.
    pub fn count_lines(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.stderr.count(&pred)
    }

    /// Waits for a stderr line satisfying `pred` (one already printed counts)
    /// and returns it; panics with the log if none comes within `timeout`
    /// or the process closes stderr first.
    pub async fn wait_for_line(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        if self.stderr.wait(timeout, |s| s.find(&pred).is_some()).await {
            return self.stderr.find(&pred).expect("found above");
        }
        panic!(
            "no matching stderr line within {timeout:?} (stderr closed: {})\n{}",
            self.stderr.closed.load(Ordering::SeqCst),
            self.dump()
        );
    }

    /// How many stderr lines have been read so far: a mark for
    /// [`Portico::wait_for_line_from`].
    pub fn stderr_len(&self) -> usize {
        self.stderr.len()
    }

    /// Waits for a stderr line satisfying `pred` at or after index `start`
    /// (0-based, as in [`Portico::stderr_lines`]); returns its index and text.
    /// Panics with the log if none comes within `timeout`.
    pub async fn wait_for_line_from(
        &self,
        start: usize,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> (usize, String) {
        if self
            .stderr
            .wait(timeout, |s| s.find_from(start, &pred).is_some())
            .await
        {
            return self.stderr.find_from(start, &pred).expect("found above");
        }
        panic!(
            "no matching stderr line from line {start} on within {timeout:?} (stderr closed: {})\n{}",
            self.stderr.closed.load(Ordering::SeqCst),
            self.dump()
        );
    }

    /// Like [`Portico::wait_for_line`], for stdout.
    pub async fn wait_for_stdout_line(
        &self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> String {
        if self.stdout.wait(timeout, |s| s.find(&pred).is_some()).await {
            return self.stdout.find(&pred).expect("found above");
        }
        panic!(
            "no matching stdout line within {timeout:?} (stdout closed: {})\n{}",
            self.stdout.closed.load(Ordering::SeqCst),
            self.dump()
        );
    }

    /// Waits until at least `n` stderr lines satisfy `pred`; returns how many
    /// do then. Panics with the log on timeout.
    pub async fn wait_for_count(
        &self,
        pred: impl Fn(&str) -> bool,
        n: usize,
        timeout: Duration,
    ) -> usize {
        if self.stderr.wait(timeout, |s| s.count(&pred) >= n).await {
            return self.stderr.count(&pred);
        }
        panic!(
            "fewer than {n} matching stderr lines (got {}) within {timeout:?}\n{}",
            self.stderr.count(&pred),
            self.dump()
        );
    }

    /// The address the proxy listens on, from its
    /// `msg="starting server" listen=IP:PORT` line (logfmt or JSON).
    pub async fn listen_addr(&self) -> SocketAddr {
        self.started("starting server").await
    }

    /// The HTTPS listener's address (`msg="starting HTTPS server"`).
    pub async fn https_addr(&self) -> SocketAddr {
        self.started("starting HTTPS server").await
    }

    /// The admin API's address (`msg="starting admin server"`), reached
    /// through loopback when it listens on every address.
    pub async fn admin_addr(&self) -> SocketAddr {
        let addr = self.started("starting admin server").await;
        if addr.ip().is_unspecified() {
            SocketAddr::new([127, 0, 0, 1].into(), addr.port())
        } else {
            addr
        }
    }

    /// The `listen=` of the line whose message is `msg`.
    async fn started(&self, msg: &str) -> SocketAddr {
        let line = self
            .wait_for_line(|l| is_message(l, msg), Duration::from_secs(10))
            .await;
        let value = if line.starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
            v.get("listen").and_then(|l| l.as_str()).map(str::to_owned)
        } else {
            parse_logfmt(&line).remove("listen")
        };
        let value = value.unwrap_or_else(|| panic!("no listen= in {line:?}"));
        value
            .parse()
            .unwrap_or_else(|e| panic!("listen={value:?} in {line:?}: {e}"))
    }

    /// Sends a signal with `kill -s SIG PID`; `sig` is a name such as `TERM`,
    /// `SIGTERM`, `HUP` or `INT`.
    pub fn signal(&self, sig: &str) {
        let name = sig.strip_prefix("SIG").unwrap_or(sig);
        let status = std::process::Command::new("kill")
            .args(["-s", name, &self.pid.to_string()])
            .status()
            .expect("kill must be installed");
        assert!(
            status.success(),
            "kill -s {name} {} failed: {status}",
            self.pid
        );
    }

    /// Waits for the process to exit and for its output to be read to the
    /// end, so the line lists are complete; panics with the log on timeout.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("waiting for pid {}: {e}", self.pid),
            Err(_) => panic!(
                "pid {} did not exit within {timeout:?}\n{}",
                self.pid,
                self.dump()
            ),
        };
        for stream in [&self.stdout, &self.stderr] {
            let left = deadline.saturating_duration_since(Instant::now());
            let closed = stream.wait(left, |s| s.closed.load(Ordering::SeqCst)).await;
            assert!(
                closed,
                "pid {} exited ({status}) but its output did not end within {timeout:?}\n{}",
                self.pid,
                self.dump()
            );
        }
        status
    }

    /// Both streams, for panic messages.
    fn dump(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.snapshot().join("\n"),
            self.stderr.snapshot().join("\n")
        )
    }
}

/// Whether a log line (logfmt or JSON) has the message `msg`.
fn is_message(line: &str, msg: &str) -> bool {
    if line.starts_with('{') {
        serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("msg").and_then(|m| m.as_str()).map(|m| m == msg))
            .unwrap_or(false)
    } else {
        line.contains(&format!("msg=\"{msg}\""))
    }
}

/// Splits a logfmt line (`k=v k="quoted \"v\""`) into its fields; quoted
/// values are unescaped. A key that appears twice keeps its last value.
pub fn parse_logfmt(line: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ' ' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() && chars.peek().is_none() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => match chars.next() {
                            Some('n') => value.push('\n'),
                            Some('t') => value.push('\t'),
                            Some(other) => value.push(other),
                            None => break,
                        },
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ' ' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        if !key.is_empty() {
            out.insert(key, value);
        } else {
            // A stray '=' or quote: skip one character so the loop advances.
            chars.next();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_logfmt;

    #[test]
    fn logfmt_fields_are_split_and_unquoted() {
        let f = parse_logfmt(
            r#"time="2026-01-02T03:04:05Z" level=info msg="update detected" currentVersion= updatedVersion=3edc6f field="service[0] (a).hosts" e="say \"hi\"""#,
        );
        assert_eq!(f["time"], "2026-01-02T03:04:05Z");
        assert_eq!(f["level"], "info");
        assert_eq!(f["msg"], "update detected");
        assert_eq!(f["currentVersion"], "");
        assert_eq!(f["updatedVersion"], "3edc6f");
        assert_eq!(f["field"], "service[0] (a).hosts");
        assert_eq!(f["e"], "say \"hi\"");
    }
}

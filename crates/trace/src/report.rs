//! The trace's result: one row per hop checked (or not), innermost first,
//! and a verdict naming the first failing hop; with a controller, a table
//! of its proxies too (did the request through each work, and does each
//! serve the published version). Rendered as tables a person reads at a
//! glance, or as JSON (the same content) for machines.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::http::Timings;
use crate::options::Target;
use crate::tls::TlsReport;

/// The hops, in the order they are checked: from the service outwards.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Hop {
    /// The active config's route for the host (admin API).
    Route,
    /// Each task, probed by the proxy itself (admin API).
    Upstream,
    /// Each proxy's config version, as the controller sees it: the one
    /// published to its service cluster, behind it, or refusing it.
    Version,
    /// Each proxy node, with the crafted `Host` (and SNI).
    Proxy,
    /// Each external load balancer address.
    Lb,
    /// What the name resolves to.
    Dns,
    /// The request by name, as a client sends it.
    Client,
}

impl Hop {
    pub fn name(self) -> &'static str {
        match self {
            Hop::Route => "route",
            Hop::Upstream => "upstream",
            Hop::Version => "version",
            Hop::Proxy => "proxy",
            Hop::Lb => "lb",
            Hop::Dns => "dns",
            Hop::Client => "client",
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    /// Not checked; `evidence` says why.
    Skip,
}

/// One row: one hop at one address.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HopResult {
    pub hop: Hop,
    /// What was checked: an address, `admin 127.0.0.1:9000`, a DNS server.
    pub target: String,
    pub result: Outcome,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    pub timings: Timings,
    /// What was seen, in words.
    pub evidence: String,
    /// For a failure: the likely cause, in the system's terms.
    pub cause: Option<String>,
    /// For a failure: what to check or change.
    pub remedy: Option<String>,
    /// `x-upstream-addr` of the answer.
    pub upstream_addr: Option<String>,
    /// `x-proxy-id` of the answer.
    pub proxy_id: Option<String>,
    /// The certificate, for HTTPS hops.
    pub tls: Option<TlsReport>,
    /// For the DNS hop: the addresses found.
    pub addresses: Vec<IpAddr>,
}

impl HopResult {
    pub fn new(
        hop: Hop,
        target: impl Into<String>,
        result: Outcome,
        evidence: impl Into<String>,
    ) -> HopResult {
        HopResult {
            hop,
            target: target.into(),
            result,
            status: None,
            timings: Timings::default(),
            evidence: evidence.into(),
            cause: None,
            remedy: None,
            upstream_addr: None,
            proxy_id: None,
            tls: None,
            addresses: Vec::new(),
        }
    }

    pub fn skip(hop: Hop, target: impl Into<String>, why: impl Into<String>) -> HopResult {
        HopResult::new(hop, target, Outcome::Skip, why)
    }

    pub fn failed(mut self, cause: impl Into<String>, remedy: impl Into<String>) -> HopResult {
        self.result = Outcome::Fail;
        self.cause = Some(cause.into());
        self.remedy = Some(remedy.into());
        self
    }
}

/// The conclusion: the first failing hop, or that all passed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    pub ok: bool,
    pub hop: Option<Hop>,
    pub target: Option<String>,
    /// The one line printed under the table.
    pub line: String,
}

/// One proxy as the controller lists it (or as `--proxy` names it), and
/// what the trace found through it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProxySummary {
    /// Its id: the controller's, else the `x-proxy-id` it answered with,
    /// else `-`.
    pub id: String,
    pub service_cluster: Option<String>,
    /// The data-plane address the request was sent to (`http://IP:PORT`);
    /// `None` when it announces no listener for the target's scheme.
    pub address: Option<String>,
    /// The request through it: passed, failed, or not sent.
    pub request: Outcome,
    pub status: Option<u16>,
    /// Against its cluster's published version: `current`, `behind`,
    /// `nacking`, `unpublished`; `departed` (its stream ended lately);
    /// `unlisted` (the controller does not know it); `unknown` (no
    /// controller asked).
    pub state: String,
    /// The version it serves (12 hex digits), as the controller knows it.
    pub applied_version: Option<String>,
    /// For any state but `current`: why, in words (a NACK's reason, when
    /// it left).
    pub detail: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub target: Target,
    pub url: String,
    /// The config version the admin API reported, if asked.
    pub config_version: Option<String>,
    pub hops: Vec<HopResult>,
    /// With `--controller-admin`: every proxy it lists or `--proxy` names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxies: Vec<ProxySummary>,
    pub verdict: Verdict,
}

impl Report {
    pub fn new(target: Target, config_version: Option<String>, hops: Vec<HopResult>) -> Report {
        let verdict = verdict(&hops);
        Report {
            url: target.url(),
            target,
            config_version,
            hops,
            proxies: Vec::new(),
            verdict,
        }
    }

    pub fn with_proxies(mut self, proxies: Vec<ProxySummary>) -> Report {
        self.proxies = proxies;
        self
    }

    /// 0 when no hop failed, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.verdict.ok)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serialises")
    }

    /// The hop table, the proxies' table if there is one, then the verdict
    /// line.
    pub fn render(&self) -> String {
        let header = [
            "HOP", "TARGET", "RESULT", "STATUS", "DNS", "CONNECT", "TLS", "1ST BYTE", "EVIDENCE",
        ];
        let rows: Vec<[String; 9]> = self
            .hops
            .iter()
            .map(|h| {
                [
                    h.hop.name().to_owned(),
                    h.target.clone(),
                    match h.result {
                        Outcome::Pass => "ok",
                        Outcome::Fail => "FAIL",
                        Outcome::Skip => "-",
                    }
                    .to_owned(),
                    h.status.map_or("-".to_owned(), |s| s.to_string()),
                    time(h.timings.dns_ms),
                    time(h.timings.connect_ms),
                    time(h.timings.tls_ms),
                    time(h.timings.first_byte_ms),
                    h.evidence.clone(),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row.iter()) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = format!("trace {}", self.url);
        if let Some(v) = &self.config_version {
            let _ = write!(out, " (config {v})");
        }
        out.push('\n');
        let mut line = |cells: &[String]| {
            let mut l = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    l.push_str(cell);
                } else {
                    let pad = widths[i] - cell.chars().count();
                    l.push_str(cell);
                    l.push_str(&" ".repeat(pad + 2));
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(&header.map(str::to_owned));
        for row in &rows {
            line(row);
        }
        if !self.proxies.is_empty() {
            out.push('\n');
            out.push_str(&self.render_proxies());
        }
        out.push('\n');
        out.push_str(&self.verdict.line);
        out.push('\n');
        out
    }
}

impl Report {
    fn render_proxies(&self) -> String {
        let header = ["PROXY", "CLUSTER", "ADDRESS", "REQUEST", "VERSION", "STATE"];
        let rows: Vec<[String; 6]> = self
            .proxies
            .iter()
            .map(|p| {
                let request = match (p.request, p.status) {
                    (Outcome::Pass, Some(s)) => format!("ok {s}"),
                    (Outcome::Fail, Some(s)) => format!("FAIL {s}"),
                    (Outcome::Pass, None) => "ok".to_owned(),
                    (Outcome::Fail, None) => "FAIL".to_owned(),
                    (Outcome::Skip, _) => "-".to_owned(),
                };
                let state = match &p.detail {
                    Some(d) => format!("{}: {d}", p.state),
                    None => p.state.clone(),
                };
                [
                    p.id.clone(),
                    p.service_cluster.clone().unwrap_or_else(|| "-".to_owned()),
                    p.address.clone().unwrap_or_else(|| "-".to_owned()),
                    request,
                    p.applied_version.clone().unwrap_or_else(|| "-".to_owned()),
                    state,
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row.iter()) {
                *w = (*w).max(cell.chars().count());
            }
        }
        // Departed proxies are listed, not counted: the request is not
        // sent through them.
        let current = self.proxies.iter().filter(|p| p.state == "current").count();
        let departed = self
            .proxies
            .iter()
            .filter(|p| p.state == "departed")
            .count();
        let mut out = format!(
            "proxies: {current} of {} serve the published version",
            self.proxies.len() - departed
        );
        if departed > 0 {
            out.push_str(&format!(" ({departed} departed, not checked)"));
        }
        out.push('\n');
        for cells in std::iter::once(header.map(str::to_owned)).chain(rows) {
            let mut l = String::new();
            for (i, cell) in cells.iter().enumerate() {
                l.push_str(cell);
                if i + 1 < cells.len() {
                    l.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        }
        out
    }
}

fn time(ms: Option<f64>) -> String {
    match ms {
        None => "-".to_owned(),
        Some(ms) if ms < 10.0 => format!("{ms:.1}ms"),
        Some(ms) => format!("{ms:.0}ms"),
    }
}

fn verdict(hops: &[HopResult]) -> Verdict {
    let first = hops.iter().find(|h| h.result == Outcome::Fail);
    let Some(first) = first else {
        let skipped: Vec<&str> = {
            let mut s: Vec<&str> = hops
                .iter()
                .filter(|h| h.result == Outcome::Skip)
                .map(|h| h.hop.name())
                .collect();
            s.dedup();
            s
        };
        let passed = hops.iter().filter(|h| h.result == Outcome::Pass).count();
        let mut line = format!("verdict: OK: all {passed} checks passed");
        if !skipped.is_empty() {
            let _ = write!(line, "; not checked: {}", skipped.join(", "));
        }
        return Verdict {
            ok: true,
            hop: None,
            target: None,
            line,
        };
    };
    let mut line = format!(
        "verdict: FAIL at {} {}: {}",
        first.hop.name(),
        first.target,
        first.evidence
    );
    if let Some(c) = &first.cause {
        let _ = write!(line, "; likely cause: {c}");
    }
    if let Some(r) = &first.remedy {
        let _ = write!(line, " — {r}");
    }
    let mut later: Vec<&str> = hops
        .iter()
        .filter(|h| h.result == Outcome::Fail && h.hop > first.hop)
        .map(|h| h.hop.name())
        .collect();
    later.dedup();
    if !later.is_empty() {
        let _ = write!(line, " (then failing: {})", later.join(", "));
    }
    Verdict {
        ok: false,
        hop: Some(first.hop),
        target: Some(first.target.clone()),
        line,
    }
}

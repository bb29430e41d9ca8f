//! Criterion micro-benchmarks for Portico live in `benches/`; this crate has
//! no code of its own beyond the config generator they share.
//!
//! Run them with `cargo bench -p portico-bench`. The side-by-side load
//! benchmark against nginx and HAProxy is `bench/run.sh` at the repository root.
#![forbid(unsafe_code)]

/// Config text with `services` services, each with one exact host
/// (`svcN.app.test`), every tenth also with a wildcard (`*.wN.app.test`),
/// and two upstreams. Upstream addresses are only parsed, never connected to.
pub fn config_text(services: usize) -> String {
    let mut out = String::with_capacity(services * 120);
    out.push_str("[proxy]\nhttp_listen = \"127.0.0.1:8080\"\naccess_log = false\n");
    for i in 0..services {
        let port = 20_000 + (i % 40_000);
        out.push_str(&format!(
            "\n[[service]]\nname = \"svc{i}\"\nhosts = [\"svc{i}.app.test\""
        ));
        if i % 10 == 0 {
            out.push_str(&format!(", \"*.w{i}.app.test\""));
        }
        out.push_str(&format!(
            "]\nupstreams = [\"127.0.0.1:{port}\", \"127.0.0.2:{port}\"]\n"
        ));
    }
    out
}

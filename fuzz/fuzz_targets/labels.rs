//! The Docker label translator on a workload made of arbitrary labels.
//!
//! The input is text, one label per line as `key=value` (so the seed corpus
//! reads like `docker service create --label` arguments); a line without
//! `=` is a key with an empty value. The first byte picks a Swarm service
//! or a plain container.
//!
//! Invariants: nothing panics; a workload is routed if and only if no
//! finding is an error; every finding names the workload; a routed
//! service's hosts compile into a routing table that finds them.
#![no_main]

use std::collections::BTreeMap;
use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use portico_model::labels::{self, Severity, Workload, WorkloadKind};
use portico_model::{Config, RoutingTable};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, text)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(text);
    let labels: BTreeMap<String, String> = text
        .lines()
        .map(|line| match line.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (line.to_owned(), String::new()),
        })
        .collect();
    let ip = |s: &str| s.parse::<IpAddr>().expect("a literal address");
    let w = Workload {
        kind: if kind & 1 == 0 {
            WorkloadKind::Service
        } else {
            WorkloadKind::Container
        },
        name: "fuzz_web".into(),
        labels,
        networks: vec!["fuzz_net".into(), "other_net".into()],
        addresses: [
            ("fuzz_net".to_string(), vec![ip("10.0.1.5"), ip("10.0.1.6")]),
            ("other_net".to_string(), vec![ip("fd00::7")]),
        ]
        .into_iter()
        .collect(),
        vips: [("fuzz_net".to_string(), ip("10.0.1.2"))]
            .into_iter()
            .collect(),
    };
    let t = labels::translate(&w);
    let errors = t
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    for f in &t.findings {
        assert_eq!(f.workload, w.name);
        let _ = f.to_string();
    }
    match t.service {
        Some(service) => {
            assert_eq!(errors, 0, "routed despite errors: {:?}", t.findings);
            let mut config = Config::default();
            config.services.push(service);
            let table = RoutingTable::build(&config);
            for host in &config.services[0].hosts {
                let probe = match host {
                    portico_model::HostPattern::Exact(name) => name.clone(),
                    portico_model::HostPattern::Wildcard(suffix) => format!("x.{suffix}"),
                };
                assert!(table.lookup_site(&probe).is_some(), "{host}");
            }
        }
        None => assert!(
            errors > 0 || !labels::is_labelled(&w.labels),
            "skipped without an error: {:?}",
            t.findings
        ),
    }
});

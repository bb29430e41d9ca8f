//! The TOML config loader on arbitrary text: `Config::parse`, then what is
//! built from a config that passed (its version digest and routing table).
//!
//! Invariants: nothing panics; a config is accepted or refused with at
//! least one error, and every error names the file, a line and a column
//! within the text (`fuzz.toml:LINE:COL: ...`); every host of an accepted
//! config is found in its routing table.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_model::{Config, HostPattern, RoutingTable, Version};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, "fuzz.toml") {
        Ok(config) => {
            let _ = Version::of(&config);
            let table = RoutingTable::build(&config);
            for svc in &config.services {
                for host in &svc.hosts {
                    let probe = match host {
                        HostPattern::Exact(name) => name.clone(),
                        HostPattern::Wildcard(suffix) => format!("x.{suffix}"),
                    };
                    assert!(
                        table.lookup_site(&probe).is_some(),
                        "{host} of {} not in the table",
                        svc.name
                    );
                }
            }
        }
        Err(errors) => {
            assert!(!errors.0.is_empty());
            let lines = text.split('\n').count();
            for e in &errors.0 {
                let shown = e.to_string();
                let prefix = format!("fuzz.toml:{}:{}: ", e.line, e.column);
                assert!(
                    e.line >= 1 && e.column >= 1 && shown.starts_with(&prefix),
                    "error without a position: {shown:?}"
                );
                assert!(e.line <= lines, "line {} of {lines}: {shown:?}", e.line);
            }
        }
    }
});

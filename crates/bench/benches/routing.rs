//! Route lookup with 10 and 10,000 hosts, and a 10,000-service config
//! parsed, validated, compiled and swapped into a running proxy.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use portico_bench::config_text;
use portico_model::{normalize_request_host, Config, RoutingTable, Version};
use portico_proxy::{Identity, Proxy};

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    for services in [10, 10_000] {
        let config = Config::parse(&config_text(services), "bench").unwrap();
        let table = RoutingTable::build(&config);
        // Requests spread over up to 1024 different hosts, as the request
        // path sees them (a Host header with a port, to be normalised).
        let hosts: Vec<String> = (0..1024)
            .map(|i| format!("svc{}.app.test:8080", (i * 7919) % services))
            .collect();
        let wild: Vec<String> = (0..1024)
            .map(|i| format!("api.x.w{}.app.test", ((i * 7919) % services) / 10 * 10))
            .collect();
        let mut i = 0usize;
        group.bench_function(BenchmarkId::new("exact", services), |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                let host = normalize_request_host(&hosts[i]).unwrap();
                black_box(table.lookup(&host, "/"))
            })
        });
        group.bench_function(BenchmarkId::new("wildcard", services), |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(table.lookup(&wild[i], "/"))
            })
        });
        group.bench_function(BenchmarkId::new("miss", services), |b| {
            b.iter(|| black_box(table.lookup("nowhere.example.com", "/")))
        });
    }
    group.finish();
}

fn snapshot(c: &mut Criterion) {
    let services = 10_000;
    let text = config_text(services);
    let identity = Identity {
        server_info: "portico/bench".into(),
        default_proxy_id: "bench".into(),
    };
    let first = Arc::new(Config::parse(&text, "bench").unwrap());
    let proxy = Proxy::new(identity, first.clone(), Version::of(&first));
    let mut group = c.benchmark_group("config_10000_services");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("parse_validate", |b| {
        b.iter(|| black_box(Config::parse(&text, "bench").unwrap()))
    });
    group.bench_function("compile_table", |b| {
        b.iter(|| black_box(RoutingTable::build(&first)))
    });
    group.bench_function("version_digest", |b| {
        b.iter(|| black_box(Version::of(&first)))
    });
    let mut flip_apply = false;
    let second = Arc::new(
        Config::parse(&text.replace("svc0.app.test", "svc0-b.app.test"), "bench").unwrap(),
    );
    let (v1, v2) = (Version::of(&first), Version::of(&second));
    group.bench_function("compile_swap", |b| {
        b.iter(|| {
            flip_apply = !flip_apply;
            if flip_apply {
                proxy.apply(second.clone(), v2);
            } else {
                proxy.apply(first.clone(), v1);
            }
        })
    });
    // The whole reload: text to a routing snapshot serving requests.
    // Alternating between two versions, so every swap is a real change.
    let other = text.replace("svc0.app.test", "svc0-b.app.test");
    let mut flip = false;
    group.bench_function("parse_validate_compile_swap", |b| {
        b.iter(|| {
            flip = !flip;
            let config = Config::parse(if flip { &other } else { &text }, "bench").unwrap();
            let version = Version::of(&config);
            proxy.apply(Arc::new(config), version);
        })
    });
    group.finish();
}

criterion_group!(benches, lookup, snapshot);
criterion_main!(benches);

"""Two Portico binaries side by side, on one scenario of bench.py.

Ratios to nginx taken from separate runs of bench.py cannot tell a 5 %
change apart on a small shared VM. This starts both binaries at once (same
config but ports, same backends) and measures one scenario on each in
turn, alternating which goes first, so that both see the same machine:

    python3 bench/ab.py BEFORE AFTER [--reps 12] [--scenario NAME] [--pinned]

Unpinned (the default) gives each 2 workers; --pinned gives each 1 worker
on CPU 1, with load and backends on CPU 0, as bench.py's pinned phase.
Prints proxy CPU time per request for every run and the medians.

--scrape gives both an admin listener and has a thread fetch each one's
/metrics every second for the whole run (a binary without /metrics answers
404, at about the same cost as serving nothing), so AFTER's figures are
those of a proxy under a Prometheus scraper.
"""
import argparse
import os
import statistics
import sys
import tempfile
import threading
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

B_PORTS = (18480, 18843)
ADMIN_PORTS = {"before": 19091, "after": 19092}


def scrape_every_second(stop):
    """Fetches each proxy's /metrics once a second until `stop` is set."""
    while not stop.wait(1.0):
        for port in ADMIN_PORTS.values():
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
            except Exception:  # noqa: BLE001 - a 404 or a refused scrape costs the same here
                pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--reps", type=int, default=12)
    ap.add_argument("--scenario", default="h2-tls-4KiB-c50x10")
    ap.add_argument("--pinned", action="store_true")
    ap.add_argument("--scrape", action="store_true")
    args = ap.parse_args()
    scenario = next((s for s in bench.SCENARIOS if s[0] == args.scenario), None)
    if scenario is None:
        sys.exit(f"no scenario {args.scenario}; bench.py has {', '.join(s[0] for s in bench.SCENARIOS)}")
    workers, cpu_proxy, cpu_load, threads = (1, 1, 0, 1) if args.pinned else (2, None, None, 2)

    bench.PORTS["after"] = B_PORTS
    bench.PORTS["before"] = bench.PORTS["portico"]
    work = tempfile.mkdtemp(prefix="portico-ab.")
    www = bench.setup_files(work)
    # The scenario's routing table (50 path rules, 10,000 hosts), if it has one.
    conf = open(bench.portico_conf(work, scenario[4].get("table", "base"))).read()
    bench.PACED = os.environ.get("BENCH_PACED") or os.path.join(
        os.path.dirname(bench.HERE), "target", "release", "bench-paced")
    http, https = bench.PORTS["portico"]

    def start(name, binary):
        text = conf.replace(str(http), str(bench.PORTS[name][0])).replace(str(https), str(bench.PORTS[name][1]))
        if args.scrape:
            # Before the first service table: [admin] is a top-level table.
            first = text.index("[[service]]")
            text = text[:first] + f'[admin]\nlisten = "127.0.0.1:{ADMIN_PORTS[name]}"\n\n' + text[first:]
        path = bench.write(os.path.join(work, f"{name}.toml"), text)
        return bench.Proc(name, [binary, "run", "--config", path, "--workers", str(workers)],
                          f"{work}/logs/{name}.out", bench.PORTS[name], cpu_proxy)

    backends = bench.start_backends(work, www, cpu_load)
    procs = {}
    results = {"before": [], "after": []}
    stop = threading.Event()
    try:
        procs["before"] = start("before", args.before)
        procs["after"] = start("after", args.after)
        bench.DURATION = 1.0  # warm the pools, not measured
        for name, proc in procs.items():
            bench.measure(proc, name, scenario, cpu_load, threads, work)
        bench.DURATION = 3.0
        if args.scrape:
            threading.Thread(target=scrape_every_second, args=(stop,), daemon=True).start()
        for rep in range(args.reps):
            order = ("before", "after") if rep % 2 == 0 else ("after", "before")
            for name in order:
                r = bench.measure(procs[name], name, scenario, cpu_load, threads, work)
                results[name].append(r)
                print(f"{name:6} {r['rps']:9.0f} req/s  cpu {r['cpu_us_per_req']:6.1f} us/req  "
                      f"errors {r['errors']}", flush=True)
    finally:
        stop.set()
        for p in procs.values():
            p.stop()
        backends.stop()
    for name, runs in results.items():
        cpu = sorted(r["cpu_us_per_req"] for r in runs)
        print(f"{name}: median {statistics.median(cpu):.1f} us/req, "
              f"{statistics.median(r['rps'] for r in runs):.0f} req/s; runs {', '.join(f'{c:.1f}' for c in cpu)}")


if __name__ == "__main__":
    main()

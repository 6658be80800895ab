#!/usr/bin/env python3
"""Job pipeline benchmark: flush, preload and memory analysis rates, and the
latency other tenants see while a flush runs, all in one run.

Builds the release api and worker, starts both against the local Redis and
PostgreSQL, then:

  1. seeds KEYS keys into tenant A, runs GETs of tenant B at a fixed rate
     (oha -q RATE, latency-corrected) for LOAD_SECONDS and flushes tenant A
     from second FLUSH_AFTER: flush keys/s, and tenant B's p50 and p99 over
     the requests scheduled while the flush ran (oha's per-request records,
     cut to the job's startedAt..finishedAt) against those of the same run
     before the flush, with the CPU the api, the worker, Redis and the load
     generator used meanwhile; RUNS rounds, the median p99 ratio is the
     figure (the p99 of separate runs drifts by ± 50 % on a small shared
     machine, so both sides of a ratio come from one run);
  2. preloads PRELOAD_ITEMS inline items (jobs of 10 000 items, the contract's
     cap per job) twice: queued while no worker runs, then drained by a
     fresh worker (keys/s from first start to last finish: the write path,
     not the pace of submissions), and submitted while the worker runs
     (keys/s from the first submission to the last finish, the api's intake
     included);
  3. seeds KEYS keys again and runs a sampled memory analysis over them.

Rates come from the jobs' own startedAt/finishedAt. Environment: PARTS
(flush,preload,analysis), KEYS (1000000), PRELOAD_ITEMS (100000), RATE (2000),
LOAD_SECONDS (25), FLUSH_AFTER (11), RUNS (5).

REDIS_CORE=N runs the benchmark against a redis-server of its own pinned to
CPU N, with everything else (api, worker, load generator) kept off that CPU:
Redis with a core to itself, as in a deployment, instead of four busy
processes sharing every core. Without it the shared local Redis is used.
REDIS_ARGS adds arguments to that redis-server's command line (e.g.
"--activerehashing no"). WORKER_NICE=N starts the worker under `nice -n N`.
"""

import json
import math
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from data_plane import ensure_tools, free_port, log, wait_ready  # noqa: E402  (shared benchmark helpers)
KEYS = int(os.environ.get("KEYS", "1000000"))
PRELOAD_ITEMS = int(os.environ.get("PRELOAD_ITEMS", "100000"))
RATE = int(os.environ.get("RATE", "2000"))
LOAD_SECONDS = int(os.environ.get("LOAD_SECONDS", "25"))
FLUSH_AFTER = int(os.environ.get("FLUSH_AFTER", "11"))
EDGE = 0.1  # seconds left out at each side of a latency window
PARTS = os.environ.get("PARTS", "flush,preload,analysis").split(",")
RUNS = int(os.environ.get("RUNS", "5"))
REDIS_CORE = os.environ.get("REDIS_CORE")
REDIS_ARGS = os.environ.get("REDIS_ARGS", "").split()
WORKER_NICE = os.environ.get("WORKER_NICE")
REDIS_PORT = 6379
TOKEN = "bench-token"
STAMP = time.strftime("%Y%m%d%H%M%S")
TENANT_A = f"bench-a-{STAMP}"
TENANT_B = f"bench-b-{STAMP}"
TENANT_C = f"bench-c-{STAMP}"


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def request(base, method, path, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read() or b"null")


def seed(tenant, count):
    """Writes `count` small keys into a tenant straight into Redis (redis-cli --pipe)."""
    with tempfile.NamedTemporaryFile("wb", delete=False) as f:
        for i in range(count):
            key = f"c:{{{tenant}}}:user:{i}:profile".encode()
            value = b'J{"n":%d}' % i
            f.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value), value))
        path = f.name
    with open(path, "rb") as f:
        subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "--pipe"], stdin=f, check=True, capture_output=True)
    os.unlink(path)


def timestamp(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def job_seconds(job):
    return (timestamp(job["finishedAt"]) - timestamp(job["startedAt"])).total_seconds()


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def wait_job(base, key, url):
    while True:
        job = request(base, "GET", url, headers=bearer(key))
        if job["status"] in ("succeeded", "failed", "cancelled"):
            if job["status"] != "succeeded":
                sys.exit(f"job ended {job['status']}: {job}")
            return job
        time.sleep(0.05)


class Load:
    """Tenant B's GETs at RATE for `seconds`, every request kept (oha's sqlite
    records) so that latency can be read over any window of the run."""

    def __init__(self, url, tenant, seconds):
        self.db = Path(tempfile.mkdtemp(prefix="bench-oha-")) / "requests.db"
        self.proc = subprocess.Popen(
            ["oha", "--no-tui", "--output-format", "json", "--latency-correction",
             "-q", str(RATE), "-z", f"{seconds}s", "-c", "50", "--db-url", str(self.db),
             "-H", f"X-Service-Token: {TOKEN}", "-H", f"X-Tenant-Id: {tenant}", url],
            stdout=subprocess.PIPE, text=True,
        )
        # oha's clock starts a few milliseconds after this: windows are cut
        # EDGE inside their bounds to stay clear of that offset.
        self.started = time.time()

    def finish(self):
        """Waits for the run; each request's (wall-clock scheduled start,
        latency from it in ms), and the answers' status codes."""
        out, _ = self.proc.communicate()
        codes = json.loads(out).get("statusCodeDistribution", {})
        with sqlite3.connect(self.db) as db:
            requests = [(self.started + at, latency * 1000) for at, latency in db.execute(
                "select coalesce(start_latency_correction, start), "
                "end - coalesce(start_latency_correction, start) from oha")]
        shutil.rmtree(self.db.parent)
        return requests, codes


def percentiles(latencies):
    """p50 and p99 (nearest rank) of latencies in ms, and how many there were."""
    ordered = sorted(latencies)
    if not ordered:
        sys.exit("oha recorded no request in a window")

    def pct(q):
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    return {"p50_ms": pct(0.50), "p99_ms": pct(0.99), "requests": len(ordered)}


def cpu_seconds(pid):
    """User + system CPU seconds a process has used so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_pid():
    """The pid of the Redis under test when it runs on this machine (another
    PID namespace's pid would read some other process), else None."""
    info = run(["redis-cli", "-p", str(REDIS_PORT), "info", "server"])
    pid = int(next(line.split(":")[1] for line in info.splitlines() if line.startswith("process_id:")))
    try:
        return pid if Path(f"/proc/{pid}/comm").read_text().strip() == "redis-server" else None
    except OSError:
        return None


def flush_under_load(base, admin, get_b, pids):
    """RUNS rounds of one load run each on tenant B with a flush of tenant A
    starting FLUSH_AFTER seconds in: tenant B's latency over the requests
    scheduled while the flush ran against that of the same run before it
    (its first second left out), so both sides of the ratio share the
    machine's state of the moment. `pids` names the processes whose CPU use
    is read from the flush's submission to its completion as polled."""
    rounds = []
    for round_no in range(1, RUNS + 1):
        log(f"round {round_no}/{RUNS}: seeding {KEYS} keys into tenant A")
        seed(TENANT_A, KEYS)
        log(f"round {round_no}/{RUNS}: tenant B GETs at {RATE}/s for {LOAD_SECONDS}s, "
            f"tenant A flushed from second {FLUSH_AFTER}")
        load = Load(get_b, TENANT_B, LOAD_SECONDS)
        time.sleep(FLUSH_AFTER)
        pids = dict(pids, load=load.proc.pid)
        before, wall = {name: cpu_seconds(pid) for name, pid in pids.items()}, time.monotonic()
        job = flush(base, admin)
        wall = time.monotonic() - wall
        cpu = {name: (cpu_seconds(pid) - before[name]) / wall for name, pid in pids.items()}
        requests, codes = load.finish()
        started, finished = (timestamp(job[k]).timestamp() for k in ("startedAt", "finishedAt"))
        if finished > load.started + LOAD_SECONDS - 1:
            sys.exit(f"the flush outlasted the load: raise LOAD_SECONDS above {LOAD_SECONDS}")
        during = [ms for at, ms in requests if started + EDGE <= at <= finished - EDGE]
        without = [ms for at, ms in requests if load.started + 1 <= at < started - EDGE]
        rounds.append((job, percentiles(without), percentiles(during), cpu, codes))
    return rounds


def own_redis():
    """A redis-server pinned to REDIS_CORE; this process and its children move off that core."""
    global REDIS_PORT
    core = int(REDIS_CORE)
    cpus = os.sched_getaffinity(0)
    others = cpus - {core}
    if core not in cpus or not others:
        sys.exit(f"REDIS_CORE={core}: needs that CPU and at least one other")
    REDIS_PORT = free_port()
    proc = subprocess.Popen(["taskset", "-c", str(core), "redis-server", "--port", str(REDIS_PORT),
                             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *REDIS_ARGS],
                            stdout=subprocess.DEVNULL)
    os.sched_setaffinity(0, others)
    for _ in range(100):
        if subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "ping"], capture_output=True).returncode == 0:
            return proc
        time.sleep(0.1)
    sys.exit("the benchmark's redis-server did not start")


def preload(base, admin, workers):
    """PRELOAD_ITEMS inline items in jobs of 10 000, twice: queued while no
    worker runs, then drained by a fresh one (keys/s from the first job's
    start to the last one's finish: the write path), and submitted while the
    worker runs (keys/s from the first submission to the last finish: what a
    caller sees, the api's intake included)."""
    log(f"preloading {PRELOAD_ITEMS} inline items, queued before a worker starts")
    workers.stop()
    urls, intake = submit_preloads(base, admin)
    workers.start()
    jobs = [wait_job(base, admin, u) for u in urls]
    first = min(timestamp(j["startedAt"]) for j in jobs)
    last = max(timestamp(j["finishedAt"]) for j in jobs)
    loaded = sum(j["result"]["loaded"] for j in jobs)
    write_path = loaded / (last - first).total_seconds()
    flush(base, admin)

    log(f"preloading {PRELOAD_ITEMS} inline items, submitted while the worker runs")
    submitted = datetime.now().astimezone()
    urls, _ = submit_preloads(base, admin)
    jobs = [wait_job(base, admin, u) for u in urls]
    last = max(timestamp(j["finishedAt"]) for j in jobs)
    end_to_end = sum(j["result"]["loaded"] for j in jobs) / (last - submitted).total_seconds()
    flush(base, admin)
    return write_path, end_to_end, loaded, len(jobs), intake


def submit_preloads(base, admin):
    """Submits the preload jobs; their status URLs and the seconds it took."""
    urls, started = [], time.monotonic()
    for start in range(0, PRELOAD_ITEMS, 10_000):
        items = [{"key": f"pre:{i}", "value": {"i": i}} for i in range(start, min(start + 10_000, PRELOAD_ITEMS))]
        urls.append(request(base, "POST", "/api/v1/cache/preload", {"items": items}, bearer(admin))["statusUrl"])
    return urls, time.monotonic() - started


def analysis(base, admin_c):
    """A sampled memory analysis over KEYS keys of tenant C."""
    log(f"seeding {KEYS} keys into tenant C and analysing them (sampled)")
    seed(TENANT_C, KEYS)
    accepted = request(base, "POST", "/api/v1/cache/memory/analyze", {"mode": "sampled"}, bearer(admin_c))
    job = wait_job(base, admin_c, accepted["statusUrl"])
    flush(base, admin_c)  # leave nothing behind in the shared Redis
    return job


def flush(base, key):
    """Flushes the key's tenant and returns the finished job."""
    accepted = request(base, "POST", "/api/v1/cache/flush", {}, bearer(key))
    return wait_job(base, key, accepted["statusUrl"])


class Worker:
    """The benchmark's cache-worker, stopped and started between parts."""

    def __init__(self, binary, env):
        self.binary, self.env, self.proc = binary, env, None

    def start(self):
        nice = ["nice", "-n", WORKER_NICE] if WORKER_NICE else []
        self.proc = subprocess.Popen(nice + [str(self.binary)], env=self.env, stderr=subprocess.DEVNULL)

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None


def main():
    ensure_tools()
    if not shutil.which("redis-cli"):
        sys.exit("redis-cli is required (bench/README.md)")
    log("building release binaries")
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "cache-api", "-p", "cache-worker"],
                   cwd=ROOT, check=True)
    api_bin, worker_bin = ROOT / "target/release/cache-api", ROOT / "target/release/cache-worker"
    redis = own_redis() if REDIS_CORE else None
    port = free_port()
    env = dict(os.environ, SERVICE_PORT=str(port), BIND_ADDRESS="127.0.0.1",
               INTERNAL_SERVICE_TOKEN=TOKEN, QUEUE_PREFIX=f"bench-{STAMP}", RUST_LOG="warn",
               REDIS_URL=f"redis://127.0.0.1:{REDIS_PORT}")
    procs = [redis] if redis else []
    workers = Worker(worker_bin, env)
    try:
        run([str(api_bin), "migrate"], env=env)
        admin = json.loads(run([str(api_bin), "keys", "create", "--tenant", TENANT_A, "--role", "admin", "--json"], env=env))["key"]
        admin_c = json.loads(run([str(api_bin), "keys", "create", "--tenant", TENANT_C, "--role", "admin", "--json"], env=env))["key"]
        api = subprocess.Popen([str(api_bin)], env=env, stderr=subprocess.DEVNULL)
        procs.insert(0, api)
        workers.start()
        base = f"http://127.0.0.1:{port}"
        wait_ready(api, base)
        request(base, "POST", "/internal/cache/set", {"key": "b", "value": "x" * 98, "ttl": 0},
                {"X-Service-Token": TOKEN, "X-Tenant-Id": TENANT_B})
        get_b = f"{base}/internal/cache/get/b"

        results = {}
        if "flush" in PARTS:
            pids = {"api": api.pid, "worker": workers.proc.pid}
            if redis_pid():
                pids["redis"] = redis_pid()
            results["flush"] = flush_under_load(base, admin, get_b, pids)
        if "preload" in PARTS:
            results["preload"] = preload(base, admin, workers)
        if "analysis" in PARTS:
            results["analysis"] = analysis(base, admin_c)
    finally:
        # Worker and api first (they drain into Redis), the benchmark's own Redis last.
        workers.stop()
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)

    print()
    where = f"own redis-server on CPU {REDIS_CORE}, the rest on the other CPUs" if REDIS_CORE else "shared local Redis"
    print(f"cache-service jobs: {KEYS} keys, {PRELOAD_ITEMS} preload items, tenant B at {RATE} req/s; {where}")
    print()
    print("| figure | value | target |")
    print("|---|---|---|")
    if "flush" in results:
        ratios, rates = [], []
        for job, baseline, during, cpu, codes in results["flush"]:
            rate = job["result"]["deleted"] / job_seconds(job)
            ratio = during["p99_ms"] / baseline["p99_ms"]
            rates.append(rate)
            ratios.append(ratio)
            cores = ", ".join(f"{name} {share:.0%}" for name, share in cpu.items())
            print(f"| flush, round {len(rates)} | {rate:,.0f} keys/s ({job['result']['deleted']} keys in "
                  f"{job_seconds(job):.2f} s); tenant B before / during the flush: p50 "
                  f"{baseline['p50_ms']:.2f} / {during['p50_ms']:.2f} ms, p99 {baseline['p99_ms']:.2f} / "
                  f"{during['p99_ms']:.2f} ms (× {ratio:.2f}; {baseline['requests']} / {during['requests']} "
                  f"requests); CPU of a core, submission to completion: {cores}; answers over the run {codes} | |")
        print(f"| flush, median of {len(rates)} | {statistics.median(rates):,.0f} keys/s | ≥ 100 000 keys/s |")
        print(f"| tenant B p99 during / without flush, median of {len(ratios)} | × {statistics.median(ratios):.2f} | ≤ × 1.5 |")
    if "preload" in results:
        write_path, end_to_end, loaded, jobs, intake = results["preload"]
        print(f"| preload, jobs queued then run | {write_path:,.0f} keys/s ({loaded} keys, {jobs} jobs; "
              f"the api took {intake:.2f} s to accept them) | ≥ 100 000 keys/s |")
        print(f"| preload, first submission to last finish | {end_to_end:,.0f} keys/s | |")
    if "analysis" in results:
        job = results["analysis"]
        print(f"| memory analysis, sampled, of {KEYS} keys | {job_seconds(job):.2f} s "
              f"({job['result']['keysAnalysed']} keys analysed) | < 10 s |")

if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Job pipeline benchmark: flush, preload and memory analysis rates, and the
latency other tenants see while a flush runs, all in one run.

Builds the release api and worker, starts both against the local Redis and
PostgreSQL, then:

  1. GET latency of tenant B at a fixed rate (oha -q RATE, latency-corrected),
     without any job running (the baseline);
  2. seeds KEYS keys into tenant A and flushes them while the same load runs
     against tenant B: flush keys/s and tenant B's p99 next to the baseline;
     steps 1 and 2 alternate RUNS times and the median ratio is the figure
     (one pair swings by ± 20 % on a small machine);
  3. preloads PRELOAD_ITEMS inline items (jobs of 10 000 items, the contract's
     cap per job, all submitted at once): keys/s from first start to last finish;
  4. seeds KEYS keys again and runs a sampled memory analysis over them.

Rates come from the jobs' own startedAt/finishedAt. Environment: PARTS
(flush,preload,analysis), KEYS (1000000), PRELOAD_ITEMS (100000), RATE (2000),
LOAD_SECONDS (20), RUNS (3).

REDIS_CORE=N runs the benchmark against a redis-server of its own pinned to
CPU N, with everything else (api, worker, load generator) kept off that CPU:
Redis with a core to itself, as in a deployment, instead of four busy
processes sharing every core. Without it the shared local Redis is used.
"""

import json
import os
import shutil
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
LOAD_SECONDS = int(os.environ.get("LOAD_SECONDS", "20"))
PARTS = os.environ.get("PARTS", "flush,preload,analysis").split(",")
RUNS = int(os.environ.get("RUNS", "3"))
REDIS_CORE = os.environ.get("REDIS_CORE")
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


def oha(url, tenant, seconds):
    return subprocess.Popen(
        ["oha", "--no-tui", "--output-format", "json", "--latency-correction",
         "-q", str(RATE), "-z", f"{seconds}s", "-c", "50",
         "-H", f"X-Service-Token: {TOKEN}", "-H", f"X-Tenant-Id: {tenant}", url],
        stdout=subprocess.PIPE, text=True,
    )


def oha_result(proc):
    out, _ = proc.communicate()
    data = json.loads(out)
    pct = data["latencyPercentiles"]
    return {"p50_ms": pct["p50"] * 1000, "p99_ms": pct["p99"] * 1000,
            "codes": data.get("statusCodeDistribution", {})}


def flush_under_load(base, admin, get_b):
    """Tenant B's GET latency without, then during, a flush of tenant A; RUNS pairs."""
    rounds = []
    for round_no in range(1, RUNS + 1):
        log(f"round {round_no}/{RUNS}: baseline, tenant B GETs at {RATE}/s for {LOAD_SECONDS}s")
        baseline = oha_result(oha(get_b, TENANT_B, LOAD_SECONDS))
        log(f"round {round_no}/{RUNS}: seeding {KEYS} keys into tenant A")
        seed(TENANT_A, KEYS)
        log(f"round {round_no}/{RUNS}: flushing tenant A while tenant B is under load")
        load = oha(get_b, TENANT_B, LOAD_SECONDS)
        time.sleep(2)
        rounds.append((flush(base, admin), baseline, oha_result(load)))
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
                             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL)
    os.sched_setaffinity(0, others)
    for _ in range(100):
        if subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "ping"], capture_output=True).returncode == 0:
            return proc
        time.sleep(0.1)
    sys.exit("the benchmark's redis-server did not start")


def preload(base, admin):
    """Inline preloads submitted at once: keys/s from first start to last finish."""
    log(f"preloading {PRELOAD_ITEMS} inline items")
    urls = []
    for start in range(0, PRELOAD_ITEMS, 10_000):
        items = [{"key": f"pre:{i}", "value": {"i": i}} for i in range(start, min(start + 10_000, PRELOAD_ITEMS))]
        urls.append(request(base, "POST", "/api/v1/cache/preload", {"items": items}, bearer(admin))["statusUrl"])
    preloads = [wait_job(base, admin, u) for u in urls]
    first = min(timestamp(j["startedAt"]) for j in preloads)
    last = max(timestamp(j["finishedAt"]) for j in preloads)
    loaded = sum(j["result"]["loaded"] for j in preloads)
    flush(base, admin)
    return loaded / (last - first).total_seconds(), loaded, len(preloads)


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
    try:
        run([str(api_bin), "migrate"], env=env)
        admin = json.loads(run([str(api_bin), "keys", "create", "--tenant", TENANT_A, "--role", "admin", "--json"], env=env))["key"]
        admin_c = json.loads(run([str(api_bin), "keys", "create", "--tenant", TENANT_C, "--role", "admin", "--json"], env=env))["key"]
        api = subprocess.Popen([str(api_bin)], env=env, stderr=subprocess.DEVNULL)
        procs.insert(0, api)
        procs.insert(0, subprocess.Popen([str(worker_bin)], env=env, stderr=subprocess.DEVNULL))
        base = f"http://127.0.0.1:{port}"
        wait_ready(api, base)
        request(base, "POST", "/internal/cache/set", {"key": "b", "value": "x" * 98, "ttl": 0},
                {"X-Service-Token": TOKEN, "X-Tenant-Id": TENANT_B})
        get_b = f"{base}/internal/cache/get/b"

        results = {}
        if "flush" in PARTS:
            results["flush"] = flush_under_load(base, admin, get_b)
        if "preload" in PARTS:
            results["preload"] = preload(base, admin)
        if "analysis" in PARTS:
            results["analysis"] = analysis(base, admin_c)
    finally:
        # Worker and api first (they drain into Redis), the benchmark's own Redis last.
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
        for job, baseline, during in results["flush"]:
            rate = job["result"]["deleted"] / job_seconds(job)
            ratio = during["p99_ms"] / baseline["p99_ms"]
            rates.append(rate)
            ratios.append(ratio)
            print(f"| flush, round {len(rates)} | {rate:,.0f} keys/s ({job['result']['deleted']} keys in "
                  f"{job_seconds(job):.2f} s); tenant B p99 {baseline['p99_ms']:.2f} ms without, "
                  f"{during['p99_ms']:.2f} ms during (× {ratio:.2f}); answers {during['codes']} | |")
        print(f"| flush, median of {len(rates)} | {statistics.median(rates):,.0f} keys/s | ≥ 100 000 keys/s |")
        print(f"| tenant B p99 during / without flush, median of {len(ratios)} | × {statistics.median(ratios):.2f} | ≤ × 1.5 |")
    if "preload" in results:
        rate, loaded, jobs = results["preload"]
        print(f"| preload | {rate:,.0f} keys/s ({loaded} keys, {jobs} jobs) | ≥ 100 000 keys/s |")
    if "analysis" in results:
        job = results["analysis"]
        print(f"| memory analysis, sampled, of {KEYS} keys | {job_seconds(job):.2f} s "
              f"({job['result']['keysAnalysed']} keys analysed) | < 10 s |")

if __name__ == "__main__":
    main()

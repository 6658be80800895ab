#!/usr/bin/env python3
"""Observability benchmark: what instrumentation costs, how fast one worker
persists the operation log, and whether the api's memory stays flat.

Builds the release api and worker and runs, against the local Redis and
PostgreSQL (a fresh database per run):

  1. instrumentation: two apis side by side, INSTRUMENTATION=true (metrics,
     live figures, operation log with reads sampled at 1 %) and =false;
     alternating wrk runs of GET /internal/cache/get/{key}; the ratio of the
     medians (target: on ≥ 95 % of off);
  2. log persistence: LOG_RECORDS writes (batch writes of 1000 keys, each
     key one record) shipped by the api while no worker runs; then one worker
     starts and the time until the last record is in PostgreSQL gives
     records/s (worker start-up included; target ≥ 50 000/s);
  3. memory: GETs and SETs at a fixed MEMORY_RATE req/s in total (oha) for
     MEMORY_SECONDS with logging on and a worker draining it; the api's RSS
     sampled every 10 s (target: flat, under 64 MB).

Environment: PARTS (instrumentation,logs,memory), RUNS (5), DURATION (8),
LOG_RECORDS (500000), MEMORY_RATE (2000), MEMORY_SECONDS (600).
"""

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from data_plane import ensure_tools, free_port, log, wait_ready  # noqa: E402  (shared benchmark helpers)
PARTS = os.environ.get("PARTS", "instrumentation,logs,memory").split(",")
RUNS = int(os.environ.get("RUNS", "5"))
DURATION = int(os.environ.get("DURATION", "8"))
LOG_RECORDS = int(os.environ.get("LOG_RECORDS", "500000"))
MEMORY_RATE = int(os.environ.get("MEMORY_RATE", "2000"))
MEMORY_SECONDS = int(os.environ.get("MEMORY_SECONDS", "600"))
TOKEN = "bench-token"
STAMP = time.strftime("%Y%m%d%H%M%S")
BASE_DB = os.environ.get("DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5432/cache_service")
DB_URL = BASE_DB.rsplit("/", 1)[0] + f"/cache_bench_{STAMP}"
API = ROOT / "target/release/cache-api"
WORKER = ROOT / "target/release/cache-worker"


def env_for(port, **extra):
    return dict(
        os.environ,
        SERVICE_PORT=str(port),
        BIND_ADDRESS="127.0.0.1",
        INTERNAL_SERVICE_TOKEN=TOKEN,
        DATABASE_URL=DB_URL,
        QUEUE_PREFIX=f"bench-obs-{STAMP}",
        WORKER_METRICS_PORT=str(free_port()),
        WORKER_METRICS_ADDRESS="127.0.0.1",
        RUST_LOG="warn",
        **{k: str(v) for k, v in extra.items()},
    )


def start_api(**extra):
    port = free_port()
    proc = subprocess.Popen([str(API)], env=env_for(port, **extra), stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    wait_ready(proc, base)
    return proc, base


def start_worker():
    return subprocess.Popen([str(WORKER)], env=env_for(free_port()), stderr=subprocess.DEVNULL)


def stop(proc):
    proc.terminate()
    proc.wait(timeout=60)


def post(base, path, body, tenant):
    req = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-Service-Token": TOKEN, "X-Tenant-Id": tenant},
    )
    return urllib.request.urlopen(req, timeout=30).read()


def psql(sql):
    return subprocess.run(["psql", DB_URL, "-tAc", sql], check=True, capture_output=True, text=True).stdout.strip()


def metric(base, name):
    text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def wrk_get(url, tenant):
    out = subprocess.run(
        ["wrk", "-t2", "-c50", f"-d{DURATION}s", "-H", f"X-Service-Token: {TOKEN}",
         "-H", f"X-Tenant-Id: {tenant}", url],
        check=True, capture_output=True, text=True,
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def rss_mb(pid, field="VmRSS"):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def instrumentation():
    tenant = f"bench-instr-{STAMP}"
    on, base_on = start_api(INSTRUMENTATION="true")
    off, base_off = start_api(INSTRUMENTATION="false")
    try:
        post(base_on, "/internal/cache/set", {"key": "k", "value": "x" * 98, "ttl": 0}, tenant)
        rates = {"on": [], "off": []}
        for run in range(1, RUNS + 1):
            log(f"instrumentation: run {run}/{RUNS}")
            # Alternate which goes first, so drift favours neither.
            order = [("on", base_on), ("off", base_off)]
            if run % 2 == 0:
                order.reverse()
            for name, base in order:
                rates[name].append(wrk_get(f"{base}/internal/cache/get/k", tenant))
        on_rate, off_rate = statistics.median(rates["on"]), statistics.median(rates["off"])
        return {"on": on_rate, "off": off_rate, "ratio": on_rate / off_rate, "runs": rates}
    finally:
        stop(on)
        stop(off)


def log_persistence():
    tenant = f"bench-logs-{STAMP}"
    api, base = start_api(LOG_BATCH_SIZE=1000)
    batches = LOG_RECORDS // 1000
    try:
        log(f"logs: {batches} batch writes of 1000 keys, no worker running")
        for b in range(batches):
            items = [{"key": f"k{b}:{i}", "value": i, "ttl": 600} for i in range(1000)]
            post(base, "/internal/cache/mset", {"items": items}, tenant)
        deadline = time.time() + 60
        while metric(base, "cache_oplog_shipped_total") < batches * 1000 and time.time() < deadline:
            time.sleep(0.2)
        shipped = metric(base, "cache_oplog_shipped_total")
        log(f"logs: {shipped:.0f} records queued; starting one worker")
        started = time.time()
        worker = start_worker()
        try:
            while True:
                n = int(psql(f"select count(*) from cache_operation_logs where tenant_id = '{tenant}'"))
                if n >= batches * 1000:
                    break
                if time.time() - started > 300:
                    raise RuntimeError(f"only {n} records persisted after 300 s")
                time.sleep(0.05)
            took = time.time() - started
        finally:
            stop(worker)
        dupes = int(psql(
            "select count(*) - count(distinct (request_id, item)) from cache_operation_logs "
            f"where tenant_id = '{tenant}'"))
        return {"records": batches * 1000, "seconds": took, "rate": batches * 1000 / took, "duplicates": dupes}
    finally:
        stop(api)


def memory():
    tenant = f"bench-mem-{STAMP}"
    api, base = start_api()
    worker = start_worker()
    samples = []
    try:
        post(base, "/internal/cache/set", {"key": "k", "value": "x" * 98, "ttl": 0}, tenant)
        headers = ["-H", f"X-Service-Token: {TOKEN}", "-H", f"X-Tenant-Id: {tenant}"]
        half = str(MEMORY_RATE // 2)
        common = ["oha", "--no-tui", "--output-format", "json", "-q", half, "-z", f"{MEMORY_SECONDS}s", "-c", "20"]
        gets = subprocess.Popen(common + headers + [f"{base}/internal/cache/get/k"],
                                stdout=subprocess.PIPE, text=True)
        sets = subprocess.Popen(
            common + headers + ["-m", "POST", "-T", "application/json",
                                "-d", json.dumps({"key": "w", "value": "y" * 98, "ttl": 60}),
                                f"{base}/internal/cache/set"],
            stdout=subprocess.PIPE, text=True)
        started = time.time()
        while gets.poll() is None or sets.poll() is None:
            samples.append((round(time.time() - started), rss_mb(api.pid)))
            log(f"memory: {samples[-1][0]} s, RSS {samples[-1][1]:.1f} MB")
            time.sleep(10)
        codes = {}
        for proc in (gets, sets):
            data = json.loads(proc.stdout.read())
            for code, n in data.get("statusCodeDistribution", {}).items():
                codes[code] = codes.get(code, 0) + n
        persisted = int(psql(f"select count(*) from cache_operation_logs where tenant_id = '{tenant}'"))
        return {
            "samples": samples,
            "peak_mb": rss_mb(api.pid, "VmHWM"),
            "after_1min_mb": next((m for t, m in samples if t >= 60), samples[-1][1]),
            "last_mb": samples[-1][1],
            "codes": codes,
            "persisted_records": persisted,
        }
    finally:
        stop(worker)
        stop(api)


def main():
    ensure_tools()
    for tool in ("psql", "redis-cli"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is required (bench/README.md)")
    log("building release binaries")
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "cache-api", "-p", "cache-worker"],
                   cwd=ROOT, check=True)
    subprocess.run([str(API), "migrate"], env=env_for(free_port()), check=True, capture_output=True)
    results = {}
    try:
        if "instrumentation" in PARTS:
            results["instrumentation"] = instrumentation()
        if "logs" in PARTS:
            results["logs"] = log_persistence()
        if "memory" in PARTS:
            results["memory"] = memory()
    finally:
        subprocess.run(["psql", BASE_DB.rsplit("/", 1)[0] + "/postgres", "-c",
                        f"drop database if exists cache_bench_{STAMP} with (force)"], capture_output=True)
        keys = subprocess.run(["redis-cli", "--scan", "--pattern", f"*bench-*-{STAMP}*"],
                              capture_output=True, text=True).stdout.split()
        for i in range(0, len(keys), 500):
            subprocess.run(["redis-cli", "unlink", *keys[i:i + 500]], capture_output=True)

    print()
    print("| figure | value | target |")
    print("|---|---|---|")
    if "instrumentation" in results:
        r = results["instrumentation"]
        print(f"| internal GET/s, instrumentation on / off | {r['on']:,.0f} / {r['off']:,.0f} "
              f"(× {r['ratio']:.3f}, medians of {RUNS} alternating {DURATION} s runs) | ≥ × 0.95 |")
    if "logs" in results:
        r = results["logs"]
        print(f"| log persistence, one worker | {r['rate']:,.0f} records/s ({r['records']:,} in "
              f"{r['seconds']:.2f} s, start-up included; {r['duplicates']} duplicates) | ≥ 50 000/s |")
    if "memory" in results:
        r = results["memory"]
        print(f"| api RSS over {MEMORY_SECONDS} s at {MEMORY_RATE} req/s, logging on | after 1 min "
              f"{r['after_1min_mb']:.1f} MB, last {r['last_mb']:.1f} MB, peak {r['peak_mb']:.1f} MB "
              f"(answers {r['codes']}, {r['persisted_records']:,} log records persisted) | flat, < 64 MB |")
    out_dir = ROOT / "bench/results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"observability-{STAMP}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"\nraw figures: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Data-plane benchmark of cache-api against the Redis floor, in one run.

Builds the release api, starts it against the local Redis (once per Redis
client mode), and alternates, RUNS times:

  redis-benchmark -t get -c 50 -d 100   |  wrk GET  /internal/cache/get/{key}
  redis-benchmark -t set -c 50 -d 100   |  wrk POST /internal/cache/set

then measures latency percentiles at a fixed rate with oha (with latency
correction, so a stalled server is not hidden by coordinated omission) and
reads the api's peak RSS (VmHWM). Prints medians and the ratio
ours / redis-benchmark measured in the same run.

Environment: RUNS (3), DURATION seconds per throughput run (10),
CONNECTIONS (50), RATE for the latency run (2000), LATENCY_DURATION (20),
MODES (multiplexed,pool), REDIS_HOST/REDIS_PORT (127.0.0.1:6379).
"""

import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = int(os.environ.get("RUNS", "3"))
DURATION = int(os.environ.get("DURATION", "10"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "50"))
RATE = int(os.environ.get("RATE", "2000"))
LATENCY_DURATION = int(os.environ.get("LATENCY_DURATION", "20"))
MODES = os.environ.get("MODES", "multiplexed,pool").split(",")
REDIS_HOST = os.environ.get("REDIS_HOST", "127.0.0.1")
REDIS_PORT = os.environ.get("REDIS_PORT", "6379")
TOKEN = "bench-token"
TENANT = "bench"
KEY = "bench:value"
# A JSON string of 98 characters: 100 bytes of compact JSON, like -d 100.
VALUE = "x" * 98


def log(msg):
    print(f"==> {msg}", file=sys.stderr, flush=True)


def ensure_tools():
    if not shutil.which("wrk"):
        log("installing wrk")
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    if not shutil.which("oha"):
        log("installing oha from crates.io (one-time, a few minutes)")
        subprocess.run(["cargo", "install", "oha", "--locked"], check=True)
    for tool in ("redis-benchmark", "wrk", "oha"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is required")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc, base):
    """Waits until a started api answers its ping (10 s at most)."""
    for _ in range(100):
        try:
            urllib.request.urlopen(base + "/api/v1/cache/ping", timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("cache-api did not start")


def start_api(mode):
    port = free_port()
    env = dict(
        os.environ,
        SERVICE_PORT=str(port),
        BIND_ADDRESS="127.0.0.1",
        INTERNAL_SERVICE_TOKEN=TOKEN,
        REDIS_URL=f"redis://{REDIS_HOST}:{REDIS_PORT}",
        REDIS_CLIENT=mode,
        # Its own queues: the operation log it ships is not for a real worker.
        QUEUE_PREFIX=f"bench-data-plane-{os.getpid()}",
        RUST_LOG="info",
    )
    proc = subprocess.Popen(
        [str(ROOT / "target/release/cache-api")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    wait_ready(proc, base)
    return proc, base


def seed(base):
    body = json.dumps({"key": KEY, "value": VALUE, "ttl": 0}).encode()
    req = urllib.request.Request(
        base + "/internal/cache/set",
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-Service-Token": TOKEN,
            "X-Tenant-Id": TENANT,
        },
    )
    urllib.request.urlopen(req, timeout=5)


def redis_benchmark(test):
    out = subprocess.run(
        [
            "redis-benchmark", "-h", REDIS_HOST, "-p", REDIS_PORT,
            "-t", test, "-c", str(CONNECTIONS), "-d", "100",
            "-n", str(200_000), "--csv",
        ],
        check=True, capture_output=True, text=True,
    ).stdout
    for line in out.splitlines():
        cells = [c.strip('"') for c in line.split(",")]
        if cells[0].upper() == test.upper():
            return float(cells[1])
    raise RuntimeError(f"no {test} line in redis-benchmark output: {out}")


def wrk(url, script=None):
    cmd = [
        "wrk", "-t2", f"-c{CONNECTIONS}", f"-d{DURATION}s",
        "-H", f"X-Service-Token: {TOKEN}", "-H", f"X-Tenant-Id: {TENANT}",
    ]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], check=True, capture_output=True, text=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def oha_fixed_rate(url):
    out = subprocess.run(
        [
            "oha", "--no-tui", "--output-format", "json", "--latency-correction",
            "-q", str(RATE), "-z", f"{LATENCY_DURATION}s", "-c", str(CONNECTIONS),
            "-H", f"X-Service-Token: {TOKEN}", "-H", f"X-Tenant-Id: {TENANT}", url,
        ],
        check=True, capture_output=True, text=True,
    ).stdout
    data = json.loads(out)
    codes = data.get("statusCodeDistribution", {})
    if set(codes) != {"200"}:
        raise RuntimeError(f"latency run saw non-200 answers: {codes}")
    pct = data["latencyPercentiles"]
    return {
        "rps": data["summary"]["requestsPerSec"],
        "p50_ms": pct["p50"] * 1000,
        "p99_ms": pct["p99"] * 1000,
        "max_ms": data["summary"]["slowest"] * 1000,
    }


def peak_rss_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_mode(mode, set_script):
    proc, base = start_api(mode)
    try:
        seed(base)
        get_url = f"{base}/internal/cache/get/{KEY}"
        set_url = f"{base}/internal/cache/set"
        rows = {"redis_get": [], "ours_get": [], "redis_set": [], "ours_set": []}
        for run in range(1, RUNS + 1):
            log(f"{mode}: run {run}/{RUNS}")
            rows["redis_get"].append(redis_benchmark("get"))
            rows["ours_get"].append(wrk(get_url))
            rows["redis_set"].append(redis_benchmark("set"))
            rows["ours_set"].append(wrk(set_url, set_script))
        log(f"{mode}: latency at {RATE} req/s for {LATENCY_DURATION}s")
        latency = oha_fixed_rate(get_url)
        return {
            "mode": mode,
            "runs": rows,
            "median": {k: statistics.median(v) for k, v in rows.items()},
            "latency": latency,
            "peak_rss_mb": peak_rss_mb(proc.pid),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def main():
    ensure_tools()
    log("building release cache-api")
    subprocess.run(
        ["cargo", "build", "--release", "--locked", "-p", "cache-api"], cwd=ROOT, check=True
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        body = json.dumps({"key": KEY, "value": VALUE, "ttl": 0})
        f.write(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(body)}\n"
        )
        set_script = f.name
    results = [bench_mode(mode, set_script) for mode in MODES]
    os.unlink(set_script)

    print()
    print(f"cache-api data plane: {CONNECTIONS} connections, {RUNS} alternating runs of "
          f"{DURATION}s, medians; 100-byte values")
    print()
    print("| redis client | redis GET/s | ours GET/s | ratio | redis SET/s | ours SET/s | ratio "
          f"| p50 @{RATE}/s | p99 @{RATE}/s | peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        m, lat = r["median"], r["latency"]
        print(
            f"| {r['mode']} | {m['redis_get']:,.0f} | {m['ours_get']:,.0f} "
            f"| {m['ours_get'] / m['redis_get']:.2f} | {m['redis_set']:,.0f} "
            f"| {m['ours_set']:,.0f} | {m['ours_set'] / m['redis_set']:.2f} "
            f"| {lat['p50_ms']:.2f} ms | {lat['p99_ms']:.2f} ms | {r['peak_rss_mb']:.1f} MB |"
        )
    out_dir = ROOT / "bench/results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"data-plane-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"\nraw figures: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

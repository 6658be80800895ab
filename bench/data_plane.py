#!/usr/bin/env python3
"""Data-plane benchmark of cache-api against the machine's floors, in one run.

Builds the release api and the `http_floor` example (the same server stack
answering a fixed 100-byte body: the machine's HTTP ceiling), starts both,
and alternates, RUNS times:

  redis-benchmark -t get -c 50 -d SIZE  |  wrk GET /internal/cache/get/{key}
      for SIZE in 100, 1024 and 10240 bytes (incompressible values)
  wrk GET on the empty handler
  redis-benchmark -t set -c 50 -d 100   |  wrk POST /internal/cache/set
  redis-benchmark EVALSHA of the accounting write script alone (the
      ceiling of a write that keeps the tenant's quota exact)

then measures latency percentiles at a fixed rate with oha (latency
correction, so a stalled server is not hidden by coordinated omission) on
the internal GET and on the empty handler, the CPU each process spends per
request (the empty handler, an unknown path, `GET /api/v1/cache/ping`, the
internal GET, redis-benchmark GET: what a request costs with and without
Redis), reads the api's peak RSS (VmHWM)
and, where `perf` works, records a flamegraph of the api under a GET load.
Prints medians and the ratios measured in the same run.

Environment: RUNS (3), DURATION seconds per throughput run (10),
CONNECTIONS (50), RATE for the latency runs (2000), LATENCY_DURATION (20),
MODES (multiplexed; also: pool), SIZES (100,1024,10240), FLAMEGRAPH (1),
CPU_SPLIT (1: the CPU per request),
REDIS_HOST/REDIS_PORT (127.0.0.1:6379).
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
MODES = os.environ.get("MODES", "multiplexed").split(",")
SIZES = [int(x) for x in os.environ.get("SIZES", "100,1024,10240").split(",")]
FLAMEGRAPH = os.environ.get("FLAMEGRAPH", "1") == "1"
CPU_SPLIT = os.environ.get("CPU_SPLIT", "1") == "1"
REDIS_HOST = os.environ.get("REDIS_HOST", "127.0.0.1")
REDIS_PORT = os.environ.get("REDIS_PORT", "6379")
TOKEN = "bench-token"
TENANT = "bench"
KEY = "bench:value"
# A JSON string of 98 characters: 100 bytes of compact JSON, like -d 100.
VALUE = "x" * 98


def key_of(size):
    return KEY if size == 100 else f"{KEY}:{size}"


def value_of(size):
    """A JSON string of `size` bytes of compact JSON that LZ4 cannot shrink
    (so it is stored and served as it is, like redis-benchmark's values)."""
    if size == 100:
        return VALUE
    state, out = 0x9E3779B97F4A7C15, []
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    for _ in range(size - 2):
        state ^= (state << 13) & 0xFFFFFFFFFFFFFFFF
        state ^= state >> 7
        state ^= (state << 17) & 0xFFFFFFFFFFFFFFFF
        out.append(alphabet[state % len(alphabet)])
    return "".join(out)


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


def seed(base, size=100):
    seed_key(base, key_of(size), value_of(size))


def seed_key(base, key, value):
    """Stores `value` (no expiry) under `key` through the api at `base`."""
    body = json.dumps({"key": key, "value": value, "ttl": 0}).encode()
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


def redis_benchmark(test, size=100):
    out = subprocess.run(
        [
            "redis-benchmark", "-h", REDIS_HOST, "-p", REDIS_PORT,
            "-t", test, "-c", str(CONNECTIONS), "-d", str(size),
            "-n", str(200_000), "--csv",
        ],
        check=True, capture_output=True, text=True,
    ).stdout
    return redis_benchmark_rate(out, test)


def redis_benchmark_rate(out, test):
    """Requests per second of `test` in redis-benchmark's `--csv` output."""
    for line in out.splitlines():
        cells = [c.strip('"') for c in line.split(",")]
        if cells[0].upper().startswith(test.upper()):
            return float(cells[1])
    raise RuntimeError(f"no {test} line in redis-benchmark output: {out}")


def redis_benchmark_write_script(sha):
    """The accounting write script alone (EVALSHA, no HTTP), writing 100 B values."""
    value = 'J"' + "x" * 98 + '"'
    tag = "{" + TENANT + "}"
    out = subprocess.run(
        [
            "redis-benchmark", "-h", REDIS_HOST, "-p", REDIS_PORT,
            "-c", str(CONNECTIONS), "-n", str(200_000), "--csv",
            "EVALSHA", sha, "4", f"q:{tag}:usage", f"q:{tag}:exp", f"q:{tag}:expz",
            f"c:{tag}:bench:script", "0", "0", "0", str(len(f"c:{tag}:")), "", "0", value, "0", "0",
        ],
        check=True, capture_output=True, text=True,
    ).stdout
    return redis_benchmark_rate(out, "EVALSHA")


def wrk_command(url, script=None, tenant=TENANT):
    cmd = [
        "wrk", "-t2", f"-c{CONNECTIONS}", f"-d{DURATION}s",
        "-H", f"X-Service-Token: {TOKEN}", "-H", f"X-Tenant-Id: {tenant}",
    ]
    if script:
        cmd += ["-s", script]
    return cmd + [url]


def wrk_rate(out, expect_ok=True):
    if expect_ok and "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def wrk(url, script=None, tenant=TENANT):
    out = subprocess.run(wrk_command(url, script, tenant), check=True,
                         capture_output=True, text=True).stdout
    return wrk_rate(out)


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


def cpu_seconds(pid):
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_pid():
    """Redis's pid when it runs on this machine (its CPU is then measured)."""
    out = subprocess.run(["redis-cli", "-h", REDIS_HOST, "-p", REDIS_PORT, "info", "server"],
                         capture_output=True, text=True).stdout
    match = re.search(r"process_id:(\d+)", out)
    if not match:
        return None
    pid = int(match.group(1))
    comm = Path(f"/proc/{pid}/comm")
    return pid if comm.exists() and comm.read_text().startswith("redis") else None


def cpu_per_request(cmd, parse, servers):
    """Runs the load `cmd` (DURATION seconds of it) and answers its rate
    and the CPU microseconds per request of each of `servers` (name: pid)
    and of the load generator, sampled over the middle of the run."""
    load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    pids = dict(servers, load=load.pid)
    time.sleep(1.5)
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    time.sleep(max(2.0, DURATION - 3.0))
    used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    window = time.monotonic() - started
    out, _ = load.communicate(timeout=DURATION + 60)
    rate = parse(out)
    return {"rps": rate,
            "us_per_request": {name: cpu * 1e6 / (rate * window) for name, cpu in used.items()}}


def cpu_split(api_pid, floor_pid, base, floor_base, redis_rate):
    """Where a request's CPU goes: the same measurement on routes that do
    ever more (the empty handler; every middleware and no Redis; one Redis
    round trip; the GET), and on redis-benchmark GET itself."""
    redis = redis_pid()
    with_redis = {"api": api_pid, **({"redis": redis} if redis else {})}
    rows = {
        "empty handler": cpu_per_request(wrk_command(floor_base + "/"), wrk_rate,
                                         {"api": floor_pid}),
        "unknown path (404: every middleware, no Redis)": cpu_per_request(
            wrk_command(base + "/no/such/route"), lambda out: wrk_rate(out, expect_ok=False),
            {"api": api_pid}),
        "GET /api/v1/cache/ping (one PING, no auth)": cpu_per_request(
            wrk_command(base + "/api/v1/cache/ping"), wrk_rate, with_redis),
        "internal GET, 100 B": cpu_per_request(
            wrk_command(f"{base}/internal/cache/get/{KEY}"), wrk_rate, with_redis),
    }
    requests = int(redis_rate * DURATION) if redis_rate else 1_000_000
    rows["redis-benchmark GET"] = cpu_per_request(
        ["redis-benchmark", "-h", REDIS_HOST, "-p", REDIS_PORT, "-t", "get",
         "-c", str(CONNECTIONS), "-d", "100", "-n", str(requests), "--csv"],
        lambda out: redis_benchmark_rate(out, "get"),
        {"redis": redis} if redis else {})
    return rows


def peak_rss_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_floor():
    port = free_port()
    proc = subprocess.Popen(
        [str(ROOT / "target/release/examples/http_floor"), f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(base + "/", timeout=1)
            return proc, base
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("http_floor did not start")


def flamegraph(pid, url, out_svg):
    """perf samples of the api under a wrk GET load, folded into an SVG
    (inferno). Returns the SVG's path, or why there is none."""
    if not shutil.which("perf"):
        return "no perf on this machine"
    for tool in ("inferno-collapse-perf", "inferno-flamegraph"):
        if not shutil.which(tool):
            log("installing inferno from crates.io (one-time)")
            subprocess.run(["cargo", "install", "inferno", "--locked"], check=True)
            break
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "perf.data"
        rec = subprocess.Popen(
            ["perf", "record", "-F", "499", "-g", "-o", str(data), "-p", str(pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        time.sleep(0.5)
        wrk(url)
        rec.send_signal(2)
        _, err = rec.communicate(timeout=60)
        if rec.returncode not in (0, -2) or not data.exists():
            return f"perf record failed: {err.strip()[:200]}"
        script = subprocess.run(["perf", "script", "-i", str(data)], capture_output=True, check=True)
        folded = subprocess.run(["inferno-collapse-perf"], input=script.stdout,
                                capture_output=True, check=True)
        svg = subprocess.run(["inferno-flamegraph", "--title", "cache-api: internal GET under wrk"],
                             input=folded.stdout, capture_output=True, check=True)
        out_svg.write_bytes(svg.stdout)
    return str(out_svg.relative_to(ROOT))


def bench_mode(mode, set_script, floor, floor_base, stamp):
    proc, base = start_api(mode)
    try:
        for size in SIZES:
            seed(base, size)
        get_url = lambda size: f"{base}/internal/cache/get/{key_of(size)}"  # noqa: E731
        set_url = f"{base}/internal/cache/set"
        rows = {"floor_get": [], "redis_set": [], "redis_write_script": [], "ours_set": []}
        sha = subprocess.run(
            [str(ROOT / "target/release/examples/write_script_sha")],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        for size in SIZES:
            rows[f"redis_get_{size}"] = []
            rows[f"ours_get_{size}"] = []
        for run in range(1, RUNS + 1):
            log(f"{mode}: run {run}/{RUNS}")
            for size in SIZES:
                rows[f"redis_get_{size}"].append(redis_benchmark("get", size))
                rows[f"ours_get_{size}"].append(wrk(get_url(size)))
            rows["floor_get"].append(wrk(floor_base + "/"))
            rows["redis_set"].append(redis_benchmark("set"))
            rows["redis_write_script"].append(redis_benchmark_write_script(sha))
            rows["ours_set"].append(wrk(set_url, set_script))
        log(f"{mode}: latency at {RATE} req/s for {LATENCY_DURATION}s, ours then the empty handler")
        latency = oha_fixed_rate(get_url(100))
        floor_latency = oha_fixed_rate(floor_base + "/")
        split = None
        if CPU_SPLIT:
            log(f"{mode}: CPU per request, route by route")
            redis_rate = statistics.median(rows["redis_get_100"]) if 100 in SIZES else None
            split = cpu_split(proc.pid, floor.pid, base, floor_base, redis_rate)
        rss = peak_rss_mb(proc.pid)
        flame = "not asked for (FLAMEGRAPH=0)"
        if FLAMEGRAPH:
            log(f"{mode}: flamegraph of the api under a GET load")
            flame = flamegraph(proc.pid, get_url(100),
                               ROOT / "bench/results" / f"flame-get-{mode}-{stamp}.svg")
        return {
            "mode": mode,
            "runs": rows,
            "median": {k: statistics.median(v) for k, v in rows.items()},
            "latency": latency,
            "floor_latency": floor_latency,
            "peak_rss_mb": rss,
            "cpu_per_request": split,
            "flamegraph": flame,
        }
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def main():
    ensure_tools()
    log("building release cache-api and the empty handler")
    subprocess.run(
        ["cargo", "build", "--release", "--locked", "-p", "cache-api", "--bin", "cache-api",
         "--example", "http_floor", "--example", "write_script_sha"], cwd=ROOT, check=True
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        body = json.dumps({"key": KEY, "value": VALUE, "ttl": 0})
        f.write(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(body)}\n"
        )
        set_script = f.name
    out_dir = ROOT / "bench/results"
    out_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    log("allocations per request (cargo bench -p cache-api --bench allocations)")
    allocations = subprocess.run(
        ["cargo", "bench", "--locked", "-p", "cache-api", "--bench", "allocations"],
        cwd=ROOT, check=True, capture_output=True, text=True,
        env=dict(os.environ, REDIS_URL=f"redis://{REDIS_HOST}:{REDIS_PORT}",
                 QUEUE_PREFIX=f"bench-allocations-{os.getpid()}"),
    ).stdout.strip()
    floor, floor_base = start_floor()
    try:
        results = [bench_mode(mode, set_script, floor, floor_base, stamp) for mode in MODES]
    finally:
        floor.terminate()
        floor.wait(timeout=15)
    os.unlink(set_script)

    print()
    print(f"cache-api data plane: {CONNECTIONS} connections, {RUNS} alternating runs of "
          f"{DURATION}s, medians")
    for r in results:
        m, lat, flat = r["median"], r["latency"], r["floor_latency"]
        print()
        print(f"redis client `{r['mode']}`")
        print()
        print("| figure | ops/s | ratio | target |")
        print("|---|---|---|---|")
        print(f"| empty axum handler (HTTP ceiling) | {m['floor_get']:,.0f} | | |")
        for size in SIZES:
            ours, theirs = m[f"ours_get_{size}"], m[f"redis_get_{size}"]
            print(f"| redis-benchmark GET / internal GET, {size} B | {theirs:,.0f} / {ours:,.0f} "
                  f"| {ours / theirs:.2f}× redis, {ours / m['floor_get']:.2f}× empty handler | ≥ 0.8× redis |")
        print(f"| redis-benchmark SET / internal SET, 100 B | {m['redis_set']:,.0f} / {m['ours_set']:,.0f} "
              f"| {m['ours_set'] / m['redis_set']:.2f}× | ≥ 0.7× |")
        print(f"| redis-benchmark of the accounting write script alone (EVALSHA, no HTTP), 100 B "
              f"| {m['redis_write_script']:,.0f} | {m['redis_write_script'] / m['redis_set']:.2f}× SET: "
              f"the ceiling of an exactly accounted write | |")
        print(f"| p50 / p99 at {RATE}/s: internal GET | {lat['p50_ms']:.2f} / {lat['p99_ms']:.2f} ms "
              f"| {lat['p99_ms'] / flat['p99_ms']:.2f}× the empty handler's p99 | ≤ 1.3× |")
        print(f"| p50 / p99 at {RATE}/s: empty handler | {flat['p50_ms']:.2f} / {flat['p99_ms']:.2f} ms | | |")
        print(f"| api peak RSS after the runs | {r['peak_rss_mb']:.1f} MiB | | < 48 MiB |")
        print(f"| flamegraph | {r['flamegraph']} | | |")
        if r["cpu_per_request"]:
            cores = os.cpu_count()
            print()
            print("CPU per request (µs of each process's CPU time, over the middle of one "
                  f"{DURATION}s run; 0.8× redis-benchmark GET leaves the three processes "
                  f"{cores * 1e6 / (0.8 * m.get('redis_get_100', float('nan'))):.1f} µs "
                  f"a request on {cores} cores)")
            print()
            print("| route | req/s | server µs | Redis µs | load generator µs |")
            print("|---|---|---|---|---|")
            for route, row in r["cpu_per_request"].items():
                us = row["us_per_request"]
                cell = lambda name: f"{us[name]:.1f}" if name in us else "—"  # noqa: E731
                print(f"| {route} | {row['rps']:,.0f} | {cell('api')} | {cell('redis')} "
                      f"| {cell('load')} |")
    print()
    print(allocations)
    out = out_dir / f"data-plane-{stamp}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"\nraw figures: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

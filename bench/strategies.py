#!/usr/bin/env python3
"""Cache strategies benchmark (namespaces, near cache, leases), in one run.

Builds the release api and the `lease_stampede` example, applies the
migrations to DATABASE_URL, creates an admin key for a bench tenant and its
namespaces (`nc:` near-cached, `plain:` not), starts two api instances (A
and B) and alternates, RUNS times, on A:

  redis-benchmark -t get -c 50 -d 100
  wrk GET on an empty axum handler (the machine's HTTP ceiling)
  wrk GET of a key in `nc:` (near cache on) and in `plain:` (off)
  wrk GET and SET of a key in `user:` (a namespace: its TTL with jitter,
      its accounting) and in `misc:` (no namespace)

then measures the invalidation delay between instances (A writes a key of
`nc:`, B is polled until it serves the new value; ITERATIONS times) and a
stampede of 1000 concurrent lease reads of one missing key (one holder loads
for 50 ms and sets it; the others wait for its value). Prints medians of
the figures, the median over runs of each ratio taken within one run, and
each target.

Environment: RUNS (3), DURATION seconds per throughput run (10), CONNECTIONS
(50), ITERATIONS of the invalidation delay (500), CALLERS of the stampede
(1000), REDIS_HOST/REDIS_PORT (127.0.0.1:6379), DATABASE_URL.
"""

import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data_plane as dp  # noqa: E402

ROOT = dp.ROOT
RUNS = int(os.environ.get("RUNS", "3"))
ITERATIONS = int(os.environ.get("ITERATIONS", "500"))
CALLERS = int(os.environ.get("CALLERS", "1000"))
TENANT = "bench-strategies"
TOKEN = dp.TOKEN
VALUE = "x" * 98
API = ROOT / "target/release/cache-api"
DATABASE_URL = os.environ.get("DATABASE_URL",
                              "postgres://postgres:postgres@127.0.0.1:5432/cache_bench")


def api_env(port):
    return dict(
        os.environ,
        SERVICE_PORT=str(port),
        BIND_ADDRESS="127.0.0.1",
        INTERNAL_SERVICE_TOKEN=TOKEN,
        REDIS_URL=f"redis://{dp.REDIS_HOST}:{dp.REDIS_PORT}",
        QUEUE_PREFIX=f"bench-strategies-{os.getpid()}",
        DATABASE_URL=DATABASE_URL,
        RUST_LOG="warn",
    )


def start_api():
    port = dp.free_port()
    proc = subprocess.Popen([str(API)], env=api_env(port),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    dp.wait_ready(proc, base)
    return proc, base


def call(base, method, path, body=None, headers=None):
    req = urllib.request.Request(base + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=5) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def internal(base, method, path, body=None):
    return call(base, method, path, body, {"X-Service-Token": TOKEN, "X-Tenant-Id": TENANT})


def near_hits(base):
    text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith("cache_near_cache_hits_total "):
            return float(line.split()[1])
    return 0.0


def wait_near_cache(base, key):
    """Waits until `base` serves `key` from its near cache (tracking is on)."""
    for _ in range(100):
        before = near_hits(base)
        internal(base, "GET", f"/internal/cache/get/{key}")
        internal(base, "GET", f"/internal/cache/get/{key}")
        if near_hits(base) > before:
            return
        time.sleep(0.1)
    sys.exit(f"{base} never served {key} from its near cache")


def set_script(key):
    f = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    body = json.dumps({"key": key, "value": VALUE})
    f.write('wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(body)}\n")
    f.close()
    return f.name


def wrk(url, script=None):
    return dp.wrk(url, script, TENANT)


def invalidation_delays(a, b):
    """Milliseconds from A's write acknowledged to B serving the new value."""
    key = "nc:invalidation"
    conn_a = http.client.HTTPConnection(a.split("//")[1])
    conn_b = http.client.HTTPConnection(b.split("//")[1])
    headers = {"X-Service-Token": TOKEN, "X-Tenant-Id": TENANT,
               "Content-Type": "application/json"}

    def write(i):
        conn_a.request("POST", "/internal/cache/set",
                       json.dumps({"key": key, "value": i}), headers)
        answer = conn_a.getresponse()
        answer.read()
        assert answer.status == 200

    def read():
        conn_b.request("GET", f"/internal/cache/get/{key}", headers=headers)
        answer = conn_b.getresponse()
        return json.loads(answer.read())["value"]

    write(-1)
    wait_near_cache(b, key)
    delays = []
    for i in range(ITERATIONS):
        assert read() is not None  # B holds the current value in memory
        write(i)
        acked = time.perf_counter()
        while read() != i:
            pass
        delays.append((time.perf_counter() - acked) * 1000)
    return delays


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main():
    dp.ensure_tools()
    dp.log("building release cache-api and the lease_stampede example")
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "cache-api",
                    "--bin", "cache-api", "--example", "lease_stampede",
                    "--example", "http_floor"], cwd=ROOT, check=True)
    server, name = DATABASE_URL.rsplit("/", 1)
    # Its own database (created when missing): the bench's keys and namespaces stay there.
    subprocess.run(["psql", f"{server}/postgres", "-qc", f"create database {name}"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = api_env(0)
    subprocess.run([str(API), "migrate"], check=True, stdout=subprocess.DEVNULL, env=env)
    admin = subprocess.run([str(API), "keys", "create", "--tenant", TENANT, "--role", "admin",
                            "--name", "bench-strategies"], env=env,
                           check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    a, base_a = start_api()
    b, base_b = start_api()
    floor, base_floor = dp.start_floor()
    scripts = []
    try:
        auth = {"Authorization": f"Bearer {admin}"}
        for body in ({"prefix": "nc:", "nearCache": True, "ttl": 0},
                     {"prefix": "plain:", "ttl": 0}):
            status, answer = call(base_a, "POST", "/api/v1/cache/namespaces", body, auth)
            if status == 409:
                prefix = body.pop("prefix")
                status, answer = call(base_a, "PUT", f"/api/v1/cache/namespaces/{prefix}",
                                      body, auth)
            assert status in (200, 201), answer
        for key in ("nc:value", "plain:value", "user:value", "misc:value"):
            assert internal(base_a, "POST", "/internal/cache/set",
                            {"key": key, "value": VALUE, "ttl": 0})[0] == 200
        dp.log("waiting for the near cache to track the new namespace")
        wait_near_cache(base_a, "nc:value")
        get = lambda key: f"{base_a}/internal/cache/get/{key}"  # noqa: E731
        set_url = f"{base_a}/internal/cache/set"
        scripts = [set_script("user:w"), set_script("misc:w")]
        rows = {k: [] for k in ("redis_get", "floor_get", "near_get", "plain_get", "ns_get",
                                "bare_get", "ns_set", "bare_set")}
        for run in range(1, RUNS + 1):
            dp.log(f"run {run}/{RUNS}")
            rows["redis_get"].append(dp.redis_benchmark("get"))
            rows["floor_get"].append(wrk(base_floor + "/"))
            rows["near_get"].append(wrk(get("nc:value")))
            rows["plain_get"].append(wrk(get("plain:value")))
            rows["ns_get"].append(wrk(get("user:value")))
            rows["bare_get"].append(wrk(get("misc:value")))
            rows["ns_set"].append(wrk(set_url, scripts[0]))
            rows["bare_set"].append(wrk(set_url, scripts[1]))
        m = {k: statistics.median(v) for k, v in rows.items()}
        # Each ratio is taken within a run, then the median over runs.
        ratio = lambda a, b: statistics.median(  # noqa: E731
            x / y for x, y in zip(rows[a], rows[b]))
        dp.log(f"invalidation delay A → B, {ITERATIONS} writes")
        delays = invalidation_delays(base_a, base_b)
        dp.log(f"stampede: {CALLERS} concurrent lease reads of one missing key")
        stampede = json.loads(subprocess.run(
            [str(ROOT / "target/release/examples/lease_stampede")],
            env=dict(os.environ, BASE=base_a, TOKEN=TOKEN, TENANT=TENANT, CALLERS=str(CALLERS)),
            check=True, capture_output=True, text=True).stdout)
    finally:
        for proc in (a, b, floor):
            proc.terminate()
            proc.wait(timeout=15)
        for script in scripts:
            os.unlink(script)

    print()
    print(f"cache strategies: {dp.CONNECTIONS} connections, {RUNS} alternating runs of "
          f"{dp.DURATION}s, medians")
    print()
    print("| figure | measured | ratio | target |")
    print("|---|---|---|---|")
    print(f"| GET, near cache on / off (100 B) | {m['near_get']:,.0f} / {m['plain_get']:,.0f} ops/s "
          f"| {ratio('near_get', 'plain_get'):.2f}× | ≥ 2× |")
    print(f"| GET near cache on / redis-benchmark GET | {m['near_get']:,.0f} / {m['redis_get']:,.0f} "
          f"ops/s | {ratio('near_get', 'redis_get'):.2f}× | > 1× |")
    print(f"| GET near cache on / empty axum handler (the HTTP ceiling) | {m['near_get']:,.0f} / "
          f"{m['floor_get']:,.0f} ops/s | {ratio('near_get', 'floor_get'):.2f}× | |")
    print(f"| GET in a namespace / in none | {m['ns_get']:,.0f} / {m['bare_get']:,.0f} ops/s "
          f"| {ratio('ns_get', 'bare_get'):.2f}× | ≥ 0.95× |")
    print(f"| SET in a namespace (TTL jitter, accounting) / in none | {m['ns_set']:,.0f} / "
          f"{m['bare_set']:,.0f} ops/s | {ratio('ns_set', 'bare_set'):.2f}× | ≥ 0.95× |")
    print(f"| invalidation delay A → B, p50 / p99 / max | {percentile(delays, 50):.2f} / "
          f"{percentile(delays, 99):.2f} / {max(delays):.2f} ms | | p99 < 5 ms |")
    print(f"| stampede of {stampede['callers']}: leases granted (loads) | "
          f"{stampede['leasesGranted']} | | exactly 1 |")
    print(f"| stampede: waiters served with the value / other answers | "
          f"{stampede['waitersServed']} / {stampede['otherStatuses']} | | "
          f"{stampede['callers'] - 1} / 0 |")
    print(f"| stampede: last waiter answered after the holder's write | "
          f"{stampede['lastServedAfterWriteMs']:.2f} ms | | ≤ 10 ms |")
    out_dir = ROOT / "bench/results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"strategies-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({"runs": rows, "median": m, "delays_ms": delays,
                               "stampede": stampede}, indent=2))
    print(f"\nraw figures: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

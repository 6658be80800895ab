#!/usr/bin/env python3
"""Tenant-safety benchmark: what limits cost and what they protect, in one run.

Builds the release api, creates an operator key (cache-api keys create) and
starts two apis against the local Redis and PostgreSQL, then:

  1. overhead: alternates, RUNS times, wrk -c CONNECTIONS on the internal
     GET and SET routes of an api with every limit off (TENANT_MAX_KEYS=0,
     TENANT_MAX_BYTES=0, TENANT_RATE_LIMIT=0) and of one with quotas and a
     rate limit on (set so high it never refuses: every check runs, none
     bites), beside redis-benchmark as the floor: the ratio on/off is the
     figure (target >= 0.95);
  2. noisy neighbour: a quiet tenant's GETs at QUIET_RATE/s (oha, latency
     corrected) alone, then while a flooding tenant sends as fast as oha can
     at FLOOD_RATE req/s (FLOOD_CONNECTIONS connections), first unlimited and then
     limited to FLOOD_LIMIT req/s through PUT /api/v1/admin/tenants/{t}/limits:
     the quiet tenant's p99 during each flood against alone (target: limited
     within 1.5x); beside them the same flood on a route that does not exist
     (404, the cheapest answer the HTTP stack gives: the floor on this machine);
  3. accounting: about OPERATIONS writes, overwrites, deletes and expiries
     on one tenant (mset batches of 1000, a third of the keys with a 2 s TTL,
     wrk DELETEs over random ids), then, once every short TTL has run out
     and settled, the tenant's usage against a full SCAN of its keys (keys
     and bytes): the error is the figure (target < 1 %).

Environment: PARTS (overhead,neighbour,accounting), RUNS (3), DURATION (10),
CONNECTIONS (50), QUIET_RATE (1000), FLOOD_RATE (40000), FLOOD_CONNECTIONS (50),
FLOOD_LIMIT (1000), LOAD_SECONDS (15), OPERATIONS (1000000).
"""

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from data_plane import ensure_tools, free_port, log, redis_benchmark, wait_ready  # noqa: E402

PARTS = os.environ.get("PARTS", "overhead,neighbour,accounting").split(",")
RUNS = int(os.environ.get("RUNS", "3"))
DURATION = int(os.environ.get("DURATION", "10"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "50"))
QUIET_RATE = int(os.environ.get("QUIET_RATE", "1000"))
FLOOD_CONNECTIONS = int(os.environ.get("FLOOD_CONNECTIONS", "50"))
FLOOD_LIMIT = int(os.environ.get("FLOOD_LIMIT", "1000"))
FLOOD_RATE = int(os.environ.get("FLOOD_RATE", "40000"))
LOAD_SECONDS = int(os.environ.get("LOAD_SECONDS", "15"))
OPERATIONS = int(os.environ.get("OPERATIONS", "1000000"))
TOKEN = "bench-token"
DATABASE_URL = os.environ.get(
    "DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5432/cache_service_bench"
)
VALUE = "x" * 98
API = ROOT / "target/release/cache-api"


def start_api(**env_extra):
    port = free_port()
    env = dict(
        os.environ,
        SERVICE_PORT=str(port),
        BIND_ADDRESS="127.0.0.1",
        INTERNAL_SERVICE_TOKEN=TOKEN,
        DATABASE_URL=DATABASE_URL,
        QUEUE_PREFIX=f"bench-tenant-safety-{os.getpid()}",
        RUST_LOG="warn",
        **{k: str(v) for k, v in env_extra.items()},
    )
    proc = subprocess.Popen([str(API)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    wait_ready(proc, base)
    return proc, base


def call(base, method, path, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=60) as answer:
        return json.loads(answer.read() or b"null")


def internal(tenant):
    return {"X-Service-Token": TOKEN, "X-Tenant-Id": tenant}


def operator_key():
    out = subprocess.run(
        [str(API), "keys", "create", "--tenant", "ops", "--role", "operator", "--name", "bench"],
        env=dict(os.environ, DATABASE_URL=DATABASE_URL), check=True, capture_output=True,
        text=True,
    ).stdout
    return out.strip().splitlines()[-1]


def wrk(url, tenant, script=None, seconds=DURATION):
    cmd = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s",
           "-H", f"X-Service-Token: {TOKEN}", "-H", f"X-Tenant-Id: {tenant}"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], check=True, capture_output=True, text=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    raise RuntimeError(out)


def lua(text):
    f = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    f.write(text)
    f.close()
    return f.name


def overhead():
    tenant = "bench-overhead"
    off, off_base = start_api(TENANT_MAX_KEYS=0, TENANT_MAX_BYTES=0, TENANT_RATE_LIMIT=0)
    on, on_base = start_api(TENANT_MAX_KEYS=100_000, TENANT_MAX_BYTES=200 * 1024 * 1024,
                            TENANT_RATE_LIMIT=10_000_000)
    set_body = json.dumps({"key": "k", "value": VALUE, "ttl": 0})
    set_script = lua('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                     f"wrk.body = {json.dumps(set_body)}\n")
    try:
        call(off_base, "POST", "/internal/cache/set", json.loads(set_body), internal(tenant))
        rows = {k: [] for k in ("redis_get", "off_get", "on_get", "redis_set", "off_set", "on_set")}
        for run in range(1, RUNS + 1):
            log(f"overhead: run {run}/{RUNS}")
            rows["redis_get"].append(redis_benchmark("get"))
            rows["off_get"].append(wrk(f"{off_base}/internal/cache/get/k", tenant))
            rows["on_get"].append(wrk(f"{on_base}/internal/cache/get/k", tenant))
            rows["redis_set"].append(redis_benchmark("set"))
            rows["off_set"].append(wrk(f"{off_base}/internal/cache/set", tenant, set_script))
            rows["on_set"].append(wrk(f"{on_base}/internal/cache/set", tenant, set_script))
        m = {k: statistics.median(v) for k, v in rows.items()}
        return {"runs": rows, "median": m,
                "get_on_off": m["on_get"] / m["off_get"], "set_on_off": m["on_set"] / m["off_set"]}
    finally:
        os.unlink(set_script)
        for p in (off, on):
            p.terminate()
            p.wait(timeout=15)


def oha(url, tenant, rate=None, seconds=LOAD_SECONDS, connections=CONNECTIONS):
    cmd = ["oha", "--no-tui", "--output-format", "json", "-z", f"{seconds}s",
           "-c", str(connections), "-H", f"X-Service-Token: {TOKEN}",
           "-H", f"X-Tenant-Id: {tenant}"]
    if rate:
        cmd += ["-q", str(rate), "--latency-correction"]
    return subprocess.Popen(cmd + [url], stdout=subprocess.PIPE, text=True)


def oha_result(proc):
    out, _ = proc.communicate()
    data = json.loads(out)
    pct = data["latencyPercentiles"]
    return {"rps": data["summary"]["requestsPerSec"], "p50_ms": pct["p50"] * 1000,
            "p99_ms": pct["p99"] * 1000, "codes": data.get("statusCodeDistribution", {})}


def neighbour():
    proc, base = start_api(TENANT_RATE_LIMIT=0)
    quiet, noisy = "bench-quiet", f"bench-noisy-{os.getpid()}"
    key = operator_key()
    try:
        for tenant in (quiet, noisy):
            call(base, "POST", "/internal/cache/set", {"key": "k", "value": VALUE, "ttl": 0},
                 internal(tenant))
        get = f"{base}/internal/cache/get/k"
        results = {}
        unlimited = {"requestsPerSecond": None, "burst": None}
        limited = {"requestsPerSecond": FLOOD_LIMIT, "burst": FLOOD_LIMIT}
        # (name, what the flood asks for, the flooding tenant's limits). The
        # floor: the same flood on a route that does not exist, the cheapest
        # answer the HTTP stack gives (what no refusal can beat).
        rounds = [("alone", None, None),
                  ("flood of 404s (floor)", f"{base}/no-such-route", None),
                  ("flood unlimited", get, unlimited),
                  ("flood limited", get, limited)]
        for name, target, limits in rounds:
            if limits is not None:
                call(base, "PUT", f"/api/v1/admin/tenants/{noisy}/limits", limits,
                     {"Authorization": f"Bearer {key}"})
            log(f"neighbour: quiet tenant at {QUIET_RATE}/s, {name}")
            flood = None
            if target is not None:
                flood = oha(target, noisy, rate=FLOOD_RATE, seconds=LOAD_SECONDS + 2,
                            connections=FLOOD_CONNECTIONS)
                time.sleep(1)  # the flood is running before the measured window opens
            quiet_run = oha_result(oha(get, quiet, rate=QUIET_RATE))
            results[name] = {"quiet": quiet_run}
            if flood:
                results[name]["flood"] = oha_result(flood)
        alone = results["alone"]["quiet"]["p99_ms"]
        for r in results.values():
            r["p99_vs_alone"] = r["quiet"]["p99_ms"] / alone
        return results
    finally:
        proc.terminate()
        proc.wait(timeout=15)


SCAN_USAGE = """
local page = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', 10000)
local keys, bytes = 0, 0
for _, k in ipairs(page[2]) do
  local n = redis.call('STRLEN', k)
  -- The expiry header is not counted (see shared/src/codec.rs).
  if n > 9 and redis.call('GETRANGE', k, 0, 0) == 'T' then n = n - 9 end
  if n > 0 then keys = keys + 1; bytes = bytes + n + #k - tonumber(ARGV[3]) end
end
return {page[1], keys, bytes}
"""


def redis_cli(*args):
    return subprocess.run(["redis-cli", "--no-raw", *args], check=True, capture_output=True,
                          text=True).stdout


def scanned(tenant):
    cursor, keys, total = "0", 0, 0
    prefix = f"c:{{{tenant}}}:"
    while True:
        out = subprocess.run(["redis-cli", "EVAL", SCAN_USAGE, "0", cursor, prefix + "*",
                              str(len(prefix))], check=True, capture_output=True,
                             text=True).stdout.split()
        cursor, keys, total = out[0], keys + int(out[1]), total + int(out[2])
        if cursor == "0":
            return keys, total


def accounting():
    proc, base = start_api(TENANT_MAX_KEYS=0, TENANT_MAX_BYTES=0)
    tenant = f"bench-acct-{os.getpid()}"
    rng = random.Random(7)
    writes = OPERATIONS * 6 // 10
    ops = 0
    try:
        log(f"accounting: {writes} writes in batches of 1000")
        for start in range(0, writes, 1000):
            items = [{"key": f"k:{i}", "value": "v" * rng.randrange(1, 200),
                      "ttl": 2 if i % 3 == 0 else 3600} for i in range(start, start + 1000)]
            call(base, "POST", "/internal/cache/mset", {"items": items}, internal(tenant))
            ops += len(items)
        overwrites = OPERATIONS * 2 // 10
        log(f"accounting: {overwrites} overwrites with other sizes and TTLs")
        for _ in range(overwrites // 1000):
            items = [{"key": f"k:{i}", "value": "w" * rng.randrange(1, 300),
                      "ttl": rng.choice([2, 3600, 0])}
                     for i in rng.sample(range(writes), 1000)]
            call(base, "POST", "/internal/cache/mset", {"items": items}, internal(tenant))
            ops += len(items)
        deletes = OPERATIONS - ops
        log(f"accounting: about {deletes} deletes (wrk over random ids)")
        # Each wrk thread stops after its share of the deletes.
        script = lua(
            f'local done, share = 0, {max(deletes // 2, 1)}\n'
            'wrk.method = "DELETE"\n'
            f'request = function() return wrk.format(nil, "/internal/cache/delete/k:" '
            f'.. math.random(0, {writes - 1})) end\n'
            'response = function() done = done + 1 '
            'if done >= share then wrk.thread:stop() end end\n'
        )
        out = subprocess.run(["wrk", "-t2", "-c20", "-d120s", "-s", script,
                              "-H", f"X-Service-Token: {TOKEN}", "-H", f"X-Tenant-Id: {tenant}",
                              "--timeout", "5s", base + "/"], capture_output=True, text=True,
                             timeout=180).stdout
        os.unlink(script)
        done = next(int(line.split()[0]) for line in out.splitlines()
                    if "requests in" in line)
        ops += done
        log("accounting: waiting for the short TTLs to run out and settle (15 s)")
        time.sleep(15)
        # Read as GET /api/v1/cache/memory shows it (past expiry buckets settled).
        key = operator_key()
        shown = call(base, "GET", f"/api/v1/cache/memory?tenant={tenant}",
                     headers={"Authorization": f"Bearer {key}"})["quota"]
        keys, total = scanned(tenant)
        return {"operations": ops, "usage": {"keys": shown["keys"], "bytes": shown["bytes"]},
                "scan": {"keys": keys, "bytes": total},
                "key_error": abs(shown["keys"] - keys) / max(keys, 1),
                "byte_error": abs(shown["bytes"] - total) / max(total, 1)}
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        redis_cli("EVAL", "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do "
                  "redis.call('UNLINK', k) end return 0", "0", f"*{{{tenant}}}*")


def main():
    ensure_tools()
    log("building the release api")
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "cache-api"], cwd=ROOT,
                   check=True)
    subprocess.run([str(API), "migrate"], env=dict(os.environ, DATABASE_URL=DATABASE_URL),
                   check=True, stdout=subprocess.DEVNULL)
    results = {}
    if "overhead" in PARTS:
        r = results["overhead"] = overhead()
        m = r["median"]
        print(f"\nlimits off/on, {CONNECTIONS} connections, {RUNS} alternating runs of "
              f"{DURATION}s (medians)")
        print("| | redis-benchmark | limits off | limits on | on / off |")
        print("|---|---|---|---|---|")
        for op in ("get", "set"):
            print(f"| {op.upper()}/s | {m['redis_' + op]:,.0f} | {m['off_' + op]:,.0f} "
                  f"| {m['on_' + op]:,.0f} | {m['on_' + op] / m['off_' + op]:.3f} |")
    if "neighbour" in PARTS:
        r = results["neighbour"] = neighbour()
        print(f"\nquiet tenant at {QUIET_RATE} GET/s beside a tenant flooding at "
              f"{FLOOD_RATE} req/s ({FLOOD_CONNECTIONS} connections)")
        print("| round | quiet p50 | quiet p99 | p99 vs alone | flood req/s | flood answers |")
        print("|---|---|---|---|---|---|")
        for name, row in r.items():
            q, f = row["quiet"], row.get("flood")
            print(f"| {name} | {q['p50_ms']:.2f} ms | {q['p99_ms']:.2f} ms "
                  f"| x{row['p99_vs_alone']:.2f} | {f['rps']:,.0f} | {f['codes']} |"
                  if f else
                  f"| {name} | {q['p50_ms']:.2f} ms | {q['p99_ms']:.2f} ms | x1.00 | - | - |")
    if "accounting" in PARTS:
        r = results["accounting"] = accounting()
        print(f"\nusage accounting after {r['operations']:,} operations")
        print(f"usage {r['usage']} vs full SCAN {r['scan']}: key error "
              f"{r['key_error']:.4%}, byte error {r['byte_error']:.4%}")
    out_dir = ROOT / "bench/results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"tenant-safety-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"\nraw figures: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

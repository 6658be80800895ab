#!/usr/bin/env python3
"""A tenant flush against the size of the whole keyspace (issue 16's first
target: a tenant of 1 000 keys flushed in under 0.5 s in a Redis holding
2 000 000 keys of other tenants).

Starts a redis-server of its own (nothing on disk), the release api and
worker against it, and for each size in OTHERS (keys of other tenants,
loaded with `redis-cli --pipe`) writes 1 000 keys for one tenant through
`/internal/cache/mset`, flushes that tenant with `POST /api/v1/cache/flush`
and reads the job's own timing (`startedAt` → `finishedAt`) and the time
from the request to the job's end. Prints one row per size.

Environment: OTHERS (comma-separated, default 0,2000000), TENANT_KEYS
(1000), DATABASE_URL.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data_plane as dp  # noqa: E402
import strategies as st  # noqa: E402

ROOT = dp.ROOT
OTHERS = [int(n) for n in os.environ.get("OTHERS", "0,2000000").split(",") if n]
TENANT_KEYS = int(os.environ.get("TENANT_KEYS", "1000"))
DATABASE_URL = st.DATABASE_URL
TOKEN = dp.TOKEN
BIN = ROOT / "target/release"


def resp(*parts):
    out = [f"*{len(parts)}\r\n".encode()]
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def load_others(port, count):
    """`count` keys spread over 1 000 other tenants, as the service stores them."""
    value = b"T" + b"\x00" * 8 + b'J"' + b"x" * 90 + b'"'
    with tempfile.NamedTemporaryFile(delete=False) as f:
        for i in range(count):
            f.write(resp("SET", f"c:{{bulk-{i % 1000}}}:k{i}", value))
        path = f.name
    with open(path, "rb") as feed:
        subprocess.run(["redis-cli", "-p", str(port), "--pipe"], stdin=feed, check=True,
                       stdout=subprocess.DEVNULL)
    os.unlink(path)


def call(base, method, path, body=None, headers=None):
    return st.call(base, method, path, body, headers)


def parse_ts(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def flush_once(base, admin, tenant):
    internal = {"X-Service-Token": TOKEN, "X-Tenant-Id": tenant}
    for start in range(0, TENANT_KEYS, 500):
        items = [{"key": f"item:{i}", "value": i, "ttl": 0}
                 for i in range(start, min(start + 500, TENANT_KEYS))]
        status, answer = call(base, "POST", "/internal/cache/mset", {"items": items}, internal)
        assert status == 200, answer
    auth = {"Authorization": f"Bearer {admin}"}
    began = time.monotonic()
    status, answer = call(base, "POST", f"/api/v1/cache/flush?tenant={tenant}", {}, auth)
    assert status == 202, answer
    url = answer["statusUrl"]
    while True:
        status, job = call(base, "GET", url, None, auth)
        if job.get("status") in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.01)
    waited = time.monotonic() - began
    assert job["status"] == "succeeded", job
    ran = (parse_ts(job["finishedAt"]) - parse_ts(job["startedAt"])).total_seconds()
    return ran, waited, job.get("result")


def main():
    dp.log("building the release cache-api and cache-worker")
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "cache-api",
                    "-p", "cache-worker"], cwd=ROOT, check=True)
    server, name = DATABASE_URL.rsplit("/", 1)
    subprocess.run(["psql", f"{server}/postgres", "-qc", f"create database {name}"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = dp.free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [redis]
    try:
        for _ in range(100):
            if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                              text=True).stdout.strip() == "PONG":
                break
            time.sleep(0.1)
        env = dict(st.api_env(dp.free_port()), REDIS_URL=f"redis://127.0.0.1:{port}",
                   QUEUE_PREFIX=f"bench-flush-{os.getpid()}", WORKER_METRICS_PORT="0")
        subprocess.run([str(BIN / "cache-api"), "migrate"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        admin = subprocess.run(
            [str(BIN / "cache-api"), "keys", "create", "--tenant", "bench-ops",
             "--role", "operator", "--name", "bench-flush"],
            env=env, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        api = subprocess.Popen([str(BIN / "cache-api")], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        worker = subprocess.Popen([str(BIN / "cache-worker")], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs += [api, worker]
        base = f"http://127.0.0.1:{env['SERVICE_PORT']}"
        dp.wait_ready(api, base)
        rows = []
        loaded = 0
        for others in sorted(OTHERS):
            if others > loaded:
                dp.log(f"loading {others - loaded:,} keys of other tenants")
                load_others(port, others)  # the same names again: SET overwrites
                loaded = others
            dp.log(f"flushing a tenant of {TENANT_KEYS} keys beside {others:,} others")
            ran, waited, result = flush_once(base, admin, f"bench-flush-{others}")
            rows.append((others, ran, waited, result))
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)

    print()
    print(f"tenant flush of {TENANT_KEYS} keys, by keys of other tenants in the same Redis")
    print()
    print("| other tenants' keys | job ran | request to job end | result | target |")
    print("|---|---|---|---|---|")
    for others, ran, waited, result in rows:
        print(f"| {others:,} | {ran:.3f} s | {waited:.3f} s | {json.dumps(result)} | < 0.5 s |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A tenant flush against the size of the whole keyspace (issue 16's first
target: a tenant of 1 000 keys flushed in under 0.5 s in a Redis holding
2 000 000 keys of other tenants).

For each data plane in MODES — `standalone` (one redis-server: the flush
SCANs the whole keyspace), `cluster-1` (one redis-server with cluster mode
on, owning every slot: the flush reads the tenant slot's key index),
`cluster-3` (three primaries) — starts it (nothing on disk), a standalone
redis-server for the queues, the release api and worker, and for each size
in OTHERS (keys of other tenants, loaded with `redis-cli --pipe` into the
node owning each tenant's slot) writes 1 000 keys for one tenant through
`/internal/cache/mset`, flushes that tenant with `POST /api/v1/cache/flush`
and reads the job's own timing (`startedAt` → `finishedAt`) and the time
from the request to the job's end. Prints one row per mode and size.

Environment: MODES (comma-separated, default standalone,cluster-1), OTHERS
(default 0,2000000), TENANT_KEYS (1000), DATABASE_URL.
"""

import json
import socket
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
MODES = [m for m in os.environ.get("MODES", "standalone,cluster-1").split(",") if m]
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


def crc16(data):
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def slot_owners(port):
    """slot -> port of the primary serving it, from CLUSTER NODES."""
    text = subprocess.run(["redis-cli", "-p", str(port), "cluster", "nodes"],
                          capture_output=True, text=True, check=True).stdout
    owners = {}
    for line in text.splitlines():
        fields = line.split()
        if "master" not in fields[2]:
            continue
        owner = int(fields[1].split("@")[0].rsplit(":", 1)[1])
        for spec in fields[8:]:
            if spec.startswith("["):
                continue
            start, _, end = spec.partition("-")
            for slot in range(int(start), int(end or start) + 1):
                owners[slot] = owner
    return owners


def load_others(ports, count, cluster):
    """`count` keys spread over 1 000 other tenants, as the service stores them,
    each sent to the node owning its tenant's slot."""
    value = b"T" + b"\x00" * 8 + b'J"' + b"x" * 90 + b'"'
    owners = slot_owners(ports[0]) if cluster else {}
    files = {}
    port_of = {}
    for t in range(1000):
        tenant = f"bulk-{t}"
        port_of[tenant] = owners[crc16(tenant.encode()) % 16384] if cluster else ports[0]
    for i in range(count):
        tenant = f"bulk-{i % 1000}"
        port = port_of[tenant]
        f = files.get(port)
        if f is None:
            f = files[port] = tempfile.NamedTemporaryFile(delete=False)
        f.write(resp("SET", f"c:{{{tenant}}}:k{i}", value))
    for port, f in files.items():
        f.close()
        with open(f.name, "rb") as feed:
            subprocess.run(["redis-cli", "-p", str(port), "--pipe"], stdin=feed, check=True,
                           stdout=subprocess.DEVNULL)
        os.unlink(f.name)


def start_redis(port, *extra):
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                          text=True).stdout.strip() == "PONG":
            return proc
        time.sleep(0.1)
    sys.exit(f"redis-server on {port} did not start")


def free_run(count):
    """`count` consecutive free ports whose cluster bus ports are free too."""
    while True:
        base = 20000 + dp.free_port() % 20000
        ok = True
        for p in [base + i for i in range(count)] + [base + 10000 + i for i in range(count)]:
            try:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            except OSError:
                ok = False
        if ok:
            return base


def start_data_plane(mode, tmp):
    """The processes and ports of the data plane, and the REDIS_* settings."""
    if mode == "standalone":
        port = dp.free_port()
        return [start_redis(port)], [port], {"REDIS_URL": f"redis://127.0.0.1:{port}"}
    primaries = int(mode.split("-")[1])
    base = free_run(primaries)
    procs = [start_redis(base + i, "--cluster-enabled", "yes", "--dir", tmp,
                         "--cluster-config-file", f"nodes-{base + i}.conf")
             for i in range(primaries)]
    seeds = subprocess.run([str(ROOT / "scripts/redis-cluster"), "join", str(base),
                            str(primaries), "0"], check=True, capture_output=True,
                           text=True).stdout.strip()
    return procs, [base + i for i in range(primaries)], {"REDIS_URL": seeds,
                                                         "REDIS_MODE": "cluster"}


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


def run_mode(mode, tmp):
    procs = []
    rows = []
    try:
        data, ports, settings = start_data_plane(mode, tmp)
        procs += data
        queue_port = dp.free_port()
        procs.append(start_redis(queue_port))
        env = dict(st.api_env(dp.free_port()), **settings,
                   QUEUE_REDIS_URL=f"redis://127.0.0.1:{queue_port}",
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
        loaded = 0
        for others in sorted(OTHERS):
            if others > loaded:
                dp.log(f"{mode}: loading {others - loaded:,} keys of other tenants")
                load_others(ports, others, mode != "standalone")  # SET overwrites the same names
                loaded = others
            dp.log(f"{mode}: flushing a tenant of {TENANT_KEYS} keys beside {others:,} others")
            ran, waited, result = flush_once(base, admin, f"bench-flush-{mode}-{others}")
            rows.append((mode, others, ran, waited, result))
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)
    return rows


def main():
    dp.log("building the release cache-api and cache-worker")
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "cache-api",
                    "-p", "cache-worker"], cwd=ROOT, check=True)
    server, name = DATABASE_URL.rsplit("/", 1)
    subprocess.run(["psql", f"{server}/postgres", "-qc", f"create database {name}"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in MODES:
            rows += run_mode(mode, tmp)

    print()
    print(f"tenant flush of {TENANT_KEYS} keys, by keys of other tenants in the same data plane")
    print()
    print("| data plane | other tenants' keys | job ran | request to job end | result | target |")
    print("|---|---|---|---|---|---|")
    for mode, others, ran, waited, result in rows:
        print(f"| {mode} | {others:,} | {ran:.3f} s | {waited:.3f} s | {json.dumps(result)} "
              f"| < 0.5 s |")


if __name__ == "__main__":
    main()

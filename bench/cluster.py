#!/usr/bin/env python3
"""GET and SET throughput of the api on a 3-primary Redis Cluster, and on
one Redis with cluster mode on (owning every slot: a standalone deployment
that gets the per-tenant key index), against the api on one standalone
Redis, in the same run (issue 16's target: the 3-primary cluster within
80 % of standalone on this machine, where every process shares the same
CPUs, so the ratio shows the cluster client's overhead).

Starts a standalone redis-server, a one-node cluster and a 3-primary
cluster (no replicas, nothing on disk; joined by scripts/redis-cluster),
the release cache-api on each (the clusters' queues on the standalone
Redis), and runs wrk (`-c 50`) against each in turn, RUNS times: internal
GETs and SETs of 100-byte values, each request for one of three tenants
whose keys live on three different primaries. Prints the medians and the
ratios.

Environment: RUNS (3), DURATION (10 s), CONNECTIONS (50).
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data_plane as dp  # noqa: E402
import flush_scale as fs  # noqa: E402

ROOT = dp.ROOT
BIN = ROOT / "target/release"


def tenants_per_primary(owners, ports):
    """One tenant id per primary port, whose slot that primary serves."""
    found = {}
    i = 0
    while len(found) < len(ports):
        tenant = f"bench-cluster-{i}"
        owner = owners[fs.crc16(tenant.encode()) % 16384]
        found.setdefault(owner, tenant)
        i += 1
    return [found[p] for p in ports]


def lua_script(tenants, body=None):
    """A wrk script sending each request for the next tenant in turn."""
    lines = [f"local tenants = {{{', '.join(json.dumps(t) for t in tenants)}}}",
             "local n = 0",
             "request = function()",
             "  n = n + 1",
             "  wrk.headers['X-Tenant-Id'] = tenants[(n % #tenants) + 1]"]
    if body is not None:
        lines += ["  wrk.headers['Content-Type'] = 'application/json'",
                  f"  return wrk.format('POST', nil, nil, {json.dumps(json.dumps(body))})"]
    else:
        lines += ["  return wrk.format('GET')"]
    lines += ["end"]
    f = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    f.write("\n".join(lines) + "\n")
    f.close()
    return f.name


def start_api(settings):
    port = dp.free_port()
    env = dict(os.environ, SERVICE_PORT=str(port), BIND_ADDRESS="127.0.0.1",
               INTERNAL_SERVICE_TOKEN=dp.TOKEN, QUEUE_PREFIX=f"bench-cluster-{os.getpid()}",
               RUST_LOG="warn", **settings)
    proc = subprocess.Popen([str(BIN / "cache-api")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    dp.wait_ready(proc, base)
    return proc, base


def main():
    dp.ensure_tools()
    dp.log("building the release cache-api")
    # Built with the worker, as the other benchmarks do: the same features, one build.
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "cache-api",
                    "-p", "cache-worker"], cwd=ROOT, check=True)
    procs = []
    scripts = []
    planes = ("standalone", "cluster-1", "cluster-3")
    rows = {f"{plane}_{op}": [] for plane in planes for op in ("get", "set")}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            standalone_port = dp.free_port()
            procs.append(fs.start_redis(standalone_port))
            standalone_url = f"redis://127.0.0.1:{standalone_port}"
            apis = {"standalone": start_api({"REDIS_URL": standalone_url})}
            procs.append(apis["standalone"][0])
            for plane in planes[1:]:
                nodes, ports, settings = fs.start_data_plane(plane, tmp)
                procs += nodes
                if plane == "cluster-3":
                    tenants = tenants_per_primary(fs.slot_owners(ports[0]), ports)
                apis[plane] = start_api(dict(settings, QUEUE_REDIS_URL=standalone_url))
                procs.append(apis[plane][0])
            for _, base in apis.values():
                for tenant in tenants:
                    status, answer = fs.call(
                        base, "POST", "/internal/cache/set",
                        {"key": "bench:value", "value": "x" * 98, "ttl": 0},
                        {"X-Service-Token": dp.TOKEN, "X-Tenant-Id": tenant})
                    assert status == 200, answer
            get = lua_script(tenants)
            put = lua_script(tenants, {"key": "bench:set", "value": "x" * 98, "ttl": 0})
            scripts += [get, put]
            for run in range(1, dp.RUNS + 1):
                dp.log(f"run {run}/{dp.RUNS}")
                for plane in planes:
                    base = apis[plane][1]
                    rows[f"{plane}_get"].append(
                        dp.wrk(f"{base}/internal/cache/get/bench:value", get))
                    rows[f"{plane}_set"].append(dp.wrk(f"{base}/internal/cache/set", put))
        finally:
            for proc in reversed(procs):
                proc.terminate()
                proc.wait(timeout=30)
            for script in scripts:
                os.unlink(script)

    median = {k: statistics.median(v) for k, v in rows.items()}
    print()
    print(f"api throughput, wrk -c {dp.CONNECTIONS} -d {dp.DURATION}s, median of {dp.RUNS} "
          "runs taking turns, 3 tenants on 3 different primaries")
    print()
    print("| | standalone Redis | one-node cluster | 3-primary cluster "
          "| one-node / standalone | 3-primary / standalone | target (3-primary) |")
    print("|---|---|---|---|---|---|---|")
    for op in ("get", "set"):
        s, one, three = (median[f"{p}_{op}"] for p in planes)
        print(f"| internal {op.upper()} | {s:,.0f} req/s | {one:,.0f} req/s | {three:,.0f} req/s "
              f"| {one / s:.2f}x | {three / s:.2f}x | >= 0.80x |")
    print()
    print("runs:", json.dumps(rows))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""GET and SET throughput of the api on a 3-primary Redis Cluster against
the api on one standalone Redis, in the same run (issue 16's target: the
cluster within 80 % of standalone on this machine, where every process
shares the same CPUs, so the ratio shows the cluster client's overhead).

Starts a standalone redis-server and a 3-primary cluster (no replicas,
nothing on disk; joined by scripts/redis-cluster), the release cache-api
on each (the cluster's queues on the standalone Redis), and runs wrk
(`-c 50`) alternately against both, RUNS times: internal GETs and SETs of
100-byte values, each request for one of three tenants whose keys live on
the three different primaries. Prints the medians and the ratios.

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
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "cache-api"], cwd=ROOT,
                   check=True)
    procs = []
    scripts = []
    rows = {"standalone_get": [], "cluster_get": [], "standalone_set": [], "cluster_set": []}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            standalone_port = dp.free_port()
            procs.append(fs.start_redis(standalone_port))
            cluster, ports, cluster_settings = fs.start_data_plane("cluster-3", tmp)
            procs += cluster
            tenants = tenants_per_primary(fs.slot_owners(ports[0]), ports)
            standalone_url = f"redis://127.0.0.1:{standalone_port}"
            standalone = start_api({"REDIS_URL": standalone_url})
            clustered = start_api(dict(cluster_settings, QUEUE_REDIS_URL=standalone_url))
            procs += [standalone[0], clustered[0]]
            for _, base in (standalone, clustered):
                for tenant in tenants:
                    fs.call(base, "POST", "/internal/cache/set",
                            {"key": "bench:value", "value": "x" * 98, "ttl": 0},
                            {"X-Service-Token": dp.TOKEN, "X-Tenant-Id": tenant})
            get = lua_script(tenants)
            put = lua_script(tenants, {"key": "bench:set", "value": "x" * 98, "ttl": 0})
            scripts += [get, put]
            for run in range(1, dp.RUNS + 1):
                dp.log(f"run {run}/{dp.RUNS}")
                for name, (_, base) in (("standalone", standalone), ("cluster", clustered)):
                    rows[f"{name}_get"].append(
                        dp.wrk(f"{base}/internal/cache/get/bench:value", get))
                    rows[f"{name}_set"].append(dp.wrk(f"{base}/internal/cache/set", put))
        finally:
            for proc in reversed(procs):
                proc.terminate()
                proc.wait(timeout=30)
            for script in scripts:
                os.unlink(script)

    median = {k: statistics.median(v) for k, v in rows.items()}
    print()
    print(f"api throughput, wrk -c {dp.CONNECTIONS} -d {dp.DURATION}s, median of {dp.RUNS} "
          "alternating runs, 3 tenants on 3 different primaries")
    print()
    print("| | standalone Redis | 3-primary cluster | cluster / standalone | target |")
    print("|---|---|---|---|---|")
    for op in ("get", "set"):
        s, c = median[f"standalone_{op}"], median[f"cluster_{op}"]
        print(f"| internal {op.upper()} | {s:,.0f} req/s | {c:,.0f} req/s | {c / s:.2f}x "
              f"| >= 0.80x |")
    print()
    print("runs:", json.dumps(rows))


if __name__ == "__main__":
    main()

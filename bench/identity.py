#!/usr/bin/env python3
"""Identity and data protection benchmark (issue 15's targets), in one run.

Builds the release api, applies the migrations to DATABASE_URL, starts a
fake platform auth service (a valid answer for one token, as the platform's
would give), creates a reader key and two namespaces for a bench tenant —
`enc:` (encrypted) and `clear:` (not), both without compression — and
starts one api with DATA_ENCRYPTION_KEYS and AUTH_SERVICE_URL. Then:

  RUNS alternating runs of wrk GET (1 KB incompressible values) of a key
  in `enc:` and in `clear:`: the cost of decrypting on reads;
  oha at a fixed 2000 req/s (latency-corrected) on the public GET with the
  API key and with the platform token (verification cached, so warm), and
  the difference of their p99s.

Environment: RUNS (3), DURATION seconds per throughput run (10),
LATENCY_DURATION seconds per latency run (15), CONNECTIONS (50), RATE
(2000), REDIS_HOST/REDIS_PORT, DATABASE_URL.
"""

import base64
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data_plane as dp  # noqa: E402
import strategies as st  # noqa: E402

ROOT = dp.ROOT
RUNS = int(os.environ.get("RUNS", "3"))
TENANT = "bench-identity"
PLATFORM_TOKEN = "bench-platform-token"
API = ROOT / "target/release/cache-api"
DATABASE_URL = st.DATABASE_URL
SIZE = 1024


class FakeAuth(BaseHTTPRequestHandler):
    """The platform's auth service: one valid token, every other invalid."""

    calls = 0

    def do_POST(self):  # noqa: N802 (the standard library's name)
        FakeAuth.calls += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        answer = ({"valid": True, "userId": "bench-user", "tenantId": TENANT,
                   "roles": ["reader"]}
                  if body.get("token") == PLATFORM_TOKEN else {"valid": False})
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def oha(url, bearer):
    out = subprocess.run(
        ["oha", "--no-tui", "--output-format", "json", "--latency-correction",
         "-q", str(dp.RATE), "-z", f"{dp.LATENCY_DURATION}s", "-c", str(dp.CONNECTIONS),
         "-H", f"Authorization: Bearer {bearer}", url],
        check=True, capture_output=True, text=True).stdout
    data = json.loads(out)
    codes = data.get("statusCodeDistribution", {})
    if set(codes) != {"200"}:
        raise RuntimeError(f"latency run saw non-200 answers: {codes}")
    return {"rps": data["summary"]["requestsPerSec"],
            "p50_ms": data["latencyPercentiles"]["p50"] * 1000,
            "p99_ms": data["latencyPercentiles"]["p99"] * 1000}


def main():
    dp.ensure_tools()
    dp.log("building the release cache-api")
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "cache-api",
                    "--bin", "cache-api"], cwd=ROOT, check=True)
    server, name = DATABASE_URL.rsplit("/", 1)
    subprocess.run(["psql", f"{server}/postgres", "-qc", f"create database {name}"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    auth = ThreadingHTTPServer(("127.0.0.1", 0), FakeAuth)
    threading.Thread(target=auth.serve_forever, daemon=True).start()
    key = base64.b64encode(os.urandom(32)).decode()
    env = dict(st.api_env(dp.free_port()),
               DATA_ENCRYPTION_KEYS=f"bench:{key}",
               AUTH_SERVICE_URL=f"http://127.0.0.1:{auth.server_address[1]}",
               AUTH_CACHE_SECONDS="300",
               QUEUE_PREFIX=f"bench-identity-{os.getpid()}")
    subprocess.run([str(API), "migrate"], check=True, stdout=subprocess.DEVNULL, env=env)
    keys = {}
    for role in ("admin", "reader"):
        keys[role] = subprocess.run(
            [str(API), "keys", "create", "--tenant", TENANT, "--role", role,
             "--name", f"bench-identity-{role}"],
            env=env, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    proc = subprocess.Popen([str(API)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{env['SERVICE_PORT']}"
    try:
        dp.wait_ready(proc, base)
        admin = {"Authorization": f"Bearer {keys['admin']}"}
        for body in ({"prefix": "enc:", "encrypted": True, "compression": False, "ttl": 0},
                     {"prefix": "clear:", "compression": False, "ttl": 0}):
            status, answer = st.call(base, "POST", "/api/v1/cache/namespaces", body, admin)
            if status == 409:
                prefix = body.pop("prefix")
                status, answer = st.call(base, "PUT", f"/api/v1/cache/namespaces/{prefix}",
                                         body, admin)
            assert status in (200, 201), answer
        value = dp.value_of(SIZE)
        for k in ("enc:value", "clear:value"):
            status, answer = st.call(base, "POST", "/internal/cache/set",
                                     {"key": k, "value": value, "ttl": 0},
                                     {"X-Service-Token": dp.TOKEN, "X-Tenant-Id": TENANT})
            assert status == 200, answer
        rows = {"enc_get": [], "clear_get": []}
        for run in range(1, RUNS + 1):
            dp.log(f"run {run}/{RUNS}: GET of 1 KB, encrypted and not")
            rows["enc_get"].append(dp.wrk(f"{base}/internal/cache/get/enc:value", None, TENANT))
            rows["clear_get"].append(dp.wrk(f"{base}/internal/cache/get/clear:value", None,
                                            TENANT))
        public = f"{base}/api/v1/cache/keys/clear:value"
        dp.log(f"latency at {dp.RATE}/s: API key, then platform token")
        key_latency = oha(public, keys["reader"])
        token_latency = oha(public, PLATFORM_TOKEN)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        auth.shutdown()

    m = {k: statistics.median(v) for k, v in rows.items()}
    cost = statistics.median(1 - e / c for e, c in zip(rows["enc_get"], rows["clear_get"]))
    added = token_latency["p99_ms"] - key_latency["p99_ms"]
    print()
    print(f"identity and data protection: {dp.CONNECTIONS} connections, {RUNS} alternating "
          f"runs of {dp.DURATION}s, medians; latency at {dp.RATE}/s for {dp.LATENCY_DURATION}s")
    print()
    print("| figure | measured | target |")
    print("|---|---|---|")
    print(f"| GET of 1 KB, encrypted / clear namespace | {m['enc_get']:,.0f} / "
          f"{m['clear_get']:,.0f} ops/s: cost {cost * 100:+.1f}% | ≤ 10% |")
    print(f"| public GET p99 at {dp.RATE}/s, platform token / API key | "
          f"{token_latency['p99_ms']:.2f} / {key_latency['p99_ms']:.2f} ms: "
          f"{added:+.2f} ms | < 1 ms added |")
    print(f"| public GET p50 at {dp.RATE}/s, platform token / API key | "
          f"{token_latency['p50_ms']:.2f} / {key_latency['p50_ms']:.2f} ms | |")
    print(f"| auth service calls during the latency run | {FakeAuth.calls} | |")
    out_dir = ROOT / "bench/results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"identity-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({"runs": rows, "median": m, "key_latency": key_latency,
                               "token_latency": token_latency,
                               "auth_calls": FakeAuth.calls}, indent=2))
    print(f"\nraw figures: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

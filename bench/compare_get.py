#!/usr/bin/env python3
"""Internal GET throughput of this checkout against earlier revisions, in one run.

Builds the release api of each revision in BASES (git revisions, comma
separated; default: the parent commit) and of the working tree, starts them
all on the same Redis, and alternates `wrk GET /internal/cache/get/{key}`
runs between them (each api reads a 100-byte value it wrote itself), RUNS
times. Prints each build's median and its ratio to the working tree's: the
check that a restructuring cost no throughput, or what a change bought.

Environment: BASES (HEAD~1), RUNS (5), DURATION seconds per run (10),
CONNECTIONS (50), REDIS_HOST/REDIS_PORT (127.0.0.1:6379).
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data_plane as dp  # noqa: E402

ROOT = dp.ROOT
BASES = [b for b in os.environ.get("BASES", "HEAD~1").split(",") if b]
RUNS = int(os.environ.get("RUNS", "5"))
OUT = ROOT / "target" / "compare"


def build(rev):
    """The release api of `rev` (None: the working tree), copied aside."""
    name = "working-tree" if rev is None else subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, check=True,
        capture_output=True, text=True).stdout.strip()
    OUT.mkdir(parents=True, exist_ok=True)
    target = OUT / f"cache-api-{name}"
    env = dict(os.environ, CARGO_TARGET_DIR=str(ROOT / "target"))
    cmd = ["cargo", "build", "--release", "--locked", "-p", "cache-api", "--bin", "cache-api"]
    dp.log(f"building {name}")
    if rev is None:
        subprocess.run(cmd, cwd=ROOT, check=True, env=env)
    else:
        tree = Path(tempfile.mkdtemp(prefix=f"cache-api-{name}-"))
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT,
                       check=True, capture_output=True)
        try:
            subprocess.run(cmd, cwd=tree, check=True, env=env)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT,
                           check=True)
    shutil.copy2(ROOT / "target/release/cache-api", target)
    return name, target


def start(binary):
    port = dp.free_port()
    env = dict(
        os.environ,
        SERVICE_PORT=str(port), BIND_ADDRESS="127.0.0.1",
        INTERNAL_SERVICE_TOKEN=dp.TOKEN,
        REDIS_URL=f"redis://{dp.REDIS_HOST}:{dp.REDIS_PORT}",
        QUEUE_PREFIX=f"bench-compare-{os.getpid()}-{port}",
        RUST_LOG="warn",
    )
    proc = subprocess.Popen([str(binary)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    dp.wait_ready(proc, base)
    return proc, base


def main():
    dp.ensure_tools()
    builds = [build(rev) for rev in BASES] + [build(None)]
    running = []
    try:
        for name, binary in builds:
            proc, base = start(binary)
            key = f"bench:compare:{name}"
            dp.seed_key(base, key, dp.VALUE)
            running.append((name, proc, f"{base}/internal/cache/get/{key}"))
        results = {name: [] for name, _ in builds}
        for run in range(1, RUNS + 1):
            dp.log(f"run {run}/{RUNS}")
            for name, _, url in running:
                results[name].append(dp.wrk(url))
    finally:
        for _, proc, _ in running:
            proc.terminate()
            proc.wait(timeout=15)
    current = statistics.median(results["working-tree"])
    print(f"\ninternal GET, 100 B, {dp.CONNECTIONS} connections, {RUNS} alternating runs "
          f"of {dp.DURATION}s, medians\n")
    print("| build | GET/s (median) | runs | vs the working tree |")
    print("|---|---|---|---|")
    for name, _ in builds:
        median = statistics.median(results[name])
        runs = ", ".join(f"{r:,.0f}" for r in results[name])
        print(f"| {name} | {median:,.0f} | {runs} | {median / current:.3f}× |")


if __name__ == "__main__":
    main()

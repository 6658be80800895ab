#!/usr/bin/env bash
# Checks the monitoring configuration without running Prometheus or Grafana:
# the alerting rules and their unit tests (promtool, from Debian's
# `prometheus` package), the Prometheus config, the Grafana dashboard JSON and
# provisioning, and that every metric the alerts and the dashboard query is
# one that cache-api or cache-worker exports.
set -euo pipefail
cd "$(dirname "$0")/.."

promtool check rules compose/prometheus/alerts.yml
promtool test rules compose/prometheus/alerts.test.yml
# rule_files in prometheus.yml are relative to it, so this also checks the
# alerts.yml that compose mounts beside it.
promtool check config compose/prometheus/prometheus.yml

for dashboard in compose/grafana/dashboards/*.json; do
  python3 -m json.tool "$dashboard" >/dev/null
done

python3 - <<'PY'
"""Every metric name in the alerts' and dashboards' PromQL must be exported."""
import json
import re
import subprocess
import sys
from pathlib import Path

try:
    import yaml
except ImportError:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "pyyaml"], check=True)
    import yaml

COUNTERS_AND_GAUGES = {
    # cache-api
    "cache_operations_total", "cache_operations_per_second",
    "cache_hits_total", "cache_misses_total",
    "cache_hit_rate_percentage", "cache_error_rate_percentage",
    "cache_memory_usage_mb", "cache_memory_max_mb",
    "cache_active_connections", "cache_total_keys",
    "cache_timeout_total", "cache_failover_total",
    "http_requests_total",
    "cache_pool_size", "cache_pool_in_use", "cache_pool_idle", "cache_pool_waiting",
    "cache_queue_depth", "cache_queue_dead",
    "cache_redis_node_up", "cache_redis_node_memory_bytes", "cache_redis_node_keys",
    "cache_oplog_buffered", "cache_oplog_shipped_total", "cache_oplog_dropped_total",
    # cache-worker
    "cache_jobs_total", "cache_oplog_persisted_total", "cache_audit_events_delivered_total",
}
HISTOGRAMS = {
    "cache_response_time_ms", "http_request_duration_seconds", "cache_job_duration_seconds",
}
EXPORTED = COUNTERS_AND_GAUGES | {
    f"{h}_{suffix}" for h in HISTOGRAMS for suffix in ("bucket", "sum", "count")
}
NOT_METRICS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan",
}


def metric_names(expr):
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana variables
    names = re.findall(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:]|\s*\()", expr)
    return {n for n in names if n.lower() not in NOT_METRICS}


def dashboard_exprs(panels):
    for panel in panels:
        yield from dashboard_exprs(panel.get("panels", []))
        for target in panel.get("targets", []):
            if "expr" in target:
                yield panel["title"], target["expr"]


errors = []
found = 0

rules = yaml.safe_load(Path("compose/prometheus/alerts.yml").read_text())
for group in rules["groups"]:
    for rule in group["rules"]:
        name = rule.get("alert") or rule.get("record")
        for metric in sorted(metric_names(rule["expr"])):
            found += 1
            if metric not in EXPORTED:
                errors.append(f"alerts.yml {name}: {metric} is not an exported metric")

provisioned = yaml.safe_load(
    Path("compose/grafana/provisioning/datasources/prometheus.yml").read_text()
)
uids = {ds["uid"] for ds in provisioned["datasources"]}

for path in sorted(Path("compose/grafana/dashboards").glob("*.json")):
    dashboard = json.loads(path.read_text())
    for title, expr in dashboard_exprs(dashboard["panels"]):
        names = metric_names(expr)
        if not names:
            errors.append(f"{path.name} '{title}': no metric found in {expr!r}")
        for metric in sorted(names):
            found += 1
            if metric not in EXPORTED:
                errors.append(f"{path.name} '{title}': {metric} is not an exported metric")
    for panel in dashboard["panels"]:
        uid = (panel.get("datasource") or {}).get("uid")
        if panel["type"] != "row" and uid not in uids:
            errors.append(f"{path.name} '{panel['title']}': data source {uid!r} is not provisioned")

if errors:
    print("\n".join(f"metrics: {e}" for e in errors), file=sys.stderr)
    sys.exit(1)
print(f"metrics: {found} metric references in alerts and dashboards, all exported")
PY

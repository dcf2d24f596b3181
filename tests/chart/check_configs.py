#!/usr/bin/env python3
"""Every configuration the chart renders is accepted by the binary it is for.

    python3 tests/chart/check_configs.py BIN_DIR

For each ci/*-values.yaml the chart is rendered (check.py --render), and every container of every
workload whose command is a Meshara binary is run as a kubelet would start it, plus `--check`:
its volumes are materialised in a temporary directory (ConfigMap and Secret files with their
modes, empty directories for emptyDir and volume claims; for an existing Secret or ConfigMap the
operator provides, a stand-in of the documented shape), its environment is built from the
manifest (values, fieldRefs, Secret and ConfigMap references, `$(VAR)` expansion), and mount
paths are mapped onto that directory in the files, arguments and variables. `meshara-authority
init` runs for real. Exit 1 when any binary refuses its configuration.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "meshara"
BINARIES = {"meshara", "meshara-authority", "meshara-bridge", "meshara-explorer"}


def render(values: pathlib.Path, out: pathlib.Path) -> list[dict]:
    subprocess.run(
        [sys.executable, str(ROOT / "tests" / "chart" / "check.py"), "--render", str(values), "--out", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return json.loads((out / "manifests.json").read_text())


def data_of(obj: dict) -> dict[str, bytes]:
    files = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()} if obj["kind"] == "Secret" else {
        k: v.encode() for k, v in (obj.get("data") or {}).items()
    }
    for k, v in (obj.get("stringData") or {}).items():
        files[k] = v.encode()
    for k, v in (obj.get("binaryData") or {}).items():
        files[k] = base64.b64decode(v)
    return files


_ROOT_CACHE: dict[str, bytes] = {}


def standin_value(key: str, bins: pathlib.Path, tmp: pathlib.Path) -> bytes:
    """A value of the shape the chart's README documents for `key`."""
    if key.endswith(".pem"):
        return subprocess.run(
            ["openssl", "genpkey", "-algorithm", "ed25519"], check=True, capture_output=True
        ).stdout
    if key.endswith(".pb"):
        if "root" not in _ROOT_CACHE:
            d = tmp / "standin-authority"
            subprocess.run(
                [str(bins / "meshara-authority"), "init", "--data-dir", str(d), "--keys", "1", "--threshold", "1"],
                check=True, capture_output=True,
                env={**os.environ, "MESHARA_AUTHORITY_KEY_PASSPHRASE": "stand-in passphrase"},
            )
            _ROOT_CACHE["root"] = (d / "root.pb").read_bytes()
        return _ROOT_CACHE["root"]
    if "token" in key:
        return b"mat_" + b"x7" * 20
    if "url" in key:
        return b"postgres://meshara@127.0.0.1:5432/meshara"
    return b"stand-in secret value"


def standin(kind: str, name: str, source: dict, mount_path: str, pod: str, bins: pathlib.Path, tmp: pathlib.Path) -> dict:
    keys = [i["key"] for i in source.get("items") or []]
    if not keys and mount_path.rstrip("/").endswith("/identity"):
        keys = ["identity.pem", f"{pod}.pem"]
    return {
        "kind": kind,
        "metadata": {"name": name},
        "binaryData": {k: base64.b64encode(standin_value(k, bins, tmp)).decode() for k in keys},
    }


def expand(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def check_pod(pod: str, spec: dict, claims: list[str], objects: dict, bins: pathlib.Path, tmp: pathlib.Path) -> list[str]:
    failures = []
    for container in spec.get("initContainers", []) + spec["containers"]:
        command = container.get("command") or []
        if not command or command[0] not in BINARIES:
            continue
        root = pathlib.Path(tempfile.mkdtemp(dir=tmp, prefix=f"{pod}-{container['name']}-"))
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mapping: list[tuple[str, str]] = []
        for mount in container.get("volumeMounts", []):
            target = root / mount["mountPath"].strip("/").replace("/", "_")
            target.mkdir(parents=True, exist_ok=True)
            mapping.append((mount["mountPath"].rstrip("/"), str(target)))
            volume = volumes.get(mount["name"])
            if volume is None:
                if mount["name"] not in claims:
                    failures.append(f"{pod}/{container['name']}: no volume {mount['name']}")
                continue
            if "projected" in volume:
                sources = [
                    (("ConfigMap", src["configMap"]) if "configMap" in src else ("Secret", src["secret"]))
                    for src in volume["projected"].get("sources", [])
                    if "configMap" in src or "secret" in src
                ]
                default_mode = volume["projected"].get("defaultMode", 0o644)
            elif "configMap" in volume or "secret" in volume:
                kind = "ConfigMap" if "configMap" in volume else "Secret"
                source = volume.get("configMap") or volume["secret"]
                sources = [(kind, source)]
                default_mode = source.get("defaultMode", 0o644)
            else:
                continue
            for kind, source in sources:
                name = source.get("name") or source.get("secretName")
                obj = objects.get((kind, name))
                if obj is None and not source.get("optional"):
                    # An existing object the operator provides: a stand-in of the documented
                    # shape (keys by their names: PEM keys, the root, passphrases, tokens, URLs).
                    obj = standin(kind, name, source, mount["mountPath"], pod, bins, tmp)
                    print(f"  (stand-in for the operator's {kind} {name})")
                if obj is None:
                    continue
                files = data_of(obj)
                items = source.get("items") or [{"key": k, "path": k} for k in files]
                for item in items:
                    path = target / item["path"]
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(files[item["key"]])
                    os.chmod(path, item.get("mode", default_mode))
        mapping.sort(key=lambda m: -len(m[0]))
        targets = dict(mapping)
        pattern = re.compile(
            r"(?<![\w./-])(" + "|".join(re.escape(m[0]) for m in mapping) + r")(?=[/\"'\s,]|$)"
        ) if mapping else None

        def mapped(text: str) -> str:
            # One pass, so a mapped path (under /tmp) is never mapped again.
            return pattern.sub(lambda m: targets[m.group(1)], text) if pattern else text

        # The files the container reads are rewritten in place with the mapped paths.
        for _, dst in mapping:
            for path in pathlib.Path(dst).rglob("*"):
                if path.is_file() and path.suffix in {".toml", ".conf"}:
                    mode = path.stat().st_mode
                    os.chmod(path, 0o600)
                    path.write_text(mapped(path.read_text()))
                    os.chmod(path, mode)
        raw: dict[str, str] = {}
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(root)}
        fields = {"status.podIP": "127.0.0.1", "metadata.name": pod, "metadata.namespace": "meshara-ci"}
        for e in container.get("env", []):
            if "value" in e:
                raw[e["name"]] = expand(e["value"], raw)
                env[e["name"]] = mapped(raw[e["name"]])
            elif "fieldRef" in e.get("valueFrom", {}):
                raw[e["name"]] = env[e["name"]] = fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
            elif "secretKeyRef" in e.get("valueFrom", {}) or "configMapKeyRef" in e.get("valueFrom", {}):
                ref = e["valueFrom"].get("secretKeyRef") or e["valueFrom"]["configMapKeyRef"]
                kind = "Secret" if "secretKeyRef" in e["valueFrom"] else "ConfigMap"
                obj = objects.get((kind, ref["name"]))
                if obj is None:
                    # An existingSecret the operator provides (external PostgreSQL URL).
                    env[e["name"]] = standin_value(ref["key"], bins, tmp).decode()
                else:
                    env[e["name"]] = data_of(obj)[ref["key"]].decode()
        argv = [str(bins / command[0])] + [mapped(expand(a, raw)) for a in command[1:] + container.get("args", [])]
        if not (len(argv) > 1 and argv[1] == "init"):
            argv.append("--check")
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        status = "ok" if result.returncode == 0 else "REFUSED"
        print(f"  {status:7} {pod}/{container['name']}: {' '.join(command + container.get('args', []))}")
        if result.returncode != 0:
            failures.append(f"{pod}/{container['name']}: {result.stdout}{result.stderr}".strip())
    return failures


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    bins = pathlib.Path(sys.argv[1]).resolve()
    started = time.monotonic()
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="meshara-chart-configs-") as tmp_name:
        tmp = pathlib.Path(tmp_name)
        for values in sorted((CHART / "ci").glob("*-values.yaml")):
            print(f"{values.name}:")
            out = tmp / values.stem
            out.mkdir()
            rendered = render(values, out)
            objects = {(o["kind"], o["metadata"]["name"]): o for o in rendered}
            for o in rendered:
                if o["kind"] not in {"StatefulSet", "Deployment"}:
                    continue
                claims = [c["metadata"]["name"] for c in o["spec"].get("volumeClaimTemplates", [])]
                pod = f"{o['metadata']['name']}-0" if o["kind"] == "StatefulSet" else o["metadata"]["name"]
                failures += check_pod(pod, o["spec"]["template"]["spec"], claims, objects, bins, out)
    for f in failures:
        print(f"FAILED {f}", file=sys.stderr)
    print(f"rendered configurations: {len(failures)} refused ({time.monotonic() - started:.1f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

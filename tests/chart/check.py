#!/usr/bin/env python3
"""Checks the Helm chart charts/meshara without a cluster and without the helm binary.

    python3 tests/chart/check.py                       # every check below; exit 1 on a failure
    python3 tests/chart/check.py --render VALUES --out DIR [--name R] [--namespace NS]
                                                       # DIR/manifests.json: the rendered objects
    python3 tests/chart/check.py --readme              # rewrite README.md's table of values

It runs itself in a virtual environment at ${MESHARA_CHART_VENV:-~/.cache/meshara-chart-venv}
holding helm-python-sdk (Helm's Go SDK as a shared library: lint, schema validation, rendering)
and kubernetes-validate (the Kubernetes OpenAPI schemas), and creates it when it is missing.

The checks:
  - values.schema.json is what tests/chart/schema.py writes, and README.md's table of values is
    what values.yaml's `## @param` lines give, covering every value;
  - `helm lint` passes, with the defaults and with every ci/*-values.yaml;
  - every ci/*-values.yaml renders, and every object validates against Kubernetes 1.30's schemas
    in strict mode (ServiceMonitors, a CRD those schemas lack, are checked for shape here);
  - conventions on every object: the app.kubernetes.io labels and helm.sh/chart; per container:
    requests and limits, the restricted security context, probes on /healthz and /readyz where
    it serves HTTP, a binary as command and no shell, only $(VAR)s it defines, mounts of volumes
    that exist, configuration and secrets read-only, identities mounted 0440;
  - the wiring: every identity's certificate in its Secret equals the one in the peers ConfigMap,
    every `file:` peer a configuration names exists there, every configuration file is valid
    TOML with integers where the binaries want integers, each pod's --config file exists;
  - no Secret value (private keys, passphrases, tokens, database URLs) appears in a ConfigMap;
  - every tests-bad-values/*.yaml is refused by the schema, with an error naming the key its
    first line (`# expect: …`) gives.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import tomllib
import venv

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "meshara"
VENV = pathlib.Path(os.environ.get("MESHARA_CHART_VENV") or pathlib.Path.home() / ".cache" / "meshara-chart-venv")
PACKAGES = ["helm-python-sdk==0.2.2", "kubernetes-validate==1.37.0"]
KUBE_VERSION = "1.30"
RELEASE, NAMESPACE = "meshara", "meshara-ci"
UID = 10001
README_START, README_END = "<!-- values:start -->", "<!-- values:end -->"


# --- the virtual environment ------------------------------------------------------------------

def ensure_venv() -> None:
    """Re-executes this script with the venv's Python, creating the venv first if needed."""
    python = VENV / "bin" / "python"
    if pathlib.Path(sys.prefix).resolve() == VENV.resolve():
        return
    probe = [str(python), "-c", "import helm_python, kubernetes_validate, yaml"]
    if not python.exists() or subprocess.run(probe, capture_output=True).returncode != 0:
        started = time.monotonic()
        print(f"setting up {VENV} ({', '.join(PACKAGES)})", file=sys.stderr)
        try:
            if not python.exists():
                venv.EnvBuilder(with_pip=True).create(VENV)
            subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                            *PACKAGES], check=True)
        except (subprocess.CalledProcessError, OSError) as e:
            sys.exit(f"error: could not set up {VENV}: {e}\n"
                     "(needs Python's venv and ensurepip modules, e.g. Debian's python3-venv, and PyPI)")
        print(f"  done in {time.monotonic() - started:.1f} s", file=sys.stderr)
    os.execv(str(python), [str(python), str(pathlib.Path(__file__).resolve()), *sys.argv[1:]])


# --- rendering --------------------------------------------------------------------------------

def load_values(path: pathlib.Path) -> dict:
    import yaml
    return yaml.safe_load(path.read_text()) or {}


def render(values: dict, name: str = RELEASE, namespace: str = NAMESPACE) -> tuple[list[dict], str]:
    """The chart's objects (in template order) and NOTES.txt."""
    import helm_python
    import yaml
    with helm_python.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values, name=name, namespace=namespace)
    objects, notes = [], ""
    for template in sorted(rendered):
        if template.endswith("NOTES.txt"):
            notes = rendered[template]
            continue
        for doc in yaml.safe_load_all(rendered[template]):
            if doc:
                doc.setdefault("metadata", {}).setdefault("annotations", {})
                if not doc["metadata"]["annotations"]:
                    del doc["metadata"]["annotations"]
                objects.append(doc)
    return objects, notes


# --- checks -----------------------------------------------------------------------------------

class Failures:
    def __init__(self) -> None:
        self.items: list[str] = []

    def __call__(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")


def ident(o: dict) -> str:
    return f"{o.get('kind')}/{o.get('metadata', {}).get('name')}"


LABELS = ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component",
          "app.kubernetes.io/managed-by", "app.kubernetes.io/part-of", "app.kubernetes.io/version",
          "helm.sh/chart"]


def check_labels(o: dict, fail: Failures) -> None:
    labels = o.get("metadata", {}).get("labels") or {}
    missing = [k for k in LABELS if not labels.get(k)]
    if missing:
        fail(ident(o), f"labels missing: {', '.join(missing)}")
    template = (o.get("spec") or {}).get("template")
    if template:
        tl = template.get("metadata", {}).get("labels") or {}
        missing = [k for k in LABELS if not tl.get(k)]
        if missing:
            fail(ident(o), f"pod template labels missing: {', '.join(missing)}")
        selector = o["spec"].get("selector", {}).get("matchLabels", {})
        if any(tl.get(k) != v for k, v in selector.items()):
            fail(ident(o), "the selector does not match the pod template's labels")


VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def check_pod(o: dict, fail: Failures) -> None:
    where = ident(o)
    spec = o["spec"]["template"]["spec"]
    psc = spec.get("securityContext") or {}
    want = {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID}
    for k, v in want.items():
        if psc.get(k) != v:
            fail(where, f"pod securityContext.{k} is {psc.get(k)!r}, not {v!r}")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        fail(where, "pod securityContext.seccompProfile.type is not RuntimeDefault")
    if spec.get("automountServiceAccountToken") is not False:
        fail(where, "automountServiceAccountToken is not false")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    claims = {c["metadata"]["name"] for c in o["spec"].get("volumeClaimTemplates", [])}
    if set(volumes) & claims:
        fail(where, f"volumes and claim templates share names: {set(volumes) & claims}")
    identity = volumes.get("identity", {}).get("secret")
    if not identity or identity.get("defaultMode") != 0o440:
        fail(where, "the identity volume is not a Secret mounted with defaultMode 0440")
    for v in volumes.values():
        if "projected" in v and v["projected"].get("defaultMode") != 0o440:
            fail(where, f"volume {v['name']}: secrets not mounted 0440")
    containers = [(c, "initContainer") for c in spec.get("initContainers", [])] + \
                 [(c, "container") for c in spec.get("containers", [])]
    for c, kind in containers:
        cw = f"{where} {kind} {c['name']}"
        res = c.get("resources") or {}
        if not (res.get("requests") or {}).get("cpu") or not (res.get("requests") or {}).get("memory"):
            fail(cw, "resources.requests.cpu and .memory are required")
        if not (res.get("limits") or {}).get("memory"):
            fail(cw, "resources.limits.memory is required")
        sc = c.get("securityContext") or {}
        for k, v in {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID,
                     "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}.items():
            if sc.get(k) != v:
                fail(cw, f"securityContext.{k} is {sc.get(k)!r}, not {v!r}")
        if sc.get("privileged"):
            fail(cw, "privileged")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []) or (sc.get("capabilities") or {}).get("add"):
            fail(cw, "capabilities must drop ALL and add none")
        if (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            fail(cw, "seccompProfile is not RuntimeDefault")
        command = c.get("command") or []
        if len(command) != 1 or "/" in command[0] or command[0] in ("sh", "bash", "dash", "ash"):
            fail(cw, f"command must be one binary name, not {command!r}")
        if any(a in ("-c",) for a in c.get("args", [])) and command and command[0].endswith("sh"):
            fail(cw, "runs a shell")
        defined: list[str] = []
        for e in c.get("env", []):
            for ref in VAR.findall(e.get("value", "")):
                if ref not in defined:
                    fail(cw, f"env {e['name']} uses $({ref}), which is not defined before it")
            defined.append(e["name"])
        for a in c.get("args", []):
            for ref in VAR.findall(a):
                if ref not in defined:
                    fail(cw, f"argument {a!r} uses $({ref}), which the container does not define")
        ports = {p.get("name") for p in c.get("ports", [])}
        if "http" in ports:
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                get = ((c.get(probe) or {}).get("httpGet") or {})
                if get.get("path") != path or get.get("port") != "http":
                    fail(cw, f"{probe} must GET {path} on port http")
        for m in c.get("volumeMounts", []):
            if m["name"] not in volumes and m["name"] not in claims:
                fail(cw, f"mounts {m['name']}, which the pod does not define")
            v = volumes.get(m["name"], {})
            if ("secret" in v or "configMap" in v or "projected" in v) and not m.get("readOnly"):
                fail(cw, f"{m['name']} ({m['mountPath']}) is not mounted read-only")


def check_service_monitor(o: dict, services: list[dict], fail: Failures) -> None:
    where = ident(o)
    if o.get("apiVersion") != "monitoring.coreos.com/v1":
        fail(where, "apiVersion is not monitoring.coreos.com/v1")
    spec = o.get("spec") or {}
    allowed = {"jobLabel", "namespaceSelector", "selector", "endpoints"}
    if set(spec) - allowed:
        fail(where, f"unexpected spec keys {set(spec) - allowed}")
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    matched = [s for s in services
               if all((s["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
               and any(p.get("name") == "http" for p in s["spec"].get("ports", []))]
    if len(matched) != 1:
        fail(where, f"selects {len(matched)} Services with a port named http, not 1")
    endpoints = spec.get("endpoints") or []
    if not endpoints:
        fail(where, "no endpoints")
    for e in endpoints:
        if set(e) - {"port", "path", "scheme", "interval", "scrapeTimeout", "honorLabels"}:
            fail(where, f"unexpected endpoint keys {set(e)}")
        if e.get("port") != "http" or e.get("path") != "/metrics":
            fail(where, "endpoints must scrape /metrics on port http")
        for k in ("interval", "scrapeTimeout"):
            if k in e and not re.fullmatch(r"([0-9]+(ms|s|m|h))+", str(e[k])):
                fail(where, f"{k} {e[k]!r} is not a duration")


def secret_values(o: dict) -> dict[str, str]:
    out = {}
    for k, v in (o.get("data") or {}).items():
        out[k] = base64.b64decode(v).decode("utf-8", "replace")
    for k, v in (o.get("stringData") or {}).items():
        out[k] = v
    return out


def check_wiring(objects: list[dict], values: dict, fail: Failures) -> None:
    by_kind: dict[str, dict[str, dict]] = {}
    for o in objects:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    configmaps, secrets = by_kind.get("ConfigMap", {}), by_kind.get("Secret", {})

    # No secret in a ConfigMap; no private key anywhere but in Secrets.
    leaks = {}
    for s in secrets.values():
        for k, v in secret_values(s).items():
            if "BEGIN CERTIFICATE" in v and "PRIVATE KEY" not in v:
                continue  # a public certificate, published in the peers ConfigMap by design
            for part in [v.strip()] + [line for line in v.splitlines() if len(line) >= 16]:
                if len(part) >= 8:
                    leaks[part] = f"{ident(s)} key {k}"
    for cm in configmaps.values():
        text = json.dumps(cm.get("data") or {}) + json.dumps(cm.get("binaryData") or {})
        if "PRIVATE KEY" in text:
            fail(ident(cm), "holds a private key")
        for part, origin in leaks.items():
            if part in text or json.dumps(part)[1:-1] in text:
                fail(ident(cm), f"holds the value of {origin}")

    # Certificates: the Secret's and the peers ConfigMap's agree.
    peers = next((cm for name, cm in configmaps.items() if name.endswith("-peers")), None)
    if peers is None:
        fail("ConfigMap/*-peers", "missing")
        return
    peer_certs = peers.get("data") or {}
    for name, cert in peer_certs.items():
        if "BEGIN CERTIFICATE" not in cert:
            fail(ident(peers), f"{name} is not a PEM certificate")
    for s in secrets.values():
        data = secret_values(s)
        for k, v in data.items():
            if k.endswith(".pem"):
                crt = data.get(k[:-4] + ".crt")
                if not crt:
                    fail(ident(s), f"{k} has no certificate beside it")
                elif crt.strip() not in [c.strip() for c in peer_certs.values()]:
                    fail(ident(s), f"the certificate of {k} is not in the peers ConfigMap")
                if "BEGIN PRIVATE KEY" not in v:
                    fail(ident(s), f"{k} is not a PKCS#8 PEM private key")

    # Configuration files: TOML, integers, pinned peers that exist.
    integer_keys = re.compile(r"^(max_|limits|peer_|mailbox|connection_queue|check_interval|event_buffer|"
                              r"target_peers|handshakes_before_retry|chunk_size|storage_quota|retention_days|"
                              r"interval_secs|concurrency|port$|per_client|window_secs)")
    for cm in configmaps.values():
        for key, text in (cm.get("data") or {}).items():
            if not key.endswith(".toml"):
                continue
            where = f"{ident(cm)} {key}"
            try:
                doc = tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                fail(where, f"not valid TOML: {e}")
                continue

            def walk(node, path=""):
                if isinstance(node, dict):
                    for k, v in node.items():
                        walk(v, f"{path}.{k}" if path else k)
                elif isinstance(node, float) and integer_keys.match(path.rsplit(".", 1)[-1]):
                    fail(where, f"{path} = {node} is a float; the binary wants an integer")
                elif isinstance(node, str):
                    for ref in re.findall(r"file:/etc/meshara/peers/([^@\s\"]+)", node):
                        if ref not in peer_certs:
                            fail(where, f"{path} pins {ref}, which the peers ConfigMap lacks")
                elif isinstance(node, list):
                    for v in node:
                        walk(v, path)
            walk(doc)

    # Each StatefulSet's pods find their configuration file and identity.
    for sts in by_kind.get("StatefulSet", {}).values():
        name = sts["metadata"]["name"]
        pods = [f"{name}-{i}" for i in range(sts["spec"].get("replicas", 1))]
        spec = sts["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        config_cm = configmaps.get((volumes.get("config", {}).get("configMap") or {}).get("name"))
        identity_secret = (volumes.get("identity", {}).get("secret") or {}).get("secretName")
        main = spec["containers"][0]
        for pod in pods:
            args = [a.replace("$(POD_NAME)", pod) for a in main.get("args", [])]
            if "--config" in args:
                path = args[args.index("--config") + 1]
                if not path.startswith("/etc/meshara/config/") or config_cm is None or \
                        path.rsplit("/", 1)[1] not in (config_cm.get("data") or {}):
                    fail(ident(sts), f"pod {pod}: configuration {path} is not in its ConfigMap")
            env = {e["name"]: e.get("value", "") for e in main.get("env", [])}
            for var in ("MESHARA_IDENTITY_FILE", "MESHARA_BRIDGE_IDENTITY_FILE"):
                if var in env and identity_secret in secrets:
                    stem = env[var].replace("$(POD_NAME)", pod).rsplit("/", 1)[1]
                    if stem not in secret_values(secrets[identity_secret]):
                        fail(ident(sts), f"pod {pod}: {var} names {stem}, which {identity_secret} lacks")
        for v in volumes.values():
            ref = (v.get("configMap") or {}).get("name")
            if ref and ref not in configmaps and ref != (values.get("updates", {}).get("root", {}) or {}).get("existingConfigMap"):
                fail(ident(sts), f"volume {v['name']} uses ConfigMap {ref}, which is not rendered")


def validate_kubernetes(objects: list[dict], tmp: pathlib.Path, fail: Failures) -> int:
    import yaml
    files = []
    for i, o in enumerate(objects):
        if o["kind"] == "ServiceMonitor":
            continue
        path = tmp / f"{i:03d}-{o['kind'].lower()}-{o['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(o))
        files.append(str(path))
    tool = pathlib.Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run([str(tool), "--strict", "-k", KUBE_VERSION, "--quiet", *files],
                            capture_output=True, text=True)
    if result.returncode != 0:
        for line in (result.stdout + result.stderr).strip().splitlines():
            fail("kubernetes-validate", line.replace(str(tmp) + "/", ""))
    for f in files:
        pathlib.Path(f).unlink()
    return len(files)


def param_lines() -> list[tuple[str, str]]:
    out = []
    for line in (CHART / "values.yaml").read_text().splitlines():
        m = re.match(r"\s*## @param (\S+) (.*)$", line)
        if m:
            out.append((m.group(1), m.group(2)))
    return out


def leaf_paths(node, prefix=""):
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from leaf_paths(v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix, node


def values_table() -> str:
    values = load_values(CHART / "values.yaml")
    flat = dict(leaf_paths(values))
    rows = ["| value | default | description |", "| --- | --- | --- |"]
    for path, description in param_lines():
        node = values
        for part in path.split("."):
            node = node[part]
        default = json.dumps(node) if not isinstance(node, str) else (f'"{node}"' if node else '""')
        rows.append(f"| `{path}` | `{default}` | {description.replace('|', '&#124;')} |")
    del flat
    return "\n".join(rows)


def check_docs(fail: Failures) -> None:
    import yaml
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    documented = [p for p, _ in param_lines()]
    for path in documented:
        node = values
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                fail("values.yaml", f"@param {path} names no value")
                break
            node = node[part]
    for path, _ in leaf_paths(values):
        if not any(path == d or path.startswith(d + ".") for d in documented):
            fail("values.yaml", f"{path} has no @param line")
    readme = (CHART / "README.md").read_text()
    if README_START not in readme or README_END not in readme:
        fail("README.md", f"no {README_START} … {README_END} section")
    else:
        current = readme.split(README_START, 1)[1].split(README_END, 1)[0].strip()
        if current != values_table():
            fail("README.md", "the table of values is out of date: run python3 tests/chart/check.py --readme")


def check_bad_values(fail: Failures) -> int:
    import helm_python
    files = sorted((CHART / "tests-bad-values").glob("*.yaml"))
    if len(files) < 8:
        fail("tests-bad-values", f"only {len(files)} files; at least 8 expected")
    with helm_python.Chart.load(str(CHART)) as chart:
        for f in files:
            first = f.read_text().splitlines()[0]
            m = re.match(r"# expect: (.+)$", first)
            if not m:
                fail(f.name, "the first line must be `# expect: <text the error names>`")
                continue
            try:
                chart.render(load_values(f), name=RELEASE, namespace=NAMESPACE)
            except helm_python.HelmValuesError as e:
                if m.group(1).strip() not in str(e):
                    fail(f.name, f"refused, but the error does not name {m.group(1).strip()}: {e}")
                continue
            except helm_python.HelmError as e:
                fail(f.name, f"refused by a template rather than the schema: {e}")
                continue
            fail(f.name, "accepted; the schema must refuse it")
    return len(files)


def check_notes(notes: str, values: dict, where: str, fail: Failures) -> None:
    if "authority" not in values or values.get("authority", {}).get("enabled", True):
        if "dashboard" not in notes.lower():
            fail(where, "NOTES.txt does not say how to reach the dashboard")
    if values.get("explorer", {}).get("enabled"):
        if "Explorer" not in notes:
            fail(where, "NOTES.txt does not say how to reach the explorer")


def run_checks() -> int:
    import helm_python
    from schema import render as schema_text  # tests/chart/schema.py

    fail = Failures()
    timings: list[tuple[str, float]] = []
    passed = 0

    def step(name, fn):
        nonlocal passed
        before, started = len(fail.items), time.monotonic()
        detail = fn()
        timings.append((name, time.monotonic() - started))
        ok = len(fail.items) == before
        passed += ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}{f' ({detail})' if detail else ''} "
              f"[{timings[-1][1]:.2f} s]", flush=True)
        for item in fail.items[before:]:
            print(f"       {item}")

    def schema_current():
        if (CHART / "values.schema.json").read_text() != schema_text():
            fail("values.schema.json", "differs from tests/chart/schema.py's: run python3 tests/chart/schema.py")

    def lint():
        runs = [None] + sorted((CHART / "ci").glob("*-values.yaml"))
        for values_file in runs:
            values = load_values(values_file) if values_file else None
            report = helm_python.lint(str(CHART), values, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}.0")
            label = values_file.name if values_file else "defaults"
            for e in report.get("errors", []):
                fail(f"helm lint ({label})", e)
            for m in report.get("messages", []):
                if m["severity"] >= 2:
                    fail(f"helm lint ({label})", f"{m['path']}: {m['error']}")
        return f"{len(runs)} value sets"

    def package():
        import tarfile
        with tempfile.TemporaryDirectory(prefix="meshara-chart-pkg-") as tmp:
            archive = helm_python.package(str(CHART), destination=tmp)
            with tarfile.open(archive) as tar:
                names = tar.getnames()
        for name in names:
            if re.search(r"^meshara/(ci|tests-bad-values)/", name):
                fail("helm package", f"{name} is packaged; .helmignore must exclude it")
        return f"{len(names)} files"

    step("values.schema.json is generated by tests/chart/schema.py", schema_current)
    step("helm package leaves out ci/ and tests-bad-values/", package)
    step("README.md documents every value", lambda: check_docs(fail))
    step("helm lint", lint)
    with tempfile.TemporaryDirectory(prefix="meshara-chart-") as tmp:
        for values_file in sorted((CHART / "ci").glob("*-values.yaml")):
            values = load_values(values_file)
            holder: dict = {}

            def do_render(values=values, values_file=values_file, holder=holder):
                try:
                    holder["objects"], holder["notes"] = render(values)
                except helm_python.HelmError as e:
                    fail(values_file.name, f"does not render: {e}")
                    return None
                return f"{len(holder['objects'])} objects"

            step(f"{values_file.name}: render", do_render)
            if "objects" not in holder:
                continue
            objects = holder["objects"]

            def kube(objects=objects):
                n = validate_kubernetes(objects, pathlib.Path(tmp), fail)
                services = [o for o in objects if o["kind"] == "Service"]
                monitors = [o for o in objects if o["kind"] == "ServiceMonitor"]
                for o in monitors:
                    check_service_monitor(o, services, fail)
                return f"{n} objects against Kubernetes {KUBE_VERSION}, {len(monitors)} ServiceMonitors by shape"

            def conventions(objects=objects, values=values, notes=holder["notes"], name=values_file.name):
                for o in objects:
                    check_labels(o, fail)
                    if o["kind"] in ("StatefulSet", "Deployment", "DaemonSet"):
                        check_pod(o, fail)
                check_notes(notes, values, name, fail)

            step(f"{values_file.name}: strict Kubernetes schemas", kube)
            step(f"{values_file.name}: labels, containers, probes, security contexts", conventions)
            step(f"{values_file.name}: identities, peers, configuration files, no secret in a ConfigMap",
                 lambda objects=objects, values=values: check_wiring(objects, values, fail))
    step("tests-bad-values: refused by the schema", lambda: f"{check_bad_values(fail)} files")

    total = sum(t for _, t in timings)
    print(f"chart checks took {total:.1f} s")
    failed = len(timings) - passed
    print(f"chart: {passed} passed, {failed} failed")
    return 1 if failed else 0


def write_manifests(values_path: str, out: str, name: str, namespace: str) -> int:
    values = load_values(pathlib.Path(values_path)) if values_path != "-" else {}
    objects, notes = render(values, name=name, namespace=namespace)
    out_dir = pathlib.Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "manifests.json").write_text(json.dumps(objects, indent=1) + "\n")
    (out_dir / "NOTES.txt").write_text(notes)
    print(f"wrote {len(objects)} objects to {out_dir / 'manifests.json'}")
    return 0


def write_readme() -> int:
    path = CHART / "README.md"
    text = path.read_text()
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    path.write_text(f"{head}{README_START}\n{values_table()}\n{README_END}{tail}")
    print(f"rewrote the table of values in {path}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--render", metavar="VALUES", help="render with this values file ('-' for the defaults)")
    parser.add_argument("--out", metavar="DIR", help="with --render: write DIR/manifests.json and DIR/NOTES.txt")
    parser.add_argument("--name", default=RELEASE, help=f"release name for --render (default {RELEASE})")
    parser.add_argument("--namespace", default=NAMESPACE, help=f"namespace for --render (default {NAMESPACE})")
    parser.add_argument("--readme", action="store_true", help="rewrite README.md's table of values")
    args = parser.parse_args()
    if args.render and not args.out:
        parser.error("--render needs --out DIR")
    ensure_venv()
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    if args.readme:
        return write_readme()
    if args.render:
        return write_manifests(args.render, args.out, args.name, args.namespace)
    return run_checks()


if __name__ == "__main__":
    sys.exit(main())

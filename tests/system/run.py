#!/usr/bin/env python3
"""The whole system, deployed as the Helm chart wires it, on one machine.

    python3 tests/system/run.py BIN_DIR        (as root; BIN_DIR holds the four binaries and
                                                examples/i2p_send)

The chart is rendered with tests/system/values.yaml (tests/chart/check.py --render) and every pod
it describes runs as a kubelet would run it, with the configuration the chart rendered:
  - each pod gets a network namespace of its own with a pod IP on a bridge (10.213.0.0/24, in a
    "cluster" namespace this script creates and where it runs itself), its own loopback (the
    bridge's i2pd sidecar keeps SAM on the pod's 127.0.0.1) and an /etc/hosts that resolves the
    in-cluster DNS names of the chart's Services (`ip netns exec` mounts /etc/netns/<ns>/hosts);
  - its volumes are files from the rendered ConfigMaps and Secrets (with their modes) and
    directories for emptyDirs and volume claims; mount paths are mapped onto those, in the files,
    the arguments and the environment (the only rewriting: the chart's paths become directories
    of this run);
  - the environment comes from the manifest: values, the downward API (POD_IP, POD_NAME,
    POD_NAMESPACE), Secret references, `$(VAR)` expansion;
  - init containers run to completion first, then the containers; readiness is each container's
    own readinessProbe.
Two ordinary `meshara run` nodes join as users would (their own namespaces and identities, the
seeds' bootstrap list and `[updates]` from the chart's seed configuration). Then it checks what
the chart promises: a release published on the authority with 2 of its 3 keys is installed by
every seed and every user's node, the explorer lists every component and every user's node and
counts the release's adoption, and a private message from an I2P-only node reaches a seed
through the bridge.

Every wait is bounded; everything started is stopped and every namespace removed at the end.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
VALUES = ROOT / "tests" / "system" / "values.yaml"
NAMESPACE = "meshara-system"
SUBNET = "10.213.0"
BINARIES = {"meshara", "meshara-authority", "meshara-bridge", "meshara-explorer"}
# Paths inside the images that are not volumes, and where this machine has them.
IMAGE_PATHS = {"/i2pd_certificates": "/usr/share/i2pd/certificates"}
I2P_LOCAL = ["inbound.length=0", "outbound.length=0", "i2cp.leaseSetType=1", "i2cp.leaseSetEncType=0"]

STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f} s] {message}", flush=True)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def wait(what: str, timeout: float, probe, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"FAILED: timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# --- Kubernetes objects -----------------------------------------------------------------------

def data_of(obj: dict) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for k, v in (obj.get("data") or {}).items():
        files[k] = base64.b64decode(v) if obj["kind"] == "Secret" else v.encode()
    for k, v in (obj.get("stringData") or {}).items():
        files[k] = v.encode()
    for k, v in (obj.get("binaryData") or {}).items():
        files[k] = base64.b64decode(v)
    return files


def expand(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def node_id_of_certificate(pem: str) -> str:
    """The NodeId (lowercase base32 of the Ed25519 key) in a PEM certificate."""
    der = base64.b64decode("".join(line for line in pem.splitlines() if not line.startswith("-----")))
    prefix = bytes.fromhex("302a300506032b6570032100")
    at = der.index(prefix) + len(prefix)
    return base64.b32encode(der[at:at + 32]).decode().rstrip("=").lower()


class Pod:
    def __init__(self, name: str, ip: str, labels: dict, spec: dict, claims: list[str]):
        self.name, self.ip, self.labels, self.spec, self.claims = name, ip, labels, spec, claims
        self.netns = ""
        self.dir = pathlib.Path()
        self.processes: list[tuple[str, subprocess.Popen]] = []

    def log_of(self, container: str) -> str:
        path = self.dir / f"{container}.log"
        return path.read_text(errors="replace") if path.exists() else ""


class Cluster:
    def __init__(self, bins: pathlib.Path, work: pathlib.Path, objects: list[dict]):
        self.bins, self.work = bins, work
        self.objects = {(o["kind"], o["metadata"]["name"]): o for o in objects}
        self.pods: list[Pod] = []
        self.tag = f"ms{os.getpid() % 100000}"
        n = 10
        for o in objects:
            if o["kind"] not in {"StatefulSet", "Deployment"}:
                continue
            spec = o["spec"]
            claims = [c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])]
            replicas = spec.get("replicas", 1)
            for i in range(replicas):
                name = f"{o['metadata']['name']}-{i}" if o["kind"] == "StatefulSet" else o["metadata"]["name"]
                labels = spec["template"]["metadata"].get("labels", {})
                self.pods.append(Pod(name, f"{SUBNET}.{n}", labels, spec["template"]["spec"], claims))
                n += 1

    def pod(self, prefix: str) -> Pod:
        return next(p for p in self.pods if p.name.startswith(prefix))

    # --- the network ----------------------------------------------------------------------

    def hosts(self) -> str:
        lines = ["127.0.0.1 localhost"]
        suffix = f"{NAMESPACE}.svc.cluster.local"
        for (kind, name), svc in self.objects.items():
            if kind != "Service":
                continue
            selector = svc["spec"].get("selector") or {}
            members = [p for p in self.pods if selector and all(p.labels.get(k) == v for k, v in selector.items())]
            if not members:
                continue
            lines.append(f"{members[0].ip} {name}.{suffix} {name}.{NAMESPACE} {name}")
            for p in members:
                lines.append(f"{p.ip} {p.name}.{name}.{suffix}")
        return "\n".join(lines) + "\n"

    def network_up(self) -> None:
        hosts = self.hosts()
        for i, p in enumerate(self.pods):
            p.netns = f"{self.tag}-{i}"
            p.dir = self.work / "pods" / p.name
            p.dir.mkdir(parents=True)
            sh("ip", "netns", "add", p.netns)
            veth = f"{self.tag}v{i}"
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", p.netns)
            sh("ip", "link", "set", veth, "master", "br0", "up")
            sh("ip", "-n", p.netns, "addr", "add", f"{p.ip}/24", "dev", "eth0")
            sh("ip", "-n", p.netns, "link", "set", "eth0", "up")
            sh("ip", "-n", p.netns, "link", "set", "lo", "up")
            sh("ip", "-n", p.netns, "route", "add", "default", "via", f"{SUBNET}.1")
            etc = pathlib.Path("/etc/netns") / p.netns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(hosts)

    # --- volumes, environment, processes ---------------------------------------------------

    def materialise(self, pod: Pod, container: dict) -> tuple[list[tuple[str, str]], list[str]]:
        """Writes the container's ConfigMap and Secret files; returns (mount path → directory)
        and the problems found."""
        problems = []
        volumes = {v["name"]: v for v in pod.spec.get("volumes", [])}
        mapping = []
        shared = pod.dir / "volumes"
        files_dir = pod.dir / "files" / container["name"]
        for mount in container.get("volumeMounts", []):
            name = mount["name"]
            volume = volumes.get(name)
            if volume is None and name not in pod.claims:
                problems.append(f"no volume {name}")
                continue
            if volume is None or "emptyDir" in volume or "persistentVolumeClaim" in volume:
                target = shared / name
                target.mkdir(parents=True, exist_ok=True)
                os.chmod(target, 0o755)
            else:
                target = files_dir / name
                target.mkdir(parents=True, exist_ok=True)
                if "projected" in volume:
                    sources = [
                        ("ConfigMap", s["configMap"]) if "configMap" in s else ("Secret", s["secret"])
                        for s in volume["projected"].get("sources", [])
                        if "configMap" in s or "secret" in s
                    ]
                    default_mode = volume["projected"].get("defaultMode", 0o644)
                else:
                    kind = "ConfigMap" if "configMap" in volume else "Secret"
                    source = volume.get("configMap") or volume.get("secret")
                    sources = [(kind, source)]
                    default_mode = source.get("defaultMode", 0o644)
                for kind, source in sources:
                    obj = self.objects.get((kind, source.get("name") or source.get("secretName")))
                    if obj is None:
                        if not source.get("optional"):
                            problems.append(f"{kind} {source.get('name') or source.get('secretName')} is not rendered")
                        continue
                    files = data_of(obj)
                    for item in source.get("items") or [{"key": k, "path": k} for k in files]:
                        path = target / item["path"]
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.write_bytes(files[item["key"]])
                        os.chmod(path, item.get("mode", default_mode))
            if mount.get("subPath"):
                target = target / mount["subPath"]
            mapping.append((mount["mountPath"].rstrip("/") or "/", str(target)))
        mapping += list(IMAGE_PATHS.items())
        mapping.sort(key=lambda m: -len(m[0]))
        return mapping, problems

    def start(self, pod: Pod, container: dict, init: bool) -> subprocess.Popen | None:
        mapping, problems = self.materialise(pod, container)
        if problems:
            raise SystemExit(f"FAILED: {pod.name}/{container['name']}: " + "; ".join(problems))
        targets = dict(mapping)
        pattern = re.compile(r"(?<![\w./-])(" + "|".join(re.escape(m[0]) for m in mapping) + r")(?=[/\"'\s,=]|$)")

        def mapped(text: str) -> str:
            return pattern.sub(lambda m: targets[m.group(1)], text)

        # Configuration files name paths too: map them in the container's own copies.
        for src, dst in mapping:
            if not dst.startswith(str(pod.dir / "files")):
                continue
            for path in pathlib.Path(dst).rglob("*") if pathlib.Path(dst).is_dir() else []:
                if path.is_file() and path.suffix in {".toml", ".conf"}:
                    mode = path.stat().st_mode
                    os.chmod(path, 0o600)
                    path.write_text(mapped(path.read_text()))
                    os.chmod(path, mode & 0o777)
        fields = {"status.podIP": pod.ip, "metadata.name": pod.name, "metadata.namespace": NAMESPACE}
        raw: dict[str, str] = {}
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(pod.dir)}
        for e in container.get("env", []):
            source = e.get("valueFrom", {})
            if "value" in e:
                raw[e["name"]] = expand(e["value"], raw)
            elif "fieldRef" in source:
                raw[e["name"]] = fields[source["fieldRef"]["fieldPath"]]
            else:
                ref = source.get("secretKeyRef") or source.get("configMapKeyRef")
                kind = "Secret" if "secretKeyRef" in source else "ConfigMap"
                raw[e["name"]] = data_of(self.objects[(kind, ref["name"])])[ref["key"]].decode()
            env[e["name"]] = mapped(raw[e["name"]])
        command = container.get("command") or []
        binary = command[0]
        program = str(self.bins / binary) if binary in BINARIES else shutil.which(binary, path="/usr/sbin:/usr/bin")
        argv = [program] + [mapped(expand(a, raw)) for a in command[1:] + container.get("args", [])]
        out = open(pod.dir / f"{container['name']}.log", "ab")
        process = subprocess.Popen(
            ["ip", "netns", "exec", pod.netns, "env", "-i"] + [f"{k}={v}" for k, v in env.items()] + argv,
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        if init:
            code = process.wait(timeout=120)
            if code != 0:
                raise SystemExit(f"FAILED: init container {pod.name}/{container['name']} exited {code}:\n{pod.log_of(container['name'])}")
            return None
        pod.processes.append((container["name"], process))
        return process

    def run_pods(self) -> None:
        for pod in self.pods:
            for c in pod.spec.get("initContainers", []):
                log(f"{pod.name}: init container {c['name']}")
                self.start(pod, c, init=True)
            for c in pod.spec["containers"]:
                self.start(pod, c, init=False)
            log(f"{pod.name}: started {', '.join(c['name'] for c in pod.spec['containers'])} on {pod.ip}")

    def ready(self, timeout: float) -> None:
        for pod in self.pods:
            for c in pod.spec["containers"]:
                probe = (c.get("readinessProbe") or {}).get("httpGet")
                if not probe:
                    continue
                port = probe["port"]
                if isinstance(port, str):
                    port = next(p["containerPort"] for p in c.get("ports", []) if p.get("name") == port)
                url = f"http://{pod.ip}:{port}{probe['path']}"

                def up() -> bool:
                    for name, process in pod.processes:
                        if process.poll() is not None:
                            raise SystemExit(f"FAILED: {pod.name}/{name} exited {process.returncode}:\n{pod.log_of(name)[-4000:]}")
                    return http(url)[0] == 200

                wait(f"{pod.name}/{c['name']} ready ({url})", timeout, up, every=1)
                log(f"{pod.name}/{c['name']} ready")

    def http_bases(self) -> list[tuple[str, str]]:
        """(pod/container, http://ip:port) of every container with an HTTP readiness probe."""
        bases = []
        for pod in self.pods:
            for c in pod.spec["containers"]:
                probe = (c.get("readinessProbe") or {}).get("httpGet")
                if not probe:
                    continue
                port = probe["port"]
                if isinstance(port, str):
                    port = next(p["containerPort"] for p in c.get("ports", []) if p.get("name") == port)
                bases.append((f"{pod.name}/{c['name']}", f"http://{pod.ip}:{port}"))
        return bases

    def start_users(self, count: int) -> list[Pod]:
        """Ordinary `meshara run` nodes outside the deployment, as its users run them: each in a
        network namespace of its own, configured like the chart configures a seed (the same
        bootstrap list, pinned by the same certificates, and the same `[updates]`), with an
        identity of its own."""
        seed_config = next(o for (k, n), o in self.objects.items() if k == "ConfigMap" and n.endswith("-seed"))
        first = sorted(k for k in seed_config["data"] if k.endswith(".toml"))[0]
        seed = tomllib.loads(seed_config["data"][first])
        peers_dir = self.work / "user-peers"
        peers_dir.mkdir()
        peers = next(o for (k, n), o in self.objects.items() if k == "ConfigMap" and n.endswith("-peers"))
        for name, pem in data_of(peers).items():
            (peers_dir / name).write_bytes(pem)
        pin = lambda text: text.replace("/etc/meshara/peers", str(peers_dir))  # noqa: E731
        hosts = self.hosts()
        users = []
        for i in range(count):
            pod = Pod(f"user-{i}", f"{SUBNET}.{50 + i}", {}, {"containers": [{"name": "meshara"}]}, [])
            pod.netns = f"{self.tag}-u{i}"
            pod.dir = self.work / "users" / pod.name
            pod.dir.mkdir(parents=True)
            os.chmod(pod.dir, 0o700)
            sh("ip", "netns", "add", pod.netns)
            veth = f"{self.tag}u{i}"
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", pod.netns)
            sh("ip", "link", "set", veth, "master", "br0", "up")
            sh("ip", "-n", pod.netns, "addr", "add", f"{pod.ip}/24", "dev", "eth0")
            sh("ip", "-n", pod.netns, "link", "set", "eth0", "up")
            sh("ip", "-n", pod.netns, "link", "set", "lo", "up")
            etc = pathlib.Path("/etc/netns") / pod.netns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(hosts)
            key = pod.dir / "identity.pem"
            key.write_bytes(sh("openssl", "genpkey", "-algorithm", "ed25519").stdout.encode())
            os.chmod(key, 0o600)
            updates = seed["updates"]
            config = "\n".join([
                f'control = "{pod.dir / "control.sock"}"',
                "[node]",
                f'listen_quic = "{pod.ip}:7340"',
                "mdns = false",
                "dial_private = true",
                f'data_dir = "{pod.dir}"',
                f'identity_file = "{key}"',
                "bootstrap = [" + ", ".join(json.dumps(pin(b)) for b in seed["node"]["bootstrap"]) + "]",
                "[updates]",
                "authorities = [" + ", ".join(json.dumps(pin(a)) for a in updates["authorities"]) + "]",
                "follow = " + json.dumps(updates["follow"]),
                'policy = "install"',
                f'install_path = "{pod.dir / "system-app"}"',
                "check_interval_secs = 5",
            ]) + "\n"
            (pod.dir / "node.toml").write_text(config)
            out = open(pod.dir / "meshara.log", "ab")
            process = subprocess.Popen(
                ["ip", "netns", "exec", pod.netns, str(self.bins / "meshara"), "run", "--config", str(pod.dir / "node.toml")],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(pod.dir)},
            )
            pod.processes.append(("meshara", process))
            self.pods.append(pod)
            users.append(pod)
            log(f"{pod.name}: a user's meshara run node on {pod.ip}, bootstrapping from the seeds")
        return users

    def stop(self) -> None:
        for pod in self.pods:
            for _, process in pod.processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for pod in self.pods:
            for _, process in pod.processes:
                try:
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        for pod in self.pods:
            if pod.netns:
                sh("ip", "netns", "del", pod.netns, check=False)
                shutil.rmtree(pathlib.Path("/etc/netns") / pod.netns, ignore_errors=True)


def http(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


# --- the scenario -------------------------------------------------------------------------------

def scenario(cluster: Cluster) -> None:
    objects = cluster.objects
    peers = data_of(next(o for (k, _), o in objects.items() if k == "ConfigMap" and _.endswith("-peers")))
    ids = {name[:-4]: node_id_of_certificate(pem.decode()) for name, pem in peers.items() if name.endswith(".crt")}
    seeds = [p for p in cluster.pods if "-seed-" in p.name]
    users = [p for p in cluster.pods if p.name.startswith("user-")]
    authority, bridge, explorer = cluster.pod("msys-authority"), cluster.pod("msys-bridge"), cluster.pod("msys-explorer")
    secrets = data_of(objects[("Secret", "msys-authority-secrets")])
    token = secrets["admin-token"].decode()
    auth = lambda extra=None: {"Authorization": f"Bearer {token}", **(extra or {})}  # noqa: E731
    api = f"http://{authority.ip}:8600"

    # 1. A release signed by 2 of the authority's 3 keys reaches every seed, which installs it.
    content = hashlib.sha256(b"system").digest() * 4096
    status, body = http(f"{api}/api/v1/packages?name=system-app-1.0.0", "PUT", content, auth())
    assert status in (200, 201), (status, body)
    content_hash = json.loads(body)["hash"]
    status, body = http(
        f"{api}/api/v1/releases", "POST",
        json.dumps({"package": "system-app", "channel": "stable", "semver": "1.0.0", "content_hash": content_hash}).encode(),
        auth({"Content-Type": "application/json"}),
    )
    assert status in (200, 201), (status, body)
    release = json.loads(body)["id"]
    for key in ("k1", "k2"):
        status, body = http(f"{api}/api/v1/releases/{release}/sign", "POST", json.dumps({"key": key}).encode(), auth({"Content-Type": "application/json"}))
        assert status in (200, 201), (key, status, body)
    status, body = http(f"{api}/api/v1/releases/{release}/publish", "POST", b"{}", auth({"Content-Type": "application/json"}))
    assert status in (200, 201), (status, body)
    log("published system-app 1.0.0 (signed by k1 and k2 of 3)")
    for node in seeds + users:
        target = (node.dir / "system-app") if node in users else (node.dir / "volumes" / "data" / "data" / "system-app")
        wait(f"{node.name} installing the release", 180, lambda: target.exists() and target.read_bytes() == content)
        log(f"{node.name} installed system-app 1.0.0 ({len(content)} bytes, verified)")

    # 2. The explorer finds every component and counts the release's adoption.
    ex = f"http://{explorer.ip}:8800"

    def listed() -> dict | None:
        status, body = http(f"{ex}/api/v1/nodes?state=all&per_page=100")
        if status != 200:
            return None
        found = {n["id"]: n for n in json.loads(body)["nodes"]}
        missing = [name for name, node in ids.items() if name != "explorer" and node not in found]
        missing += [u.name for u in users if user_ids.get(u.name) not in found]
        return found if not missing else None

    user_ids = {}
    for u in users:
        status = json.loads(subprocess.run(
            [str(cluster.bins / "meshara"), "--json", "--control", str(u.dir / "control.sock"), "status"],
            check=True, capture_output=True, text=True,
        ).stdout)
        user_ids[u.name] = status["node_id"]
    found = wait("the explorer to list every seed, the authority, the bridge and the users' nodes", 240, listed, every=2)
    log(f"the explorer lists {len(found)} nodes: every component and every user's node")

    def adoption() -> dict | None:
        status, body = http(f"{ex}/api/v1/history?since=0")
        if status != 200:
            return None
        for r in json.loads(body).get("releases", []):
            if r["package"] == "system-app" and r["version"] == "1.0.0" and r["nodes"] >= len(seeds) + len(users):
                return r
        return None

    r = wait("the explorer to count every seed and user node as running system-app 1.0.0", 240, adoption, every=2)
    log(f"the explorer shows system-app 1.0.0 on {r['nodes']} nodes (share {r['share']:.2f})")

    # 3. A private message from an I2P-only node reaches a seed through the bridge. The node
    # shares the bridge pod's I2P router (a second router could not find it on an offline I2P
    # network); every connection it makes goes over I2P.
    status, body = http(f"{ex}/api/v1/nodes/{ids['bridge-0']}")
    assert status == 200, (status, body)
    detail = json.loads(body)
    text = json.dumps(detail)
    b32 = re.search(r"i2p://([a-z2-7]{52}\.b32\.i2p):(\d+)", text)
    assert b32, f"the bridge's record has no I2P address: {text[:2000]}"
    target = seeds[0]
    message = f"hello from I2P at {time.time():.0f}"
    argv = [
        "ip", "netns", "exec", bridge.netns, str(cluster.bins / "examples" / "i2p_send"),
        "--sam", "127.0.0.1:7656", "--data-dir", str(cluster.work / "i2p-leaf"),
        "--bridge", f"{ids['bridge-0']}@i2p://{b32.group(1)}:{b32.group(2)}",
        "--to", ids[target.name.removeprefix("msys-")], "--text", message, "--timeout-secs", "240",
    ] + [a for o in I2P_LOCAL for a in ("--session-option", o)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"the I2P-only node could not deliver: {result.stdout}{result.stderr[-4000:]}"
    delivered = json.loads(result.stdout.strip().splitlines()[-1])
    wait(f"{target.name} to show the message", 30, lambda: message in target.log_of("meshara"))
    log(f"an I2P-only node's message reached {target.name} through the bridge "
        f"(acknowledged after {delivered['latency_ms']:.0f} ms)")

    # 4. Every component's /metrics, as Prometheus and classic parsers read it: promtool finds
    # nothing in the classic text, the OpenMetrics body parses, both list the same families.
    bases = cluster.http_bases()
    urls = [f"{base}/metrics" for _, base in bases]
    checker = pathlib.Path(__file__).resolve().parents[1] / "contracts" / "metrics.py"
    result = subprocess.run([sys.executable, str(checker), *urls], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"metrics checks failed:\n{result.stdout}{result.stderr[-6000:]}"
    log(f"/metrics of {', '.join(name for name, _ in bases)}: promtool and the OpenMetrics parser agree")


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("tests/system/run.py needs root (network namespaces)", file=sys.stderr)
        return 2
    bins = pathlib.Path(sys.argv[1]).resolve()
    cluster_ns = os.environ.get("MESHARA_SYSTEM_NS")
    if cluster_ns is None:
        # Run again inside a fresh "cluster" namespace holding the pods' bridge.
        cluster_ns = f"ms{os.getpid() % 100000}-cluster"
        sh("ip", "netns", "add", cluster_ns)
        try:
            for cmd in (["link", "add", "br0", "type", "bridge"], ["addr", "add", f"{SUBNET}.1/24", "dev", "br0"],
                        ["link", "set", "br0", "up"], ["link", "set", "lo", "up"]):
                sh("ip", "-n", cluster_ns, *cmd)
            return subprocess.run(
                ["ip", "netns", "exec", cluster_ns, sys.executable, __file__, str(bins)],
                env={**os.environ, "MESHARA_SYSTEM_NS": cluster_ns},
            ).returncode
        finally:
            sh("ip", "netns", "del", cluster_ns, check=False)
    work = pathlib.Path(tempfile.mkdtemp(prefix="meshara-system-"))
    out = work / "render"
    subprocess.run(
        [sys.executable, str(ROOT / "tests" / "chart" / "check.py"), "--render", str(VALUES), "--out", str(out),
         "--name", "msys", "--namespace", NAMESPACE],
        check=True, stdout=subprocess.DEVNULL,
    )
    objects = json.loads((out / "manifests.json").read_text())
    cluster = Cluster(bins, work, objects)
    log(f"rendered {len(objects)} objects; {len(cluster.pods)} pods: {', '.join(p.name for p in cluster.pods)}")
    ok = False
    try:
        cluster.network_up()
        cluster.run_pods()
        cluster.ready(timeout=300)
        cluster.start_users(2)
        scenario(cluster)
        ok = True
    finally:
        cluster.stop()
        if ok:
            shutil.rmtree(work, ignore_errors=True)
            log("whole system: passed")
        else:
            log(f"whole system: FAILED; logs kept in {work}/pods")
            for pod in cluster.pods:
                for c in pod.spec["containers"]:
                    tail = pod.log_of(c["name"])[-1500:]
                    if tail:
                        print(f"--- {pod.name}/{c['name']} (last lines)\n{tail}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

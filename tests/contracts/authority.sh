#!/usr/bin/env bash
# The authority server's OpenAPI document against the running server, checked by schemathesis
# (an independent property-based API tester, from PyPI): every operation, every check
# (statuses and bodies documented, schema-valid requests accepted, schema-violating ones
# refused, content types, authentication not ignored), as an admin, with a fixed seed. The
# server is the release binary's `init` + `serve` on loopback with its embedded SQLite store.
# A mismatch fails the run and prints a curl line that reproduces it.
#
#   tests/contracts/authority.sh BIN_DIR      (BIN_DIR holds meshara-authority)
set -euo pipefail
bin=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
venv=${MESHARA_CONTRACTS_VENV:-${HOME:-/root}/.cache/meshara-contracts-venv}
if ! "$venv/bin/st" --version >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==4.32.5"
fi
dir=$(mktemp -d /tmp/meshara-contracts.XXXXXX)
chmod 700 "$dir"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export MESHARA_AUTHORITY_KEY_PASSPHRASE="contract test"
"$bin/meshara-authority" init --data-dir "$dir/data" --keys 3 --threshold 2 >/dev/null
MESHARA_AUTHORITY_DATA_DIR="$dir/data" MESHARA_AUTHORITY_HTTP_LISTEN="127.0.0.1:$port" \
  MESHARA_AUTHORITY_QUIC_LISTEN="127.0.0.1:0" MESHARA_AUTHORITY_LOG=warn \
  "$bin/meshara-authority" serve >"$dir/authority.out" 2>"$dir/authority.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do
  python3 -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=2)" \
    "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { cat "$dir/authority.log" >&2; exit 1; }
  sleep 0.1
done
token=$(cat "$dir/data/admin.token")
# State for the operations to act on, so that they reach past "not found": a package, a
# published release, a draft release and a drafted root rotation. Schemathesis draws their
# ids, hash and key names half of the time (dictionaries) and generates the other half.
python3 - "http://127.0.0.1:$port" "$token" >"$dir/seeded.toml" <<'PY'
import json, sys, urllib.request
base, token = sys.argv[1], sys.argv[2]
def call(method, path, body=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")
package = call("PUT", "/api/v1/packages?name=app.bin", raw=b"contract test package\n" * 1000)
spec = {"package": "app", "channel": "stable", "content_hash": package["hash"]}
published = call("POST", "/api/v1/releases", {**spec, "semver": "1.0.0"})
for key in ("k1", "k2"):
    call("POST", f"/api/v1/releases/{published['id']}/sign", {"key": key})
call("POST", f"/api/v1/releases/{published['id']}/publish", {})
draft = call("POST", "/api/v1/releases", {**spec, "semver": "1.1.0"})
current = call("GET", "/api/v1/roots")["current"]
root = call("POST", "/api/v1/roots", {"keys": current["keys"], "valid_days": 365,
    "root_threshold": current["root_threshold"], "release_threshold": current["release_threshold"]})
print(f"""
[dictionaries.release_ids]
values = [{published['id']}, {draft['id']}]
[dictionaries.root_sequences]
values = [{root['sequence']}]
[dictionaries.hashes]
values = ["{package['hash']}"]
[dictionaries.key_names]
values = ["k1", "k2", "k3"]
[parameters]
"path.id" = {{ dictionary = "release_ids", probability = 0.5 }}
"path.sequence" = {{ dictionary = "root_sequences", probability = 0.5 }}
"path.hash" = {{ dictionary = "hashes", probability = 0.5 }}
"body.content_hash" = {{ dictionary = "hashes", probability = 0.5 }}
"body.key" = {{ dictionary = "key_names", probability = 0.5 }}
""")
PY
cat "$here/authority.toml" "$dir/seeded.toml" >"$dir/schemathesis.toml"
cd "$dir"  # schemathesis keeps its reports under ./.schemathesis
"$venv/bin/st" --config-file "$dir/schemathesis.toml" \
  run "http://127.0.0.1:$port/api/v1/openapi.json" --checks all --max-examples 25 \
  --seed 7 --no-color --header "Authorization: Bearer $token" "${@:2}"

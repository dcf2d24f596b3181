#!/usr/bin/env bash
# The explorer's OpenAPI document against the running server, checked by schemathesis (an
# independent property-based API tester, from PyPI): every operation, every check
# (status codes and bodies documented, schema-valid requests accepted, schema-violating ones
# refused, content types). A mismatch fails the run and prints a curl line that reproduces it.
#
#   tests/contracts/explorer.sh BIN_DIR      (BIN_DIR holds meshara-explorer)
set -euo pipefail
bin=$1
venv=${MESHARA_CONTRACTS_VENV:-${HOME:-/root}/.cache/meshara-contracts-venv}
if ! "$venv/bin/st" --version >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==4.32.5"
fi
dir=$(mktemp -d /tmp/meshara-contracts.XXXXXX)
chmod 700 "$dir"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$dir/explorer.toml" <<CONF
data_dir = "$dir"
http_listen = "127.0.0.1:$port"
[node]
quic_listen = "127.0.0.1:0"
api = false
[crawl]
interval_secs = 86400
CONF
MESHARA_EXPLORER_PASSPHRASE="contract test" MESHARA_EXPLORER_LOG=warn \
  "$bin/meshara-explorer" serve --config "$dir/explorer.toml" >"$dir/explorer.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do
  python3 -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=2)" \
    "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { cat "$dir/explorer.log" >&2; exit 1; }
  sleep 0.1
done
cd "$dir"  # schemathesis keeps its reports under ./.schemathesis
"$venv/bin/st" run "http://127.0.0.1:$port/api/v1/openapi.json" --checks all --max-examples 25 --seed 7 \
  --no-color

#!/usr/bin/env bash
# The main job (README.md): a local Meshara devnet on loopback: an authority server (with its
# embedded SQLite store, admin API and dashboard), the network explorer (a live map of the
# devnet in the browser), a bridge node on QUIC and I2P (with its own i2pd router, when i2pd
# is installed) and a mesh of nodes that follow the authority's releases. Arguments go to
# `meshara devnet` (try --help).
#
# Environment: MESHARA_DEVNET_DIR (state; default a fresh directory under /tmp),
# AUTHORITY_HTTP (default 127.0.0.1:8600), AUTHORITY_QUIC (default 127.0.0.1:7700),
# BRIDGE_HTTP (default 127.0.0.1:8700), BRIDGE_QUIC (default 127.0.0.1:7340),
# EXPLORER_HTTP (default 127.0.0.1:8800), EXPLORER_QUIC (default 127.0.0.1:7800).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -q --release --locked -p meshara-core --bin meshara -p meshara-authority --bin meshara-authority \
  -p meshara-bridge --bin meshara-bridge -p meshara-explorer --bin meshara-explorer
bin="${CARGO_TARGET_DIR:-target}/release"

dir=${MESHARA_DEVNET_DIR:-$(mktemp -d /tmp/meshara-devnet.XXXXXX)}
mkdir -p "$dir"
chmod 700 "$dir"
auth="$dir/authority"
export MESHARA_AUTHORITY_KEY_PASSPHRASE="devnet passphrase (not for production)"
if [ ! -f "$auth/root.pb" ]; then
  mkdir -p "$auth" && chmod 700 "$auth"
  "$bin/meshara-authority" init --data-dir "$auth" --keys 3 --threshold 2 >/dev/null
fi

MESHARA_AUTHORITY_DATA_DIR="$auth" \
MESHARA_AUTHORITY_HTTP_LISTEN="${AUTHORITY_HTTP:-127.0.0.1:8600}" \
MESHARA_AUTHORITY_QUIC_LISTEN="${AUTHORITY_QUIC:-127.0.0.1:7700}" \
  "$bin/meshara-authority" serve >"$dir/authority.out" 2>"$dir/authority.log" &
authority_pid=$!
pids=("$authority_pid")
# i2pd shuts down gracefully for minutes after SIGTERM; the devnet router holds nothing to keep.
router_pid=""
trap 'kill "${pids[@]}" 2>/dev/null; [ -z "$router_pid" ] || kill -9 "$router_pid" 2>/dev/null; wait "${pids[@]}" $router_pid 2>/dev/null || true' EXIT

node_line=""
for _ in $(seq 1 100); do
  node_line=$(grep -m1 '^  node: ' "$dir/authority.out" || true)
  [ -n "$node_line" ] && break
  kill -0 "$authority_pid" 2>/dev/null || { cat "$dir/authority.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$node_line" ] || { echo "the authority server did not start; see $dir/authority.log" >&2; exit 1; }
# "  node: <nodeid>@quic://host:port"
node_addr=$(echo "$node_line" | awk '{print $2}')
node_id=${node_addr%%@*}
http=${AUTHORITY_HTTP:-127.0.0.1:8600}
quic=${AUTHORITY_QUIC:-127.0.0.1:7700}

cat <<INFO
Meshara authority server
  dashboard:    http://$http/   (sign in with the token in $auth/admin.token)
  admin API:    http://$http/api/v1/openapi.json
  update check: http://$http/v1/updates/devnet-app/stable
  node:         $node_id@quic://$quic
  publish a release (2-of-3 server-held keys k1..k3):
    T=\$(cat $auth/admin.token); A=http://$http
    H=\$(curl -s -X PUT -H "Authorization: Bearer \$T" --data-binary @README.md "\$A/api/v1/packages?name=README.md" | grep -o '"hash":"[0-9a-f]*"' | cut -d'"' -f4)
    ID=\$(curl -s -H "Authorization: Bearer \$T" -H 'Content-Type: application/json' -d "{\"package\":\"devnet-app\",\"channel\":\"stable\",\"semver\":\"1.0.0\",\"content_hash\":\"\$H\"}" \$A/api/v1/releases | grep -o '"id":[0-9]*' | cut -d: -f2)
    for k in k1 k2; do curl -s -o /dev/null -H "Authorization: Bearer \$T" -H 'Content-Type: application/json' -d "{\"key\":\"\$k\"}" \$A/api/v1/releases/\$ID/sign; done
    curl -s -H "Authorization: Bearer \$T" -H 'Content-Type: application/json' -d '{}' \$A/api/v1/releases/\$ID/publish

INFO

# The explorer: crawls the devnet from the authority node every 15 s and shows it live.
explorer_http=${EXPLORER_HTTP:-127.0.0.1:8800}
mkdir -p "$dir/explorer" && chmod 700 "$dir/explorer"
MESHARA_EXPLORER_DATA_DIR="$dir/explorer" \
MESHARA_EXPLORER_HTTP_LISTEN="$explorer_http" \
MESHARA_EXPLORER_QUIC_LISTEN="${EXPLORER_QUIC:-127.0.0.1:7800}" \
MESHARA_EXPLORER_BOOTSTRAP="$node_id@quic://$quic" \
MESHARA_EXPLORER_CRAWL_INTERVAL_SECS=15 \
MESHARA_EXPLORER_PASSPHRASE="devnet passphrase (not for production)" \
  "$bin/meshara-explorer" serve >"$dir/explorer.out" 2>"$dir/explorer.log" &
pids+=($!)
cat <<INFO
Meshara explorer (a live map of this devnet; crawls every 15 s)
  open:         http://$explorer_http/
  API:          http://$explorer_http/api/v1/openapi.json   snapshot: http://$explorer_http/api/v1/snapshot
  log:          $dir/explorer.log

INFO

# The bridge: its own i2pd router (offline: no reseeding, zero-hop tunnels, as in
# ../shared/RECIPES.md) and meshara-bridge joining the mesh through the authority node.
bridge_http=${BRIDGE_HTTP:-127.0.0.1:8700}
bridge_quic=${BRIDGE_QUIC:-127.0.0.1:7340}
if [ -x /usr/sbin/i2pd ]; then
  i2p="$dir/i2pd"; mkdir -p "$i2p"
  cat >"$i2p/i2pd.conf" <<CONF
log = file
logfile = $i2p/i2pd.log
loglevel = warn
daemon = false
ipv4 = true
ipv6 = false
host = 127.0.0.1
address4 = 127.0.0.1
port = 17657
nat = false
netid = 77
reservedrange = false
floodfill = true
[ntcp2]
enabled = true
published = true
port = 17657
[ssu2]
enabled = false
[http]
enabled = false
[httpproxy]
enabled = false
[socksproxy]
enabled = false
[sam]
enabled = true
address = 127.0.0.1
port = 17656
[bob]
enabled = false
[i2cp]
enabled = false
[i2pcontrol]
enabled = false
[upnp]
enabled = false
[addressbook]
enabled = true
defaulturl =
subscriptions =
[nettime]
enabled = false
[reseed]
verify = false
threshold = 0
urls = https://127.0.0.1:9/
yggurls =
[exploratory]
inbound.length = 0
outbound.length = 0
CONF
  /usr/sbin/i2pd --datadir="$i2p" --conf="$i2p/i2pd.conf" >/dev/null 2>&1 &
  router_pid=$!
  mkdir -p "$dir/bridge" && chmod 700 "$dir/bridge"
  cat >"$dir/bridge/bridge.toml" <<CONF
data_dir = "$dir/bridge"
http_listen = "$bridge_http"
[node]
listen_quic = "$bridge_quic"
bootstrap = ["$node_id@quic://$quic"]
[i2p]
enabled = true
sam = "127.0.0.1:17656"
session_options = ["inbound.length=0", "outbound.length=0", "i2cp.leaseSetType=1", "i2cp.leaseSetEncType=0"]
CONF
  MESHARA_BRIDGE_PASSPHRASE="devnet passphrase (not for production)" \
    "$bin/meshara-bridge" --config "$dir/bridge/bridge.toml" >"$dir/bridge.log" 2>&1 &
  pids+=($!)
  cat <<INFO
Meshara bridge (QUIC and I2P; relays circuits between them)
  node:         quic://$bridge_quic and a .b32.i2p address (printed in its log once ready)
  health:       http://$bridge_http/healthz   ready: http://$bridge_http/readyz (once its I2P session is up, ~20 s)
  metrics:      http://$bridge_http/metrics   log: $dir/bridge.log

INFO
else
  echo "No bridge: i2pd is not installed (apt-get install i2pd to add one to the devnet)."
  echo
fi

"$bin/meshara" devnet --dir "$dir/nodes" --bootstrap "$node_id@quic://$quic" --update-root "$auth/root.pb" "$@"

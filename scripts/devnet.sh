#!/usr/bin/env bash
# The main job (README.md): a local Meshara devnet on loopback: an authority server (with its
# embedded SQLite store, admin API and dashboard) and a mesh of nodes that follow its
# releases. Arguments go to `meshara devnet` (try --help).
#
# Environment: MESHARA_DEVNET_DIR (state; default a fresh directory under /tmp),
# AUTHORITY_HTTP (default 127.0.0.1:8600), AUTHORITY_QUIC (default 127.0.0.1:7700).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -q --release --locked -p meshara-core --bin meshara -p meshara-authority --bin meshara-authority
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
trap 'kill $authority_pid 2>/dev/null; wait $authority_pid 2>/dev/null || true' EXIT

node_line=""
for _ in $(seq 1 100); do
  node_line=$(grep -m1 '^  node: ' "$dir/authority.out" || true)
  [ -n "$node_line" ] && break
  kill -0 "$authority_pid" 2>/dev/null || { cat "$dir/authority.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$node_line" ] || { echo "the authority server did not start; see $dir/authority.log" >&2; exit 1; }
node_id=$(echo "$node_line" | awk '{print $2}')
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

"$bin/meshara" devnet --dir "$dir/nodes" --bootstrap "$node_id@quic://$quic" --update-root "$auth/root.pb" "$@"

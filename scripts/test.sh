#!/usr/bin/env bash
# The test command (README.md). Runs on a fresh Debian machine as root and installs what it
# needs, idempotently: formatting, lints, unit + integration + property + doc tests, rustdoc,
# the test-vector check and a bounded fuzz smoke run of every fuzz target.
#
# Also starts a throwaway PostgreSQL (scripts/postgres.sh) for the authority server's tests,
# installs Debian's chromium plus playwright-core for its dashboard test, installs i2pd,
# which the I2P transport and bridge tests start themselves (one router each, on loopback),
# and tor, of which the Tor transport's tests start a private network on loopback.
#
# Environment:
#   FUZZ_SECONDS   seconds per fuzz target (default 15; 0 skips fuzzing)
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step prints how long the one before it took (and the last one prints the total).
started=$SECONDS
step_started=$SECONDS
step_name=""
step() {
  if [ -n "$step_name" ]; then
    printf '    (%s: %ds)\n' "$step_name" $((SECONDS - step_started))
  fi
  step_name="$*"
  step_started=$SECONDS
  printf '\n==> %s\n' "$*"
}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

step "system packages"
need=()
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v git >/dev/null 2>&1 || need+=(git)
# `ip` for the mDNS test between network namespaces, and tcpdump to read what it announces.
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
# The authority server's dashboard test: a real headless browser driven from Node.
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
# The authority server's PostgreSQL tests.
ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || need+=(postgresql)
# The I2P transport's and the bridge's tests run a real i2pd router.
[ -x /usr/sbin/i2pd ] || need+=(i2pd)
# The Tor transport's tests start a private Tor network of C tor relays (tor, tor-gencert).
command -v tor-gencert >/dev/null 2>&1 || need+=(tor)
# The Helm chart's checks run Helm's SDK and kubernetes-validate from a Python venv.
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

# promtool, Prometheus's metrics linter, from Debian's prometheus package: unpacked, not
# installed, so no Prometheus server is started on this machine.
promtool_dir=${HOME:-/root}/.cache/meshara-promtool
if [ ! -x "$promtool_dir/usr/bin/promtool" ]; then
  deb_dir=$(mktemp -d)
  (cd "$deb_dir" && { apt-get download -q prometheus 2>/dev/null \
    || { as_root apt-get update -qq && apt-get download -q prometheus; }; } \
    && dpkg-deb -x prometheus_*.deb "$promtool_dir")
  rm -rf "$deb_dir"
fi
export MESHARA_PROMTOOL="$promtool_dir/usr/bin/promtool"
"$MESHARA_PROMTOOL" --version | head -1

step "rust toolchain components"
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust with rustup (https://rustup.rs) first" >&2
  exit 1
fi
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "Helm chart: lint, render, schemas, conventions (tests/chart/check.py)"
python3 tests/chart/check.py

step "test services: PostgreSQL, playwright-core, Python contract tools"
# The throwaway PostgreSQL is stopped when this script ends, unless it was already running.
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$pg_bin" ] || ! "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "${PGPORT:-55432}"; then
  trap './scripts/postgres.sh stop >/dev/null' EXIT
fi
MESHARA_TEST_POSTGRES_URL=$(./scripts/postgres.sh)
export MESHARA_TEST_POSTGRES_URL MESHARA_REQUIRE_POSTGRES=1
(cd authority-server/tests/browser && npm ci --no-audit --no-fund --loglevel=error)
(cd explorer/tests/browser && npm ci --no-audit --no-fund --loglevel=error && npm run -s units)
export MESHARA_REQUIRE_BROWSER=1
# Tests that need i2pd fail (rather than skip) if it is missing.
export MESHARA_REQUIRE_I2PD=1
# Likewise for tor.
export MESHARA_REQUIRE_TOR=1
# Tools by others that check Meshara's interfaces: an independent RFC 9421 implementation
# (meshara-axum/tests/rfc9421_interop.rs), schemathesis and the Python Prometheus client
# (tests/contracts/). One virtual environment, set up once.
contracts_venv=${MESHARA_CONTRACTS_VENV:-${HOME:-/root}/.cache/meshara-contracts-venv}
if ! "$contracts_venv/bin/python" -c 'import http_message_signatures, requests, schemathesis, prometheus_client' 2>/dev/null; then
  python3 -m venv "$contracts_venv"
  "$contracts_venv/bin/pip" install -q --disable-pip-version-check \
    "http-message-signatures==3.0.0" "requests==2.34.2" "schemathesis==4.32.5" \
    "prometheus-client==0.26.0"
fi
export MESHARA_INTEROP_PYTHON="$contracts_venv/bin/python" MESHARA_REQUIRE_INTEROP=1
# meshara-axum/tests/openapi_contract.rs runs schemathesis against the mounted routes.
export MESHARA_SCHEMATHESIS="$contracts_venv/bin/st" MESHARA_REQUIRE_CONTRACTS=1

step "cargo test (unit, integration, property, doc)"
cargo test --workspace --locked

step "every configuration the chart renders is accepted by its binary (--check)"
cargo build -q --locked -p meshara-core --bin meshara -p meshara-authority -p meshara-bridge -p meshara-explorer
python3 tests/chart/check_configs.py "${CARGO_TARGET_DIR:-target}/debug"

step "the explorer's OpenAPI document against the server (schemathesis)"
./tests/contracts/explorer.sh "${CARGO_TARGET_DIR:-target}/debug"

step "the authority server's OpenAPI document against the server (schemathesis)"
./tests/contracts/authority.sh "${CARGO_TARGET_DIR:-target}/debug"

step "the whole system as the chart deploys it (tests/system/run.py: pods in network namespaces)"
cargo build -q --locked -p meshara-bridge --example i2p_send
as_root env MESHARA_PROMTOOL="$MESHARA_PROMTOOL" python3 tests/system/run.py "${CARGO_TARGET_DIR:-target}/debug"

step "routing simulations at 10,000 nodes (meshara-core/simulations/*-10k.toml)"
cargo test -p meshara-core --locked --test simulations -- --ignored --nocapture

step "rustdoc (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

step "test vectors"
cargo run -q --locked -p meshara-core --bin meshara -- check-vectors meshara-core/tests/vectors/v1.json

FUZZ_SECONDS=${FUZZ_SECONDS:-15}
if [ "$FUZZ_SECONDS" -gt 0 ]; then
  step "fuzz smoke run (${FUZZ_SECONDS}s per target)"
  if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal || true
  fi
  if rustup toolchain list | grep -q '^nightly'; then
    command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
    ./scripts/fuzz.sh "$FUZZ_SECONDS"
  else
    # cargo fuzz needs nightly (sanitizer flags); the machines ship it, but say so loudly if not.
    echo "SKIPPED fuzz smoke run: no nightly toolchain and none could be installed" >&2
  fi
fi

step "all tests passed"
printf '    (total: %ds)\n' $((SECONDS - started))

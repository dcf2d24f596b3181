#!/usr/bin/env bash
# The main job (README.md): a local Meshara devnet on loopback. Arguments go to `meshara devnet`
# (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run -q --release --locked -p meshara-core --bin meshara -- devnet "$@"

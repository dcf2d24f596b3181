#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each) and fails on the first crash.
# Usage: scripts/fuzz.sh [seconds-per-target] [target...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
for t in "${targets[@]}"; do
  echo "== fuzz $t for ${secs}s"
  mkdir -p "fuzz/corpus/$t"
  cargo +nightly fuzz run "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
    | grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==ERROR|SUMMARY|thread .* panicked|Done)" || true
  # cargo fuzz exits non-zero on a crash; pipefail is defeated by grep, so check artifacts.
  if compgen -G "fuzz/artifacts/$t/crash-*" > /dev/null; then
    echo "fuzz target $t crashed; see fuzz/artifacts/$t" >&2
    exit 1
  fi
done

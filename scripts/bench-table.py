#!/usr/bin/env python3
"""Prints criterion results (target/criterion/**/new/) as a Markdown table for docs/benchmarks.md."""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
rows = []
for bench in sorted(root.glob("**/new/benchmark.json")):
    meta = json.loads(bench.read_text())
    est = json.loads((bench.parent / "estimates.json").read_text())
    mean = est["mean"]["point_estimate"]  # nanoseconds
    lo = est["mean"]["confidence_interval"]["lower_bound"]
    hi = est["mean"]["confidence_interval"]["upper_bound"]
    name = meta["function_id"] + (f" / {meta['value_str']}" if meta.get("value_str") else "")
    tput = meta.get("throughput") or {}
    per_sec = f"{1e9 / mean:,.0f}/s"
    if "Bytes" in tput:
        per_sec += f", {tput['Bytes'] / mean * 1e9 / 2**20:,.0f} MiB/s"
    rows.append((meta["group_id"], name, mean, lo, hi, per_sec))

def fmt(ns):
    return f"{ns / 1000:,.2f} µs" if ns >= 1000 else f"{ns:,.0f} ns"

print("| group | benchmark | mean | 95% CI | rate |")
print("|---|---|---|---|---|")
for group, name, mean, lo, hi, per_sec in rows:
    print(f"| {group} | {name} | {fmt(mean)} | {fmt(lo)} – {fmt(hi)} | {per_sec} |")

#!/usr/bin/env python3
"""Checks `/metrics` endpoints against the two exposition formats, with tools Meshara did not write.

    tests/contracts/metrics.py URL...        (each URL a /metrics endpoint)

For each endpoint:

1. Without an `Accept` header (as curl or a classic parser asks), the answer must be the classic
   Prometheus text format, `text/plain; version=0.0.4`, and pass `promtool check metrics`
   (Prometheus's own linter, from Debian's `prometheus` package; `$MESHARA_PROMTOOL` names the
   binary, default `promtool` on PATH) with no finding.
2. With the `Accept` header Prometheus sends, the answer must be OpenMetrics,
   `application/openmetrics-text; version=1.0.0`, and parse with the strict OpenMetrics parser of
   the Python Prometheus client (`prometheus_client.openmetrics.parser`, from PyPI).
3. Both must describe the same metric families with the same types.

It runs itself in the virtual environment at ${MESHARA_CONTRACTS_VENV:-~/.cache/meshara-contracts-venv}
(shared with tests/contracts/explorer.sh), installing the Python client there on first use.
Exits non-zero, naming the endpoint and the finding, on any mismatch.
"""

import os
import pathlib
import subprocess
import sys
import urllib.request
import venv

VENV = pathlib.Path(os.environ.get("MESHARA_CONTRACTS_VENV") or pathlib.Path.home() / ".cache" / "meshara-contracts-venv")
PACKAGES = ["prometheus-client==0.26.0"]
# What Prometheus 2.x sends when it scrapes.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def ensure_venv() -> None:
    """Re-executes this script with the venv's Python, creating the venv or installing into it first."""
    python = VENV / "bin" / "python"
    if pathlib.Path(sys.prefix).resolve() == VENV.resolve():
        return
    probe = [str(python), "-c", "import prometheus_client.openmetrics.parser"]
    if not python.exists() or subprocess.run(probe, capture_output=True).returncode != 0:
        try:
            if not python.exists():
                venv.EnvBuilder(with_pip=True).create(VENV)
            subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                            *PACKAGES], check=True)
        except (subprocess.CalledProcessError, OSError) as e:
            sys.exit(f"error: could not set up {VENV}: {e} (needs python3-venv and PyPI)")
    os.execv(str(python), [str(python), str(pathlib.Path(__file__).resolve()), *sys.argv[1:]])


def fetch(url: str, accept: str | None) -> tuple[str, str]:
    headers = {"Accept": accept} if accept else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
        return r.headers.get("Content-Type", ""), r.read().decode()


def check(url: str, promtool: str) -> list[str]:
    from prometheus_client import parser as classic_parser
    from prometheus_client.openmetrics import parser as openmetrics_parser

    problems = []
    content_type, classic = fetch(url, None)
    if not content_type.startswith("text/plain; version=0.0.4"):
        problems.append(f"without Accept: content type {content_type!r}, not the classic text format")
    lint = subprocess.run([promtool, "check", "metrics"], input=classic, capture_output=True, text=True)
    if lint.returncode != 0:
        problems.append(f"promtool check metrics (exit {lint.returncode}): {(lint.stdout + lint.stderr).strip()}")
    try:
        classic_families = {(f.name, f.type) for f in classic_parser.text_string_to_metric_families(classic)}
    except Exception as e:  # noqa: BLE001 - the parser raises plain ValueError and friends
        problems.append(f"classic text does not parse: {e}")
        classic_families = set()

    content_type, openmetrics = fetch(url, PROMETHEUS_ACCEPT)
    if not content_type.startswith("application/openmetrics-text; version=1.0.0"):
        problems.append(f"with Prometheus's Accept: content type {content_type!r}, not OpenMetrics")
    try:
        om_families = {(f.name, f.type) for f in openmetrics_parser.text_string_to_metric_families(openmetrics)}
    except Exception as e:  # noqa: BLE001
        problems.append(f"OpenMetrics body does not parse: {e}")
        om_families = set()
    if classic_families and om_families and classic_families != om_families:
        problems.append(
            "the two formats disagree: only classic "
            f"{sorted(classic_families - om_families)}, only OpenMetrics {sorted(om_families - classic_families)}"
        )
    if not om_families:
        problems.append("no metric families")
    return problems


def main() -> int:
    ensure_venv()
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    promtool = os.environ.get("MESHARA_PROMTOOL", "promtool")
    failed = False
    for url in sys.argv[1:]:
        problems = check(url, promtool)
        if problems:
            failed = True
            print(f"FAILED {url}:", file=sys.stderr)
            for p in problems:
                print(f"  - {p}", file=sys.stderr)
        else:
            print(f"ok {url}: classic text passes promtool, OpenMetrics parses, same families")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

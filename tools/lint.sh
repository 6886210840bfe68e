#!/usr/bin/env bash
# Static checks: ruff (lint + format), mypy --strict on the package, import-linter layering contracts.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${VENV:-.venv}/bin
$B/ruff check operator cni tests bench
$B/ruff format --check operator cni tests bench
$B/mypy
$B/mypy cni/dmvpn_cni   # the CNI plugin: stdlib only, typed as strictly
$B/lint-imports

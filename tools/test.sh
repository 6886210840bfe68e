#!/usr/bin/env bash
# `make test`: bootstrap, static checks, then every test (unit tests on the host; tests marked `kernel`
# in a virtme-ng guest when this kernel lacks mGRE/ESP), with the time each stage took.
set -uo pipefail
cd "$(dirname "$0")/.."
declare -a STAGES=()
status=0

stage() {
  local name=$1; shift
  local start=$SECONDS
  echo "=== stage: $name"
  "$@"
  local rc=$?
  STAGES+=("$(printf '%-28s %4d s  %s' "$name" $((SECONDS - start)) "$([[ $rc == 0 ]] && echo ok || echo "FAILED ($rc)")")")
  return $rc
}

stage "apt + virtualenv" bash tools/bootstrap.sh || { echo "bootstrap failed"; exit 1; }
stage "lint (ruff, mypy, imports)" bash tools/lint.sh || status=1
stage "tests (unit + kernel guest)" .venv/bin/python -m pytest -p no:cacheprovider || status=1

echo "=== stage timings"
printf '%s\n' "${STAGES[@]}"
exit $status

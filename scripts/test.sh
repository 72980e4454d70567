#!/usr/bin/env bash
# Install everything and run the whole test suite (unit + end-to-end on the real test bed).
# Fresh Debian 12, as root. The tests start every daemon they use themselves.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CORRAL_VENV:-/opt/corral-venv}"

bash "$REPO/scripts/install-deps.sh"
cd "$REPO"
echo "== lint: ruff, mypy, import contracts (scheduler pure, agent stdlib-only)"
"$VENV/bin/ruff" check corral testbed tests bench
"$VENV/bin/mypy" --ignore-missing-imports corral
"$VENV/bin/lint-imports"
echo "== pytest"
set +e
"$VENV/bin/pytest" -p no:cacheprovider -q -rs --durations=15 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"

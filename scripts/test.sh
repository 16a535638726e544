#!/usr/bin/env bash
# Runs the test suite on CPU (installs what it needs into .venv first). Extra arguments go to pytest.
set -euo pipefail
. "$(dirname "$0")/env.sh" requirements-test.txt
exec python -m pytest -q "$@"

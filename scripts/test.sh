#!/usr/bin/env bash
# Run the whole test suite on a fresh machine (does its own setup). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --with-postgres --with-browser
export FACELAB_DATA=${FACELAB_DATA:-$(cd .. && pwd)/shared/data}
exec .venv/bin/python -m pytest -q "$@"

#!/usr/bin/env bash
# The main job: train one multi-task model (mask state + gender + age group) on the real data
# in $FACELAB_DATA (default ../shared/data), evaluate it on a held-out person-level split and
# print the figures and where the report is. Under 15 minutes on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export FACELAB_DATA=${FACELAB_DATA:-$(cd .. && pwd)/shared/data}
exec .venv/bin/python benchmarks/attributes.py "$@"

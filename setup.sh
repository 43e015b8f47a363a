#!/usr/bin/env bash
# One-command set-up (CPU or CUDA machine): the pinned stack, then the packages that must skip their
# declared dependencies. `bash setup.sh --dev` also installs the test tools.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"

"$PYTHON" -m pip install -r requirements.txt
# pip cannot mark single lines of a requirements file --no-deps, hence a second file (reasons inside it).
"$PYTHON" -m pip install --no-deps -r requirements-nodeps.txt
if [[ "${1:-}" == "--dev" ]]; then
    "$PYTHON" -m pip install -r requirements-dev.txt
fi

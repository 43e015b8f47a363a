#!/usr/bin/env bash
# One-command set-up (CPU or CUDA machine): the pinned stack, then the packages that must skip their
# declared dependencies.
#   bash setup.sh                      install (from the package index)
#   bash setup.sh --dev                also the test tools
#   bash setup.sh --download DIR       on a machine with internet: fetch every wheel into DIR (a wheelhouse)
#   bash setup.sh --wheelhouse DIR     on a machine without internet: install from DIR only (pip --no-index)
# A wheelhouse must be made on the same OS, CPU architecture and Python version as the machine it serves.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"

DEV=0
SOURCE=()
DOWNLOAD=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dev) DEV=1 ;;
        --wheelhouse) SOURCE=(--no-index --find-links "$2"); shift ;;
        --download) DOWNLOAD="$2"; shift ;;
        *) echo "setup.sh: unknown option $1 (expected --dev, --wheelhouse DIR, --download DIR)" >&2; exit 2 ;;
    esac
    shift
done

if [[ -n "$DOWNLOAD" ]]; then
    "$PYTHON" -m pip download -d "$DOWNLOAD" -r requirements.txt -r requirements-dev.txt
    "$PYTHON" -m pip download -d "$DOWNLOAD" --no-deps -r requirements-nodeps.txt
    echo "Wheelhouse ready: copy $DOWNLOAD and this repository over, then: bash setup.sh --wheelhouse $DOWNLOAD"
    exit 0
fi

# A CUDA build of torch already installed (a GPU machine's image) is kept: the pin names the CPU build.
REQUIREMENTS=requirements.txt
if "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then
    REQUIREMENTS=$(mktemp)
    trap 'rm -f "$REQUIREMENTS"' EXIT
    grep -v '^torch==' requirements.txt > "$REQUIREMENTS"
    echo "Keeping the installed CUDA torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
fi
"$PYTHON" -m pip install "${SOURCE[@]}" -r "$REQUIREMENTS"
# pip cannot mark single lines of a requirements file --no-deps, hence a second file (reasons inside it).
"$PYTHON" -m pip install "${SOURCE[@]}" --no-deps -r requirements-nodeps.txt
if [[ "$DEV" == 1 ]]; then
    # Test dependencies that take long to build from source (llama-cpp-python) come prebuilt from ../shared/wheels
    # when that folder exists; elsewhere pip builds the same pinned version from the package index.
    WHEELS=()
    if [[ -d ../shared/wheels ]]; then WHEELS=(--find-links ../shared/wheels); fi
    "$PYTHON" -m pip install "${SOURCE[@]}" "${WHEELS[@]}" -r requirements-dev.txt
fi

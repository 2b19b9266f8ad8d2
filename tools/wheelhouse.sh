#!/usr/bin/env bash
# Build a folder of wheels for requirements.txt on a machine with registry access, for a GPU box without it.
#
#   tools/wheelhouse.sh [DIR] [extra pip download arguments...]      (DIR default: wheelhouse)
#
# Run it on a connected machine with the GPU box's OS and CPU architecture. Environment:
#   PYTHON          the Python whose pip downloads (default: python3)
#   PYTHON_VERSION  the GPU box's Python version when it differs from PYTHON's, e.g. 3.11 (binary wheels only)
#   PLATFORM        the GPU box's platform tag when it differs, e.g. manylinux_2_28_x86_64 (binary wheels only)
#   EXTRAS          optional packages to add, e.g. "torchcam tensorboard torchattacks==3.4.0"
#   TORCH_INDEX     an index for another torch build, e.g. https://download.pytorch.org/whl/cu124
# Then copy DIR to the GPU box and install there without a network:
#   python3 -m venv .venv && .venv/bin/pip install --no-index --find-links DIR -r DIR/requirements.txt
# DIR/requirements.txt is this repository's requirements.txt plus EXTRAS; DIR/SHA256SUMS lists the files.
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
DIR=${1:-wheelhouse}
[ $# -gt 0 ] && shift
PY=${PYTHON:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$DIR"
REQ="$DIR/requirements.txt"
cp "$ROOT/requirements.txt" "$REQ"
for pkg in ${EXTRAS:-}; do
    echo "$pkg" >> "$REQ"
done
args=()
if [ -n "${PYTHON_VERSION:-}" ]; then args+=(--python-version "$PYTHON_VERSION" --only-binary=:all:); fi
if [ -n "${PLATFORM:-}" ]; then args+=(--platform "$PLATFORM" --only-binary=:all:); fi
if [ -n "${TORCH_INDEX:-}" ]; then args+=(--extra-index-url "$TORCH_INDEX"); fi
"$PY" -m pip download --dest "$DIR" -r "$REQ" "${args[@]}" "$@"
(cd "$DIR" && find . -maxdepth 1 -type f ! -name SHA256SUMS ! -name requirements.txt -printf '%f\n' | sort \
    | xargs -r sha256sum > SHA256SUMS)
echo "wrote $(grep -c . "$DIR/SHA256SUMS") files to $DIR; on the GPU box:"
echo "  python3 -m venv .venv && .venv/bin/pip install --no-index --find-links $DIR -r $DIR/requirements.txt"

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
# DIR must be new, empty, or a wheelhouse this tool wrote (nothing but its files): it is built in a temporary
# folder beside DIR and replaces DIR only when complete, so a failed or interrupted run leaves DIR as it was.
# Bad input (a PYTHON without pip, a DIR that holds other files) exits 2 with one line; a failed download 1.
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
die() { echo "error: $*" >&2; exit 2; }
DIR=${1:-wheelhouse}
[ $# -gt 0 ] && shift
[ -n "$DIR" ] || die "DIR is empty; give a folder"
PY=${PYTHON:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${DIR%/}
[ -n "$DIR" ] || DIR=/
PARENT=$(dirname -- "$DIR")
NAME=$(basename -- "$DIR")

# PYTHON first: without pip nothing can be downloaded
if ! pyout=$("$PY" -m pip --version 2>&1); then
    last=$(printf '%s\n' "$pyout" | grep . | tail -n 1 | cut -c1-200 || true)
    die "PYTHON=$PY cannot run pip (${last:-no output}); set PYTHON to a Python with pip"
fi

# DIR: new, empty, or a wheelhouse of ours (every file requirements.txt, SHA256SUMS or listed in SHA256SUMS)
if [ -e "$DIR" ] || [ -L "$DIR" ]; then
    [ ! -L "$DIR" ] || die "$DIR is a symbolic link; give the folder itself"
    [ -d "$DIR" ] || die "$DIR exists and is not a folder; give a new folder"
    if [ -n "$(ls -A -- "$DIR")" ]; then
        [ -f "$DIR/SHA256SUMS" ] || die "$DIR holds files this tool did not write (no SHA256SUMS); give a new or empty folder (nothing is overwritten)"
        while IFS= read -r entry; do
            case "$entry" in
                requirements.txt|SHA256SUMS) ;;
                *) if [ -d "$DIR/$entry" ] || ! awk -v f="$entry" '{sub(/^[0-9a-f]+ [ *]?/, "")} $0 == f {found=1} END {exit !found}' "$DIR/SHA256SUMS"; then
                       die "$DIR holds $entry, which this tool did not write; give a new or empty folder (nothing is overwritten)"
                   fi ;;
            esac
        done < <(ls -A -- "$DIR")
    fi
fi
mkdir -p -- "$PARENT" 2>/dev/null || die "cannot create $PARENT"
[ -w "$PARENT" ] || die "cannot write in $PARENT (where $NAME is built)"

TMP=$(mktemp -d "$PARENT/.$NAME.partial-XXXXXX") || die "cannot create a temporary folder in $PARENT"
OLD=""
cleanup() {
    if [ -n "$OLD" ] && [ -d "$OLD" ] && [ ! -e "$DIR" ]; then mv -- "$OLD" "$DIR"; fi  # interrupted mid-swap
    rm -rf -- "$TMP" ${OLD:+"$OLD"}
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

REQ="$TMP/requirements.txt"
cp -- "$ROOT/requirements.txt" "$REQ"
for pkg in ${EXTRAS:-}; do
    echo "$pkg" >> "$REQ"
done
args=()
if [ -n "${PYTHON_VERSION:-}" ]; then args+=(--python-version "$PYTHON_VERSION" --only-binary=:all:); fi
if [ -n "${PLATFORM:-}" ]; then args+=(--platform "$PLATFORM" --only-binary=:all:); fi
if [ -n "${TORCH_INDEX:-}" ]; then args+=(--extra-index-url "$TORCH_INDEX"); fi
if ! "$PY" -m pip download --dest "$TMP" -r "$REQ" ${args[@]+"${args[@]}"} "$@"; then
    echo "error: pip download failed (its output above); $DIR is left as it was" >&2
    exit 1
fi
(cd "$TMP" && find . -maxdepth 1 -type f ! -name SHA256SUMS ! -name requirements.txt -printf '%f\n' | sort \
    | xargs -r -d '\n' sha256sum > SHA256SUMS)
if [ -d "$DIR" ]; then  # the old wheelhouse (or the empty folder) steps aside, the new one takes its name
    OLD=$(mktemp -d "$PARENT/.$NAME.old-XXXXXX")
    rmdir -- "$OLD"
    mv -- "$DIR" "$OLD"
fi
mv -- "$TMP" "$DIR"
echo "wrote $(grep -c . "$DIR/SHA256SUMS") files to $DIR; on the GPU box:"
echo "  python3 -m venv .venv && .venv/bin/pip install --no-index --find-links $DIR -r $DIR/requirements.txt"

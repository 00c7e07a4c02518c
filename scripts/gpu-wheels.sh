#!/usr/bin/env bash
# The wheels scripts/gpu-check.sh installs on a GPU machine without network: CPython 3.12, manylinux x86_64, the
# versions this project is tested with. Run it here (with network); scripts/wheels/ (git-ignored, ~30 MiB) then
# travels with the source tree. torch and torchvision are not among them: the GPU machine has its own.
#
#   scripts/gpu-wheels.sh                 # -> scripts/wheels/
#   PYTHON=.venv/bin/python scripts/gpu-wheels.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
DEST="${1:-$ROOT/scripts/wheels}"
PACKAGES=(h5py==3.16.0 click==8.5.1 tqdm==4.70.1 numpy==2.4.6 pillow==13.0.0 pydicom==3.0.2 isal==1.9.1)

mkdir -p "$DEST"
"$PYTHON" -m pip download --quiet --dest "$DEST" --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 "${PACKAGES[@]}"
size="$(du -sm "$DEST" | cut -f1)"
echo "$(ls "$DEST" | wc -l) wheels, ${size} MiB in $DEST"
if (( size >= 60 )); then
    echo "gpu-wheels: $DEST is ${size} MiB, over the 60 MiB that may travel with the tree" >&2
    exit 1
fi

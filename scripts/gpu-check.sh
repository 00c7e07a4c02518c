#!/usr/bin/env bash
# Check the GPU path on a machine with one NVIDIA GPU, in one command and under 8 minutes: the enhance job's speed
# at batch 256 on 4,096 JPEGs, a bare forward on the same loader, the GPU busy fraction, the store's speed, and the
# maps' agreement (head-only vs full backward, bf16 vs float32). Writes gpu-check.json; exit code 0 when it passed.
#
#   scripts/gpu-check.sh                      # on the GPU machine, from the source tree (nothing to install there)
#   scripts/gpu-check.sh --cpu --quick        # the same code on the CPU, small: what `make test` runs
#   scripts/gpu-wheels.sh                     # beforehand, on a machine with network: the wheels it may need
#
# It uses the machine's own python3 with its preinstalled torch (2.4 or newer) and torchvision; the small packages
# the package needs besides (h5py, click, tqdm, numpy, pillow, pydicom, isal) are installed, only when missing and
# only into .gpu-check-deps/ here, from the wheel folder scripts/wheels/ (made by scripts/gpu-wheels.sh; no network
# needed). The sample X-rays: $ENHANCER_SAMPLES, else shared/data/kermany-val or ../shared/data/kermany-val when
# present, else the user cache; without any, synthetic X-ray-like JPEGs. Options: see `scripts/gpu-check.sh --help`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WHEELS="${ENHANCER_WHEELS:-$ROOT/scripts/wheels}"
DEPS="$ROOT/.gpu-check-deps"

# module -> the wheel that provides it
missing="$("$PYTHON" - <<'PY'
import importlib.util
needed = {"h5py": "h5py", "click": "click", "tqdm": "tqdm", "numpy": "numpy", "PIL": "pillow", "pydicom": "pydicom",
          "isal": "isal"}
print(" ".join(wheel for module, wheel in needed.items() if importlib.util.find_spec(module) is None))
PY
)"
if [[ -n "$missing" && -d "$DEPS" ]]; then
    missing="$(PYTHONPATH="$DEPS" "$PYTHON" - "$missing" <<'PY'
import importlib.util, sys
modules = {"pillow": "PIL"}
print(" ".join(w for w in sys.argv[1].split() if importlib.util.find_spec(modules.get(w, w)) is None))
PY
)"
fi
if [[ -n "$missing" ]]; then
    if [[ ! -d "$WHEELS" ]]; then
        echo "gpu-check: missing Python packages: $missing. No wheel folder at $WHEELS: run scripts/gpu-wheels.sh" \
             "on a machine with network and bring scripts/wheels/ along, or pip install them." >&2
        exit 2
    fi
    echo "gpu-check: installing $missing from $WHEELS into $DEPS"
    # --no-deps: only what is missing; anything present (numpy under torch, say) stays the machine's own
    "$PYTHON" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" --target "$DEPS" $missing
fi

if [[ -z "${ENHANCER_SAMPLES:-}" ]]; then
    for candidate in "$ROOT/shared/data/kermany-val" "$ROOT/../shared/data/kermany-val"; do
        if [[ -d "$candidate" ]]; then export ENHANCER_SAMPLES="$candidate"; break; fi
    done
fi
export PYTHONPATH="$ROOT:$DEPS${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" "$ROOT/scripts/gpu_check.py" "$@"

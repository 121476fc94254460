#!/usr/bin/env bash
# One-shot environment set-up for a fresh clone: system packages for a headless X server (when missing and
# when we are root), a virtualenv, the CPU build of torch pinned *before* anything else (so no CUDA wheels),
# then the package with its Qt binding and test tools. Re-running is cheap: a stamp file records the
# inputs it was built from.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-napari,pyqt6,testing}

need_apt=()
command -v Xvfb >/dev/null 2>&1 || need_apt+=(xvfb)
for lib in libxcb-icccm4 libxcb-keysyms1; do
    dpkg -s "$lib" >/dev/null 2>&1 || need_apt+=("$lib")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing ${need_apt[*]} with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "setup: warning: missing ${need_apt[*]} (not root or no apt-get); GUI tests will need an X server" >&2
    fi
fi

stamp="$VENV/.cryoden-setup"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1) $TORCH_SPEC $EXTRAS"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip setuptools wheel
$PIP install -q "$TORCH_SPEC"
$PIP install -q -e ".[$EXTRAS]"
# Guard: a CPU machine must not have pulled CUDA runtime wheels.
if ! command -v nvidia-smi >/dev/null 2>&1 && $PIP list 2>/dev/null | grep -qi '^nvidia-'; then
    echo "setup: error: CUDA packages were installed on a machine without a GPU" >&2
    exit 1
fi
echo "$want" > "$stamp"
echo "setup: ready ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"

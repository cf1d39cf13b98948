#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for napari-sbd: system libraries for Qt
# under Xvfb, a virtual environment in .venv, the CPU build of PyTorch FIRST
# (so nothing pulls the multi-GB CUDA build), then the package with its test
# and file-format extras. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
APT_PACKAGES="xvfb xauth libfontconfig1 libglib2.0-0 libgl1 libegl1 libdbus-1-3 libxkbcommon0
 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0
 libxcb-render-util0 libxcb-shape0 libxcb-xkb1"

missing=""
for p in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo ">> installing system packages:$missing"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo ">> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
stamp="$VENV/.napari-sbd-setup"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  $PIP install -q --upgrade pip
  echo ">> installing $TORCH_SPEC (CPU build) before anything else"
  $PIP install -q "$TORCH_SPEC"
  echo ">> installing napari-sbd with its test, file-format, simulator and baseline extras"
  $PIP install -q -e ".[testing,io,simulate,baselines]"
  touch "$stamp"
fi
"$VENV/bin/python" -c "import torch, napari, napari_sbd; print('>> ready: torch', torch.__version__, '| napari', napari.__version__)"

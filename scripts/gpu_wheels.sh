#!/usr/bin/env bash
# Build .gpu-wheels/: the simulator's packages (abTEM, ASE and what they need) as
# wheels for the lent GPU machine, which has PyTorch, NumPy, SciPy, scikit-image,
# numba, pandas... but no network and no abTEM. Run here (PyPI is reachable), then
# name .gpu-wheels in the device run's `carry` (about 23 MB).
# PY_VERSION: the GPU machine's Python (3.12 there as of 2026-11).
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION=${PY_VERSION:-3.12}
DEST=${DEST:-.gpu-wheels}
# Packages the GPU image already holds (../.library/device/KINDS.md): not carried.
PRESENT="numpy scipy matplotlib pandas numba llvmlite pillow packaging pyparsing cycler
 kiwisolver fonttools contourpy python-dateutil six toolz cloudpickle fsspec pyyaml
 psutil msgpack sortedcontainers jinja2 markupsafe click urllib3 tabulate threadpoolctl tqdm
 typing-extensions pygments setuptools tifffile imageio networkx lazy-loader
 scikit-image attrs zipp certifi filelock"
rm -rf "$DEST.tmp"
.venv/bin/python -m pip download -q abtem==1.0.11 ase==3.29.0 --python-version "$PY_VERSION" \
  --only-binary=:all: --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 -d "$DEST.tmp"
for name in $PRESENT; do
  pattern=$(echo "$name" | tr '-' '_')
  find "$DEST.tmp" -maxdepth 1 -iname "${pattern}-[0-9]*.whl" -delete
  find "$DEST.tmp" -maxdepth 1 -iname "${name}-[0-9]*.whl" -delete
done
rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
du -sh "$DEST"

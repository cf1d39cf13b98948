#!/usr/bin/env bash
# One prepared run for a lent GPU machine (one CUDA GPU, about 16 cores, no network):
# simulate a training set with every core, then train the architecture study's leader
# (4 scales, 64 channels, unshuffle 4: a 1019 px receptive field; AMP and channels_last
# on CUDA) over the dose and pixel-size envelope for a fixed time, writing the
# checkpoint, its log and config into OUT.
#
#   scripts/gpu_wheels.sh                       # here, once: the simulator's wheels
#   scripts/gpu_train.sh OUT                    # there (carry .gpu-wheels)
#
# Settings (environment; the defaults fit an 8-minute run on an H200):
#   N_STRUCTURES=96  DEFOCI=0:20:1  SIM_DIR=/tmp/sbd-sim  TRAIN_MINUTES=5
#   WHEELS=.gpu-wheels  PYTHON=python3
#   TRAIN_ARGS  replaces the model and optimisation options (the CPU test makes it tiny)
#   RESUME_FROM a run folder to continue instead (e.g. model-training/leader, carried): it is
#               copied to OUT/run and resumed with its own options (its config.json) plus
#               RESUME_ARGS (default: its rate schedule, --lr-patience 10 --early-stop 25);
#               the data must be the run's (the defaults above are the envelope runs' data)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/gpu_train.sh OUT}
PY=${PYTHON:-python3}
N=${N_STRUCTURES:-96}
DEFOCI=${DEFOCI:-0:20:1}
SIM_DIR=${SIM_DIR:-/tmp/sbd-sim}
MINUTES=${TRAIN_MINUTES:-5}
TRAIN_ARGS=${TRAIN_ARGS:---scales 4 --base 64 --unshuffle 4 --centre-sigma 6 --activation leaky_relu \
--norm none --patch 256 --batch 32 --steps-per-epoch 100 --val-images 6 --val-crop 512 --lr 5e-4 \
--warmup-steps 100 --clip-grad 1.0 --lr-patience 4 --early-stop 20}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
# a new or empty folder only: OUT of an earlier run holds a checkpoint not yet copied back
if [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
  echo "error: $OUT is not empty (an earlier run's checkpoint?); give a new folder" >&2
  exit 2
fi
mkdir -p "$OUT"
if ! "$PY" -c "import abtem, ase" 2>/dev/null; then
  echo ">> installing the simulator from ${WHEELS:-.gpu-wheels} (no network)"
  "$PY" -m pip install -q --no-index --find-links "${WHEELS:-.gpu-wheels}" abtem==1.0.11 ase==3.29.0
fi
"$PY" -c "import torch; print('>> torch', torch.__version__, '| CUDA', torch.cuda.is_available(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
t0=$(date +%s)
"$PY" -m napari_sbd.simulate.cli --out "$SIM_DIR" --n-structures "$N" --defocus "$DEFOCI" \
  --seed 1000 --workers "$(nproc)" 2>&1 | tail -n 2
t1=$(date +%s)
if [ -n "${RESUME_FROM:-}" ]; then
  cp -r "$RESUME_FROM" "$OUT/run" && rm -f "$OUT/run/.lock"
  # shellcheck disable=SC2086  # RESUME_ARGS is a list of options
  "$PY" -m napari_sbd.training.cli "$SIM_DIR" --out "$OUT/run" --resume \
    ${RESUME_ARGS:---lr-patience 10 --early-stop 25} --max-minutes "$MINUTES" --device auto --quiet
else
  # shellcheck disable=SC2086  # TRAIN_ARGS is a list of options
  "$PY" -m napari_sbd.training.cli "$SIM_DIR" --out "$OUT/run" --where contrast=white --contrast white \
    --dose-range 0.1:5 --pixel-size-range 4.8:10.5 $TRAIN_ARGS --max-minutes "$MINUTES" \
    --device auto --quiet
fi
t2=$(date +%s)
cp "$OUT/run/best.pt" "$OUT/run/log.csv" "$OUT/run/config.json" "$OUT/"
echo ">> simulation $((t1 - t0)) s, training $((t2 - t1)) s; checkpoint $OUT/best.pt"

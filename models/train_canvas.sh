#!/usr/bin/env bash
# The capstone's shipped models (book ch. 10), trained by sfs on this project's 2-core CPU:
# the canvas autoencoder and the canvas-object classifier of the evaluator. Each card records the
# exact command, steps, wall time and machine. Run from the repository root with the full data:
#   SFS_DATA_DIR=../shared/data bash models/train_canvas.sh
# A killed autoencoder run resumes when the same command is run again (sfs.loop).
set -euo pipefail
PY=${PY:-python3}
$PY -m sfs train-autoencoder --minutes 60 --steps 100000 --threads 1 \
    --out runs/canvas-autoencoder --export canvas-autoencoder --no-progress
$PY -m sfs.classifier --data canvas-objects --n-canvases 60000 --epochs 4 --width 24 \
    --out models/canvas-object-classifier

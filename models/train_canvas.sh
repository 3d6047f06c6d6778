#!/usr/bin/env bash
# The capstone's shipped models (book ch. 10), trained by sfs on this project's 2-core CPU:
# the canvas autoencoder and the canvas-object classifier of the evaluator. Each card records the
# exact command, steps, wall time and machine. Run from the repository root with the full data:
#   SFS_DATA_DIR=../shared/data bash models/train_canvas.sh
# A killed autoencoder run resumes when the same command is run again (sfs.loop). The shipped
# models were trained in fp32 on one thread: --threads 1 --no-bf16 keeps the CPU probe from choosing.
set -euo pipefail
PY=${PY:-python3}
$PY -m sfs train-autoencoder --minutes 60 --steps 100000 --threads 1 --no-bf16 \
    --out runs/canvas-autoencoder --export canvas-autoencoder --no-progress
$PY -m sfs.classifier --data canvas-objects --n-canvases 60000 --epochs 4 --width 24 \
    --out models/canvas-object-classifier
# The tiny Stable Diffusion (book ch. 12) in the canvas autoencoder's latent space; its loss log
# ships in models/logs/ beside the others. Resumes from runs/tiny-sd when run again.
# The shipped model is exactly 12,000 steps (the steps are the stopping rule, so a rerun gives the
# same weights; it took 110 min on one thread of the 2-core CPU).
$PY -m sfs train-text2image --threads 1 --no-bf16 --steps 12000 --n-canvases 100000 \
    --base-channels 32 --sample-every 1500 --out runs/tiny-sd --export tiny-sd --no-progress
gzip -c runs/tiny-sd/loss.jsonl > models/logs/tiny-sd-loss.jsonl.gz

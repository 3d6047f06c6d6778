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
# The tiny Stable Diffusion (book ch. 12) in the canvas autoencoder's latent space, trained in two
# runs: 12,000 steps (110 min on one thread), then 14,371 more from those weights (--init, a fresh
# optimizer, --seed 1 for another data order; 91 min on two threads). The steps are each run's
# stopping rule (not the clock), so a rerun trains the same steps; each run resumes from its --out.
$PY -m sfs train-text2image --threads 1 --no-bf16 --steps 12000 --n-canvases 100000 \
    --base-channels 32 --sample-every 1500 --out runs/tiny-sd --export tiny-sd --no-progress
$PY -m sfs train-text2image --init tiny-sd --seed 1 --threads 2 --no-bf16 --steps 14371 \
    --n-canvases 100000 --base-channels 32 --sample-every 1500 --out runs/tiny-sd-2 --export tiny-sd \
    --no-progress
# its loss log, one line per step of the two runs (the second's numbered on), ships in models/logs/
$PY - <<'PY'
import gzip, json
first = [json.loads(line) for line in open("runs/tiny-sd/loss.jsonl")]
then = [json.loads(line) for line in open("runs/tiny-sd-2/loss.jsonl")]
with gzip.open("models/logs/tiny-sd-loss.jsonl.gz", "wt") as f:
    for r in first + [{**r, "step": r["step"] + len(first)} for r in then]:
        f.write(json.dumps(r) + "\n")
PY

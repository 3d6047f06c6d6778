#!/usr/bin/env bash
# The capstone's shipped models (book ch. 10), trained by sfs on this project's 2-core CPU:
# the canvas autoencoder and the canvas-object classifier of the evaluator. Each card records the
# exact command, steps, wall time and machine. Run from the repository root with the full data:
#   SFS_DATA_DIR=../shared/data bash models/train_canvas.sh
# A killed autoencoder run resumes when the same command is run again (sfs.loop). The shipped
# models were trained in fp32 on one thread: --threads 1 --no-bf16 keeps the CPU probe from choosing.
set -euo pipefail
: "${SFS_DATA_DIR:?the shipped models train on the full data sets: set SFS_DATA_DIR (see above)}"
PY=${PY:-python3}
$PY -m sfs train-autoencoder --minutes 60 --steps 100000 --threads 1 --no-bf16 \
    --out runs/canvas-autoencoder --export canvas-autoencoder --no-progress
$PY -m sfs.classifier --data canvas-objects --n-canvases 60000 --epochs 4 --width 24 \
    --out models/canvas-object-classifier
# The tiny Stable Diffusion (book ch. 12) in the canvas autoencoder's latent space, trained in four
# runs, each from the weights of the one before (--init, a fresh optimizer, another --seed for another
# data order): 12,000 steps (110 min on one thread); 14,371 more (91 min on two threads); 9,221 more
# with cross-attention's position embeddings added (--cross-attn-pos, zero at start; 80 min); and
# 11,371 more with the loss weighted as the v loss weighs the x0 error (--weighting snr+1, clamped at
# 50; 100 min). The steps are each run's stopping rule (not the clock), so a rerun trains the same
# steps; each run resumes from its --out (a later option overrides COMMON's).
COMMON="--n-canvases 100000 --base-channels 32 --sample-every 1500 --no-bf16 --no-progress --export tiny-sd"
$PY -m sfs train-text2image $COMMON --threads 1 --steps 12000 --out runs/tiny-sd
$PY -m sfs train-text2image $COMMON --init tiny-sd --seed 1 --threads 2 --steps 14371 --out runs/tiny-sd-2
$PY -m sfs train-text2image $COMMON --init tiny-sd --cross-attn-pos --seed 2 --threads 2 --steps 9221 \
    --out runs/tiny-sd-3
# the model after the third run is also kept as tiny-sd-eps (the same bytes; ch. 12 compares the losses)
$PY - <<'PY'
from sfs.checkpoints import load_model, save_checkpoint
m, c = load_model("tiny-sd", kind="text2image")
c = {k: v for k, v in c.items() if k not in ("name", "file", "file_sha256", "file_bytes")}
c["description"] = ("The tiny-sd lineage after the third of its four runs (plain eps loss, with "
                    "cross-attention's position embeddings), kept for book ch. 12's comparison with the "
                    "fourth run's weighted loss (eq. (12.6)).")
save_checkpoint("models/tiny-sd-eps.safetensors", m, m.config, c)
PY
$PY -m sfs train-text2image $COMMON --init tiny-sd --cross-attn-pos --weighting snr+1 --max-weight 50 \
    --seed 3 --threads 2 --steps 11371 --sample-every 1000 --out runs/tiny-sd-4
# its loss log, one line per step of the four runs (each numbered on from the one before), ships in
# models/logs/
$PY - <<'PY'
import gzip, json
log = []
for run in ("runs/tiny-sd", "runs/tiny-sd-2", "runs/tiny-sd-3", "runs/tiny-sd-4"):
    log += [{**json.loads(line), "step": json.loads(line)["step"] + len(log)} for line in open(f"{run}/loss.jsonl")]
with gzip.open("models/logs/tiny-sd-loss.jsonl.gz", "wt") as f:
    for r in log:
        f.write(json.dumps(r) + "\n")
PY

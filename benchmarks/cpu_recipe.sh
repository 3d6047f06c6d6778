#!/usr/bin/env bash
# The CPU recipe (issue 10, part 3): train an unconditional MNIST model for MINUTES of wall-clock
# on this machine and write OUT_DIR/cpu-recipe.safetensors with its card (sfs.checkpoints.load_model
# loads it by that path). Run from the repository root, with the full MNIST in $SFS_DATA_DIR:
#   bash benchmarks/cpu_recipe.sh 20 runs/cpu-recipe-20
# The design, and what each choice was measured against, is in benchmarks/README.md; the quality it
# reaches after 5, 10, 20 and 40 minutes is benchmarks/bench_cpu_recipe.py's.
#  - the lean U-Net of bench_train.py (channels 32/64/128, one residual block per level, attention
#    at 7x7 only, no dropout): fewer FLOPs at 28x28, where the default spends them;
#  - the CPU settings (bf16 autocast, 1 or all threads) chosen by sfs's start-up probe;
#  - batch 128 at lr 2e-3 after 200 warm-up steps, EMA 0.999 (a half-life of 700 steps, short
#    enough for a 5-minute run); eps prediction on the cosine schedule; judged with
#    DPM-Solver++(2M), 20 steps.
# A run interrupted before its export resumes when the same command is given again.
set -euo pipefail
if [ $# -ne 2 ]; then
    echo "usage: bash benchmarks/cpu_recipe.sh MINUTES OUT_DIR" >&2
    exit 2
fi
MINUTES=$1
OUT=$2
PY=${PY:-python3}
$PY -m sfs train --data mnist --minutes "$MINUTES" --steps 100000000 \
    --base-channels 32 --channel-mults 1,2,4 --num-res-blocks 1 --attn-resolutions 7 --dropout 0 \
    --batch-size 128 --lr 2e-3 --warmup-steps 200 --ema-decay 0.999 --sample-every 0 \
    --out "$OUT/run" --export cpu-recipe --models-dir "$OUT" --no-progress

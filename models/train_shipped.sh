#!/usr/bin/env bash
# Train the three shipped U-Nets side by side on one GPU, each for a wall-clock budget, then export
# each from its last training state. A run stopped by the budget resumes from that state, so the
# exported weights are those of `python -m sfs train ... --steps S` with S the last checkpoint
# (the learning rate is constant after warmup, so stopping early changes nothing but S).
#
#   SFS_DATA_DIR=/path/to/data BUDGET=330 OUT=/tmp/out bash models/train_shipped.sh
#
# Writes $OUT/<name>.tar.gz (weights, JSON and Markdown cards, sample grid, loss curve, loss log).
set -u
BUDGET=${BUDGET:-330}
OUT=${OUT:-/tmp/sfs-shipped}
PY=${PY:-python3}
mkdir -p "$OUT" runs
COMMON="--batch-size 512 --lr 1e-3 --warmup-steps 500 --bf16 --device cuda --ckpt-every 250 --sample-every 2000 --log-every 50 --no-progress"
declare -A ARGS=(
  [mnist-uncond]="--data mnist"
  [mnist-cond]="--data mnist --conditional"
  [fashion-mnist-cond]="--data fashion-mnist --conditional"
)
for name in "${!ARGS[@]}"; do
  timeout -s INT "$BUDGET" $PY -m sfs train ${ARGS[$name]} $COMMON --steps 1000000 --out "runs/$name" \
    > "runs/$name.log" 2>&1 &
done
wait
for name in "${!ARGS[@]}"; do
  last=$(ls "runs/$name" | sed -n 's/^state-0*\([0-9][0-9]*\)\.json$/\1/p' | sort -n | tail -1)
  echo "$name: last training state at step ${last:-none}"
  [ -n "$last" ] || continue
  $PY -m sfs train ${ARGS[$name]} $COMMON --steps "$last" --out "runs/$name" --export "$name" \
    --models-dir "runs/export-$name" >> "runs/$name.log" 2>&1 || echo "$name: export failed"
  cp "runs/$name/loss.jsonl" "runs/export-$name/$name-loss.jsonl" 2>/dev/null
  cp "runs/$name.log" "runs/export-$name/$name-train.log" 2>/dev/null
  tar czf "$OUT/$name.tar.gz" -C "runs/export-$name" . && echo "$name: packed"
done

"""The CPU recipe's quality per minute (issue 10, part 3).

    python benchmarks/bench_cpu_recipe.py                    # 5, 10, 20, 40 min + the previous recipe at 20
    python benchmarks/bench_cpu_recipe.py --minutes 5 --baseline-minutes ""   # one row
    python benchmarks/bench_cpu_recipe.py --quick            # seconds: bundled sample, N = 64; means nothing

For each MINUTES of --minutes it trains ``bash benchmarks/cpu_recipe.sh MINUTES RUNS/recipe-MINUTES``
(a run whose checkpoint is already there is reused, so an interrupted benchmark goes on where it
stopped), and the previous recipe (``PREVIOUS``, the command of ``results/cpu_recipe_40min.md``)
for each of --baseline-minutes. Each model then draws N samples with DPM-Solver++(2M), 20 steps,
scored by FD, KID, precision and recall against N MNIST test images on the shipped classifier's
features (``sfs.metrics``, as bench_sampling.py); the floor row is N training images scored the
same way. Each row also has the training step's images/s (the card's steps x batch / wall time), the
CPU settings the probe chose, and the MFU against this machine's matmul peak for those settings,
measured in the same run. A training run gets the machine to itself: the load average is recorded
before every run, and a row whose run started on a loaded machine is marked invalid.
Writes OUT.md and OUT.json (default benchmarks/results/cpu_recipe; OUT-quick with --quick).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from bench_sampling import fmt, load_models, real_images  # noqa: E402
from bench_sampling import generate as draw  # noqa: E402
from bench_train import LOAD_BEFORE_MAX, cpu_info, matmul_peak  # noqa: E402
from sfs.checkpoints import load_model  # noqa: E402
from sfs.metrics import evaluate  # noqa: E402
from sfs.samplers import dpm_solver_2m_sample  # noqa: E402
from sfs.schedules import cosine_schedule  # noqa: E402

# The CPU recipe before this one (results/cpu_recipe_40min.md), for the same-run comparison.
PREVIOUS = ["--base-channels", "16", "--num-res-blocks", "1", "--dropout", "0", "--batch-size", "32",
            "--lr", "2e-3", "--warmup-steps", "100", "--threads", "1", "--no-bf16"]
TARGETS = {20: 4.0, 40: 2.5}  # minutes: FD at most this many times the floor


def train_command(recipe: str, minutes: float, out: Path) -> list[str]:
    """The command that trains ``recipe`` ("recipe" or "previous") for ``minutes`` into out/."""
    if recipe == "recipe":
        return ["bash", str(HERE / "cpu_recipe.sh"), f"{minutes:g}", str(out)]
    return [sys.executable, "-m", "sfs", "train", "--data", "mnist", "--minutes", f"{minutes:g}",
            "--steps", "100000000", *PREVIOUS, "--sample-every", "0", "--out", str(out / "run"),
            "--export", "cpu-recipe", "--models-dir", str(out), "--no-progress"]


def train(recipe: str, minutes: float, out: Path, quick: bool) -> float:
    """Train unless out/cpu-recipe.safetensors exists; the 1-minute load average at the start."""
    load = os.getloadavg()[0]
    if (out / "cpu-recipe.safetensors").is_file():
        return float("nan")  # reused: measured by an earlier start
    env = dict(os.environ, PY=sys.executable)
    if quick:  # the bundled sample, written as IDX training files
        env["SFS_DATA_DIR"] = str(sample_as_idx(out.parent / "quick-data"))
    cmd = train_command(recipe, minutes, out)
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)
    return load


def sample_as_idx(folder: Path) -> Path:
    """The bundled 1,000-image MNIST sample as IDX training files in folder (for --quick)."""
    import struct
    from importlib import resources

    import numpy as np
    from sfs import data
    with resources.files("sfs.assets").joinpath("mnist-sample.npz").open("rb") as f:
        arrays = np.load(f, allow_pickle=False)
        images, labels = arrays["images"].astype(np.uint8), arrays["labels"].astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    images = images.reshape(len(images), 28, 28)
    (folder / "train-images-idx3-ubyte").write_bytes(
        struct.pack(">iiii", data.IMAGE_MAGIC, *images.shape) + images.tobytes())
    (folder / "train-labels-idx1-ubyte").write_bytes(
        struct.pack(">ii", data.LABEL_MAGIC, len(labels)) + labels.tobytes())
    return folder


def flops_per_image(model: torch.nn.Module) -> float:
    """FLOPs of one training image (forward + backward) of a U-Net, by torch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode
    c = model.config
    x, t = torch.randn(8, c.in_channels, c.image_size, c.image_size), torch.randint(0, 1000, (8,))
    model = model.train()
    with FlopCounterMode(display=False) as counter:
        model(x, t).pow(2).mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 8


def peaks(seconds: float) -> dict:
    """The fp32 and bf16 matmul peak (FLOP/s) for 1 and for all usable CPUs, measured now."""
    before, out = torch.get_num_threads(), {}
    for threads in sorted({1, len(os.sched_getaffinity(0))}):
        torch.set_num_threads(threads)
        out[threads] = matmul_peak("cpu", seconds, (1024, 2048))
    torch.set_num_threads(before)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", default=None, help="comma-separated training budgets (default 5,10,20,40; "
                    "0.05 with --quick)")
    ap.add_argument("--baseline-minutes", default=None, help="budgets for the previous recipe ('' none; "
                    "default 20; 0.05 with --quick)")
    ap.add_argument("--n", type=int, default=None, help="samples per row (default 2048; 64 with --quick)")
    ap.add_argument("--runs", default="runs/cpu-recipe", help="folder of the training runs")
    ap.add_argument("--out", default=str(HERE / "results" / "cpu_recipe"))
    ap.add_argument("--quick", action="store_true", help="seconds of training on the bundled sample")
    args = ap.parse_args(argv)
    n = args.n or (64 if args.quick else 2048)
    minutes = args.minutes if args.minutes is not None else ("0.05" if args.quick else "5,10,20,40")
    baseline = args.baseline_minutes if args.baseline_minutes is not None else ("0.05" if args.quick else "20")
    budgets = [("recipe", float(m)) for m in minutes.split(",") if m]
    budgets += [("previous", float(m)) for m in baseline.split(",") if m]
    if not budgets or any(m <= 0 for _, m in budgets):
        raise SystemExit("--minutes and --baseline-minutes must be positive numbers")

    started = time.time()
    info, rows = cpu_info(), []
    for recipe, minutes in budgets:  # train first: each run gets the machine to itself
        run_dir = Path(args.runs) / f"{recipe}-{minutes:g}"
        rows.append({"recipe": recipe, "minutes": minutes, "dir": run_dir,
                     "load_at_start": train(recipe, minutes, run_dir, args.quick)})

    _, _, _, clf, clf_card = load_models("mnist-uncond", "mnist", "cpu", args.quick)
    (ref, _), (floor_imgs, _) = real_images("mnist", n, args.quick)
    kid_kw = dict(kid_subsets=100, kid_subset_size=min(1000, n // 2))
    floor = evaluate(ref, floor_imgs, clf, **kid_kw)
    peak = peaks(0.5 if args.quick else 2.0)
    table = [["real train vs test (floor)", "-", "-", *fmt(floor), "-", "-", "-", "-", "-"]]
    for r in rows:
        model, card = load_model(r["dir"] / "cpu-recipe.safetensors", kind="unet")
        schedule = cosine_schedule(card.get("T", 1000))
        imgs, _ = draw(lambda m, x, c, g: dpm_solver_2m_sample(m, x, schedule, 20), model, n, 256, "cpu", 0)
        m = evaluate(ref, imgs, clf, **kid_kw)
        img_s = card["steps"] * card["batch_size"] / card["wall_time_s"]
        settings = card.get("cpu_settings") or {}
        bf16, threads = bool(card.get("bf16")), int(settings.get("threads") or card.get("threads") or 1)
        p = peak.get(threads, peak[max(peak)])["bf16" if bf16 else "fp32"]
        mfu = img_s * flops_per_image(model) / p
        valid = not r["load_at_start"] > LOAD_BEFORE_MAX  # nan (reused) counts as measured before
        r.update(fd=m["fd"], fd_over_floor=m["fd"] / floor["fd"], img_s=img_s, mfu=mfu, bf16=bf16,
                 threads=threads, steps=card["steps"], metrics=m, valid=valid)
        table.append([f"{r['recipe']}, {r['minutes']:g} min", card["steps"], f"{m['fd'] / floor['fd']:.2f}x",
                      *fmt(m), f"{img_s:.0f}", f"{'bf16' if bf16 else 'fp32'}, {threads} thr",
                      f"{100 * mfu:.1f} %", f"{r['load_at_start']:.2f}", "yes" if valid else "NO (loaded)"])
        print(" | ".join(str(c) for c in table[-1]), flush=True)

    ours = {r["minutes"]: r for r in rows if r["recipe"] == "recipe"}
    verdicts = [f"after {mins} min: FD {ours[mins]['fd_over_floor']:.2f}x the floor (target <= {x}x: "
                f"{'met' if ours[mins]['fd_over_floor'] <= x else 'not met'})"
                for mins, x in TARGETS.items() if mins in ours]
    for r in rows:
        if r["recipe"] == "previous" and r["minutes"] in ours:
            o = ours[r["minutes"]]
            verdicts.append(f"at {r['minutes']:g} min the recipe trains {o['img_s'] / r['img_s']:.2f}x the "
                            f"previous recipe's images/s (target >= 1.5x) at FD {o['fd']:.2f} against "
                            f"{r['fd']:.2f}")
    header = ["model", "steps", "FD / floor", "FD", "KID x1e3", "precision", "recall", "train img/s",
              "settings", "MFU", "load at start", "valid"]
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
            "machine": f"{info['model']}, {info['cpus']} logical CPUs; flags: {' '.join(info['flags'])}",
            "torch": torch.__version__, "N": n, "sampler": "DPM-Solver++(2M), 20 steps (logsnr spacing)",
            "features": f"{clf_card.get('name')} (penultimate layer)",
            "matmul peak TFLOP/s": {t: {k: round(v / 1e12, 3) for k, v in d.items()} for t, d in peak.items()},
            "recipe": "bash benchmarks/cpu_recipe.sh MINUTES DIR", "previous recipe": " ".join(PREVIOUS),
            "load average after": os.getloadavg()[0], "minutes": round((time.time() - started) / 60, 1),
            "command": "python benchmarks/bench_cpu_recipe.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "quick (numbers mean nothing)": args.quick}
    lines = ["# The CPU recipe: quality after MINUTES of training", "",
             *(f"- {k}: {v}" for k, v in meta.items()), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
             *("| " + " | ".join(str(c) for c in row) + " |" for row in table), "", *verdicts]
    out = Path(args.out + ("-quick" if args.quick else ""))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    for r in rows:
        r["dir"] = str(r["dir"])
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "floor": floor, "rows": rows}, indent=2,
                                                   default=float) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

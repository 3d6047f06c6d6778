"""Sample quality against sampling steps: DDPM-1000, DDIM (eta 0 and 1) and DPM-Solver++(2M).

    .venv/bin/python benchmarks/bench_sampling.py                      # mnist-uncond, N = 2048, CPU: slow
    python benchmarks/bench_sampling.py --device cuda --n 10000        # on a GPU
    .venv/bin/python benchmarks/bench_sampling.py --quick              # seconds: a tiny untrained U-Net

For each sampler and step count: N samples from the same seeded x_T, then the Frechet distance
(FD), KID, precision and recall against N real test images, all on the features of the shipped
clean-image classifier (``sfs.metrics``; no Inception, no download), and the wall time. The first
row is the floor: N training images scored the same way, what a perfect model would get at this N.
Prints a Markdown table and writes it, with the machine and date, to benchmarks/results/ (.md and
.json). ``--quick`` runs a tiny untrained U-Net on a T = 50 schedule against the bundled sample, to
show that the script runs; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

from sfs.classifier import Classifier, ClassifierConfig, load_classifier
from sfs.data import load, load_sample
from sfs.metrics import evaluate
from sfs.samplers import ddim_sample, ddpm_sample, dpm_solver_2m_sample
from sfs.schedules import cosine_schedule, linear_schedule

HERE = Path(__file__).resolve().parent
SCHEDULES = {"cosine": cosine_schedule, "linear": linear_schedule}


# ----------------------------------------------------------------------------------------------
# Shared with bench_guidance.py.

def machine(device: str) -> str:
    """A one-line description of where the numbers were measured."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(torch.device(device))}, torch {torch.__version__}"
    return (f"{platform.machine()} CPU ({platform.processor() or platform.platform()}), "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}")


def load_models(name: str, data: str, device: str, quick: bool, conditional: bool = False):
    """(model, schedule, card, classifier, classifier card); tiny untrained stand-ins with --quick."""
    if quick:
        from sfs.unet import UNet, UNetConfig
        torch.manual_seed(0)
        cfg = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(),
                         norm_groups=4, num_classes=10 if conditional else None)
        model, schedule, card = UNet(cfg).eval(), cosine_schedule(50), {"name": "tiny untrained U-Net (--quick)"}
    else:
        from sfs.checkpoints import load_model
        model, card = load_model(name)
        if card.get("target", "eps") != "eps":
            raise SystemExit(f"{name} predicts {card['target']}; the samplers take eps-prediction models")
        schedule = SCHEDULES[card.get("schedule", "cosine")](card.get("T", 1000))
    try:
        clf, clf_card = load_classifier(f"{data}-classifier")
    except FileNotFoundError:
        if not quick:
            raise
        torch.manual_seed(0)
        clf, clf_card = Classifier(ClassifierConfig(width=8)).eval(), {"name": "untrained (--quick)"}
    return model.to(device), schedule.to(device), card, clf.to(device), clf_card


def real_images(data: str, n: int, quick: bool, seed: int = 0):
    """N test images (the reference) and N training images (for the floor), with their labels."""
    g = torch.Generator().manual_seed(seed)
    if quick:
        s = load_sample(data)
        perm = torch.randperm(len(s), generator=g)
        return (s.images[perm[:n]], s.labels[perm[:n]]), (s.images[perm[n:2 * n]], s.labels[perm[n:2 * n]])
    test, train = load(data, "test"), load(data, "train")
    if len(test) < n or len(train) < n:
        raise SystemExit(f"--n {n} is more than the real images found ({len(test)} test, "
                         f"{len(train)} train); point SFS_DATA_DIR at the full data")
    ti, tr = torch.randperm(len(test), generator=g)[:n], torch.randperm(len(train), generator=g)[:n]
    return (test.images[ti], test.labels[ti]), (train.images[tr], train.labels[tr])


def generate(sample, model, n: int, batch_size: int, device: str, seed: int,
             labels: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """N images from ``sample(model, x_T, cond, generator)`` in batches; (images on CPU, seconds).

    x_T is drawn on the CPU from ``seed`` (the same on every device); the sampler's own noise
    comes from a generator on ``device``.
    """
    g_cpu = torch.Generator().manual_seed(seed)
    g_dev = torch.Generator(device=device).manual_seed(seed + 1)
    C, S = model.config.in_channels, model.config.image_size
    out = []
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        x_T = torch.randn(b, C, S, S, generator=g_cpu).to(device)
        cond = labels[i:i + b].to(device) if labels is not None else None
        out.append(sample(model, x_T, cond, g_dev).cpu())
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return torch.cat(out), time.perf_counter() - t0


def write_results(stem: str, title: str, header: list[str], rows: list[list], meta: dict,
                  out_dir: Path) -> str:
    """Print a Markdown table and write it (and the JSON of rows + meta) to out_dir/stem.*"""
    lines = [f"# {title}", "", *(f"- {k}: {v}" for k, v in meta.items()), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.md").write_text(text)
    (out_dir / f"{stem}.json").write_text(json.dumps(
        {"meta": meta, "rows": [dict(zip(header, r)) for r in rows]}, indent=2) + "\n")
    return text


def fmt(m: dict) -> list:
    std = "n/a" if math.isnan(m["kid_std"]) else f"{1e3 * m['kid_std']:.2f}"  # n/a: subset = whole set
    return [f"{m['fd']:.3f}", f"{1e3 * m['kid']:.2f} ± {std}",
            f"{m['precision']:.3f}", f"{m['recall']:.3f}"]


# ----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mnist-uncond")
    ap.add_argument("--data", default="mnist", choices=["mnist", "fashion-mnist"])
    ap.add_argument("--n", type=int, default=None, help="samples per config (default 2048; 64 with --quick)")
    ap.add_argument("--steps", type=int, nargs="+", default=None, help="default 10 20 50 100")
    ap.add_argument("--no-ddpm", action="store_true", help="skip the T-step DDPM rows (the slow ones)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny untrained model, bundled data")
    ap.add_argument("--out", default=str(HERE / "results"), help="folder for the results")
    ap.add_argument("--stem", default=None, help="results file name (default sampling; sampling-quick with --quick)")
    args = ap.parse_args(argv)
    n = args.n or (64 if args.quick else 2048)
    steps = args.steps or ([2, 5] if args.quick else [10, 20, 50, 100])

    model, schedule, card, clf, clf_card = load_models(args.model, args.data, args.device, args.quick)
    (ref, _), (floor_imgs, _) = real_images(args.data, n, args.quick, args.seed)
    kid_kw = dict(kid_subsets=100, kid_subset_size=min(1000, n // 2))  # below N: a real spread
    header = ["sampler", "NFE", "FD", "KID x1e3", "precision", "recall", "seconds", "ms / image"]
    rows = [["real train vs test (floor)", "-", *fmt(evaluate(ref, floor_imgs, clf, **kid_kw)), "-", "-"]]

    configs = [] if args.no_ddpm else [(f"DDPM (beta)", schedule.T, lambda m, x, c, g: ddpm_sample(
        m, x, schedule, "beta", cond=c, generator=g))]
    for s in steps:
        configs += [
            ("DDIM eta=0", s, lambda m, x, c, g, s=s: ddim_sample(m, x, schedule, s, 0.0, cond=c, generator=g)),
            ("DDIM eta=1", s, lambda m, x, c, g, s=s: ddim_sample(m, x, schedule, s, 1.0, cond=c, generator=g)),
            ("DPM-Solver++(2M)", s, lambda m, x, c, g, s=s: dpm_solver_2m_sample(m, x, schedule, s, cond=c)),
        ]
    for name, nfe, sample in configs:
        if nfe > schedule.T:
            continue
        imgs, secs = generate(sample, model, n, args.batch_size, args.device, args.seed)
        m = evaluate(ref, imgs, clf, **kid_kw)
        rows.append([name, nfe, *fmt(m), f"{secs:.1f}", f"{1e3 * secs / n:.2f}"])
        print(" | ".join(str(c) for c in rows[-1]), flush=True)

    meta = {"date": datetime.date.today().isoformat(), "machine": machine(args.device),
            "model": card.get("name", args.model), "model steps": card.get("steps"),
            "schedule": f"{card.get('schedule', 'cosine')} T={schedule.T}",
            "features": f"{clf_card.get('name')} (penultimate layer, D = {clf.config.feature_dim})",
            "N": n, "reference": f"{n} {args.data} test images", "seed": args.seed,
            "KID": f"x 1e3, mean ± std over {kid_kw['kid_subsets']} subsets of {kid_kw['kid_subset_size']}",
            "clip_x0": "no (every sampler's default)",
            "DDIM spacing": "uniform", "DPM-Solver++ spacing": "logsnr (from log SNR = -10, code t = 994)",
            "command": "python benchmarks/bench_sampling.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    write_results(args.stem or ("sampling-quick" if args.quick else "sampling"), "Sample quality vs steps",
                  header, rows, meta, Path(args.out))


if __name__ == "__main__":
    main()

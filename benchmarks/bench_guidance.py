"""Guidance sweep: FD, KID, precision, recall and class accuracy against the guidance scale.

    .venv/bin/python benchmarks/bench_guidance.py                        # both conditional models, CPU: slow
    python benchmarks/bench_guidance.py --device cuda --n 10000          # on a GPU
    .venv/bin/python benchmarks/bench_guidance.py --quick                # seconds: tiny untrained U-Net

For each class-conditional model (``mnist-cond``, ``fashion-mnist-cond``) and each classifier-free
guidance scale w (``sfs.guidance.CFGModel``: w = 0 unconditional, w = 1 conditional), N samples with
balanced labels (N / 10 per class) from the same seeded x_T, scored against N real test images on
the shipped classifier's features (``sfs.metrics``), plus the share the classifier assigns to the
requested class. With ``--classifier-guidance`` and ``models/mnist-noisy-classifier``, the same for
classifier guidance of ``mnist-uncond`` (Dhariwal & Nichol 2021). The floor row is real training
images scored the same way. Writes benchmarks/results/guidance.md and .json.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sampling import HERE, fmt, generate, load_models, machine, real_images, write_results  # noqa: E402

from sfs.classifier import load_classifier  # noqa: E402
from sfs.guidance import CFGModel, ClassifierGuidedModel  # noqa: E402
from sfs.metrics import class_accuracy, evaluate  # noqa: E402
from sfs.samplers import ddim_sample, dpm_solver_2m_sample  # noqa: E402

DATA = {"mnist-cond": "mnist", "fashion-mnist-cond": "fashion-mnist"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(DATA), choices=list(DATA))
    ap.add_argument("--w", type=float, nargs="+", default=None, help="default 0 1 1.5 2 3 5 7.5")
    ap.add_argument("--sampler", default="dpm", choices=["dpm", "ddim"],
                    help="DPM-Solver++(2M) or DDIM eta=0, with --steps steps")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--classifier-guidance", action="store_true",
                    help="also sweep classifier guidance of mnist-uncond (needs mnist-noisy-classifier)")
    ap.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 2.0, 5.0, 10.0])
    ap.add_argument("--n", type=int, default=None, help="samples per config (default 2048; 60 with --quick)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny untrained model, bundled data")
    ap.add_argument("--out", default=str(HERE / "results"), help="folder for guidance.md/.json")
    args = ap.parse_args(argv)
    n = args.n or (60 if args.quick else 2048)
    ws = args.w or ([0.0, 1.0, 3.0] if args.quick else [0.0, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5])
    steps = min(args.steps, 5) if args.quick else args.steps
    labels = torch.arange(n) % 10  # balanced classes
    kid_kw = dict(kid_subsets=100, kid_subset_size=min(1000, n // 2))  # below N: a real spread

    def sampler(schedule):
        if args.sampler == "dpm":
            return lambda m, x, c, g: dpm_solver_2m_sample(m, x, schedule, steps, cond=c)
        return lambda m, x, c, g: ddim_sample(m, x, schedule, steps, 0.0, cond=c, generator=g)

    header = ["model", "guidance", "scale", "FD", "KID x1e3", "precision", "recall", "class accuracy", "seconds"]
    rows, cards = [], {}
    for name in args.models:
        data = DATA[name]
        model, schedule, card, clf, clf_card = load_models(name, data, args.device, args.quick, conditional=True)
        cards[name] = card.get("steps")
        (ref, _), (floor_imgs, floor_labels) = real_images(data, n, args.quick, args.seed)
        rows.append([name, "real train vs test (floor)", "-", *fmt(evaluate(ref, floor_imgs, clf, **kid_kw)),
                     f"{class_accuracy(clf, floor_imgs, floor_labels):.3f}", "-"])
        for w in ws:
            imgs, secs = generate(sampler(schedule), CFGModel(model, w), n, args.batch_size, args.device,
                                  args.seed, labels)
            m = evaluate(ref, imgs, clf, labels, **kid_kw)
            rows.append([name, "classifier-free", w, *fmt(m), f"{m['accuracy']:.3f}", f"{secs:.1f}"])
            print(" | ".join(str(c) for c in rows[-1]), flush=True)

    if args.classifier_guidance:
        model, schedule, card, clf, _ = load_models("mnist-uncond", "mnist", args.device, args.quick)
        try:
            noisy, _ = load_classifier("mnist-noisy-classifier", args.device)
        except FileNotFoundError:
            if not args.quick:
                raise
            from sfs.classifier import ClassifierConfig, NoisyClassifier
            noisy = NoisyClassifier(ClassifierConfig(noisy=True, width=8)).to(args.device).eval()
        (ref, _), _ = real_images("mnist", n, args.quick, args.seed)
        for s in args.scales:
            # y is bound per batch: generate() passes cond = the batch's labels, which we hand to
            # the classifier and keep from the unconditional model.
            def sample(m, x, c, g, s=s):
                guided = ClassifierGuidedModel(m, noisy, schedule, c, s)
                return sampler(schedule)(guided, x, None, g)
            imgs, secs = generate(sample, model, n, args.batch_size, args.device, args.seed, labels)
            m = evaluate(ref, imgs, clf, labels, **kid_kw)
            rows.append(["mnist-uncond", "classifier (noisy-classifier)", s, *fmt(m),
                         f"{m['accuracy']:.3f}", f"{secs:.1f}"])
            print(" | ".join(str(c) for c in rows[-1]), flush=True)

    meta = {"date": datetime.date.today().isoformat(), "machine": machine(args.device),
            "models (training steps)": cards, "N": n, "labels": "balanced, N / 10 per class",
            "sampler": (f"DPM-Solver++(2M), {steps} steps, logsnr spacing, no clipping" if args.sampler == "dpm"
                        else f"DDIM eta=0, {steps} steps, uniform spacing, no clipping"),
            "guidance scale": "w: eps_u + w (eps_c - eps_u); w = 0 unconditional, w = 1 conditional",
            "features": "the data set's shipped classifier (penultimate layer)", "seed": args.seed,
            "KID": f"x 1e3, mean ± std over {kid_kw['kid_subsets']} subsets of {kid_kw['kid_subset_size']}",
            "command": "python benchmarks/bench_guidance.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    write_results("guidance-quick" if args.quick else "guidance", "Guidance sweep", header, rows,
                  meta, Path(args.out))


if __name__ == "__main__":
    main()

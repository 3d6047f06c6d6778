"""The capstone's first targets (book ch. 10): the canvas evaluator, the autoencoder, latent vs pixel.

    python benchmarks/bench_autoencoder.py --n 1000 --out benchmarks/results/autoencoder

Measures, in one run, with the machine (lscpu model and flags) and the load average beside it:
1. the evaluator on real canvases (seen and held-out combinations): per-clause and whole-prompt
   accuracy (target >= 98 %), and on deliberately wrong specs (swapped colours, mirrored
   relations, wrong class; target near 0 %);
2. the shipped autoencoder: the same accuracies on its reconstructions (target: within 2 points of
   the originals), its test L1, and the time to encode + decode 1,000 canvases;
3. its training time (from its model card);
4. the cost of one U-Net evaluation in latent space (4x12x12) against pixel space (3x48x48) for
   the same U-Net configuration, forward and training step, as a ratio measured in one run.
Writes OUT.json and OUT.md. Refuses to conclude (marks the timings invalid) on a loaded machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sfs import canvas_eval  # noqa: E402
from sfs.canvas import make_canvases  # noqa: E402
from sfs.checkpoints import load_model  # noqa: E402
from sfs.unet import UNet, UNetConfig  # noqa: E402


def machine() -> dict:
    """CPU model, the flags that matter for speed, threads and the load average."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        lscpu = ""
    model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines()
                  if ln.startswith("Model name")), platform.processor())
    flags = next((ln.split(":", 1)[1].split() for ln in lscpu.splitlines() if ln.startswith("Flags")), [])
    keep = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    return {"cpu": model, "flags": keep, "cores": os.cpu_count(), "load_avg": os.getloadavg(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def accuracy(images, canvases, clf) -> dict:
    return canvas_eval.score(canvas_eval.judge(images, canvases, clf))


def timed(fn, repeat: int = 3) -> float:
    """Best wall time of ``repeat`` calls, seconds."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def unet_cost(batch: int, threads: int) -> dict:
    """Seconds per image of one U-Net forward and one training step, pixel vs latent space."""
    torch.set_num_threads(threads)
    out = {}
    for name, (c, s, mults, attn) in {"pixel 3x48x48": (3, 48, (1, 2, 2, 2), (6,)),
                                      "latent 4x12x12": (4, 12, (1, 2, 2), (3,))}.items():
        torch.manual_seed(0)
        net = UNet(UNetConfig(in_channels=c, image_size=s, base_channels=32, channel_mults=mults,
                              attn_resolutions=attn))
        x, t = torch.randn(batch, c, s, s), torch.randint(0, 1000, (batch,))
        opt = torch.optim.AdamW(net.parameters(), 1e-4)

        def fwd():
            with torch.no_grad():
                net(x, t)

        def step():
            loss = net(x, t).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        fwd()
        step()
        out[name] = {"forward_s_per_image": timed(fwd) / batch, "train_s_per_image": timed(step) / batch,
                     "params": sum(p.numel() for p in net.parameters())}
    p, lat = out["pixel 3x48x48"], out["latent 4x12x12"]
    out["speedup_forward"] = p["forward_s_per_image"] / lat["forward_s_per_image"]
    out["speedup_train"] = p["train_s_per_image"] / lat["train_s_per_image"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="canvases per row")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/autoencoder")
    ap.add_argument("--classifier", default=canvas_eval.CLASSIFIER_NAME,
                    help="the evaluator's object classifier: a name in models/ or a path")
    ap.add_argument("--seed", type=int, default=1, help="of the test canvases")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    before = machine()
    clf, clf_card = canvas_eval.load_object_classifier(args.classifier)
    ae, ae_card = load_model("canvas-autoencoder", kind="autoencoder")
    sets = {"seen": make_canvases(args.n, "test", args.seed, "seen"),
            "held_out": make_canvases(args.n, "test", args.seed, "held_out")}
    rows = {}
    for name, c in sets.items():
        x = c.images_float()
        rows[f"real, {name}"] = accuracy(x, c, clf)
        with torch.no_grad():
            x_hat = ae.decode(ae.encode(x)).clamp(-1, 1)
        rows[f"reconstructed, {name}"] = accuracy(x_hat, c, clf)
        rows[f"reconstructed, {name}"]["l1"] = float((x_hat - x).abs().mean())
    for mistake in ("colours", "mirror", "class"):
        wrong = canvas_eval.wrong_specs(sets["seen"], mistake)
        rows[f"wrong spec: {mistake}"] = accuracy(wrong.images_float(), wrong, clf)

    x = sets["seen"].images_float()

    def roundtrip():
        with torch.no_grad():
            for i in range(0, len(x), 250):
                ae.decode(ae.encode(x[i:i + 250]))
    t_roundtrip = timed(roundtrip, 2)
    cost = unet_cost(64, args.threads)
    after = machine()
    loaded = max(before["load_avg"][0], after["load_avg"][0]) > 0.5 * (os.cpu_count() or 1)
    result = {"machine": before, "load_avg_after": after["load_avg"], "timings_valid": not loaded,
              "command": "python " + " ".join(sys.argv), "n": args.n, "seed": args.seed, "threads": args.threads,
              "accuracy": rows, "encode_decode_s": t_roundtrip, "encode_decode_n": len(x),
              "autoencoder": {k: ae_card.get(k) for k in ("steps", "wall_time_s", "machine",
                                                          "scale_factor", "test_rec_l1", "params")},
              "object_classifier": {k: clf_card.get(k) for k in ("test_accuracy", "train_seconds", "command")},
              "unet_cost": cost}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(render(result))
    print(render(result))


def render(r: dict) -> str:
    m = r["machine"]
    pct = lambda v: "n/a" if v != v else f"{100 * v:.1f}"  # noqa: E731
    lines = ["# Canvas evaluator and autoencoder (book ch. 10)", "",
             f"- date: {m['date']}; command: `{r['command']}`",
             f"- machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['flags'])}; torch {m['torch']}; "
             f"{r['threads']} thread(s)",
             f"- load average before {m['load_avg'][0]:.2f} / after {r['load_avg_after'][0]:.2f}: timings "
             + ("valid" if r["timings_valid"] else "INVALID (machine loaded; ratios only)"),
             f"- N = {r['n']} canvases per row (test split, seed {r.get('seed', 1)})", "",
             "| canvases | object | colour | count | position | size | whole prompt |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, a in r["accuracy"].items():
        lines.append(f"| {name} | " + " | ".join(pct(a[k]) for k in
                                                  ("object", "colour", "count", "position", "size", "prompt")) + " |")
    ae = r["autoencoder"]
    c = r["unet_cost"]
    lines += ["", "Accuracies in %. Position and size over the canvases whose caption states them.", "",
              f"- autoencoder: {ae['params']:,} parameters, scale factor {ae['scale_factor']:.4f}, "
              f"{ae['steps']} steps in {ae['wall_time_s'] / 60:.0f} min on {ae['machine']}",
              f"- encode + decode {r['encode_decode_n']} canvases: {r['encode_decode_s']:.2f} s",
              f"- object classifier: test accuracy {r['object_classifier']['test_accuracy']}",
              "", "| U-Net (base 32), per image | forward ms | training step ms | parameters |",
              "| --- | --- | --- | --- |"]
    for name in ("pixel 3x48x48", "latent 4x12x12"):
        v = c[name]
        lines.append(f"| {name} | {1e3 * v['forward_s_per_image']:.2f} | {1e3 * v['train_s_per_image']:.2f} "
                     f"| {v['params']:,} |")
    lines += ["", f"Latent over pixel speed-up: forward {c['speedup_forward']:.1f}x, "
                  f"training step {c['speedup_train']:.1f}x (same run, batch 64).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""The tiny Stable Diffusion measured with the canvas evaluator (issue "Text to image", sec. 5).

    python benchmarks/bench_text2image.py --part sweep --n 1000          # one process per core:
    python benchmarks/bench_text2image.py --part extras,steps,cost --n 1000
    python benchmarks/bench_text2image.py --report                       # OUT.md and OUT.json

One image per test canvas, drawn from the canvas's caption (DPM-Solver++(2M), --steps steps), judged
against that canvas's spec by ``sfs.canvas_eval.judge``. Parts, each written to OUT.<part>.json:
- sweep: seen and held-out combinations at every guidance scale of --scales, per clause, with the
  Frechet distance of the generated object crops against real crops in the object classifier's
  feature space, and the diversity left open by the prompt: the entropy (bits) of the object's
  position (3x3 grid) on one-object prompts that name no region, and of its size on prompts that
  name no size (the grammar always names a colour, so colour entropy is not measurable here);
- extras: binding ("a red 3 left of a blue 7" against "a blue 3 left of a red 7", --n-binding each)
  and paraphrases (the same seen scenes under a second caption: other templates, synonyms, order);
- steps: seen and held-out accuracy of the EMA snapshots that training saved (--snapshots);
- cost: training images/s of the same U-Net in latent space (4x12x12) and in pixel space (3x48x48).
Every part records the machine (lscpu model and flags) and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_autoencoder import machine  # noqa: E402
from sfs import canvas, canvas_eval  # noqa: E402
from sfs.canvas import make_canvases  # noqa: E402
from sfs.checkpoints import load_model, read_card  # noqa: E402
from sfs.metrics import frechet_distance  # noqa: E402
from sfs.text2image import generate  # noqa: E402
from sfs.train_text2image import lineage_steps  # noqa: E402


def draw(model, ae, captions, w, steps, seed, batch=100) -> torch.Tensor:
    """One image per caption, (N, 3, H, W), in batches of ``batch``."""
    out = []
    for i in range(0, len(captions), batch):
        out.append(generate(captions[i:i + batch], model, ae, w, steps, seed + i))
    return torch.cat(out)


def crop_features(images, classifier) -> torch.Tensor:
    """Penultimate features of every object found on the images: (K, D)."""
    crops = [canvas_eval.object_crops(img, objs)
             for img, objs in zip(images, canvas_eval.find_objects(images))]
    crops = torch.cat(crops)
    with torch.no_grad():
        return classifier.features(crops) if len(crops) else torch.zeros(0, 1)


def paraphrase(c: canvas.Canvases, seed: int) -> list[str]:
    """A second caption for each canvas, drawn from the grammar with another random stream."""
    rng = canvas._Uniforms(np.random.default_rng([seed, 99]))
    out = []
    for i in range(len(c)):
        m = int(c.count[i])
        cls, col, siz = (c.classes[i, :m].tolist(), c.colours[i, :m].tolist(), c.sizes[i, :m].tolist())
        rel = canvas.RELATIONS[int(c.relation[i])] if c.relation[i] >= 0 else None
        reg = canvas.REGIONS[int(c.region[i])] if c.region[i] >= 0 else None
        out.append(canvas.caption_for(rng, canvas.KINDS[int(c.kind[i])], cls, col, siz, rel, reg,
                                      bool(c.states_size[i])))
    return out


def binding_set(first: tuple[int, int], second: tuple[int, int], n: int) -> canvas.Canvases:
    """n specs of "a <colour> <class> left of a <colour> <class>" (first, second = (class, colour))."""
    c = make_canvases(n, "test", 0, "all")  # only the spec arrays are overwritten and used
    c.count[:] = 2
    c.classes[:] = torch.tensor([first[0], second[0]])
    c.colours[:] = torch.tensor([first[1], second[1]])
    c.relation[:] = canvas.RELATIONS.index("left of")
    c.region[:] = -1
    c.states_size[:] = False
    c.kind[:] = canvas.KINDS.index("two")
    name = lambda k, col: f"a {canvas.COLOURS[col]} {canvas.CLASS_NAMES[k]}"  # noqa: E731
    c.captions = [f"{name(*first)} left of {name(*second)}"] * n
    return c


def accuracy_row(model, ae, clf, c, w, steps, real=None) -> dict:
    imgs = draw(model, ae, c.captions, w, steps, 0)
    row = canvas_eval.score(canvas_eval.judge(imgs, c, clf))
    if real is not None:
        row["object_fd"] = frechet_distance(crop_features(imgs, clf), real)
        row.update(canvas_eval.open_diversity(imgs, c))
    return row


def part_sweep(args, model, ae, clf, sets) -> dict:
    real = crop_features(sets["seen"].images_float(), clf)
    rows = {"real canvases, seen": {**canvas_eval.open_diversity(sets["seen"].images_float(), sets["seen"]),
                                    **canvas_eval.score(canvas_eval.judge(sets["seen"].images_float(),
                                                                          sets["seen"], clf))}}
    for w in [float(v) for v in args.scales.split(",")]:
        for name, c in sets.items():
            rows[f"{name}, w = {w:g}"] = accuracy_row(model, ae, clf, c, w, args.steps, real)
            print(name, w, rows[f"{name}, w = {w:g}"], flush=True)
    return rows


def part_extras(args, model, ae, clf, sets) -> dict:
    seen = sets["seen"]
    alt = seen.subset(slice(None))
    alt.captions = paraphrase(seen, 2)
    w = args.recommended
    rows = {f"seen, w = {w:g} (first captions)": accuracy_row(model, ae, clf, seen, w, args.steps),
            f"seen, paraphrased, w = {w:g}": accuracy_row(model, ae, clf, alt, w, args.steps)}
    red, blue = canvas.COLOURS.index("red"), canvas.COLOURS.index("blue")
    for a, b in (((3, red), (7, blue)), ((3, blue), (7, red))):
        spec = binding_set(a, b, args.n_binding)
        rows[f"binding: {spec.captions[0]}, w = {w:g}"] = accuracy_row(model, ae, clf, spec, w, args.steps)
    return rows


def part_steps(args, model, ae, clf, sets) -> dict:
    snaps = sorted(Path(args.snapshots).glob("ema-*.safetensors"))
    if args.every > 1:
        snaps = snaps[args.every - 1::args.every] + ([snaps[-1]] if len(snaps) % args.every else [])
    # rows measured by an earlier run (while training went on) are kept when their snapshot file,
    # N, scale, sampler steps and test canvases' images are the same
    source = sets["seen"].meta["images_from"]
    earlier = Path(args.out).with_suffix(".steps.json")
    kept = json.loads(earlier.read_text())["rows"] if earlier.is_file() else {}
    rows, seen_steps = {}, set()
    for path in [*snaps, args.model]:  # the snapshots, then the model itself (its last step)
        snap, card = load_model(path, kind="text2image")
        steps = lineage_steps(card)  # a continued run counts its init's steps
        if steps in seen_steps:
            continue
        seen_steps.add(steps)
        for name, c in sets.items():
            sub = c.subset(slice(0, args.n_steps))
            key, same = f"{name}, step {steps}", {"sha256": card["file_sha256"], "n": len(sub),
                                                          "w": args.recommended, "sampler_steps": args.steps,
                                                          "canvases": source}
            if key in kept and all(kept[key].get(k) == v for k, v in same.items()):
                rows[key] = kept[key]
                continue
            rows[key] = {"step": steps, **accuracy_row(snap, ae, clf, sub, args.recommended, args.steps),
                         **same}
            print(path, name, rows[key], flush=True)
            earlier.write_text(json.dumps({"part": "steps (partial)", "rows": {**kept, **rows}}, indent=2) + "\n")
    card = read_card(args.model)
    start = card["init"]["steps"] if "init" in card else 0  # the init's steps, its whole lineage
    return with_earlier_points(rows, kept, start, {"n": args.n_steps, "w": args.recommended,
                                                   "sampler_steps": args.steps, "canvases": source})


def with_earlier_points(rows: dict, kept: dict, start: int, same: dict) -> dict:
    """``rows`` (measured now) plus the points of ``kept`` (an earlier steps file) that belong to
    this model's lineage: a continued model (--init) shares its init's history up to step ``start``,
    whose snapshots may be gone. A kept point joins only if no row of that name was measured now, its
    step is at most ``start`` and its settings equal ``same`` (N, scale, sampler steps). Sorted by
    step."""
    out = dict(rows)
    for key, r in kept.items():
        if key not in out and r["step"] <= start and all(r.get(k) == v for k, v in same.items()):
            out[key] = r
    return dict(sorted(out.items(), key=lambda kv: (kv[1]["step"], kv[0])))


def part_cost(args, model, ae, clf, sets) -> dict:
    """Training images/s of the shipped U-Net's architecture in latent and in pixel space."""
    import copy
    from sfs.text2image import TextToImage
    rows = {}
    for name, (ch, size, scale) in {"latent 4x12x12": (4, 12, 1), "pixel 3x48x48": (3, 48, 4)}.items():
        cfg = copy.deepcopy(model.config)
        u = cfg.unet
        u.in_channels, u.image_size = ch, size
        u.attn_resolutions = tuple(r * scale for r in u.attn_resolutions)
        u.cross_attn_resolutions = tuple(r * scale for r in u.cross_attn_resolutions)
        net = TextToImage(cfg)
        opt = torch.optim.AdamW(net.parameters(), 1e-4)
        B = 32
        x, t = torch.randn(B, ch, size, size), torch.randint(0, 1000, (B,))
        ids = net.tokenizer.encode(sets["seen"].captions[:B])

        def step():
            loss = (net(x, t, ids) - x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        step()
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(3):
                step()
            best = min(best, (time.perf_counter() - t0) / 3)
        rows[name] = {"img_s": B / best, "params": sum(p.numel() for p in net.parameters())}
    rows["latent over pixel"] = {"speedup": rows["latent 4x12x12"]["img_s"] / rows["pixel 3x48x48"]["img_s"]}
    return rows


PARTS = {"sweep": part_sweep, "extras": part_extras, "steps": part_steps, "cost": part_cost}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny-sd")
    ap.add_argument("--part", default="sweep,extras,steps,cost", help=f"comma-separated, of {list(PARTS)}")
    ap.add_argument("--report", action="store_true", help="merge OUT.<part>.json into OUT.md/OUT.json")
    ap.add_argument("--n", type=int, default=1000, help="canvases per row")
    ap.add_argument("--n-binding", type=int, default=200)
    ap.add_argument("--n-steps", type=int, default=300, help="canvases per row of the steps part")
    ap.add_argument("--snapshots", default="runs/tiny-sd/snapshots")
    ap.add_argument("--every", type=int, default=1, help="use every k-th snapshot (and the last)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--scales", default="1,2,3,5,7.5")
    ap.add_argument("--recommended", type=float, default=3.0, help="the scale of extras and steps")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/text2image")
    ap.add_argument("--suffix", default="", help="OUT.<part><suffix>.json: split a part over processes "
                    "(e.g. --scales 1,2,3 --suffix -a and --scales 5,7.5 --suffix -b); --report merges them")
    args = ap.parse_args()
    out = Path(args.out)
    if args.report:
        return report(out)
    torch.set_num_threads(args.threads)
    model, card = load_model(args.model, kind="text2image")
    ae, _ = load_model(card["autoencoder"], kind="autoencoder")
    clf, _ = canvas_eval.load_object_classifier()
    sets = {"seen": make_canvases(args.n, "test", 2, "seen"),
            "held_out": make_canvases(args.n, "test", 2, "held_out")}
    out.parent.mkdir(parents=True, exist_ok=True)
    for part in args.part.split(","):
        before, t0 = machine(), time.time()
        rows = PARTS[part](args, model, ae, clf, sets)
        result = {"part": part, "machine": before, "load_avg_after": machine()["load_avg"],
                  "seconds": time.time() - t0, "command": "python " + " ".join(sys.argv),
                  "model": args.model,
                  "model_card": {k: card.get(k) for k in ("steps", "steps_total", "wall_time_s",
                                                          "wall_time_s_total", "machine", "file_sha256")},
                  "canvases": sets["seen"].meta["images_from"],
                  "n": args.n, "steps": args.steps, "recommended": args.recommended, "rows": rows}
        path = out.with_suffix(f".{part}{args.suffix}.json")
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}", flush=True)


def _pct(r: dict, k: str) -> str:
    v = r.get(k)
    return "" if v is None or v != v else f"{100 * v:.1f}"


def report(out: Path) -> None:
    """OUT.md and OUT.json from the part files that exist (a part split over processes by --suffix
    is merged: its rows in file-name order, its commands, machines and minutes side by side)."""
    parts = {}
    for p in PARTS:
        files = sorted(out.parent.glob(f"{out.name}.{p}.json")) + sorted(out.parent.glob(f"{out.name}.{p}-*.json"))
        runs = [json.loads(f.read_text()) for f in files]
        if not runs:
            continue
        merged = dict(runs[0])
        merged["rows"] = {k: v for r in runs for k, v in r["rows"].items()}
        merged["command"] = "` and `".join(r["command"] for r in runs)
        merged["seconds"] = max(r["seconds"] for r in runs)
        merged["load_avg_after"] = max((r["load_avg_after"] for r in runs), key=lambda a: a[0])
        assert len({r["model_card"]["file_sha256"] for r in runs}) == 1, f"{p}: parts of different models"
        parts[p] = merged
    out.with_suffix(".json").write_text(json.dumps(parts, indent=2) + "\n")
    lines = ["# The tiny Stable Diffusion judged by the canvas evaluator", ""]
    clauses = ("object", "colour", "count", "position", "size", "prompt")
    for name, r in parts.items():
        m = r["machine"]
        lines += [f"## {name}", "",
                  f"- date: {m['date']}; command: `{r['command']}`",
                  f"- machine: {m['cpu']}, flags {' '.join(m['flags'])}; load average "
                  f"{m['load_avg'][0]:.2f} before, {r['load_avg_after'][0]:.2f} after; "
                  f"{r['seconds'] / 60:.1f} min",
                  f"- model: {r['model']}, {lineage_steps(r['model_card'])} training steps "
                  f"(sha256 {str(r['model_card']['file_sha256'])[:12]}); DPM-Solver++(2M), {r['steps']} steps",
                  f"- test canvases from: {r.get('canvases', 'not recorded')}", ""]
        if name == "cost":
            lines += ["| space | params | training img/s |", "| --- | --- | --- |"]
            for k in ("latent 4x12x12", "pixel 3x48x48"):
                lines.append(f"| {k} | {r['rows'][k]['params']:,} | {r['rows'][k]['img_s']:.1f} |")
            lines += ["", f"Latent over pixel: {r['rows']['latent over pixel']['speedup']:.1f}x images/s.", ""]
            continue
        extra = name == "sweep"
        lines += ["| prompts | N | object | colour | count | position | size | whole prompt |"
                  + (" object FD | position entropy (bits) | size entropy (bits) |" if extra else ""),
                  "| --- " * (8 + 3 * extra) + "|"]
        for k, row in r["rows"].items():
            cells = [k, str(row.get("n", ""))] + [_pct(row, c) for c in clauses]
            if extra:
                fd = row.get("object_fd")
                cells += ["" if fd is None else f"{fd:.1f}", f"{row['position_entropy']:.2f}",
                          f"{row['size_entropy']:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

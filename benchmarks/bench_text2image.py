"""The tiny Stable Diffusion measured with the canvas evaluator (issue "Text to image", sec. 5).

    python benchmarks/bench_text2image.py --model tiny-sd --n 1000 --out benchmarks/results/text2image

One image per test canvas, drawn from the canvas's caption (DPM-Solver++(2M), --steps steps), judged
against that canvas's spec by ``sfs.canvas_eval.judge``. Rows, each with per-clause accuracy:
- seen and held-out combinations at every guidance scale of --scales (the sweep), with the
  Frechet distance of the generated object crops against real crops in the object classifier's
  feature space (diversity and fidelity of the objects);
- binding: "a red 3 left of a blue 7" against "a blue 3 left of a red 7", --n-binding images each;
- paraphrases: the same seen scenes under a second caption (other templates, synonyms and word
  order), compared with the first.
Writes OUT.json and OUT.md with the machine (lscpu model and flags) and the load average.
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
from sfs.checkpoints import load_model  # noqa: E402
from sfs.metrics import frechet_distance  # noqa: E402
from sfs.text2image import generate  # noqa: E402


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny-sd")
    ap.add_argument("--n", type=int, default=1000, help="canvases per row")
    ap.add_argument("--n-binding", type=int, default=200)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--scales", default="1,2,3,5,7.5")
    ap.add_argument("--recommended", type=float, default=3.0, help="the scale of the paraphrase rows")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/text2image")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    before, t0 = machine(), time.time()
    model, card = load_model(args.model, kind="text2image")
    ae, _ = load_model(card["autoencoder"], kind="autoencoder")
    clf, _ = canvas_eval.load_object_classifier()
    sets = {"seen": make_canvases(args.n, "test", 2, "seen"),
            "held_out": make_canvases(args.n, "test", 2, "held_out")}
    real = crop_features(sets["seen"].images_float(), clf)
    rows = {}
    for w in [float(v) for v in args.scales.split(",")]:
        for name, c in sets.items():
            imgs = draw(model, ae, c.captions, w, args.steps, 0)
            row = canvas_eval.score(canvas_eval.judge(imgs, c, clf))
            row["object_fd"] = frechet_distance(crop_features(imgs, clf), real)
            rows[f"{name}, w = {w:g}"] = row
    seen = sets["seen"]
    alt = seen.subset(slice(None))
    alt.captions = paraphrase(seen, 2)
    rows[f"seen, paraphrased, w = {args.recommended:g}"] = canvas_eval.score(canvas_eval.judge(
        draw(model, ae, alt.captions, args.recommended, args.steps, 0), alt, clf))
    red, blue = canvas.COLOURS.index("red"), canvas.COLOURS.index("blue")
    for a, b in (((3, red), (7, blue)), ((3, blue), (7, red))):
        spec = binding_set(a, b, args.n_binding)
        imgs = draw(model, ae, spec.captions, args.recommended, args.steps, 0)
        rows[f"binding: {spec.captions[0]}"] = canvas_eval.score(canvas_eval.judge(imgs, spec, clf))
    result = {"machine": before, "load_avg_after": machine()["load_avg"], "seconds": time.time() - t0,
              "command": "python " + " ".join(sys.argv), "model": args.model,
              "model_card": {k: card.get(k) for k in ("steps", "wall_time_s", "machine", "file_sha256")},
              "n": args.n, "steps": args.steps, "accuracy": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = ["# The tiny Stable Diffusion judged by the canvas evaluator", "",
             f"- date: {m['date']}; command: `{result['command']}`",
             f"- machine: {m['cpu']}, flags {' '.join(m['flags'])}; load average {m['load_avg'][0]:.2f} "
             f"before, {result['load_avg_after'][0]:.2f} after; {result['seconds'] / 60:.0f} min",
             f"- model: {args.model}, {card.get('steps')} training steps; DPM-Solver++(2M), {args.steps} steps; "
             f"N = {args.n} per row", "",
             "| prompts | object | colour | count | position | size | whole prompt | object FD |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in rows.items():
        fd = f"{r['object_fd']:.1f}" if "object_fd" in r else ""
        lines.append(f"| {name} | " + " | ".join(f"{100 * r[k]:.1f}" for k in
                                                  ("object", "colour", "count", "position", "size", "prompt"))
                     + f" | {fd} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

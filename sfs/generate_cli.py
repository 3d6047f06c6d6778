"""``python -m sfs generate "a red 3 left of a blue 7" --out image.png``: the pipeline from the shell.

``sfs.text2image.generate`` from the shell. Loads the shipped text-to-image model and autoencoder (verified
against their cards), draws ``--n`` images per prompt and writes one PNG grid. A prompt the model
cannot read (empty, too long, unknown words) ends with a one-line message, not a traceback.
"""

from __future__ import annotations

import argparse
import sys

import torch


def add_args(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m sfs generate``."""
    from sfs.validate import float_arg, int_arg
    p.add_argument("prompt", help='e.g. "a red 3 left of a blue 7"')
    p.add_argument("--out", default="image.png", help="PNG file to write")
    p.add_argument("--n", type=int_arg(1, 64), default=4, help="images for the prompt")
    p.add_argument("--steps", type=int_arg(1, 1000), default=20, help="DPM-Solver++(2M) steps")
    p.add_argument("--guidance-scale", type=float_arg(0, 100), default=3.0,
                   help="classifier-free guidance w")
    p.add_argument("--seed", type=int_arg(0), default=0)
    p.add_argument("--model", default="tiny-sd", help="text-to-image model name or path")
    p.add_argument("--autoencoder", default=None,
                   help="autoencoder name or path (default: the one named in the model's card)")
    p.add_argument("--threads", type=int_arg(1, 256), default=1,
                   help="CPU threads (default 1: a model this small gains little from more, and on a "
                        "busy machine two threads that wait for each other can be many times slower)")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Generate and save; errors in the prompt or options exit with parser.error (status 2)."""
    from sfs.checkpoints import load_model
    from sfs.text2image import generate
    from sfs.train import save_grid

    if not args.prompt.strip():
        parser.error("the prompt is empty: say what to draw, e.g. \"a red 3 left of a blue 7\"")
    model, card = load_model(args.model, kind="text2image")
    try:
        model.tokenizer.encode(args.prompt)
    except ValueError as e:
        parser.error(str(e))
    ae, _ = load_model(args.autoencoder or card["autoencoder"], kind="autoencoder")
    torch.set_num_threads(args.threads)
    images = generate(args.prompt, model, ae, args.guidance_scale, args.steps, args.seed, args.n)
    save_grid(images, args.out, nrow=min(args.n, 8))
    print(f"wrote {args.n} image(s) for {args.prompt!r} to {args.out}", file=sys.stderr)

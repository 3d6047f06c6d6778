"""Command line: ``python -m sfs train ...`` (or ``sfs train ...``).

Book ch. 6, sec. "The training loop". For example, the shipped MNIST model:

    python -m sfs train --data mnist --data-dir ../shared/data --steps 8000 --batch-size 128 \\
        --device cuda --bf16 --out runs/mnist-uncond --export mnist-uncond

Run the same command again after a crash and it resumes from the last checkpoint in --out.
On several GPUs, ``torchrun --nproc_per_node N -m sfs train ...`` trains data-parallel
(``sfs.distributed``); the global --batch-size is split over the N ranks.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import fields
from typing import Callable

import torch

from sfs import cpu_probe, distributed, generate_cli, train_autoencoder, train_text2image
from sfs.data import load_dataset
from sfs.loop import LR_DECAYS, check_lr_decay
from sfs.train import TrainConfig, train
from sfs.unet import UNetConfig
from sfs.validate import (check_int, existing_dir, finite_float, fraction, fraction_below_one, ints_arg,
                          nonnegative_float, nonnegative_int, plain_name, positive_float, positive_int,
                          positive_ints)


DATA_SHAPES = {"mnist": (1, 28), "fashion-mnist": (1, 28), "cifar10": (3, 32)}  # (channels, size)


def _add_train_args(p: argparse.ArgumentParser) -> None:
    d, m = TrainConfig(), UNetConfig()
    g = p.add_argument_group("data")
    g.add_argument("--data", choices=sorted(DATA_SHAPES), default=d.data,
                   help="the image shape follows: 1x28x28, or 3x32x32 for cifar10 (settings of "
                        "DDPM's CIFAR-10 model: sfs.train.cifar10_config)")
    g.add_argument("--data-dir", type=existing_dir, default=d.data_dir,
                   help="folder with the IDX files or cifar-10-python.tar.gz (or their parent); "
                        "default $SFS_DATA_DIR")
    g.add_argument("--download", action="store_true",
                   help="fetch the data set when it is not found (needs internet): MNIST's files "
                        "with torchvision, CIFAR-10's archive (md5-checked)")
    g.add_argument("--conditional", action="store_true",
                   help="class-conditional with label dropout, for classifier-free guidance")
    g.add_argument("--label-dropout", type=fraction, default=d.label_dropout, help="in [0, 1]")
    g = p.add_argument_group("diffusion")
    g.add_argument("--schedule", choices=["cosine", "linear"], default=d.schedule)
    g.add_argument("--T", type=positive_int, default=d.T)
    g.add_argument("--target", choices=["eps", "x0", "v"], default=d.target)
    g.add_argument("--weighting", choices=["min_snr"], default=d.weighting,
                   help="loss weighting (default: none, the simple loss of Ho et al. 2020)")
    g = p.add_argument_group("model (sfs.unet.UNetConfig)")
    g.add_argument("--base-channels", type=positive_int, default=m.base_channels)
    g.add_argument("--channel-mults", type=positive_ints, default=m.channel_mults, help="e.g. 1,2,2")
    g.add_argument("--num-res-blocks", type=positive_int, default=m.num_res_blocks)
    g.add_argument("--attn-resolutions", type=ints_arg(low=1, nonempty=False),
                   default=m.attn_resolutions, help="e.g. 14,7; '' for none")
    g.add_argument("--num-heads", type=positive_int, default=m.num_heads)
    g.add_argument("--dropout", type=fraction_below_one, default=m.dropout, help="in [0, 1)")
    g.add_argument("--norm-groups", type=positive_int, default=m.norm_groups,
                   help="GroupNorm groups; every level's channels must be divisible by it")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=positive_int, default=d.steps)
    g.add_argument("--minutes", type=nonnegative_float, default=d.minutes,
                   help="also stop after this many minutes of training (checkpoint and export)")
    g.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    g.add_argument("--lr", type=positive_float, default=d.lr)
    g.add_argument("--warmup-steps", type=nonnegative_int, default=d.warmup_steps)
    g.add_argument("--lr-decay", choices=LR_DECAYS, default=d.lr_decay,
                   help="after the warmup: constant, or cosine to 0 at --steps (book ch. 6)")
    g.add_argument("--weight-decay", type=nonnegative_float, default=d.weight_decay)
    g.add_argument("--grad-clip", type=positive_float, default=d.grad_clip, help="max gradient norm, > 0")
    g.add_argument("--ema-decay", type=fraction_below_one, default=d.ema_decay, help="in [0, 1)")
    g.add_argument("--seed", type=nonnegative_int, default=d.seed)
    g = p.add_argument_group("speed")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--channels-last", action="store_true")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    cpu_probe.add_args(g)  # --bf16, --threads, --no-probe
    g = p.add_argument_group("outputs")
    g.add_argument("--out", default=None, help="run folder (default runs/<data>-<cond|uncond>)")
    g.add_argument("--ckpt-every", type=positive_int, default=d.ckpt_every)
    g.add_argument("--sample-every", type=nonnegative_int, default=d.sample_every, help="0: never")
    g.add_argument("--sample-n", type=positive_int, default=d.sample_n)
    g.add_argument("--sample-steps", type=positive_int, default=d.sample_steps, help="at most --T")
    g.add_argument("--guidance-scale", type=finite_float, default=d.guidance_scale)
    g.add_argument("--log-every", type=positive_int, default=d.log_every)
    g.add_argument("--export", type=plain_name, default=None, metavar="NAME",
                   help="at the end, write the EMA weights as models/NAME.safetensors + card "
                        "(a plain name: written inside --models-dir only)")
    g.add_argument("--models-dir", default=None,
                   help="where --export writes (default $SFS_MODELS_DIR, else the repository's "
                        "models/, else the cache of an installed sfs, ~/.cache/sfs/models)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace, argv: list[str]) -> TrainConfig:
    """Build the TrainConfig that the parsed ``train`` arguments describe.

    Raises ValueError or TypeError for settings that are fine one by one but not together (a
    UNetConfig whose fields do not fit, more sampling steps than T).
    """
    in_channels, image_size = DATA_SHAPES[args.data]
    model = UNetConfig(**{f.name: getattr(args, f.name) for f in fields(UNetConfig)
                          if hasattr(args, f.name)}, in_channels=in_channels, image_size=image_size)
    names = {f.name for f in fields(TrainConfig)} - {"model", "command"}
    cfg = TrainConfig(model=model, command="python -m sfs " + shlex.join(argv),
                      **{k: getattr(args, k) for k in names if hasattr(args, k)})
    if args.out is None:
        cfg.out = f"runs/{cfg.data}-{'cond' if cfg.conditional else 'uncond'}"
    check_int("--sample-steps", cfg.sample_steps, 1, cfg.T, hint="at most --T")
    check_lr_decay(cfg.lr_decay, cfg.steps, cfg.warmup_steps)
    return cfg


def check_parsed(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Catch what argparse lets through without calling an option's type: ``--steps=--`` gives
    ``[]`` on Python 3.11 (argparse drops a '--' value). One-line error and exit status 2."""
    for action in parser._actions:  # nargs None: the options that take one value
        if action.nargs is None and isinstance(getattr(args, action.dest, None), list):
            parser.error(f"argument {'/'.join(action.option_strings)}: expected one value, got '--'")


def config_or_exit(parser: argparse.ArgumentParser, build: Callable, *args):
    """``build(*args)``; a ValueError or TypeError from its checks ends the program the way
    argparse does, with one line ("prog: error: ...") and exit status 2, not a traceback."""
    try:
        return build(*args)
    except (TypeError, ValueError) as e:
        parser.error(str(e))


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m sfs``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m sfs",
                                     description="Stable Diffusion from scratch: the sfs library")
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train a U-Net diffusion model (resumes if --out has "
                             "a checkpoint)", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_train_args(p_train)
    p_ae = sub.add_parser("train-autoencoder", help="train the canvas autoencoder of book ch. 10 "
                          "(resumes if --out has a checkpoint)",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train_autoencoder.add_args(p_ae)
    p_t2i = sub.add_parser("train-text2image", help="train the text-to-image model of book ch. 12 "
                           "(resumes if --out has a checkpoint)",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train_text2image.add_args(p_t2i)
    p_gen = sub.add_parser("generate", help="draw images for a prompt with the shipped tiny "
                           "Stable Diffusion (book ch. 12)",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    generate_cli.add_args(p_gen)
    args = parser.parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    joined = distributed.init_from_env()  # under torchrun (WORLD_SIZE > 1): join the other ranks
    try:
        _run(args, argv, p_train, p_ae, p_t2i, p_gen)
    finally:
        if joined:
            distributed.close()


def _run(args, argv, p_train, p_ae, p_t2i, p_gen) -> None:
    if args.command == "train":
        check_parsed(p_train, args)
        cfg = config_or_exit(p_train, config_from_args, args, argv)
        dataset = load_dataset(cfg.data, "train", cfg.data_dir, download=True) if args.download \
            else None  # without --download, train() reads the data and never fetches it
        train(cfg, dataset=dataset, progress=not args.no_progress)
    elif args.command == "train-text2image":
        check_parsed(p_t2i, args)
        cfg = config_or_exit(p_t2i, train_text2image.config_from_args, args, argv)
        train_text2image.train_text2image(cfg, progress=not args.no_progress)
    elif args.command == "generate":
        check_parsed(p_gen, args)
        generate_cli.run(args, p_gen)
    elif args.command == "train-autoencoder":
        check_parsed(p_ae, args)
        cfg = config_or_exit(p_ae, train_autoencoder.config_from_args, args, argv)
        train_autoencoder.train_autoencoder(cfg, progress=not args.no_progress)


if __name__ == "__main__":
    main()

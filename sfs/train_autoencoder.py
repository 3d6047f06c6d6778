"""Training the autoencoder on captioned canvases: ``python -m sfs train-autoencoder ...``.

Book ch. 10, sec. "Training the autoencoder". The loss is book eq. (10.3) (``sfs.autoencoder``);
the loop, its checkpoints and resume are ``sfs.loop``'s, the same as the U-Net's. At the end the
latent scale factor is measured on the training canvases (``measure_scale``), written into the
config (so that ``encode`` / ``decode`` apply it) and into the model card.

    python -m sfs train-autoencoder --data-dir ../shared/data --minutes 100 \\
        --out runs/autoencoder --export canvas-autoencoder
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn

from sfs import cpu_probe, distributed, loop
from sfs.autoencoder import Autoencoder, AutoencoderConfig, autoencoder_loss, measure_scale
from sfs.canvas import Canvases, make_canvases
from sfs.checkpoints import resolve_models_dir, save_checkpoint, write_model_card_md


@dataclass
class AutoencoderTrainConfig:
    """Everything an autoencoder run depends on; saved as ``config.json`` in the run folder.

    The fields shared with ``sfs.train.TrainConfig`` (steps ... command) mean the same there.
    """

    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    data_dir: str | None = None  # MNIST / Fashion-MNIST IDX files; None: $SFS_DATA_DIR (else the sample)
    n_canvases: int = 60000  # training canvases (combos "seen": no held-out combination)
    canvas_seed: int = 0
    beta: float = 1e-4  # weight of the KL term per pixel value, book eq. (10.3)
    steps: int = 20000
    minutes: float | None = None
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 200
    lr_decay: str = "constant"  # after the warmup: "constant" or "cosine" to 0 at the last step
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    device: str = "auto"
    bf16: bool | None = False  # bfloat16 autocast; None: the CPU probe chooses (sfs.cpu_probe)
    threads: int | None = None  # CPU threads; None: as set, or the probe's choice
    probe: bool = False  # on a CPU, time fp32/bf16 and 1/all threads for those left None
    cpu_settings: dict | None = None  # filled in by the probe: its choice and measured images/s
    compile: bool = False
    out: str = "runs/autoencoder"
    ckpt_every: int = 500
    sample_every: int = 1000  # steps between reconstruction grids (0: never)
    log_every: int = 50
    export: str | None = None  # write the EMA weights as models/<export>.safetensors + card
    models_dir: str | None = None
    command: str | None = None

    def to_dict(self) -> dict:
        """JSON-able dict."""
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d


def save_reconstructions(model: nn.Module, canvases: Canvases, path: str | Path, n: int = 16) -> None:
    """A grid of n canvases (top rows) over their reconstructions (bottom rows), as one PNG."""
    from torchvision.utils import save_image
    x = canvases.images_float(slice(0, n))
    with torch.no_grad():
        x_hat = model.decode(model.encode(x)).clamp(-1, 1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image((torch.cat([x, x_hat]) + 1) / 2, str(path), nrow=8, padding=1, pad_value=0.5)


def train_autoencoder(cfg: AutoencoderTrainConfig, canvases: Canvases | None = None,
                      progress: bool = True) -> Autoencoder:
    """Train (or resume) the autoencoder as configured; return the EMA model (eval mode), with
    its scale factor measured. ``canvases`` overrides the generated training set (tests).
    Book ch. 10, sec. "Training the autoencoder"; Rombach et al. 2022, sec. 3.1.
    """
    if not (isinstance(cfg.beta, (int, float)) and cfg.beta >= 0):
        raise ValueError(f"beta must be a number >= 0, got {cfg.beta!r}")
    device = loop.resolve_device(cfg.device)
    if canvases is None:
        canvases = make_canvases(cfg.n_canvases, "train", cfg.canvas_seed, "seen",
                                 cfg.model.image_size, cfg.data_dir)
    images = canvases.images.to(device)  # (N, 3, H, W) uint8: 4x smaller than floats
    torch.manual_seed(cfg.seed)
    model = Autoencoder(replace(cfg.model, scale_factor=1.0)).to(device)
    generator = torch.Generator(device).manual_seed(cfg.seed)
    run_dir = Path(cfg.out)

    def loss_fn(forward, idx, generator):
        x = images[idx.to(device)].float() / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1]
        h = model.config.latent_size
        eps = torch.randn((len(x), cfg.model.latent_channels, h, h), generator=generator, device=device)
        # the noise of the whole global batch is drawn above; under torchrun each rank keeps its rows
        x, eps = distributed.shard(x, eps)
        loss, parts = autoencoder_loss(forward, x, cfg.beta, eps=eps)
        return loss, parts

    def on_sample(step, ema):
        save_reconstructions(ema, canvases, run_dir / "samples" / f"step-{step:07d}.png")

    ema, step, wall_time = loop.run(cfg, model, loss_fn, len(images), device, generator,
                                    desc="train autoencoder", progress=progress, on_sample=on_sample)
    ema = ema.cpu().float()
    scale = measure_scale(ema, canvases.images_float(slice(0, 5000)),
                          generator=torch.Generator().manual_seed(0))
    ema.config = replace(ema.config, scale_factor=scale)
    if cfg.export and distributed.is_main():
        export(cfg, ema, canvases, run_dir, step, wall_time, device)
    return ema


def export(cfg: AutoencoderTrainConfig, ema: Autoencoder, canvases: Canvases, run_dir: Path,
           step: int, wall_time: float, device: torch.device) -> Path:
    """Write ``models/<cfg.export>.safetensors`` (fp16) with its JSON and Markdown model cards."""
    if "/" in cfg.export or "\\" in cfg.export or cfg.export in ("", ".", ".."):
        raise ValueError(f"export must be a plain file name, got {cfg.export!r}")
    path = resolve_models_dir(cfg.models_dir) / f"{cfg.export}.safetensors"
    rows = loop.read_log(run_dir / "loss.jsonl")
    losses = [r["loss"] for r in rows]
    last = rows[-100:]
    test = make_canvases(1000, "test", 1, "all", cfg.model.image_size, cfg.data_dir)
    with torch.no_grad():
        x = test.images_float()
        rec_l1 = float((ema.decode(ema.encode(x)).clamp(-1, 1) - x).abs().mean())
    card = {
        "description": "A KL-regularised autoencoder for captioned canvases, "
                       f"{cfg.model.image_size}x{cfg.model.image_size}x{cfg.model.in_channels} -> "
                       f"{ema.config.latent_size}x{ema.config.latent_size}x{cfg.model.latent_channels}, "
                       "trained with sfs (book ch. 10).",
        "architecture": "sfs.autoencoder.Autoencoder", "params": sum(p.numel() for p in ema.parameters()),
        "scale_factor": ema.config.scale_factor,
        "scale_factor_note": "1 / std of sampled latents over 5,000 training canvases",
        "beta": cfg.beta, "data": "canvases (sfs.canvas.make_canvases, combos 'seen')",
        "n_canvases": len(canvases), "canvas_seed": cfg.canvas_seed,
        "data_dir": canvases.meta.get("images_from", "given canvases"),
        "steps": step, "batch_size": cfg.batch_size, "lr": cfg.lr, "lr_decay": cfg.lr_decay, "ema_decay": cfg.ema_decay,
        "seed": cfg.seed,
        "final_rec_l1": round(sum(r["rec"] for r in last) / max(1, len(last)), 5),
        "final_kl_per_value": round(sum(r["kl"] for r in last) / max(1, len(last)), 5),
        "test_rec_l1": round(rec_l1, 5),
        "test_rec_note": "mean |x - decode(encode(x))| over 1,000 test canvases (seed 1, combos 'all')",
        "wall_time_s": round(wall_time, 1), "machine": loop.machine_name(device),
        "torch": torch.__version__, "bf16": cfg.bf16, "cpu_settings": cfg.cpu_settings,
        "command": cfg.command or f"train_autoencoder({cfg!r})",
        "git_commit": loop.git_commit(),
    }
    card = save_checkpoint(path, ema, ema.config, card)
    x = test.images_float(slice(0, 32))
    with torch.no_grad():
        x_hat = ema.decode(ema.encode(x)).clamp(-1, 1)
    grid = torch.cat([x[:16], x_hat[:16], x[16:], x_hat[16:]])
    table = [("architecture", f"sfs.autoencoder.Autoencoder, {card['params']:,} parameters"),
             ("config", ", ".join(f"{k}={v}" for k, v in card["config"].items())),
             ("latent scale factor", f"{card['scale_factor']:.5f} ({card['scale_factor_note']})"),
             ("loss", f"L1 + beta * KL per value, beta = {cfg.beta}"),
             ("data", f"{card['n_canvases']} canvases, seed {cfg.canvas_seed}, {card['data_dir']}"),
             ("training", f"{step} steps, batch {cfg.batch_size}, lr {cfg.lr}, EMA {cfg.ema_decay}"),
             ("final L1 / KL per value (last 100 steps)", f"{card['final_rec_l1']} / {card['final_kl_per_value']}"),
             ("test L1", f"{card['test_rec_l1']} ({card['test_rec_note']})"),
             ("wall time", f"{wall_time:.0f} s on {card['machine']}"),
             ("code version", card["git_commit"]),
             ("weights", f"{card['file']} ({card['dtype']}), sha256 {card['file_sha256']}")]
    write_model_card_md(path.with_suffix(".md"), card, grid, losses, nrow=16, rows=table,
                        samples_title="Test canvases (rows 1, 3) and their reconstructions (rows 2, 4)")
    return path


def add_args(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m sfs train-autoencoder``."""
    from sfs.validate import (fraction_below_one, nonnegative_float, nonnegative_int,
                              plain_name, positive_float, positive_int, positive_ints)
    d, m = AutoencoderTrainConfig(), AutoencoderConfig()
    p.add_argument("--data-dir", default=d.data_dir)
    p.add_argument("--n-canvases", type=positive_int, default=d.n_canvases)
    p.add_argument("--canvas-seed", type=nonnegative_int, default=d.canvas_seed)
    p.add_argument("--beta", type=nonnegative_float, default=d.beta)
    p.add_argument("--base-channels", type=positive_int, default=m.base_channels)
    p.add_argument("--channel-mults", type=positive_ints, default=m.channel_mults)
    p.add_argument("--num-res-blocks", type=positive_int, default=m.num_res_blocks)
    p.add_argument("--latent-channels", type=positive_int, default=m.latent_channels)
    types = {"steps": positive_int, "batch_size": positive_int, "warmup_steps": nonnegative_int,
             "seed": nonnegative_int, "ckpt_every": positive_int, "sample_every": nonnegative_int,
             "log_every": positive_int, "lr": positive_float, "weight_decay": nonnegative_float,
             "grad_clip": positive_float, "ema_decay": fraction_below_one}
    for name, kind in types.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(d, name))
    p.add_argument("--lr-decay", choices=loop.LR_DECAYS, default=d.lr_decay,
                   help="after the warmup: constant, or cosine to 0 at --steps")
    p.add_argument("--minutes", type=positive_float, default=None)
    p.add_argument("--device", default=d.device)
    cpu_probe.add_args(p)  # --bf16, --threads, --no-probe
    p.add_argument("--out", default=d.out)
    p.add_argument("--export", type=plain_name, default=None, metavar="NAME")
    p.add_argument("--models-dir", default=None)
    p.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace, argv: list[str]) -> AutoencoderTrainConfig:
    """The AutoencoderTrainConfig that parsed ``train-autoencoder`` arguments describe."""
    model = AutoencoderConfig(base_channels=args.base_channels, channel_mults=args.channel_mults,
                              num_res_blocks=args.num_res_blocks, latent_channels=args.latent_channels)
    names = {f for f in AutoencoderTrainConfig.__dataclass_fields__} - {"model", "command", "compile", "cpu_settings"}
    loop.check_lr_decay(args.lr_decay, args.steps, args.warmup_steps)
    return AutoencoderTrainConfig(model=model, command="python -m sfs " + shlex.join(argv),
                                  **{k: getattr(args, k) for k in names})

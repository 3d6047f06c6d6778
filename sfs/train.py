"""Training the U-Net: the loop of Ho et al. 2020, Alg. 1, with the habits that make it work.

Book ch. 6, sec. "The training loop". One step:

    x0, y  <- a batch of images and labels (a per-epoch permutation fixed by the seed)
    t      ~ Uniform{0, ..., T-1};  eps ~ N(0, I);  x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps
    y      <- null label with probability 0.1 (so the same network also learns p(x); for CFG)
    loss   =  || eps - eps_hat(x_t, t, y) ||^2          (book eq. (3.7))
    AdamW step (linear warmup, gradient clipping), then EMA of the weights

Everything random is drawn from generators whose states go into the checkpoint, and each step's
batch is a function of (seed, step), so a run that is killed and resumed ends with the same
weights as one that never stopped. The run folder holds ``config.json``, ``loss.jsonl`` (one line
per step), ``samples/step-XXXXXXX.png`` grids and the last two training states.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from sfs import distributed, loop
from sfs.checkpoints import resolve_models_dir, save_checkpoint, write_model_card_md
from sfs.data import ImageDataset, load_dataset, to_uint8
from sfs.loop import (RESUMABLE_CHANGES, batch_indices, ema_update, git_commit,  # noqa: F401
                      lr_at, machine_name, read_log)
from sfs.forward import q_sample
from sfs.losses import simple_loss
from sfs.parameterizations import eps_from_v, eps_from_x0, x0_from_eps, x0_from_v
from sfs.schedules import Schedule, cosine_schedule, linear_schedule
from sfs.unet import UNet, UNetConfig, count_params

SCHEDULES = {"cosine": cosine_schedule, "linear": linear_schedule}


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``config.json`` in the run folder."""

    model: UNetConfig = field(default_factory=UNetConfig)
    data: str = "mnist"  # "mnist", "fashion-mnist" or "cifar10" (see cifar10_config)
    data_dir: str | None = None  # folder with the IDX files (or CIFAR-10's); None: $SFS_DATA_DIR
    conditional: bool = False  # learn p(x | y) and p(x) together (label dropout), for CFG
    label_dropout: float = 0.1  # probability of replacing a label by the null label
    schedule: str = "cosine"  # "cosine" (Nichol & Dhariwal 2021) or "linear" (Ho et al. 2020)
    T: int = 1000  # diffusion steps
    target: str = "eps"  # what the network predicts: "eps", "x0" or "v"
    weighting: str | None = None  # loss weighting: None (Ho et al.) or "min_snr" (Hang et al. 2023)
    steps: int = 4000  # optimizer steps
    minutes: float | None = None  # also stop (checkpoint, export) after this much training time
    batch_size: int = 128
    lr: float = 1e-3  # peak learning rate, reached after warmup
    warmup_steps: int = 200  # linear warmup from 0
    lr_decay: str = "constant"  # after the warmup: "constant" or "cosine" to 0 at the last step
    weight_decay: float = 0.0  # AdamW's decoupled weight decay (off, as in DDPM)
    grad_clip: float = 1.0  # max global gradient norm
    ema_decay: float = 0.999  # EMA of the weights, warmed up as min(decay, (1 + s) / (10 + s))
    seed: int = 0
    device: str = "auto"  # "auto": cuda if available, else cpu
    bf16: bool | None = False  # bfloat16 autocast for the forward pass; None: the CPU probe chooses
    threads: int | None = None  # CPU threads (torch.set_num_threads); None: as set, or the probe's
    probe: bool = False  # on a CPU, time fp32/bf16 and 1/all threads for those left None (sfs.cpu_probe)
    cpu_settings: dict | None = None  # filled in by the probe: its choice and measured images/s
    channels_last: bool = False  # NHWC memory layout
    compile: bool = False  # torch.compile the training forward
    out: str = "runs/default"  # run folder: checkpoints, loss log, sample grids
    ckpt_every: int = 500  # steps between training states
    sample_every: int = 1000  # steps between sample grids (0: never)
    sample_n: int = 64  # images per grid
    sample_steps: int = 50  # DDIM steps for the grids
    guidance_scale: float = 3.0  # CFG scale of the conditional grids (1: no guidance)
    log_every: int = 50  # steps between progress-bar and loss-log flushes
    export: str | None = None  # write the EMA weights as models/<export>.safetensors + card
    models_dir: str | None = None  # where --export writes; None: $SFS_MODELS_DIR or repo models/
    command: str | None = None  # the command line that started the run (for the model card)

    def to_dict(self) -> dict:
        """JSON-able dict."""
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d


def cifar10_config() -> TrainConfig:
    """The CIFAR-10 configuration of DDPM (Ho et al. 2020, sec. 4 and app. B), in sfs's terms.

    - U-Net: 32x32 RGB, base width 128, channel multipliers (1, 2, 2, 2) (resolutions 32, 16, 8, 4),
      2 residual blocks per resolution, single-head self-attention at 16x16 (and in the middle),
      GroupNorm with 32 groups, dropout 0.1: 35.7 M parameters, as DDPM's.
    - Diffusion: the linear schedule (beta 1e-4 to 0.02), T = 1000, eps-prediction, the simple loss.
    - Optimisation: batch 128, Adam(W without weight decay) at lr 2e-4 with 5,000 warmup steps,
      gradient clipping at 1.0, EMA 0.9999, 800,000 steps (DDPM's count for CIFAR-10).
    - Differences from DDPM: no random horizontal flips (the sfs loop has no augmentation), and
      bfloat16 autocast (``bf16``) on a GPU.

    Cost: an estimate, not a measurement (no GPU run of it has been made). One forward pass is
    12.1 GFLOP per image (``torch.utils.flop_counter`` on this config), so a training step of 128
    images is about 3 x 12.1 x 128 = 4.6 TFLOP and 800,000 steps 3.7e18 FLOP. At a sustained 100
    TFLOP/s (about a third of an A100's bf16 peak) that is about 10 hours; on an H100 at 200 TFLOP/s
    about 5 hours; expect 5-15 hours on one modern GPU, plus the sample grids. (DDPM reports 10.6
    hours on a TPU v3-8, at 21 steps per second.) DDPM's FID at 800,000 steps is 3.17; the seed
    project of this book reports 30 with a smaller budget.

    From the shell (the same settings; ``--data-dir`` holds cifar-10-python.tar.gz)::

        python -m sfs train --data cifar10 --data-dir DATA --base-channels 128 \\
            --channel-mults 1,2,2,2 --num-res-blocks 2 --attn-resolutions 16 --num-heads 1 \\
            --norm-groups 32 --dropout 0.1 --schedule linear --T 1000 --steps 800000 \\
            --batch-size 128 --lr 2e-4 --warmup-steps 5000 --grad-clip 1.0 --ema-decay 0.9999 \\
            --ckpt-every 10000 --sample-every 20000 --bf16 --out runs/cifar10-uncond
    """
    model = UNetConfig(in_channels=3, image_size=32, base_channels=128, channel_mults=(1, 2, 2, 2),
                       num_res_blocks=2, attn_resolutions=(16,), num_heads=1, dropout=0.1,
                       norm_groups=32)
    return TrainConfig(model=model, data="cifar10", schedule="linear", T=1000, target="eps",
                       steps=800_000, batch_size=128, lr=2e-4, warmup_steps=5000,
                       weight_decay=0.0, grad_clip=1.0, ema_decay=0.9999, bf16=True,
                       probe=True,  # as the command line: on a CPU, time the thread counts at start-up
                       ckpt_every=10_000, sample_every=20_000, out="runs/cifar10-uncond")


# ----------------------------------------------------------------------------------------------
# Pieces of the loop.

def _to_eps_x0(schedule: Schedule, target: str, out: torch.Tensor, x_t: torch.Tensor,
               t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if target == "eps":
        return out, x0_from_eps(schedule, x_t, t, out)
    if target == "v":
        return eps_from_v(schedule, x_t, t, out), x0_from_v(schedule, x_t, t, out)
    return eps_from_x0(schedule, x_t, t, out), out


@torch.no_grad()
def _ddim_grid(model: nn.Module, schedule: Schedule, n: int, cond: torch.Tensor | None,
               steps: int = 50, guidance_scale: float = 1.0, target: str = "eps",
               seed: int = 0, image_shape: tuple[int, ...] = (1, 28, 28)) -> torch.Tensor:
    """Deterministic DDIM (eta = 0, Song et al. 2021, eq. 12; book eq. (7.2)) for the training-time
    grids only; the samplers of the book live in ``sfs.samplers``. The ``steps`` code timesteps are
    linspace(T - 1, 0).round(), so the first is t = T - 1 (book step T), and x0_hat is clipped to
    [-1, 1] at every step (without it an eps-model diverges from t = T on the cosine schedule, book
    ch. 7, sec. "Which timesteps?"). Returns (n, *image_shape) in [-1, 1]."""
    device = next(model.parameters()).device
    g = torch.Generator(device).manual_seed(seed)
    x_t = torch.randn(n, *image_shape, generator=g, device=device)
    ts = torch.linspace(schedule.T - 1, 0, steps).round().long().tolist()
    alpha_bar = schedule.alpha_bar.to(device)
    for i, t_now in enumerate(ts):
        t = torch.full((n,), t_now, dtype=torch.long, device=device)
        out = model(x_t, t, cond).float()
        if cond is not None and guidance_scale != 1.0:  # plain CFG formula, book ch. 8
            out_uncond = model(x_t, t, None).float()
            out = out_uncond + guidance_scale * (out - out_uncond)
        eps_hat, x0_hat = _to_eps_x0(schedule, target, out, x_t, t)
        x0_hat = x0_hat.clamp(-1, 1)
        eps_hat = eps_from_x0(schedule, x_t, t, x0_hat)
        ab_prev = alpha_bar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, device=device)
        x_t = ab_prev.sqrt() * x0_hat + (1 - ab_prev).sqrt() * eps_hat
    return x_t


def sample_grid(ema: nn.Module, schedule: Schedule, cfg: TrainConfig, num_classes: int | None
                ) -> torch.Tensor:
    """The run's sample grid from the EMA model, always from the same noise:
    (sample_n, in_channels, image_size, image_size), (sample_n, 1, 28, 28) for MNIST.

    Conditional models get labels 0, 1, ..., 9, 0, 1, ... (one class per column of a 10-wide
    grid) with guidance ``cfg.guidance_scale``.
    """
    device = next(ema.parameters()).device
    cond = None
    if num_classes is not None:
        cond = torch.arange(cfg.sample_n, device=device) % num_classes
    was_training = ema.training
    ema.eval()
    x0 = _ddim_grid(ema, schedule, cfg.sample_n, cond, cfg.sample_steps, cfg.guidance_scale,
                    cfg.target, seed=cfg.seed,
                    image_shape=(cfg.model.in_channels, cfg.model.image_size, cfg.model.image_size))
    ema.train(was_training)
    return x0


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> None:
    """Save (N, 1, H, W) images in [-1, 1] as one PNG grid."""
    from torchvision.utils import save_image
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    nrow = nrow or max(1, int(math.sqrt(len(images))))
    save_image((images.float().clamp(-1, 1) + 1) / 2, str(path), nrow=nrow, padding=2, pad_value=1.0)


def data_sha256(dataset: ImageDataset) -> str:
    """sha256 of the data as uint8 pixels followed by int64 labels: names the exact training set."""
    import hashlib
    h = hashlib.sha256(to_uint8(dataset.images).numpy().tobytes())
    h.update(dataset.labels.numpy().astype("<i8").tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# The loop.

def train(cfg: TrainConfig, dataset: ImageDataset | None = None,
          on_step: Callable[[int], None] | None = None, progress: bool = True) -> nn.Module:
    """Train (or resume) a U-Net as configured; return the EMA model (eval mode).

    Resumes from the newest training state in ``cfg.out`` when there is one. ``dataset``
    overrides ``cfg.data`` (tests pass the bundled sample); ``on_step(step)`` is called after
    each optimizer step. Book ch. 6, sec. "The training loop"; Ho et al. 2020, Alg. 1.
    """
    if cfg.target not in ("eps", "x0", "v"):
        raise ValueError(f"target must be 'eps', 'x0' or 'v', got {cfg.target!r}")
    device = loop.resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    run_dir = Path(cfg.out)

    if dataset is None:
        dataset = load_dataset(cfg.data, "train", cfg.data_dir)
    wanted = (cfg.model.in_channels, cfg.model.image_size, cfg.model.image_size)
    if tuple(dataset.images.shape[1:]) != wanted:
        raise ValueError(f"the data {dataset.name} holds images {tuple(dataset.images.shape[1:])}, "
                         f"the model's config (in_channels, image_size) wants {wanted}")
    images = dataset.images.to(device)  # (N, C, H, W): the whole set lives on the device
    labels = dataset.labels.to(device)  # (N,)
    num_classes = len(dataset.classes) if cfg.conditional else None
    cfg.model.num_classes = num_classes
    schedule = SCHEDULES[cfg.schedule](cfg.T).to(device)

    torch.manual_seed(cfg.seed)  # parameter init and dropout
    model = UNet(cfg.model).to(device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    generator = torch.Generator(device).manual_seed(cfg.seed)  # t, eps, label dropout

    def loss_fn(forward, idx, generator):
        idx = idx.to(device)
        x0 = images[idx].contiguous(memory_format=memory_format)  # (B, 1, 28, 28)
        B = x0.shape[0]
        t = torch.randint(0, schedule.T, (B,), generator=generator, device=device)
        eps = torch.randn(x0.shape, generator=generator, device=device)
        x_t = q_sample(schedule, x0, t, eps)
        y = None
        if num_classes is not None:
            drop = torch.rand(B, generator=generator, device=device) < cfg.label_dropout
            y = torch.where(drop, torch.full_like(labels[idx], num_classes), labels[idx])
        # all of the global batch was drawn above; under torchrun each rank keeps its rows
        x0, eps, t, x_t, y = distributed.shard(x0, eps, t, x_t, y)
        out = forward(x_t, t, y)
        return simple_loss(out.float(), x0, eps, t, schedule, target=cfg.target,
                           weighting=cfg.weighting), None

    def on_sample(step, ema):
        save_grid(sample_grid(ema, schedule, cfg, num_classes),
                  run_dir / "samples" / f"step-{step:07d}.png", nrow=num_classes)

    ema, step, wall_time = loop.run(cfg, model, loss_fn, images.shape[0], device, generator,
                                    desc=f"train {cfg.data}", progress=progress, on_step=on_step,
                                    on_sample=on_sample)
    if cfg.export and distributed.is_main():
        export(cfg, ema, schedule, dataset, run_dir, step, wall_time, device)
    return ema


def export(cfg: TrainConfig, ema: nn.Module, schedule: Schedule, dataset: ImageDataset,
           run_dir: Path, step: int, wall_time: float, device: torch.device) -> Path:
    """Write the EMA weights as ``models/<cfg.export>.safetensors`` (fp16) with its JSON and
    Markdown model cards. Book ch. 6, sec. "The shipped models". Returns the weights path."""
    models_dir = resolve_models_dir(cfg.models_dir)
    path = models_dir / f"{cfg.export}.safetensors"
    losses = [r["loss"] for r in read_log(run_dir / "loss.jsonl")]
    kind = f"class-conditional (CFG, null label {cfg.model.num_classes})" if cfg.conditional \
        else "unconditional"
    card = {
        "description": f"A {kind} eps-prediction U-Net for {cfg.data} "
                       f"{cfg.model.image_size}x{cfg.model.image_size}, trained with sfs."
        if cfg.target == "eps" else f"A {kind} {cfg.target}-prediction U-Net for {cfg.data}.",
        "architecture": "sfs.unet.UNet", "params": count_params(ema),
        "target": cfg.target, "weighting": cfg.weighting, "schedule": cfg.schedule, "T": cfg.T,
        "data": cfg.data, "data_sha256": data_sha256(dataset), "data_size": len(dataset),
        "conditional": cfg.conditional, "label_dropout": cfg.label_dropout if cfg.conditional else None,
        "steps": step, "batch_size": cfg.batch_size, "lr": cfg.lr, "lr_decay": cfg.lr_decay,
        "warmup_steps": cfg.warmup_steps, "ema_decay": cfg.ema_decay, "grad_clip": cfg.grad_clip,
        "bf16": cfg.bf16, "cpu_settings": cfg.cpu_settings, "seed": cfg.seed,
        "final_loss": round(sum(losses[-100:]) / max(1, len(losses[-100:])), 5),
        "wall_time_s": round(wall_time, 1), "machine": machine_name(device),
        "torch": torch.__version__, "command": cfg.command or f"sfs.train.train({cfg!r})",
        "git_commit": git_commit(),
        "sampler": f"DDIM, {cfg.sample_steps} steps from t = T (linspace), eta 0, x0_hat clipped to [-1, 1]"
                   + (f", CFG scale {cfg.guidance_scale}" if cfg.conditional else ""),
    }
    ema_cpu = copy.deepcopy(ema).float().to("cpu", memory_format=torch.contiguous_format)
    card = save_checkpoint(path, ema_cpu, cfg.model, card)
    samples = sample_grid(ema, schedule, cfg, cfg.model.num_classes)
    write_model_card_md(path.with_suffix(".md"), card, samples.cpu(), losses,
                        nrow=cfg.model.num_classes)
    return path

"""Training the tiny Stable Diffusion: ``python -m sfs train-text2image ...``.

Book eq. (12.5). The text encoder and the U-Net are trained together from scratch (as Rombach et
al. 2022, sec. 4.3, did for their text-to-image LDM) on the latents of captioned canvases, with the
simple loss of book eq. (3.7) in latent space:

    z0     = Autoencoder.encode(canvas)          (the posterior mean times the scale factor; cached)
    ids    = Tokenizer.encode(caption), replaced by the empty prompt with probability prompt_dropout
    z_t    = sqrt(alpha_bar_t) z0 + sqrt(1 - alpha_bar_t) eps
    loss   = w_t || eps - model(z_t, t, ids) ||^2

with w_t = 1 by default; ``weighting="snr+1"`` clamped at ``max_weight`` (Book eq. (12.6)) gives
the x0 error the v loss's weight 1 + SNR instead of SNR (book eq. (4.6)): where a prompt's layout is
decided, at high noise, the eps loss barely looks
(Book ch. 12, sec. "Where: the clause that needed another loss").

The loop, its checkpoints and resume are ``sfs.loop``'s, the same as every other model's.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from sfs import cpu_probe, distributed, loop, text2image
from sfs.canvas import make_canvases
from sfs.checkpoints import load_model, resolve_models_dir, save_checkpoint, write_model_card_md
from sfs.forward import q_sample
from sfs.losses import simple_loss
from sfs.schedules import cosine_schedule
from sfs.text2image import TextToImage, TextToImageConfig, generate

SAMPLE_PROMPTS = ["a red 3 left of a blue 7", "a blue 3 left of a red 7", "two green sneakers",
                  "a small yellow 5 at the top", "a white dress above an orange 1",
                  "a large magenta bag on the right", "a cyan 8 below a green 2", "two red boots"]


@dataclass
class TextToImageTrainConfig:
    """Everything a text-to-image run depends on; the loop fields mean what they do in TrainConfig."""

    model: TextToImageConfig = field(default_factory=TextToImageConfig)
    autoencoder: str = "canvas-autoencoder"  # the shipped autoencoder whose latent space we use
    init: str | None = None  # start from a text2image checkpoint's weights (name or path): a new run
    data_dir: str | None = None
    n_canvases: int = 60000  # training canvases (combos "seen")
    canvas_seed: int = 0
    prompt_dropout: float = 0.1  # probability of training on the empty prompt (for CFG)
    T: int = text2image.T  # cosine schedule; generate() samples with the same
    weighting: str | None = None  # None: the eps loss of eq. (3.7); "snr+1": sfs.losses.snr_weight
    max_weight: float | None = None  # clamp of the per-example weight w_t
    steps: int = 20000
    minutes: float | None = None
    batch_size: int = 64
    lr: float = 5e-4
    warmup_steps: int = 500
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
    out: str = "runs/text2image"
    ckpt_every: int = 500
    sample_every: int = 2000
    log_every: int = 50
    guidance_scale: float = 3.0  # of the sample grids
    export: str | None = None
    models_dir: str | None = None
    command: str | None = None

    def to_dict(self) -> dict:
        """JSON-able dict."""
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d


@torch.no_grad()
def encode_canvases(autoencoder: nn.Module, images_u8: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Scaled posterior means of uint8 canvases (N, 3, H, W): (N, 4, h, w) float32."""
    out = []
    for i in range(0, len(images_u8), batch_size):
        out.append(autoencoder.encode(images_u8[i:i + batch_size].float() / 127.5 - 1.0))
    return torch.cat(out)


def cached_latents(cfg: TextToImageTrainConfig, autoencoder: nn.Module, ae_card: dict,
                   canvases) -> torch.Tensor:
    """The training latents, from ``out/latents-<key>.safetensors`` when an earlier start made them.

    The key holds the autoencoder's sha256 and a sha256 of the canvases themselves (images and
    captions), so a cache made from other canvases (another data source, seed or count) is never
    paired with these captions."""
    import hashlib
    from safetensors.torch import load_file, save_file
    digest = hashlib.sha256(canvases.images.contiguous().numpy().tobytes())
    digest.update("\n".join(canvases.captions).encode())
    key = f"{ae_card['file_sha256'][:12]}-{len(canvases.captions)}-{digest.hexdigest()[:12]}"
    path = Path(cfg.out) / f"latents-{key}.safetensors"
    if path.is_file():
        return load_file(str(path))["z0"]
    z0 = encode_canvases(autoencoder, canvases.images)
    if distributed.is_main():  # under torchrun every rank encodes; rank 0 writes the cache
        path.parent.mkdir(parents=True, exist_ok=True)
        from sfs.checkpoints import atomic_write
        atomic_write(path, lambda tmp: save_file({"z0": z0.contiguous()}, tmp))
    return z0


def init_from(model: TextToImage, start: TextToImage, name: str = "init") -> None:
    """Copy ``start``'s weights into ``model`` (a run's ``--init``); ValueError unless they fit.

    The two configs must be equal, except that ``model`` may add cross-attention's position
    embeddings (``cross_attn_pos``, book eq. (11.6)): they start at zero, so the model begins as
    the same function as ``start`` and learns to use them. The weights were stored in fp16; they
    are trained on in float32."""
    mine, theirs = model.config.to_dict(), start.config.to_dict()
    if mine["unet"]["cross_attn_pos"]:  # start may have had them or not
        theirs["unet"]["cross_attn_pos"] = True
    if mine != theirs:
        raise ValueError(f"init={name!r} is a model of another architecture or vocabulary than this "
                         "run's: give the run its config (e.g. --base-channels)")
    missing, unexpected = model.load_state_dict(start.state_dict(), strict=False)
    if unexpected or any(not k.endswith(".pos") for k in missing):  # only the new embeddings
        raise ValueError(f"init={name!r}: weights do not fit (missing {missing}, unexpected {unexpected})")
    for k in missing:
        assert not model.get_parameter(k).any(), k  # zero at start: the same function as start


def train_text2image(cfg: TextToImageTrainConfig, canvases=None, progress: bool = True) -> TextToImage:
    """Train (or resume) the text-to-image model; return the EMA model (eval mode).
    ``canvases`` overrides the generated training set (tests). Book eq. (12.5), ch. 12 sec. "How it was trained"."""
    if not (isinstance(cfg.prompt_dropout, (int, float)) and 0 <= cfg.prompt_dropout <= 1):
        raise ValueError(f"prompt_dropout must be in [0, 1], got {cfg.prompt_dropout!r}")
    from sfs.validate import check_choice, check_float
    check_choice("weighting", cfg.weighting, (None, "min_snr", "snr+1"))
    if cfg.max_weight is not None:
        check_float("max_weight", cfg.max_weight, low=0, low_open=True)
    device = loop.resolve_device(cfg.device)
    ae, ae_card = load_model(cfg.autoencoder, kind="autoencoder")  # a name in models/ or a path
    if canvases is None:
        canvases = make_canvases(cfg.n_canvases, "train", cfg.canvas_seed, "seen",
                                 ae.config.image_size, cfg.data_dir)
    z0_all = cached_latents(cfg, ae, ae_card, canvases).to(device)  # (N, 4, h, w)
    torch.manual_seed(cfg.seed)
    model = TextToImage(cfg.model).to(device)
    init_card = None
    if cfg.init:  # continue a shipped model: its weights (and so the EMA's), a fresh optimizer
        start, init_card = load_model(cfg.init, kind="text2image")
        init_from(model, start, cfg.init)
    ids_all = model.tokenizer.encode(canvases.captions).to(device)  # (N, L)
    null = model.null_cond(1, device)  # (1, L)
    schedule = cosine_schedule(cfg.T).to(device)
    generator = torch.Generator(device).manual_seed(cfg.seed)
    run_dir = Path(cfg.out)

    def loss_fn(forward, idx, generator):
        idx = idx.to(device)
        z0, ids = z0_all[idx], ids_all[idx]
        B = z0.shape[0]
        t = torch.randint(0, schedule.T, (B,), generator=generator, device=device)
        eps = torch.randn(z0.shape, generator=generator, device=device)
        drop = torch.rand(B, generator=generator, device=device) < cfg.prompt_dropout
        ids = torch.where(drop[:, None], null, ids)
        # all of the global batch was drawn above; under torchrun each rank keeps its rows
        z0, t, eps, ids = distributed.shard(z0, t, eps, ids)
        out = forward(q_sample(schedule, z0, t, eps), t, ids)
        return simple_loss(out.float(), z0, eps, t, schedule, weighting=cfg.weighting,
                           max_weight=cfg.max_weight), None

    def on_sample(step, ema):
        # an EMA snapshot per sample grid: prompt accuracy against training steps (issue 12, sec. 5)
        meta = {"steps": step, "command": cfg.command}
        if init_card is not None:  # a continued run: the steps of the whole lineage too
            meta["steps_total"] = lineage_steps(init_card) + step
        save_checkpoint(run_dir / "snapshots" / f"ema-{step:07d}.safetensors", ema, ema.config, meta)
        from sfs.train import save_grid
        imgs = generate(SAMPLE_PROMPTS, ema, ae.to(device), cfg.guidance_scale, 20, cfg.seed, 4)
        save_grid(imgs, run_dir / "samples" / f"step-{step:07d}.png", nrow=8)

    ema, step, wall_time = loop.run(cfg, model, loss_fn, len(z0_all), device, generator,
                                    desc="train text2image", progress=progress, on_sample=on_sample)
    ema = ema.cpu().float()
    if cfg.export and distributed.is_main():
        export(cfg, ema, ae, ae_card, canvases, run_dir, step, wall_time, device, init_card)
    return ema


def lineage_runs(card: dict) -> list[dict]:
    """The runs behind a text2image checkpoint, first run first, each {"command", "machine",
    "steps", "wall_time_s"} of that run alone and "file_sha256", the checkpoint it ended with (None
    where a card did not record it). A card's ``init`` holds the checkpoint it started from with the
    totals up to it ("steps", "wall_time_s") and, nested, that one's ``init``."""
    chain = [card]
    while chain[-1].get("init"):
        chain.append(chain[-1]["init"])
    steps = [lineage_steps(card)] + [c["steps"] for c in chain[1:]] + [0]  # totals up to each run
    walls = [card.get("wall_time_s_total") or card["wall_time_s"]] + [c["wall_time_s"] or 0 for c in chain[1:]] + [0]
    return [{"command": c.get("command"), "machine": c.get("machine"), "steps": steps[k] - steps[k + 1],
             "wall_time_s": round(walls[k] - walls[k + 1], 1), "file_sha256": c.get("file_sha256")}
            for k, c in enumerate(chain)][::-1]


def lineage_steps(card: dict) -> int:
    """The training steps behind a text2image checkpoint: its own run's, plus those of the run it
    started from (``--init``), and so on back."""
    return card.get("steps_total") or card["steps"]


def export(cfg, ema: TextToImage, ae: nn.Module, ae_card: dict, canvases, run_dir: Path,
           step: int, wall_time: float, device: torch.device, init_card: dict | None = None) -> Path:
    """Write ``models/<cfg.export>.safetensors`` (fp16) with its JSON and Markdown model cards.
    ``init_card``: the card of the checkpoint the run started from (``cfg.init``), if any."""
    if "/" in cfg.export or "\\" in cfg.export or cfg.export in ("", ".", ".."):
        raise ValueError(f"export must be a plain file name, got {cfg.export!r}")
    path = resolve_models_dir(cfg.models_dir) / f"{cfg.export}.safetensors"
    rows = loop.read_log(run_dir / "loss.jsonl")
    losses = [r["loss"] for r in rows]
    card = {
        "description": "A text-to-image latent diffusion model for captioned canvases: a text "
                       "encoder and a cross-attention U-Net trained together from scratch with sfs "
                       "(book ch. 12).",
        "architecture": "sfs.text2image.TextToImage", "params": sum(p.numel() for p in ema.parameters()),
        "autoencoder": cfg.autoencoder, "autoencoder_sha256": ae_card["file_sha256"],
        "target": "eps", "weighting": cfg.weighting, "max_weight": cfg.max_weight,
        "schedule": "cosine", "T": cfg.T, "prompt_dropout": cfg.prompt_dropout,
        "data": "canvases (sfs.canvas.make_canvases, train split, combos 'seen')",
        "data_dir": canvases.meta.get("images_from", "given canvases"),
        "n_canvases": len(canvases), "canvas_seed": cfg.canvas_seed, "steps": step,
        "batch_size": cfg.batch_size, "lr": cfg.lr, "lr_decay": cfg.lr_decay, "ema_decay": cfg.ema_decay, "seed": cfg.seed,
        "final_loss": round(sum(losses[-100:]) / max(1, len(losses[-100:])), 5),
        "wall_time_s": round(wall_time, 1), "machine": loop.machine_name(device),
        "torch": torch.__version__, "bf16": cfg.bf16, "cpu_settings": cfg.cpu_settings,
        "command": cfg.command or "train_text2image(...)",
        "git_commit": loop.git_commit(),
        "sampler": f"DPM-Solver++(2M), 20 steps, CFG scale {cfg.guidance_scale}",
        "sample_prompts": SAMPLE_PROMPTS,
    }
    if init_card is not None:  # this run continued another: the steps and time of both
        card["init"] = {"model": cfg.init, "file_sha256": init_card["file_sha256"],
                        "steps": lineage_steps(init_card), "command": init_card.get("command"),
                        "machine": init_card.get("machine"),
                        "wall_time_s": init_card.get("wall_time_s_total", init_card.get("wall_time_s")),
                        "init": init_card.get("init")}  # and what that run started from, and so on back
        card["steps_total"] = card["init"]["steps"] + step
        card["wall_time_s_total"] = round((card["init"]["wall_time_s"] or 0) + wall_time, 1)
    card = save_checkpoint(path, ema, ema.config, card)
    imgs = generate(SAMPLE_PROMPTS, ema, ae, cfg.guidance_scale, 20, cfg.seed, 4)
    table = [("architecture", f"sfs.text2image.TextToImage, {card['params']:,} parameters"),
             ("latent space", f"{cfg.autoencoder} (sha256 {ae_card['file_sha256'][:12]}...)"),
             ("data", f"{len(canvases)} training canvases, seed {cfg.canvas_seed}, {card['data_dir']}"),
             ("training", f"{step} steps, batch {cfg.batch_size}, lr {cfg.lr}, EMA {cfg.ema_decay}, "
                          f"prompt dropout {cfg.prompt_dropout}, loss weighting "
                          f"{cfg.weighting or 'none (the eps loss)'}"
                          + (f" clamped at {cfg.max_weight}" if cfg.max_weight else "")),
             ("final loss (mean of last 100 steps)", card["final_loss"]),
             ("wall time", f"{wall_time:.0f} s on {card['machine']}")]
    if init_card is not None:  # the lineage: what this run started from, and the totals
        i, label = card["init"], "started from"
        while i is not None:
            table.append((label, f"{i['model']} (sha256 {i['file_sha256'][:12]}...): {i['steps']} steps "
                                 f"in {i['wall_time_s']:.0f} s on {i['machine']}, trained with `{i['command']}`"))
            i, label = i.get("init"), "which started from"
        table.append(("in all", f"{card['steps_total']} steps in {card['wall_time_s_total']:.0f} s"))
    table += [("code version", card["git_commit"]),
              ("weights", f"{card['file']} ({card['dtype']}), sha256 {card['file_sha256']}")]
    prompts = "; ".join(f"row {i + 1}: {p}" for i, p in enumerate(SAMPLE_PROMPTS))
    write_model_card_md(path.with_suffix(".md"), card, imgs, losses, nrow=4, rows=table,
                        samples_title=f"Samples, 4 per prompt ({card['sampler']}). {prompts}")
    return path


def add_args(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m sfs train-text2image``."""
    from sfs.validate import (fraction, fraction_below_one, nonnegative_float, nonnegative_int,
                              plain_name, positive_float, positive_int)
    d = TextToImageTrainConfig()
    p.add_argument("--autoencoder", default=d.autoencoder)
    p.add_argument("--data-dir", default=d.data_dir)
    p.add_argument("--init", default=None, metavar="MODEL",
                   help="start from this text2image model's weights (a name in models/ or a path)")
    types = {"n_canvases": positive_int, "canvas_seed": nonnegative_int, "steps": positive_int,
             "batch_size": positive_int, "warmup_steps": nonnegative_int, "seed": nonnegative_int,
             "ckpt_every": positive_int, "sample_every": nonnegative_int, "log_every": positive_int,
             "prompt_dropout": fraction, "lr": positive_float, "weight_decay": nonnegative_float,
             "grad_clip": positive_float, "ema_decay": fraction_below_one,
             "guidance_scale": nonnegative_float}
    for name, kind in types.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(d, name))
    p.add_argument("--base-channels", type=positive_int, default=d.model.unet.base_channels)
    p.add_argument("--cross-attn-pos", action="store_true",
                   help="give cross-attention's queries a learned position embedding (book eq. (11.6))")
    p.add_argument("--weighting", choices=["min_snr", "snr+1"], default=None,
                   help="loss weighting (default: none, the eps loss); snr+1: the v loss's weight "
                        "on the x0 error (sfs.losses.snr_weight)")
    p.add_argument("--max-weight", type=positive_float, default=None,
                   help="clamp the per-example loss weight at this value")
    p.add_argument("--lr-decay", choices=loop.LR_DECAYS, default=d.lr_decay,
                   help="after the warmup: constant, or cosine to 0 at --steps")
    p.add_argument("--minutes", type=positive_float, default=None)
    p.add_argument("--device", default=d.device)
    cpu_probe.add_args(p)  # --bf16, --threads, --no-probe
    p.add_argument("--out", default=d.out)
    p.add_argument("--export", type=plain_name, default=None, metavar="NAME")
    p.add_argument("--models-dir", default=None)
    p.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace, argv: list[str]) -> TextToImageTrainConfig:
    """The TextToImageTrainConfig that parsed ``train-text2image`` arguments describe."""
    model = TextToImageConfig()
    model.unet.base_channels = args.base_channels
    model.unet.cross_attn_pos = args.cross_attn_pos
    names = set(TextToImageTrainConfig.__dataclass_fields__) - {"model", "command", "compile", "T", "cpu_settings"}
    loop.check_lr_decay(args.lr_decay, args.steps, args.warmup_steps)
    return TextToImageTrainConfig(model=model, command="python -m sfs " + shlex.join(argv),
                                  **{k: getattr(args, k) for k in names})

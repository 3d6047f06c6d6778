"""Checkpoints: shipped models with model cards, and training states to resume from.

Book ch. 6, sec. "The training loop" and sec. "The shipped models". Everything is
stored as safetensors, never pickle: loading a checkpoint cannot run code.

A shipped model ``models/<name>`` is three files (plus two pictures), for every kind of model
(``KINDS``: the U-Net, the classifiers, the autoencoder):
- ``<name>.safetensors``: the weights (fp16 by default) and, in its metadata, the model's kind and
  config (one metadata key, so that identical weights give identical bytes);
- ``<name>.json``: the machine-readable model card (config, kind, data set and its checksum,
  steps, machine, command, git commit, the sha256 of the weights file);
- ``<name>.md``: the human card with a sample grid and the loss curve.
``load_model`` is the one loader of every kind. It refuses a file that is truncated, whose header
is not a safetensors header, whose sha256 differs from the card's, whose config disagrees with the
card's, whose kind is not the one asked for, or that has no card, and says which.

A training state ``state-<step>.safetensors`` holds model, EMA, optimizer tensors and RNG states;
its JSON sidecar ``state-<step>.json`` holds the scalars and the sha256 of the tensors. The
sidecar is written last, so it marks a complete checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

MODELS_ENV_VAR = "SFS_MODELS_DIR"
# The repository's models/ folder and, outside the repository (sfs installed with pip), the
# download cache: sfs.model_cache, which holds the order in which a name is looked up.


class CheckpointError(ValueError):
    """A checkpoint file that cannot be trusted: missing card, truncated, sha256 or config mismatch."""


# ----------------------------------------------------------------------------------------------
# Small helpers: atomic writes and checksums.

def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)``, fsync, then rename over ``path``: readers see the old or new file.

    The temporary file lives in the same folder, so ``os.replace`` is an atomic rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        os.fsync(dir_fd)
        os.close(dir_fd)
    except OSError:
        pass


def write_json(path: str | Path, obj: dict) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
    atomic_write(path, write)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_length(path: Path) -> None:
    """Raise CheckpointError('truncated') unless the file holds all the bytes its header promises."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is truncated: {size} bytes, not even a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:  # checked before reading: a flipped bit must not allocate gigabytes
            raise CheckpointError(f"{path} is truncated or not a safetensors file: its first 8 "
                                  f"bytes promise a header of {n} bytes, the file has {size}")
        raw = f.read(n)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                  default=0)
    except (ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not a safetensors file (unreadable header: {e})") from e
    if size < 8 + n + end:
        raise CheckpointError(f"{path} is truncated: its header promises {8 + n + end} bytes, "
                              f"the file has {size}")


# ----------------------------------------------------------------------------------------------
# Shipped models.

def resolve_models_dir(models_dir: str | Path | None = None) -> Path:
    """``models_dir``, else $SFS_MODELS_DIR, else the repository's models/ folder when sfs runs
    from a checkout, else the download cache (``sfs.model_cache``: $SFS_CACHE_DIR, default
    ~/.cache/sfs/models). Where names are looked up, and where ``--export`` writes."""
    from sfs.model_cache import models_dir_for
    return models_dir_for(models_dir)[0]


def _kinds() -> dict:
    """kind -> (config class, model builder). Imported here, not at the top: the model modules
    import nothing from this one, and this one should not import every model to save one."""
    from sfs.autoencoder import Autoencoder, AutoencoderConfig
    from sfs.classifier import Classifier, ClassifierConfig, NoisyClassifier
    from sfs.text2image import TextToImage, TextToImageConfig
    from sfs.unet import UNet, UNetConfig
    return {"unet": (UNetConfig, UNet), "text2image": (TextToImageConfig, TextToImage),
            "classifier": (ClassifierConfig,
                           lambda c: NoisyClassifier(c) if c.noisy else Classifier(c)),
            "autoencoder": (AutoencoderConfig, Autoencoder)}


KINDS = ("unet", "classifier", "autoencoder", "text2image")


def kind_of(model: nn.Module) -> str:
    """The checkpoint kind of a model: "unet", "classifier", "autoencoder" or "text2image"."""
    for kind, (config_cls, _) in _kinds().items():
        if isinstance(getattr(model, "config", None), config_cls):
            return kind
    raise TypeError(f"cannot save a {type(model).__name__}: a checkpoint holds one of {KINDS} "
                    f"(a module with a .config of its kind)")


def _config_dict(config) -> dict:
    from dataclasses import asdict
    return config.to_dict() if hasattr(config, "to_dict") else asdict(config)


def save_checkpoint(path: str | Path, model: nn.Module, config=None, card: dict | None = None,
                    dtype: torch.dtype = torch.float16) -> dict:
    """Write ``model``'s weights (cast to ``dtype``) to ``path`` and its card to ``path.json``.

    Any kind of model (``KINDS``); ``config`` defaults to ``model.config``. The kind and config go
    into the safetensors metadata and into the card; the card gets the file's sha256 and size.
    Both writes are atomic, and the same weights always give the same bytes.
    Book ch. 6, sec. "The shipped models". Returns the card as written.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    kind = kind_of(model)
    config_d = _config_dict(config if config is not None else model.config)
    tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
               for k, v in model.state_dict().items()}
    meta = {"sfs": json.dumps({"kind": kind, "config": config_d}, sort_keys=True)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    card = dict(card or {})
    card.update(name=path.stem, kind=kind, config=config_d,
                dtype=str(dtype).removeprefix("torch."), file=path.name,
                file_sha256=sha256_file(path), file_bytes=path.stat().st_size)
    write_json(path.with_suffix(".json"), card)
    return card


def _resolve_model_path(name_or_path: str | Path, models_dir: str | Path | None,
                        fetch: bool = False) -> Path:
    """The weights' path of a name or a path. ``fetch``: a name that resolves to the download
    cache (sfs outside its repository) and is not there yet is downloaded first."""
    if not isinstance(name_or_path, (str, Path)) or not str(name_or_path):
        raise TypeError(f"name_or_path must be a model name or a path, got {name_or_path!r}")
    p = Path(name_or_path)
    if p.suffix == ".safetensors" or p.exists() or os.sep in str(name_or_path):
        return p if p.suffix == ".safetensors" else p.with_name(p.name + ".safetensors")
    from sfs.model_cache import fetch_model, models_dir_for
    folder, is_cache = models_dir_for(models_dir)
    if fetch and is_cache:
        return fetch_model(str(name_or_path), folder)
    return folder / f"{name_or_path}.safetensors"


def read_card(name_or_path: str | Path, models_dir: str | Path | None = None) -> dict:
    """The JSON model card of a shipped model (by name in models/, or by path). Outside the
    repository a name is downloaded into the cache first, as by ``load_model``."""
    path = _resolve_model_path(name_or_path, models_dir, fetch=True)
    card_path = path.with_suffix(".json")
    if not card_path.is_file():
        raise CheckpointError(f"missing card: {card_path} not found for {path}; a model is "
                              f"loaded only with its card, which holds its sha256 and config")
    try:
        card = json.loads(card_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{card_path} is not a JSON model card: {e}") from e
    if not isinstance(card, dict):
        raise CheckpointError(f"{card_path} is not a model card: it holds a JSON "
                              f"{type(card).__name__}, not an object")
    return card


def _stored_meta(path: Path) -> tuple[str, dict]:
    """(kind, config) from a file's safetensors metadata (also the older two-key form)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # the safetensors library's own errors have no common base class
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
    try:
        if "sfs" in meta:
            stored = json.loads(meta["sfs"])
            kind, config = stored["kind"], stored["config"]
        else:  # files written before the kinds were unified: {"format": "sfs-unet", "config": ...}
            kind, config = meta["format"].removeprefix("sfs-"), json.loads(meta["config"])
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"config mismatch: {path} stores no readable kind and config in "
                              f"its metadata ({e!r})") from e
    if kind not in KINDS or not isinstance(config, dict):
        raise CheckpointError(f"{path} holds a model of kind {kind!r}; sfs loads {KINDS}")
    return kind, config


def verify_checkpoint(path: str | Path, card: dict, kind: str | None = None):
    """Check a weights file against its card; return (kind, config object). Raises
    CheckpointError naming the problem: truncated, not safetensors, sha256 mismatch, config
    mismatch, or a kind other than ``kind``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found")
    _check_length(path)
    size = path.stat().st_size
    if "file_bytes" in card and size != card["file_bytes"]:
        what = "truncated" if isinstance(card["file_bytes"], int) and size < card["file_bytes"] \
            else "size mismatch"
        raise CheckpointError(f"{path} is {what}: {size} bytes, the card says {card['file_bytes']}")
    if not isinstance(card.get("file_sha256"), str):
        raise CheckpointError(f"the card of {path} holds no file_sha256, so the file cannot be "
                              f"verified")
    digest = sha256_file(path)
    if digest != card["file_sha256"]:
        raise CheckpointError(f"sha256 mismatch for {path}: file has {digest}, card says "
                              f"{card['file_sha256']}; the file is corrupted or not the one "
                              f"the card describes")
    stored_kind, stored = _stored_meta(path)
    if kind is not None and stored_kind != kind:
        raise CheckpointError(f"{path} holds a {stored_kind}, not a {kind}: load it with "
                              f"load_model({path.stem!r}) and use it as a {stored_kind}")
    card_config = card.get("config")
    if stored != card_config:
        card_config = card_config if isinstance(card_config, dict) else {}
        diff = {k: (stored.get(k), card_config.get(k)) for k in set(stored) | set(card_config)
                if stored.get(k) != card_config.get(k)}
        raise CheckpointError(f"config mismatch between {path} and its card "
                              f"(file, card): {diff}")
    config_cls, _ = _kinds()[stored_kind]
    try:
        return stored_kind, config_cls(**stored)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} stores a config that sfs cannot build: {e}") from e


def load_model(name_or_path: str | Path, models_dir: str | Path | None = None,
               device: str | torch.device = "cpu", kind: str | None = None
               ) -> tuple[nn.Module, dict]:
    """Load a shipped model of any kind and its card: ``model, card = load_model("mnist-uncond")``.

    ``name_or_path``: a name in ``models_dir`` (default $SFS_MODELS_DIR, else the repo's
    models/, else, for sfs installed with pip, the cache ~/.cache/sfs/models, which downloads a
    shipped model on first use: ``sfs.model_cache``), or a path to a ``.safetensors`` file with
    its ``.json`` card beside it. ``kind``
    ("unet", "classifier", "autoencoder", "text2image"), when given, must be what the file holds.
    The weights are verified against the card first; the model comes back in fp32, eval mode.
    Book ch. 6, sec. "The shipped models".
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be None or one of {KINDS}, got {kind!r}")
    path = _resolve_model_path(name_or_path, models_dir, fetch=True)
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.safetensors"))
        raise FileNotFoundError(f"no model {path}; models in {path.parent}: {known}")
    card = read_card(path)
    stored_kind, config = verify_checkpoint(path, card, kind)
    model = _kinds()[stored_kind][1](config)
    state = load_file(str(path))
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in state.items()})
    except RuntimeError as e:
        raise CheckpointError(f"{path}: its tensors do not fit its config: {e}") from e
    return model.to(device).eval(), card


# ----------------------------------------------------------------------------------------------
# Training states (resume).

def _flatten_optimizer(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and the JSON-able rest."""
    tensors, scalars = {}, {"param_groups": opt_state["param_groups"], "state": {}}
    for idx, entry in opt_state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars["state"].setdefault(str(idx), {})[key] = value
    return tensors, scalars


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], scalars: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, entry in scalars["state"].items():
        state.setdefault(int(idx), {}).update(entry)
    groups = [{**g, **({"betas": tuple(g["betas"])} if "betas" in g else {})}
              for g in scalars["param_groups"]]  # JSON turned the tuple into a list
    return {"state": state, "param_groups": groups}


def save_training_state(run_dir: str | Path, step: int, model: nn.Module, ema: nn.Module,
                        optimizer: torch.optim.Optimizer, generator: torch.Generator,
                        extra: dict | None = None, keep: int = 2) -> Path:
    """Write ``state-<step>.safetensors`` and its JSON sidecar into ``run_dir``; keep the last
    ``keep`` states. Saves model, EMA, optimizer, the torch CPU (and CUDA) RNG and ``generator``.

    Book ch. 6, sec. "Checkpoints and resuming". Returns the sidecar path.
    """
    run_dir = Path(run_dir)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    opt_tensors, opt_scalars = _flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    tensors["rng.torch_cpu"] = torch.get_rng_state()
    tensors["rng.generator"] = generator.get_state().cpu()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s.cpu()
    tensor_path = run_dir / f"state-{step:07d}.safetensors"
    atomic_write(tensor_path, lambda tmp: save_file(tensors, tmp))
    sidecar = {"step": step, "optimizer": opt_scalars, "generator_device": str(generator.device),
               "tensors": tensor_path.name, "tensors_sha256": sha256_file(tensor_path),
               **(extra or {})}
    json_path = tensor_path.with_suffix(".json")
    write_json(json_path, sidecar)  # written last: its presence marks a complete state
    for old in sorted(run_dir.glob("state-*.json"))[:-keep]:
        old.with_suffix(".safetensors").unlink(missing_ok=True)
        old.unlink(missing_ok=True)
    return json_path


def latest_training_state(run_dir: str | Path) -> Path | None:
    """The newest complete training state (its sidecar path) in ``run_dir``, or None.

    A state whose tensors are missing or fail their sha256 (a crash mid-write) is skipped.
    """
    for json_path in sorted(Path(run_dir).glob("state-*.json"), reverse=True):
        try:
            sidecar = json.loads(json_path.read_text())
            tensor_path = json_path.with_name(sidecar["tensors"])
            if tensor_path.is_file() and sha256_file(tensor_path) == sidecar["tensors_sha256"]:
                return json_path
        except (ValueError, KeyError, OSError):
            continue
    return None


def load_training_state(json_path: str | Path, model: nn.Module, ema: nn.Module,
                        optimizer: torch.optim.Optimizer, generator: torch.Generator) -> dict:
    """Restore what ``save_training_state`` wrote, in place; return the sidecar (step, extras).

    Book ch. 6, sec. "Checkpoints and resuming".
    """
    json_path = Path(json_path)
    try:
        sidecar = json.loads(json_path.read_text())
        tensor_path = json_path.with_name(sidecar["tensors"])
        expected = sidecar["tensors_sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{json_path} is not a training-state sidecar: {e!r}") from e
    if not tensor_path.is_file() or sha256_file(tensor_path) != expected:
        raise CheckpointError(f"{tensor_path} is missing or fails the sha256 in {json_path}")
    # clone: load_file maps the file, and the optimizer would keep views into it (a later
    # in-place change to the file would then change, or crash, the running process)
    tensors = {k: v.clone() for k, v in load_file(str(tensor_path)).items()}
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    optimizer.load_state_dict(_unflatten_optimizer(tensors, sidecar["optimizer"]))
    torch.set_rng_state(tensors["rng.torch_cpu"])
    generator.set_state(tensors["rng.generator"])
    cuda_states = [tensors[f"rng.cuda.{i}"] for i in range(len(tensors))
                   if f"rng.cuda.{i}" in tensors]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    return sidecar


# ----------------------------------------------------------------------------------------------
# The human model card.

def write_model_card_md(md_path: str | Path, card: dict, samples: torch.Tensor,
                        losses: list[float], nrow: int | None = None,
                        rows: list[tuple[str, object]] | None = None,
                        samples_title: str | None = None) -> Path:
    """Write the human model card ``<name>.md`` with ``<name>-samples.png`` and ``<name>-loss.png``.

    samples: (N, 1 or 3, H, W) in [-1, 1], drawn from the model (e.g. 64 for an 8x8 grid);
    losses: the training loss per step; nrow: images per grid row (default about sqrt(N));
    rows: the (field, value) rows of the card's table (default: a diffusion U-Net's);
    samples_title: the heading of the grid (default: the card's sampler).
    Book ch. 6, sec. "The shipped models".
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    md_path = Path(md_path)
    stem = md_path.stem
    grid_png, loss_png = md_path.with_name(f"{stem}-samples.png"), md_path.with_name(f"{stem}-loss.png")
    nrow = nrow or max(1, int(len(samples) ** 0.5))
    grid = make_grid((samples.float().clamp(-1, 1) + 1) / 2, nrow=nrow, padding=2, pad_value=1.0)
    if grid.shape[0] == 3 and samples.shape[1] == 3:
        plt.imsave(grid_png, grid.permute(1, 2, 0).clamp(0, 1).cpu().numpy())
    else:
        plt.imsave(grid_png, grid[0].cpu().numpy(), cmap="gray", vmin=0, vmax=1)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = torch.arange(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.5, alpha=0.4, label="loss per step")
    if losses:
        smooth, avg = [], losses[0]
        for v in losses:
            avg = 0.98 * avg + 0.02 * v
            smooth.append(avg)
        ax.plot(steps, smooth, lw=1.5, label="moving average (0.98)")
    ax.set(xlabel="step", ylabel="loss", yscale="log", title=f"{stem}: training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(loss_png, dpi=100)
    plt.close(fig)

    cfg = card.get("config", {})
    probed = card.get("cpu_settings")  # from sfs.cpu_probe, when a CPU run chose by timing
    cpu_row = [("CPU settings", f"{'bf16' if probed['bf16'] else 'fp32'}, {probed['threads']} "
                "thread(s), chosen by timing images/s at start-up: "
                + ", ".join(f"{k} {v}" for k, v in probed["probe_img_s"].items()))] if probed else []
    rows = rows or [("architecture", f"sfs.unet.UNet, {card.get('params', '?'):,} parameters"
             if isinstance(card.get("params"), int) else "sfs.unet.UNet"),
            ("config", ", ".join(f"{k}={v}" for k, v in cfg.items())),
            ("prediction target", card.get("target")),
            ("schedule", f"{card.get('schedule')}, T={card.get('T')}"),
            ("data", f"{card.get('data')} train split, sha256 {card.get('data_sha256')}"),
            ("training", f"{card.get('steps')} steps, batch {card.get('batch_size')}, "
                         f"lr {card.get('lr')}, EMA {card.get('ema_decay')}"),
            ("final loss (mean of last 100 steps)", card.get("final_loss")),
            ("wall time", f"{card.get('wall_time_s', 0):.0f} s on {card.get('machine')}"), *cpu_row,
            ("code version", card.get("git_commit")),
            ("weights", f"{card.get('file')} ({card.get('dtype')}), sha256 {card.get('file_sha256')}")]
    lines = [f"# Model card: {stem}", "",
             card.get("description", "A denoising U-Net trained with sfs."), "",
             "| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "Trained with:", "", "```bash", card.get("command", "?"), "```", "",
              "Load it with:", "", "```python", "from sfs.checkpoints import load_model",
              f'model, card = load_model("{stem}")', "```", "",
              f"## {samples_title or 'Samples (' + str(card.get('sampler', 'DDIM')) + ')'}", "", f"![samples]({grid_png.name})", "",
              "## Loss curve", "", f"![loss]({loss_png.name})", ""]
    md_path.write_text("\n".join(lines))
    return md_path

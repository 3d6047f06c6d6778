"""Small CNN classifiers for 28x28 images: a feature extractor for metrics and a noise-aware one.

Book ch. 8 ("Guidance") and ch. 9 ("Evaluation"). Two models, one file:

- ``Classifier``: clean images x0 (B, 1, 28, 28) in [-1, 1] -> logits (B, 10). Its penultimate layer,
  ``features(x)`` (B, 128), replaces the Inception network of FID for MNIST-like data
  (``sfs.metrics``), and its predictions score the class accuracy of conditional samples.
- ``NoisyClassifier``: noisy images x_t and timesteps t -> logits of p(y | x_t), trained on
  ``q_sample``'d images; its gradient drives classifier guidance (``sfs.guidance``;
  Dhariwal & Nichol 2021, sec. 4).

Training: ``train_classifier`` / ``train_noisy_classifier``; from the shell
``python -m sfs.classifier --data mnist --out models/mnist-classifier`` (``--noisy`` for the
noise-aware one). Weights are saved as safetensors (fp16 by default) with a JSON card holding the
file's sha256 and the accuracy measured on the full test set.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from sfs.embeddings import timestep_embedding
from sfs.forward import q_sample
from sfs.schedules import Schedule, cosine_schedule, linear_schedule
from sfs.validate import check_float


@dataclass
class ClassifierConfig:
    """Architecture of both classifiers (the noisy one adds a time embedding)."""

    in_channels: int = 1     # 1 for MNIST / Fashion-MNIST
    num_classes: int = 10
    width: int = 32          # channels of the first two convs; doubled after the first pooling
    feature_dim: int = 128   # D of ``features(x)``: the penultimate layer
    dropout: float = 0.3     # before the last linear layer (and 0.1 after each pooling)
    noisy: bool = False      # True: NoisyClassifier, which also takes t
    time_dim: int = 64       # sinusoidal embedding size of t (NoisyClassifier only)


def conv_block(in_ch: int, out_ch: int, norm: str) -> nn.Sequential:
    """3x3 conv -> BatchNorm (or GroupNorm) -> ReLU, keeping H, W."""
    n = nn.BatchNorm2d(out_ch) if norm == "batch" else nn.GroupNorm(8, out_ch)
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), n, nn.ReLU())


class Classifier(nn.Module):
    """Clean-image CNN: (B, 1, 28, 28) in [-1, 1] -> logits (B, num_classes).

    Two stages of [conv-bn-relu, conv-bn-relu, max-pool] (28 -> 14 -> 7), then a 128-unit hidden
    layer (``features``) and the class logits. ~0.47 M parameters at width 32, ~0.23 M at 16.
    """

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = c = config or ClassifierConfig()
        w = c.width
        self.stage1 = nn.Sequential(conv_block(c.in_channels, w, "batch"), conv_block(w, w, "batch"),
                                    nn.MaxPool2d(2), nn.Dropout(0.1))           # (B, w, 14, 14)
        self.stage2 = nn.Sequential(conv_block(w, 2 * w, "batch"), conv_block(2 * w, 2 * w, "batch"),
                                    nn.MaxPool2d(2), nn.Dropout(0.1))           # (B, 2w, 7, 7)
        self.hidden = nn.Linear(2 * w * 7 * 7, c.feature_dim)
        self.head = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(c.feature_dim, c.num_classes))
        self.num_features = c.feature_dim  # what torchmetrics reads from a custom feature module

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (B, feature_dim), after the ReLU: the metrics' feature space."""
        h = self.stage2(self.stage1(x))          # (B, 2w, 7, 7)
        return F.relu(self.hidden(h.flatten(1)))  # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class NoisyClassifier(nn.Module):
    """Noise-aware CNN for classifier guidance: (x_t (B, 1, 28, 28), t (B,)) -> logits (B, 10).

    The time embedding (``timestep_embedding``, book eq. (5.1)) is projected to
    a per-channel bias added after every conv block, as in the U-Net's residual blocks. GroupNorm
    (not BatchNorm), so that a batch's statistics do not mix noise levels.
    """

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = c = config or ClassifierConfig(noisy=True)
        w = c.width
        chans = [c.in_channels, w, w, 2 * w, 2 * w]
        self.blocks = nn.ModuleList(conv_block(chans[i], chans[i + 1], "group") for i in range(4))
        self.time_mlp = nn.Sequential(nn.Linear(c.time_dim, 4 * c.time_dim), nn.SiLU())
        self.time_proj = nn.ModuleList(nn.Linear(4 * c.time_dim, ch) for ch in chans[1:])
        self.hidden = nn.Linear(2 * w * 7 * 7, c.feature_dim)
        self.head = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(c.feature_dim, c.num_classes))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.config.time_dim))  # (B, 4 * time_dim)
        h = x_t
        for i, (block, proj) in enumerate(zip(self.blocks, self.time_proj)):
            h = block(h) + proj(emb)[:, :, None, None]  # (B, C, H, W) + (B, C, 1, 1)
            if i in (1, 3):
                h = F.max_pool2d(h, 2)                  # 28 -> 14 -> 7
        return self.head(F.relu(self.hidden(h.flatten(1))))


# ----------------------------------------------------------------------------------------------
# Training and evaluation.

@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000,
             schedule: Schedule | None = None, generator: torch.Generator | None = None) -> float:
    """Fraction of ``images`` (N, 1, 28, 28) whose argmax logit equals ``labels`` (N,).

    For a ``NoisyClassifier`` pass ``schedule``: each image is noised to a uniform random t first.
    """
    model.eval()
    correct = 0
    device = next(model.parameters()).device
    for i in range(0, len(images), batch_size):
        x, y = images[i:i + batch_size].to(device), labels[i:i + batch_size].to(device)
        if schedule is None:
            logits = model(x)
        else:
            x, y = images[i:i + batch_size], labels[i:i + batch_size].to(device)
            t = torch.randint(0, schedule.T, (len(x),), generator=generator)
            logits = model(q_sample(schedule, x, t, generator=generator).to(device), t.to(device))
        correct += (logits.argmax(1) == y).sum().item()
    return correct / len(images)


def random_blur(x: torch.Tensor, max_sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Each image of x (B, 1, H, W) blurred by a Gaussian of its own sigma, uniform in
    [0, max_sigma] pixels (sigma below 0.3 leaves the image as it is). A label-preserving
    augmentation: the decoder of an autoencoder, and a diffusion model's samples, draw softer
    strokes than the data, and an evaluator must still read them (book ch. 10)."""
    sigma = torch.rand(len(x), generator=generator) * max_sigma  # (B,)
    r = max(1, math.ceil(2 * max_sigma))
    u = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-u[None] ** 2 / (2 * sigma.clamp(min=0.3)[:, None] ** 2))  # (B, 2r+1)
    k = torch.where(sigma[:, None] < 0.3, (u == 0).to(x.dtype)[None], k)
    k = k / k.sum(1, keepdim=True)
    B, _, H, W = x.shape
    y = F.pad(x.reshape(1, B, H, W), (r, r, r, r), mode="replicate")
    y = F.conv2d(y, k[:, None, None, :], groups=B)   # along rows, then columns: separable
    y = F.conv2d(y, k[:, None, :, None], groups=B)
    return y.reshape(B, 1, H, W)


def _train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int,
           batch_size: int, lr: float, seed: int, schedule: Schedule | None, log_every: int,
           hflip: bool = False, device: str | torch.device = "cpu", blur: float = 0.0) -> int:
    """AdamW with a one-cycle learning rate over ``epochs``; noisy when ``schedule`` is given.

    Batches are drawn (and noised) on the CPU with a seeded generator, then moved to ``device``.
    ``hflip``: flip half of each batch left-right (a label-preserving augmentation for clothes).
    ``blur``: blur each image by a random Gaussian of sigma up to ``blur`` pixels (``random_blur``).
    """
    model.to(device)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(images) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    step, t0 = 0, time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(images), generator=g)
        for i in range(0, len(images), batch_size):
            idx = perm[i:i + batch_size]
            x, y = images[idx], labels[idx]
            if hflip:
                flip = torch.rand(len(x), generator=g) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            if blur > 0:
                x = random_blur(x, blur, g)
            if schedule is None:
                logits = model(x.to(device))
            else:
                t = torch.randint(0, schedule.T, (len(x),), generator=g)
                logits = model(q_sample(schedule, x, t, generator=g).to(device), t.to(device))
            y = y.to(device)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if log_every and step % log_every == 0:
                print(f"epoch {epoch} step {step}/{steps} loss {loss.item():.4f} "
                      f"({time.time() - t0:.0f} s)", flush=True)
    return step


def train_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int = 6,
                     batch_size: int = 128, lr: float = 3e-3, seed: int = 0,
                     config: ClassifierConfig | None = None, log_every: int = 100,
                     hflip: bool = False, device: str | torch.device = "cpu", blur: float = 0.0
                     ) -> tuple[Classifier, int]:
    """Train a ``Classifier`` on clean images (N, 1, 28, 28) in [-1, 1] with labels (N,).

    Plain cross-entropy, AdamW, one-cycle learning rate; no augmentation unless ``hflip`` or
    ``blur`` (the largest sigma of ``random_blur``, in pixels). Returns (model in eval mode,
    optimizer steps taken).
    """
    check_float("blur", blur, 0, 5)
    torch.manual_seed(seed)
    model = Classifier(config)
    steps = _train(model, images, labels, epochs, batch_size, lr, seed, None, log_every, hflip,
                   device, blur)
    return model.eval(), steps


def train_noisy_classifier(images: torch.Tensor, labels: torch.Tensor, schedule: Schedule,
                           epochs: int = 4, batch_size: int = 128, lr: float = 3e-3,
                           seed: int = 0, config: ClassifierConfig | None = None,
                           log_every: int = 100, hflip: bool = False,
                           device: str | torch.device = "cpu") -> tuple[NoisyClassifier, int]:
    """Train a ``NoisyClassifier`` on x_t = q_sample(schedule, x0, t), t uniform in [0, T).

    Dhariwal & Nichol 2021, sec. 4.1: the classifier must know p(y | x_t) at every noise level
    the sampler visits. Returns (model in eval mode, optimizer steps taken).
    """
    torch.manual_seed(seed)
    model = NoisyClassifier(config or ClassifierConfig(noisy=True))
    steps = _train(model, images, labels, epochs, batch_size, lr, seed, schedule, log_every, hflip, device)
    return model.eval(), steps


# ----------------------------------------------------------------------------------------------
# Saving and loading: the one checkpoint mechanism of sfs.checkpoints (safetensors + card + sha256).

def save_classifier(path: str | Path, model: nn.Module, card: dict,
                    dtype: torch.dtype = torch.float16) -> dict:
    """Write ``path`` (.safetensors, kind and config in its metadata) and ``path.json`` (the card):
    ``sfs.checkpoints.save_checkpoint`` for a classifier."""
    from sfs.checkpoints import save_checkpoint
    return save_checkpoint(path, model, None, card, dtype)


def load_classifier(name_or_path: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, dict]:
    """``sfs.checkpoints.load_model`` for a classifier: the same checks (card, size, sha256,
    config, $SFS_MODELS_DIR), and an error if the file holds another kind of model.

    Returns (Classifier or NoisyClassifier in fp32, eval mode; card dict).
    """
    from sfs.checkpoints import load_model
    return load_model(name_or_path, device=device, kind="classifier")


def main_train_classifier(argv: list[str] | None = None) -> dict:
    """Command line: train, measure full-test-set accuracy, save fp16 (fp32 if fp16 loses accuracy)."""
    from sfs.data import load_dataset

    ap = argparse.ArgumentParser(prog="python -m sfs.classifier", description=main_train_classifier.__doc__)
    ap.add_argument("--data", default="mnist", choices=["mnist", "fashion-mnist", "canvas-objects"],
                    help="canvas-objects: the 15 classes of objects found on single-object "
                         "canvases (sfs.canvas_eval.make_crop_dataset), for the canvas evaluator")
    ap.add_argument("--n-canvases", type=int, default=30000, help="for canvas-objects")
    ap.add_argument("--data-dir", default=None, help="folder with the IDX files (default $SFS_DATA_DIR)")
    ap.add_argument("--out", required=True, help="output path without suffix, e.g. models/mnist-classifier")
    ap.add_argument("--noisy", action="store_true", help="train the noise-aware NoisyClassifier")
    ap.add_argument("--schedule", default="cosine", choices=["cosine", "linear"], help="for --noisy")
    ap.add_argument("--T", type=int, default=1000, help="diffusion steps of the schedule (--noisy)")
    ap.add_argument("--epochs", type=int, default=None, help="default 6 (clean) or 4 (noisy)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=32, help="channels of the first conv stage")
    ap.add_argument("--hflip", action="store_true", help="random left-right flips (Fashion-MNIST)")
    ap.add_argument("--blur", type=float, default=0.0,
                    help="random Gaussian blur, sigma uniform in [0, BLUR] pixels (clean classifiers)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.data == "canvas-objects":
        from types import SimpleNamespace

        from sfs.canvas import NUM_CLASSES, make_canvases
        from sfs.canvas_eval import make_crop_dataset
        crops = {split: make_crop_dataset(make_canvases(n, split, args.seed, "all", data_dir=args.data_dir,
                                                        max_objects=1))
                 for split, n in (("train", args.n_canvases), ("test", 5000))}
        train, test = (SimpleNamespace(images=crops[s][0], labels=crops[s][1],
                                       ) for s in ("train", "test"))
        num_classes = NUM_CLASSES
    else:
        train = load_dataset(args.data, "train", args.data_dir)
        test = load_dataset(args.data, "test", args.data_dir)
        num_classes = 10
    x, y = train.images[:args.limit], train.labels[:args.limit]
    t0 = time.time()
    schedule = None
    config = ClassifierConfig(width=args.width, noisy=args.noisy, num_classes=num_classes)
    if args.noisy:
        schedule = (cosine_schedule if args.schedule == "cosine" else linear_schedule)(args.T)
        model, steps = train_noisy_classifier(x, y, schedule, args.epochs or 4, args.batch_size,
                                              args.lr, args.seed, config, hflip=args.hflip,
                                              device=args.device)
    else:
        model, steps = train_classifier(x, y, args.epochs or 6, args.batch_size, args.lr, args.seed,
                                        config, hflip=args.hflip, device=args.device, blur=args.blur)
    train_s = time.time() - t0
    model = model.cpu()

    def test_acc(m):
        return accuracy(m, test.images, test.labels, schedule=schedule,
                        generator=torch.Generator().manual_seed(1234))

    acc32 = test_acc(model)
    half = (NoisyClassifier if args.noisy else Classifier)(model.config)
    half.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    acc16 = test_acc(half.eval())
    dtype = torch.float16 if acc16 >= acc32 - 1e-3 else torch.float32
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = None
    card = {
        "kind": "NoisyClassifier" if args.noisy else "Classifier",
        "data": args.data, "train_images": len(x), "test_images": len(test.labels),
        "test_accuracy": acc16 if dtype == torch.float16 else acc32,
        "test_accuracy_fp32": acc32,
        "test_accuracy_note": ("on x_t with t uniform in [0, T) (seed 1234)" if args.noisy
                               else "clean test images"),
        "schedule": f"{args.schedule}_schedule(T={args.T})" if args.noisy else None,
        "epochs": args.epochs or (4 if args.noisy else 6), "steps": steps,
        "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "hflip": args.hflip,
        "blur": args.blur,
        "train_seconds": round(train_s, 1), "device": args.device, "threads": args.threads,
        "machine": f"{platform.machine()} {platform.processor() or platform.platform()}",
        "torch": torch.__version__, "git_commit": commit,
        "command": "python -m sfs.classifier " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
    }
    card = save_classifier(args.out, model, card, dtype)
    print(json.dumps({k: card[k] for k in ("name", "test_accuracy", "test_accuracy_fp32", "dtype",
                                           "file_bytes", "train_seconds")}))
    return card


if __name__ == "__main__":
    # Run the function of the imported module, not of __main__: its classes are the ones that
    # sfs.checkpoints knows (a dataclass defined twice is two classes).
    from sfs.classifier import main_train_classifier as main
    main()

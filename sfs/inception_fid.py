"""The standard Inception FID, for readers online: opt-in, through torchmetrics and torch-fidelity.

Book appendix "Training at scale". The book's own scores (``sfs.metrics``, chapter 9) are Frechet
distances on the features of a small classifier shipped in models/: offline, and the default
everywhere. Papers report FID (Heusel et al. 2017): the same distance on the 2048 pool features of
one particular Inception-v3 (the TensorFlow graph of 2015, ported to PyTorch by torch-fidelity).
Its number is comparable with published ones only at the same N and on the same data, usually
50,000 CIFAR-10 samples against the 50,000 training images.

    from sfs.inception_fid import inception_fid
    inception_fid(samples, real_images, download=True)   # images (N, C, H, W) in [-1, 1]

Nothing here is hand-written Inception: the network, its weights and the distance are
torchmetrics' ``FrechetInceptionDistance`` (which uses torch-fidelity's network). Two things may
be missing, and each gives an error that says what to do:

- the package: ``pip install "sfs[fid]"`` (that is, ``torchmetrics[image]``, which brings
  ``torch-fidelity``); it is not part of the default install nor of CI;
- the weights (under 100 MB), fetched from ``WEIGHTS_URL`` into torch's hub cache on first use,
  and only with ``download=True``: without it, a missing file is an error, never a download.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from sfs.validate import check_finite, check_int, check_range, check_tensor, check_type

# torch-fidelity's release of the Inception-v3 weights (torch_fidelity.feature_extractor_inceptionv3)
WEIGHTS_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
               "weights-inception-2015-12-05-6726825d.pth")
INSTALL = 'pip install "sfs[fid]"  (or: pip install "torchmetrics[image]", which brings torch-fidelity)'
DEFAULT = ("The book's default needs neither: the offline classifier-feature FD of sfs.metrics "
           "(sfs.metrics.evaluate, book ch. 9), which is not comparable with published FIDs.")


def weights_path(url: str = WEIGHTS_URL) -> Path:
    """Where torch's hub cache keeps the weights ($TORCH_HOME/hub/checkpoints/<file>)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _check_images(name: str, x) -> torch.Tensor:
    """Float images (N, C, H, W), N >= 2, C = 1 or 3, finite, in [-1, 1]."""
    check_tensor(name, x, "float", ndim=4)
    B, C, H, W = x.shape
    if B < 2 or C not in (1, 3):
        raise ValueError(f"{name} must have shape (N, C, H, W) with N >= 2 and C = 1 or 3, "
                         f"got {tuple(x.shape)}")
    check_finite(name, x)
    return check_range(name, x.cpu(), -1, 1, hint="the sfs convention for images")


def _to_uint8_rgb(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float (N, C, H, W) -> uint8 (N, 3, H, W) in [0, 255], what the metric expects; the
    network inside resizes to 299x299 itself."""
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1)


def load_metric(download: bool = False):
    """torchmetrics' ``FrechetInceptionDistance(feature=2048)``, with errors that say what is missing.

    ModuleNotFoundError: torchmetrics or torch-fidelity is not installed. FileNotFoundError: the
    weights are not in the hub cache and ``download`` is False. ConnectionError: the download failed.
    """
    check_type("download", download, bool)
    try:
        import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as e:
        raise ModuleNotFoundError(
            f"Inception FID needs torchmetrics and torch-fidelity ({e.name or e} is not installed): "
            f"{INSTALL}. Its Inception-v3 weights are then downloaded on first use (with "
            f"download=True) from {WEIGHTS_URL}. {DEFAULT}", name=e.name) from e
    url = getattr(tf_inception, "URL_INCEPTION_V3", WEIGHTS_URL)
    path = weights_path(url)
    if not path.is_file() and not download:
        raise FileNotFoundError(
            f"the Inception-v3 weights are not in torch's hub cache ({path}). Pass download=True "
            f"to fetch them (under 100 MB, needs internet) from {url}, or put that file there "
            f"yourself. {DEFAULT}")
    try:
        return FrechetInceptionDistance(feature=2048, normalize=False)
    except OSError as e:  # urllib's URLError and HTTPError, socket errors, a full disk
        raise ConnectionError(
            f"could not download the Inception-v3 weights from {url} into {path}: {e}. Check the "
            f"network, or download the file by hand and put it there. {DEFAULT}") from e


@torch.no_grad()
def inception_fid(fake: torch.Tensor, real: torch.Tensor, download: bool = False,
                  batch_size: int = 100, device: str | torch.device = "cpu") -> float:
    """The standard FID of ``fake`` against ``real``: float images (N, C, H, W) in [-1, 1], C = 1
    (repeated to RGB) or 3, N >= 2 each (papers use 50,000). Lower is better; 0 for equal sets.

    Heusel et al. 2017, on Inception-v3 pool features (D = 2048), as torchmetrics computes it. The
    inputs are checked first, so bad input fails before anything is loaded. ``download``: fetch the
    weights if they are not cached (needs internet; see ``load_metric`` for the errors).
    """
    fake, real = _check_images("fake", fake), _check_images("real", real)
    if fake.shape[1:] != real.shape[1:]:
        raise ValueError(f"fake and real must have the same (C, H, W), got {tuple(fake.shape)} "
                         f"and {tuple(real.shape)}")
    batch_size = check_int("batch_size", batch_size, low=1)
    metric = load_metric(download).to(device)
    for images, is_real in ((real, True), (fake, False)):
        for i in range(0, len(images), batch_size):
            metric.update(_to_uint8_rgb(images[i:i + batch_size]).to(device), real=is_real)
    return float(metric.compute())

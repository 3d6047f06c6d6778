"""Data: MNIST and Fashion-MNIST from IDX files, a bundled offline sample, and 2-D toy distributions.

Colour data (CIFAR-10 from its standard archive, a folder of your own images) is read by
``sfs.data_colour`` into the same ``ImageDataset``; ``load_dataset("cifar10")`` goes there.

Book: "The data" (book/data.md). Images are float tensors in [-1, 1] of shape (N, 1, 28, 28): the
range the forward process of book eq. (1.1) assumes, so that pure noise and data have the same scale.

Where the full data sets come from, in this order:
1. the ``data_dir`` argument,
2. the environment variable ``SFS_DATA_DIR``,
3. torchvision's download, only when the caller passes ``download=True`` (readers online, e.g. Colab).

``data_dir`` may be the folder holding the four IDX files or its parent (holding ``mnist/`` and
``fashion-mnist/``). The bundled sample (``load_sample``) needs none of these.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from sfs.validate import check_choice, check_int, check_type

ENV_VAR = "SFS_DATA_DIR"

CLASSES = {
    "mnist": [str(d) for d in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer",  # 32x32 RGB: sfs.data_colour
                "dog", "frog", "horse", "ship", "truck"],
}
SAMPLES = ("fashion-mnist", "mnist")  # the data sets with a bundled offline sample
# torchvision's raw file names; the test split is called "t10k" in the original release.
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
IMAGE_SHAPE = (28, 28)  # rows, cols of every image in both data sets
SAMPLE_SIZE = 1000  # bundled test images per data set


@dataclass
class ImageDataset:
    """A labelled image data set held in memory.

    images: (N, C, H, W) float32 in [-1, 1], (N, 1, 28, 28) for MNIST and Fashion-MNIST,
    (N, 3, 32, 32) for CIFAR-10; labels: (N,) int64 in [0, len(classes)); classes: the names;
    sample: whether this is the bundled offline sample (``load_sample``) rather than the full set.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    sample: bool = False

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def _check_name(name: str) -> str:
    return check_choice("name (the data set)", name, sorted(CLASSES))


def _check_split(split: str) -> str:
    return check_choice("split", split, sorted(FILES))


def to_float(images_u8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 pixels (N, 28, 28) or (N, 1, 28, 28) in [0, 255] -> float32 (N, 1, 28, 28) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images_u8)).float()
    if x.ndim == 3:
        x = x.unsqueeze(1)
    return x / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, C, H, W) in [0, 255], clamping what falls outside."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (raw or ``.gz``): images -> uint8 (N, rows, cols), labels -> uint8 (N,).

    Raises ValueError naming the file when the magic number is wrong or the file is truncated.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # a truncated gzip stream raises EOFError
        raise ValueError(f"cannot read IDX file {path}: {e}") from e
    if len(data) < 8:
        raise ValueError(f"IDX file {path} is truncated: {len(data)} bytes, no header")
    magic, n = struct.unpack(">ii", data[:8])
    if magic == IMAGE_MAGIC:
        if len(data) < 16:
            raise ValueError(f"IDX file {path} is truncated: incomplete image header")
        rows, cols = struct.unpack(">ii", data[8:16])
        shape, offset = (n, rows, cols), 16
    elif magic == LABEL_MAGIC:
        shape, offset = (n,), 8
    else:
        raise ValueError(f"IDX file {path} has magic number {magic}; expected {IMAGE_MAGIC} "
                         f"(images) or {LABEL_MAGIC} (labels): not an MNIST-style IDX file")
    if min(shape) < 0:
        raise ValueError(f"IDX file {path} is damaged: its header gives the negative shape {shape}")
    expected = math.prod(shape)
    if len(data) - offset != expected:
        raise ValueError(f"IDX file {path} is truncated or padded: header says {shape} "
                         f"({expected} bytes of data), file holds {len(data) - offset}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape).copy()


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _resolve_dir(name: str, data_dir: str | Path | None) -> Path | None:
    root = data_dir if data_dir is not None else os.environ.get(ENV_VAR)
    if root is None:
        return None
    root = Path(root).expanduser()
    for folder in (root / name, root):  # parent of mnist/ and fashion-mnist/, or the folder itself
        if all(_find(folder, stem) for stem in FILES["train"] + FILES["test"]):
            return folder
    return root  # let the caller report what is missing


def _missing_message(name: str, folder: Path | None, split: str) -> str:
    wanted = ", ".join(f"{s}[.gz]" for s in FILES[split])
    if folder is None:
        where = f"because no data_dir was given and ${ENV_VAR} is not set"
    elif not folder.is_dir():
        where = f"because the folder {folder} does not exist"
    else:
        where = f"in {folder} (nor in {folder / name})"
    return (f"{name} {split} files not found {where}. Expected: {wanted}. Get them by "
            f"pointing data_dir or ${ENV_VAR} at a folder holding the IDX files "
            f"(torchvision's raw names), or pass download=True to fetch them with torchvision "
            f"(needs internet). load_sample({name!r}) works offline with {SAMPLE_SIZE} test images.")


def load_dataset(name: str = "mnist", split: str = "train", data_dir: str | Path | None = None,
                 download: bool = False) -> ImageDataset:
    """Load a full data set: images (N, 1, 28, 28) float32 in [-1, 1], labels (N,) int64.

    name: "mnist" or "fashion-mnist"; split: "train" (60,000) or "test" (10,000). "cifar10"
    (50,000 / 10,000 images (N, 3, 32, 32)) is ``sfs.data_colour.load_cifar10``.
    """
    _check_name(name)
    _check_split(split)
    check_type("download", download, bool)
    if data_dir is not None:
        check_type("data_dir", data_dir, (str, os.PathLike), "a str or Path (a folder) or None")
    if name == "cifar10":
        from sfs.data_colour import load_cifar10
        return load_cifar10(split, data_dir, download)
    folder = _resolve_dir(name, data_dir)
    paths = [_find(folder, stem) for stem in FILES[split]] if folder is not None else [None, None]
    if None in paths:
        if download:
            return _download(name, split, data_dir)
        raise FileNotFoundError(_missing_message(name, folder, split))
    images, labels = (read_idx(p) for p in paths)
    _check_contents(name, paths, images, labels)
    return ImageDataset(name, to_float(images), torch.as_tensor(labels.astype(np.int64)),
                        list(CLASSES[name]))


def _check_contents(name: str, paths: list[Path], images: np.ndarray, labels: np.ndarray) -> None:
    """The images file must hold images (N, 28, 28), the labels file N labels in [0, classes)."""
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE or images.shape[0] == 0:
        raise ValueError(f"{paths[0]} must hold images of shape (N, 28, 28) with N >= 1 (magic number "
                         f"{IMAGE_MAGIC}), got an array of shape {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{paths[1]} must hold labels of shape (N,) (magic number {LABEL_MAGIC}), "
                         f"got an array of shape {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{paths[0]} holds {images.shape[0]} images but {paths[1]} holds "
                         f"{labels.shape[0]} labels")
    K = len(CLASSES[name])
    if labels.max() >= K:
        raise ValueError(f"{paths[1]} must hold labels in [0, {K - 1}] ({name} has {K} classes), "
                         f"got values up to {int(labels.max())}")


def _download(name: str, split: str, data_dir: str | Path | None) -> ImageDataset:
    import torchvision  # only for readers online

    cls = {"mnist": torchvision.datasets.MNIST,
           "fashion-mnist": torchvision.datasets.FashionMNIST}[name]
    root = Path(data_dir or os.environ.get(ENV_VAR) or "~/.cache/sfs").expanduser()
    ds = cls(str(root / "torchvision"), train=(split == "train"), download=True)
    return ImageDataset(name, to_float(ds.data.numpy()), ds.targets.long(), list(CLASSES[name]))


def load_sample(name: str = "mnist") -> ImageDataset:
    """The bundled offline sample: the first 1,000 test images of ``name``, shape (1000, 1, 28, 28)."""
    check_choice("name (the data set)", name, SAMPLES)
    with resources.files("sfs.assets").joinpath(f"{name}-sample.npz").open("rb") as f:
        arrays = np.load(f, allow_pickle=False)
        images, labels = arrays["images"], arrays["labels"]
    return ImageDataset(name, to_float(images), torch.as_tensor(labels.astype(np.int64)),
                        list(CLASSES[name]), sample=True)


def load(name: str = "mnist", split: str = "train", data_dir: str | Path | None = None
         ) -> ImageDataset:
    """The full data set when it can be found (argument or $SFS_DATA_DIR), else the bundled sample.

    What the chapters call: on a machine with the data they use it, offline they still run. The
    fallback to the sample is only for ``data_dir=None``: a ``data_dir`` given explicitly must hold
    the data (FileNotFoundError otherwise), so a mistyped folder is not silently replaced by the
    1,000-image sample. CIFAR-10 has no bundled sample: without its files this raises.
    """
    try:
        return load_dataset(name, split, data_dir)
    except FileNotFoundError:
        if data_dir is not None or name not in SAMPLES:
            raise
        return load_sample(name)


# ----------------------------------------------------------------------------------------------
# 2-D toy distributions, generated in code (for models that train in seconds).

def _randn(n: int, d: int, generator):
    return torch.randn(n, d, generator=generator, dtype=torch.float64)


def _rand(n: int, generator):
    return torch.rand(n, generator=generator, dtype=torch.float64)


def swiss_roll(n, generator=None):
    t = 1.5 * math.pi * (1 + 2 * _rand(n, generator))
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) / 5.0
    return x + 0.05 * _randn(n, 2, generator)


def two_moons(n, generator=None):
    upper = _rand(n, generator) < 0.5
    angle = math.pi * _rand(n, generator)
    x = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    lower = torch.stack([1 - torch.cos(angle), 0.5 - torch.sin(angle)], dim=1)
    x = torch.where(upper[:, None], x, lower) - torch.tensor([0.5, 0.25], dtype=torch.float64)
    return 1.5 * x + 0.05 * _randn(n, 2, generator)


def gaussian_mixture(n, generator=None, k=8, radius=2.0, std=0.1):
    idx = torch.randint(k, (n,), generator=generator)
    angle = 2 * math.pi * idx.double() / k
    centers = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return centers + std * _randn(n, 2, generator)


def checkerboard(n, generator=None):
    x1 = 4 * _rand(n, generator) - 2
    x2 = _rand(n, generator) - torch.randint(2, (n,), generator=generator).double() * 2
    x2 = x2 + (torch.floor(x1) % 2)
    return torch.stack([x1, x2], dim=1)


TOYS = {"swiss_roll": swiss_roll, "two_moons": two_moons,
        "gaussian_mixture": gaussian_mixture, "checkerboard": checkerboard}


def make_toy(name: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample n points (n, 2) float32 from a 2-D toy distribution, roughly in [-3, 3]^2.

    name: one of "swiss_roll", "two_moons", "gaussian_mixture" (8 Gaussians on a circle),
    "checkerboard". Reproducible for a given ``generator``.
    """
    check_choice("name (the toy)", name, sorted(TOYS))
    n = check_int("n", n, low=1)
    return TOYS[name](n, generator).float()

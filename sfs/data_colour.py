"""Colour data: CIFAR-10 from its standard archive, and a folder of your own images.

Both come back as ``sfs.data.ImageDataset``, the convention of the MNIST loaders: images float32
(N, 3, H, W) in [-1, 1], labels int64 (N,), class names. ``sfs.data.load_dataset("cifar10")`` is
``load_cifar10``. The readers underneath (``read_cifar10``, ``read_image``) return uint8 pixels.

CIFAR-10 (Krizhevsky 2009; 50,000 train and 10,000 test images, 32x32 RGB, 10 classes) is found,
as MNIST is, under ``data_dir`` or $SFS_DATA_DIR: in ``cifar10/`` or the folder itself, either the
archive ``cifar-10-python.tar.gz`` as downloaded (read without unpacking it) or the unpacked
``cifar-10-batches-py/`` (``data_batch_1`` ... ``data_batch_5``, ``test_batch``). It is downloaded
only with ``download=True`` (the archive, checked against its published md5).

Safety: the batch files of the official archive are Python pickles, and unpickling an arbitrary
file can run arbitrary code. They are read here with a restricted unpickler (``_BatchUnpickler``,
the recipe of the ``pickle`` documentation, "Restricting Globals") that can build dicts, lists,
numbers, byte strings and numpy arrays and nothing else: a file asking for any other class or
function (``os.system``, say) is refused with a ValueError before anything runs. What remains is
numpy's own array reconstruction, which builds arrays from bytes.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from sfs.data import CLASSES, ENV_VAR, ImageDataset, to_float
from sfs.validate import check_choice, check_int, check_type

CIFAR10_CLASSES = CLASSES["cifar10"]  # airplane, automobile, ..., truck
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # of the archive, as published (and torchvision)
CIFAR10_ARCHIVE, CIFAR10_FOLDER = "cifar-10-python.tar.gz", "cifar-10-batches-py"
CIFAR10_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


# ----------------------------------------------------------------------------------------------
# CIFAR-10.

class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 batch (a dict of byte strings, lists of ints and one uint8 array) and
    refuses every global but the three that a pickled numpy array needs."""

    def find_class(self, module: str, name: str):
        if (module, name) in (("numpy.core.multiarray", "_reconstruct"),  # numpy 1 (the archive)
                              ("numpy._core.multiarray", "_reconstruct")):  # numpy 2
            core = getattr(np, "_core", None) or np.core
            return core.multiarray._reconstruct
        if (module, name) in (("numpy", "ndarray"), ("numpy", "dtype")):
            return getattr(np, name)
        raise ValueError(f"refused to unpickle {module}.{name}: a CIFAR-10 batch holds only "
                         f"numbers, byte strings, lists, dicts and numpy arrays")


def _read_batch(f, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch file (an open binary file) -> uint8 images (N, 3, 32, 32), int64 labels (N,)."""
    try:
        batch = _BatchUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, ImportError,
            IndexError, KeyError) as e:
        raise ValueError(f"{where} is not a CIFAR-10 batch (unreadable pickle: {e!r})") from e
    get = (lambda k: batch.get(k.encode(), batch.get(k))) if isinstance(batch, dict) else None
    pixels, labels = (get("data"), get("labels")) if get else (None, None)
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2 \
            or pixels.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{where} is not a CIFAR-10 batch: it needs 'data', a uint8 array "
                         f"(N, 3072), got {type(pixels).__name__} "
                         f"{getattr(pixels, 'dtype', '')} {getattr(pixels, 'shape', '')}")
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if labels.shape != (pixels.shape[0],) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise ValueError(f"{where} is not a CIFAR-10 batch: it needs {pixels.shape[0]} 'labels' "
                         f"in [0, 9], got shape {labels.shape}")
    # each row: 1024 red, then 1024 green, then 1024 blue values, each a 32x32 image row by row
    return pixels.reshape(-1, 3, 32, 32).copy(), labels


def read_cifar10(path: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Read a split of CIFAR-10 from ``path``: the archive ``cifar-10-python.tar.gz`` or the
    unpacked ``cifar-10-batches-py`` folder. Returns uint8 images (N, 3, 32, 32) and int64 labels
    (N,): 50,000 for "train" (``data_batch_1`` ... ``_5`` in order), 10,000 for "test"."""
    check_choice("split", split, sorted(CIFAR10_BATCHES))
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: expected {CIFAR10_ARCHIVE} or {CIFAR10_FOLDER}/")
    wanted = CIFAR10_BATCHES[split]
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if path.is_dir():
        for name in wanted:
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path / name} not found: {path} is not a complete "
                                        f"{CIFAR10_FOLDER} folder")
            with open(path / name, "rb") as f:
                parts[name] = _read_batch(f, str(path / name))
    else:
        try:
            with tarfile.open(path, "r:gz") as tar:
                for member in tar:  # one pass: a .gz archive cannot seek cheaply
                    name = member.name.removeprefix("./").removeprefix(CIFAR10_FOLDER + "/")
                    if name in wanted and member.isfile():
                        f = tar.extractfile(member)
                        parts[name] = _read_batch(io.BytesIO(f.read()), f"{path}:{member.name}")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ValueError(f"cannot read the CIFAR-10 archive {path}: {e}") from e
        missing = [n for n in wanted if n not in parts]
        if missing:
            raise ValueError(f"the CIFAR-10 archive {path} lacks {CIFAR10_FOLDER}/{missing[0]}")
    images = np.concatenate([parts[n][0] for n in wanted])
    labels = np.concatenate([parts[n][1] for n in wanted])
    return images, labels


def _find_cifar10(root: Path) -> Path | None:
    for folder in (root / "cifar10", root):
        for candidate in (folder / CIFAR10_FOLDER, folder / CIFAR10_ARCHIVE):
            if candidate.exists():
                return candidate
        if (folder / "test_batch").is_file():  # the unpacked folder itself
            return folder
    return None


def load_cifar10(split: str = "train", data_dir: str | Path | None = None,
                 download: bool = False) -> ImageDataset:
    """CIFAR-10: images (N, 3, 32, 32) float32 in [-1, 1], labels (N,) int64, 10 class names.

    Looked up under ``data_dir``, else $SFS_DATA_DIR (see the module docstring for the layouts);
    ``download=True`` fetches the archive (163 MB, md5-checked) into ``data_dir``/cifar10, else
    $SFS_DATA_DIR/cifar10, else ~/.cache/sfs/cifar10, when it is not found there.
    """
    check_choice("split", split, sorted(CIFAR10_BATCHES))
    check_type("download", download, bool)
    if data_dir is not None:
        check_type("data_dir", data_dir, (str, os.PathLike), "a str or Path (a folder) or None")
    root = data_dir if data_dir is not None else os.environ.get(ENV_VAR)
    download_root = Path(root or "~/.cache/sfs").expanduser()
    source = _find_cifar10(Path(root).expanduser()) if root is not None else None
    if source is None and download:
        source = _find_cifar10(download_root) or _download_cifar10(download_root / "cifar10")
    if source is None:
        where = (f"under {Path(root).expanduser()} (nor in its cifar10/)" if root is not None
                 else f"because no data_dir was given and ${ENV_VAR} is not set")
        raise FileNotFoundError(
            f"cifar10 not found {where}. Expected {CIFAR10_ARCHIVE} (from {CIFAR10_URL}) or the "
            f"unpacked {CIFAR10_FOLDER}/ folder; point data_dir or ${ENV_VAR} at the folder "
            f"holding it, or pass download=True to fetch it (needs internet).")
    images, labels = read_cifar10(source, split)
    return ImageDataset("cifar10", to_float(images), torch.from_numpy(labels), list(CIFAR10_CLASSES))


def _download_cifar10(folder: Path) -> Path:
    from torchvision.datasets.utils import download_url  # only for readers online

    download_url(CIFAR10_URL, str(folder), CIFAR10_ARCHIVE, md5=CIFAR10_MD5)
    return folder / CIFAR10_ARCHIVE


# ----------------------------------------------------------------------------------------------
# A folder of your own images.

def read_image(path: str | Path, size: int) -> np.ndarray:
    """One image file -> uint8 (3, size, size) RGB: resized so that its shorter side is ``size``
    (bicubic, antialiased) and centre-cropped to a square. EXIF rotation is applied; grey
    images are repeated over the three channels, 16-bit ones scaled to 8 bits, and transparent
    pixels composited over white."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit (or 32-bit) grey
                a = np.asarray(img, dtype=np.float64)
                if img.mode.startswith("I;16") or a.max() > 255:
                    a = a / 257.0  # 65535 -> 255
                img = Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8), "L")
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                img = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img.alpha_composite(rgba)
            img = ImageOps.fit(img.convert("RGB"), (size, size), method=Image.BICUBIC)
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()  # (H, W, 3) -> (3, H, W)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"cannot read the image {path}: {e}") from e


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def load_image_folder(folder: str | Path, size: int = 32) -> ImageDataset:
    """A folder of your own images (PNG or JPEG, any size and mode) as an ImageDataset of
    (N, 3, size, size) float32 in [-1, 1] (``read_image``: resized and centre-cropped).

    Either the images lie in ``folder`` itself (one class, label 0, named after the folder) or in
    its subfolders, one class per subfolder in sorted order (torchvision's ImageFolder layout).
    Files are read in sorted order; hidden files and other suffixes are skipped.
    """
    check_type("folder", folder, (str, os.PathLike), "a str or Path (a folder of images)")
    size = check_int("size", size, low=4, high=4096, hint="the side of the square images, in pixels")
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ValueError(f"folder must be an existing folder of images, got {str(folder)!r}"
                         f"{' (a file)' if root.exists() else ' (it does not exist)'}")
    top = _images_in(root)
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                        and _images_in(p))
    if top and subfolders:
        raise ValueError(f"folder {root} holds images both directly and in the subfolders "
                         f"{[p.name for p in subfolders]}: put them all in one, or each class in "
                         f"its own subfolder")
    groups = [(root.name, top)] if top else [(p.name, _images_in(p)) for p in subfolders]
    if not groups:
        raise ValueError(f"folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)}), neither "
                         f"directly nor in its subfolders")
    images = np.stack([read_image(p, size) for _, paths in groups for p in paths])  # (N, 3, s, s)
    labels = torch.tensor([k for k, (_, paths) in enumerate(groups) for _ in paths], dtype=torch.long)
    return ImageDataset(root.name, to_float(images), labels, [name for name, _ in groups])

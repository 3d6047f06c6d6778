"""Shipped models outside the repository: where a model name is looked up, and the download cache.

Book ch. 6, sec. "The shipped models". In a clone of the repository ``load_model("mnist-uncond")``
reads ``models/mnist-uncond.safetensors``. A copy of sfs installed with pip (a wheel, ``pip install
git+...``, Colab) has no models/ folder beside it; there the name is looked up in a cache folder,
which is filled on first use by downloading the card and the weights, the way torchvision and the
Hugging Face Hub deliver pretrained weights.

Where a name is looked up (the first rule that applies wins; only the last touches the network):

1. the ``models_dir`` argument;
2. the environment variable ``$SFS_MODELS_DIR``;
3. the repository's ``models/`` folder, when sfs runs from a checkout (``REPO_MODELS_DIR``);
4. the cache ``$SFS_CACHE_DIR`` (default ``~/.cache/sfs/models``); a model missing there is
   downloaded from ``$SFS_MODELS_URL`` (default ``MODELS_URL``, the repository's raw files):
   ``<url>/<name>.json``, then ``<url>/<name>.safetensors``.

What the download checks: the weights are streamed to a temporary file in the cache folder while
their sha256 is computed; only when size and sha256 equal the downloaded card's is the file renamed
into place (then the card beside it), so an interrupted or corrupted download never counts, and
``load_model`` verifies the file again as it does for every checkpoint. The card comes from the same
server as the weights, so the sha256 catches corruption and truncation, not a hostile server; what
protects against that is safetensors itself: loading a checkpoint cannot run code.

``MODELS_URL`` follows the repository's main branch: an old installed sfs gets the newest shipped
models, and refuses one whose config it cannot build (``CheckpointError``); set $SFS_MODELS_URL to
a tag's or a release's address to pin them.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from sfs.checkpoints import MODELS_ENV_VAR, CheckpointError, atomic_write

MODELS_URL = ("https://raw.githubusercontent.com/sfs-book/stable-diffusion-from-scratch/"
              "main/models/")  # the shipped models/ folder of the repository, file by file
URL_ENV_VAR = "SFS_MODELS_URL"
CACHE_ENV_VAR = "SFS_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/sfs/models")
REPO_ROOT = Path(__file__).resolve().parent.parent  # a checkout; site-packages/ once installed
REPO_MODELS_DIR = REPO_ROOT / "models"
TIMEOUT_S = 60  # per network operation (connect, each read), not for the whole file
MAX_CARD_BYTES = 1 << 20  # a card is a few kB; more is not a card
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class DownloadError(FileNotFoundError):
    """A shipped model that is not on this machine and could not be downloaded (offline, 404)."""


def repo_models_dir() -> Path | None:
    """The repository's models/ folder when sfs runs from a checkout, else None.

    A checkout is recognised by its ``pyproject.toml`` beside ``models/``: an installed sfs lives in
    site-packages, where an unrelated top-level ``models`` package may well exist.
    """
    if REPO_MODELS_DIR.is_dir() and (REPO_ROOT / "pyproject.toml").is_file():
        return REPO_MODELS_DIR
    return None


def cache_dir() -> Path:
    """The folder that downloaded models are kept in: $SFS_CACHE_DIR, else ~/.cache/sfs/models."""
    return Path(os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_DIR).expanduser()


def models_url() -> str:
    """The base URL of the shipped models: $SFS_MODELS_URL, else ``MODELS_URL``; ends with '/'."""
    url = os.environ.get(URL_ENV_VAR) or MODELS_URL
    return url if url.endswith("/") else url + "/"


def models_dir_for(models_dir: str | Path | None = None) -> tuple[Path, bool]:
    """(folder a name is looked up in, whether that folder is the download cache), by the rules
    of the module docstring."""
    chosen = models_dir or os.environ.get(MODELS_ENV_VAR) or repo_models_dir()
    if chosen:
        return Path(chosen).expanduser(), False
    return cache_dir(), True


def _fail(name: str, url: str, folder: Path, reason: str) -> DownloadError:
    return DownloadError(
        f"cannot download {url.rsplit('/', 1)[-1]} of the shipped model {name!r} from {url}: "
        f"{reason}. sfs is not running from its repository, so it looks for shipped models in the "
        f"cache {folder} (${CACHE_ENV_VAR}) and downloads the missing ones from {models_url()} "
        f"(${URL_ENV_VAR}). To install the model by hand, download {name}.json and "
        f"{name}.safetensors from that address (or from the repository's models/ folder) into "
        f"{folder}, or point $SFS_MODELS_DIR at a folder that holds them.")


def _open(url: str, name: str, folder: Path):
    request = urllib.request.Request(url, headers={"User-Agent": "sfs (python urllib)"})
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        raise _fail(name, url, folder, f"the server answered HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise _fail(name, url, folder, f"no connection ({reason}; offline?)") from e


def _download_card(name: str, folder: Path) -> tuple[bytes, dict]:
    """The card's bytes and its parsed content; it must name the weights' size and sha256."""
    url = models_url() + f"{name}.json"
    try:
        with _open(url, name, folder) as response:
            raw = response.read(MAX_CARD_BYTES + 1)
    except (http.client.HTTPException, ConnectionError, TimeoutError) as e:
        raise _fail(name, url, folder, f"the connection broke ({e!r})") from e
    try:
        card = json.loads(raw) if len(raw) <= MAX_CARD_BYTES else None
    except (ValueError, UnicodeDecodeError):
        card = None
    if not (isinstance(card, dict) and isinstance(card.get("file_sha256"), str)
            and re.fullmatch(r"[0-9a-f]{64}", card["file_sha256"])
            and isinstance(card.get("file_bytes"), int)):
        raise CheckpointError(f"{url} is not a model card with the weights' sha256 and size "
                              f"(file_sha256, file_bytes); nothing was cached")
    return raw, card


def _download_weights(name: str, folder: Path, card: dict, progress: bool) -> None:
    """Stream ``<name>.safetensors`` into the cache, hashing as it arrives; keep it only if its
    size and sha256 are the card's (``atomic_write`` removes the temporary file otherwise)."""
    from tqdm.auto import tqdm

    url = models_url() + f"{name}.safetensors"
    path = folder / f"{name}.safetensors"
    expected_bytes, expected_sha = card["file_bytes"], card["file_sha256"]

    def write(tmp):
        h, n = hashlib.sha256(), 0
        with _open(url, name, folder) as response, open(tmp, "wb") as f, \
                tqdm(total=expected_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=f"sfs: downloading {name}.safetensors", disable=not progress) as bar:
            try:
                while chunk := response.read(1 << 16):
                    n += len(chunk)
                    if n > expected_bytes:
                        raise CheckpointError(f"{url} sends more than the {expected_bytes} bytes "
                                              f"its card promises; nothing was cached")
                    h.update(chunk)
                    f.write(chunk)
                    bar.update(len(chunk))
            except (http.client.HTTPException, ConnectionError, TimeoutError) as e:
                raise _fail(name, url, folder, f"the connection broke after {n} bytes "
                                               f"({e!r})") from e
        if n != expected_bytes:
            raise CheckpointError(f"download of {url} is truncated: {n} bytes, the card says "
                                  f"{expected_bytes}; nothing was cached")
        if h.hexdigest() != expected_sha:
            raise CheckpointError(f"sha256 mismatch for the download of {url}: got "
                                  f"{h.hexdigest()}, its card says {expected_sha}; the file is "
                                  f"corrupted, nothing was cached")

    atomic_write(path, write)


def fetch_model(name: str, folder: Path | None = None, progress: bool = True) -> Path:
    """Download the shipped model ``name`` (card and weights) into ``folder`` (default: the cache)
    unless both files are there; return the weights' path. Raises DownloadError (offline, 404:
    the message says what to download and where to put it) or CheckpointError (a corrupted file)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"name must be the plain name of a shipped model (letters, digits, "
                         f"'.', '_', '-'), got {name!r}")
    folder = cache_dir() if folder is None else Path(folder)
    path, card_path = folder / f"{name}.safetensors", folder / f"{name}.json"
    if path.is_file() and card_path.is_file():
        return path
    raw_card, card = _download_card(name, folder)
    _download_weights(name, folder, card, progress)  # only both files together count
    atomic_write(card_path, lambda tmp: Path(tmp).write_bytes(raw_card))
    return path

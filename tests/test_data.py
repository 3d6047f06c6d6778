"""sfs.data: IDX parsing, bad input, the bundled sample and the toy distributions."""

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from sfs import data

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_idx(path: Path, array: np.ndarray, magic: int, gz: bool = False) -> Path:
    header = struct.pack(">ii", magic, array.shape[0])
    if magic == data.IMAGE_MAGIC:
        header += struct.pack(">ii", *array.shape[1:])
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def fake_dataset(folder: Path, n_train=12, n_test=5, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
        img_stem, lbl_stem = data.FILES[split]
        write_idx(folder / img_stem, images, data.IMAGE_MAGIC, gz)
        write_idx(folder / lbl_stem, labels, data.LABEL_MAGIC, gz)
        arrays[split] = (images, labels)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_load_dataset_reads_idx_and_scales_to_unit_interval(tmp_path, gz):
    arrays = fake_dataset(tmp_path / "mnist", gz=gz)
    ds = data.load_dataset("mnist", "train", data_dir=tmp_path)   # parent folder works
    images, labels = arrays["train"]
    assert ds.images.shape == (12, 1, 28, 28) and ds.images.dtype == torch.float32
    assert torch.equal(ds.labels, torch.as_tensor(labels.astype(np.int64)))
    expected = torch.as_tensor(images).float().unsqueeze(1) / 127.5 - 1
    assert torch.allclose(ds.images, expected)
    assert ds.images.min() >= -1 and ds.images.max() <= 1
    assert ds.classes == data.CLASSES["mnist"]
    test = data.load_dataset("mnist", "test", data_dir=tmp_path / "mnist")  # the folder itself
    assert len(test) == 5


def test_environment_variable_is_used(tmp_path, monkeypatch):
    fake_dataset(tmp_path / "fashion-mnist")
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path))
    ds = data.load_dataset("fashion-mnist", "test")
    assert len(ds) == 5 and ds.classes[9] == "Ankle boot"


def test_missing_directory_names_expected_files(tmp_path, monkeypatch):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError) as e:
        data.load_dataset("mnist", "train", data_dir=tmp_path / "nowhere")
    msg = str(e.value)
    assert "train-images-idx3-ubyte" in msg and "train-labels-idx1-ubyte" in msg
    assert "SFS_DATA_DIR" in msg and "download=True" in msg
    with pytest.raises(FileNotFoundError, match="SFS_DATA_DIR is not set"):
        data.load_dataset("mnist", "train")


def test_wrong_magic_is_rejected_by_name(tmp_path):
    fake_dataset(tmp_path)
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(struct.pack(">iiii", 1234, 1, 28, 28) + bytes(784)))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz.*magic number 1234"):
        data.load_dataset("mnist", "test", data_dir=tmp_path)


def test_truncated_file_is_rejected_by_name(tmp_path):
    fake_dataset(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte is truncated"):
        data.load_dataset("mnist", "train", data_dir=tmp_path)
    with pytest.raises(ValueError, match="no header"):
        path.write_bytes(b"\x00\x00")
        data.read_idx(path)


def test_truncated_gzip_stream_is_rejected_by_name(tmp_path):
    fake_dataset(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz"):
        data.load_dataset("mnist", "train", data_dir=tmp_path)


def test_image_label_count_mismatch(tmp_path):
    fake_dataset(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8), data.LABEL_MAGIC, gz=True)
    with pytest.raises(ValueError, match="5 images but .* 3 labels"):
        data.load_dataset("mnist", "test", data_dir=tmp_path)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match=r"name \(the data set\) must be one of .*cifar10.*fashion-mnist.*mnist.*'imagenet'"):
        data.load_dataset("imagenet")
    with pytest.raises(ValueError, match="split must be one of"):
        data.load_dataset("mnist", split="validation")
    with pytest.raises(ValueError, match=r"name \(the toy\) must be one of \('checkerboard'"):
        data.make_toy("spiral", 10)
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        data.make_toy("two_moons", 0)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_bundled_sample(name):
    ds = data.load_sample(name)
    assert ds.images.shape == (data.SAMPLE_SIZE, 1, 28, 28)
    assert ds.images.min() == -1 and ds.images.max() == 1
    counts = torch.bincount(ds.labels, minlength=10)
    assert (counts > 50).all(), counts          # every class is represented
    assert ds.images.std() > 0.3                # real images, not a constant


def test_bundled_samples_are_small():
    assets = Path(data.__file__).parent / "assets"
    total = sum(p.stat().st_size for p in assets.glob("*.npz"))
    assert total < 2_000_000, total


def test_load_falls_back_to_sample_only_without_a_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    ds = data.load("mnist", "test")
    assert len(ds) == data.SAMPLE_SIZE
    # A folder given explicitly must hold the data: no silent 1,000-image stand-in for it.
    with pytest.raises(FileNotFoundError, match="mnist test files not found"):
        data.load("mnist", "test", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="the folder .*no-such-folder does not exist"):
        data.load("mnist", "train", data_dir=tmp_path / "no-such-folder")


def test_uint8_round_trip():
    u = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    assert torch.equal(data.to_uint8(data.to_float(u)), u)


@pytest.mark.parametrize("name", sorted(data.TOYS))
def test_toys_are_reproducible_and_bounded(name):
    a = data.make_toy(name, 500, generator=torch.Generator().manual_seed(1))
    b = data.make_toy(name, 500, generator=torch.Generator().manual_seed(1))
    c = data.make_toy(name, 500, generator=torch.Generator().manual_seed(2))
    assert a.shape == (500, 2) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.abs().max() < 4 and a.std(0).min() > 0.3


def test_toy_shapes_are_right():
    g = torch.Generator().manual_seed(0)
    mix = data.make_toy("gaussian_mixture", 4000, generator=g)
    radius = mix.norm(dim=1)
    assert (radius - 2).abs().mean() < 0.15           # eight blobs on the circle of radius 2
    angles = torch.atan2(mix[:, 1], mix[:, 0]) / (2 * torch.pi / 8)
    assert (angles - angles.round()).abs().mean() < 0.1
    board = data.make_toy("checkerboard", 4000, generator=g)
    parity = (torch.floor(board[:, 0]) + torch.floor(board[:, 1])) % 2
    assert (parity == 0).all()                        # only the "black" squares


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="full data only on developer machines")
def test_full_mnist_matches_published_counts():
    ds = data.load_dataset("mnist", "train", data_dir=SHARED)
    counts = torch.bincount(ds.labels, minlength=10).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]

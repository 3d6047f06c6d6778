"""sfs.data_colour: CIFAR-10 from an archive the test writes in the official format, and a folder
of generated images of various sizes and modes."""

import io
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from sfs import data, data_colour


def py2_pickle(obj) -> bytes:
    """``obj`` pickled the way Python 2's cPickle (protocol 2) wrote the CIFAR-10 batches: byte
    strings as Python 2 ``str`` (SHORT_BINSTRING / BINSTRING), numpy arrays reduced through
    ``numpy.core.multiarray._reconstruct``. Python 3's own pickler cannot write this form."""
    out = bytearray(b"\x80\x02")

    def string(b: bytes):
        out.extend((b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b)

    def write(o):
        if isinstance(o, bytes):
            string(o)
        elif o is None:
            out.extend(b"N")
        elif isinstance(o, bool):
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            out.extend(b"K" + bytes([o]) if 0 <= o < 256 else b"J" + struct.pack("<i", o))
        elif isinstance(o, tuple):
            out.extend(b"(")
            for x in o:
                write(x)
            out.extend(b"t")
        elif isinstance(o, list):
            out.extend(b"](")
            for x in o:
                write(x)
            out.extend(b"e")
        elif isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                write(k)
                write(v)
            out.extend(b"u")
        elif isinstance(o, np.ndarray):  # _reconstruct(ndarray, (0,), 'b'), then its state
            assert o.dtype == np.uint8
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            write((0,))
            string(b"b")
            out.extend(b"\x87R(")  # TUPLE3, REDUCE, MARK
            write(1)
            write(tuple(o.shape))
            out.extend(b"cnumpy\ndtype\n")
            string(b"u1")
            write(0)
            write(1)
            out.extend(b"\x87R")
            write((3, b"|", None, None, None, -1, -1, 0))
            out.extend(b"b")  # BUILD the dtype
            write(False)
            string(o.tobytes())
            out.extend(b"tb")  # the array's state, BUILD
        else:
            raise TypeError(type(o))

    write(obj)
    return bytes(out + b".")


def write_cifar10(folder, n_per_batch=3, seed=0, packed=True):
    """A CIFAR-10 archive in the official layout (``n_per_batch`` images per batch file): the
    .tar.gz, or (``packed=False``) the unpacked cifar-10-batches-py/ folder. Returns the uint8
    images (N, 3, 32, 32) and labels of the train and test splits."""
    rng = np.random.default_rng(seed)
    files, splits = {}, {"train": ([], []), "test": ([], [])}
    for split, names in data_colour.CIFAR10_BATCHES.items():
        for name in names:
            rows = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, 10, size=n_per_batch)]
            files[name] = py2_pickle({b"batch_label": f"{name} of 5".encode(), b"labels": labels,
                                      b"data": rows, b"filenames": [b"x.png"] * n_per_batch})
            splits[split][0].append(rows.reshape(-1, 3, 32, 32))
            splits[split][1].append(labels)
    files["batches.meta"] = py2_pickle({b"label_names": [c.encode() for c in data_colour.CIFAR10_CLASSES],
                                        b"num_cases_per_batch": n_per_batch, b"num_vis": 3072})
    folder.mkdir(parents=True, exist_ok=True)
    if packed:
        with tarfile.open(folder / data_colour.CIFAR10_ARCHIVE, "w:gz") as tar:
            for name, payload in files.items():
                info = tarfile.TarInfo(f"{data_colour.CIFAR10_FOLDER}/{name}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    else:
        (folder / data_colour.CIFAR10_FOLDER).mkdir()
        for name, payload in files.items():
            (folder / data_colour.CIFAR10_FOLDER / name).write_bytes(payload)
    return {s: (np.concatenate(im), np.concatenate(lb)) for s, (im, lb) in splits.items()}


@pytest.mark.parametrize("packed", [True, False])
def test_cifar10_reads_the_official_layout(tmp_path, packed, monkeypatch):
    truth = write_cifar10(tmp_path / "cifar10", packed=packed)
    images, labels = data_colour.read_cifar10(
        tmp_path / "cifar10" / (data_colour.CIFAR10_ARCHIVE if packed else data_colour.CIFAR10_FOLDER), "train")
    assert images.dtype == np.uint8 and images.shape == (15, 3, 32, 32)
    assert np.array_equal(images, truth["train"][0]) and np.array_equal(labels, truth["train"][1])
    ds = data.load_dataset("cifar10", "test", data_dir=tmp_path)  # the parent of cifar10/ works
    assert ds.images.shape == (3, 3, 32, 32) and ds.images.dtype == torch.float32
    assert ds.labels.dtype == torch.int64 and ds.classes[0] == "airplane" and len(ds.classes) == 10
    assert torch.equal(data.to_uint8(ds.images), torch.from_numpy(truth["test"][0]))
    assert torch.equal(ds.labels, torch.from_numpy(truth["test"][1]))
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "cifar10"))  # the folder itself works too
    assert len(data_colour.load_cifar10("train")) == 15


def test_cifar10_pixel_layout_is_channels_then_rows(tmp_path):
    # row r of the file: 1024 red values, 1024 green, 1024 blue, each 32x32 row-major
    rows = np.zeros((1, 3072), np.uint8)
    rows[0, 0], rows[0, 1024 + 33], rows[0, 2048 + 1023] = 10, 20, 30
    folder = tmp_path / data_colour.CIFAR10_FOLDER
    folder.mkdir()
    (folder / "test_batch").write_bytes(py2_pickle({b"labels": [7], b"data": rows}))
    images, labels = data_colour.read_cifar10(folder, "test")
    assert images[0, 0, 0, 0] == 10 and images[0, 1, 1, 1] == 20 and images[0, 2, 31, 31] == 30
    assert labels.tolist() == [7]


def test_cifar10_missing_names_what_to_get(tmp_path, monkeypatch):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz.*download=True"):
        data.load_dataset("cifar10", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="SFS_DATA_DIR is not set"):
        data.load("cifar10")  # no bundled sample to fall back to


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_that_asks_for_code_is_refused(tmp_path, capsys):
    folder = tmp_path / data_colour.CIFAR10_FOLDER
    folder.mkdir()
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        (folder / "test_batch").write_bytes(pickle.dumps({"data": Evil()}, protocol=protocol))
        with pytest.raises(ValueError, match=r"refused to unpickle (__builtin__|builtins)\.print"):
            data_colour.read_cifar10(folder, "test")
    assert "must never run" not in capsys.readouterr().out


def test_damaged_batches_are_refused_by_name(tmp_path):
    folder = tmp_path / data_colour.CIFAR10_FOLDER
    folder.mkdir()
    (folder / "test_batch").write_bytes(py2_pickle({b"labels": [1], b"data": np.zeros((1, 100), np.uint8)}))
    with pytest.raises(ValueError, match="test_batch is not a CIFAR-10 batch.*3072"):
        data_colour.read_cifar10(folder, "test")
    (folder / "test_batch").write_bytes(py2_pickle({b"labels": [1, 2], b"data": np.zeros((1, 3072), np.uint8)}))
    with pytest.raises(ValueError, match="needs 1 'labels'"):
        data_colour.read_cifar10(folder, "test")
    (folder / "test_batch").write_bytes(b"\x80\x02}q\x01(U\x04data")  # cut short
    with pytest.raises(ValueError, match="unreadable pickle"):
        data_colour.read_cifar10(folder, "test")
    with pytest.raises(FileNotFoundError, match="data_batch_1 not found"):
        data_colour.read_cifar10(folder, "train")
    (tmp_path / "broken.tar.gz").write_bytes(b"not a gzip file")
    with pytest.raises(ValueError, match="cannot read the CIFAR-10 archive"):
        data_colour.read_cifar10(tmp_path / "broken.tar.gz", "test")
    with pytest.raises(ValueError, match="split must be one of"):
        data_colour.read_cifar10(folder, "valid")
    with pytest.raises(FileNotFoundError, match="nowhere not found"):
        data_colour.read_cifar10(tmp_path / "nowhere", "test")


# ----------------------------------------------------------------------------------------------
# A folder of images.

def make_images(folder, specs):
    """Write images (name, mode, (width, height)) with a gradient in them."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, mode, (w, h) in specs:
        ramp = np.linspace(0, 1, w * h).reshape(h, w)
        if mode == "I;16":
            img = Image.fromarray((ramp * 65535).astype(np.uint16))
        elif mode in ("L", "P", "1"):
            img = Image.fromarray((ramp * 255).astype(np.uint8), "L").convert(mode)
        else:
            bands = len(mode)
            a = np.stack([(ramp * 255).astype(np.uint8)] * bands, axis=-1)
            img = Image.fromarray(a, mode)
        img.save(folder / name)


def test_folder_of_mixed_sizes_and_modes(tmp_path):
    specs = [("a.png", "RGB", (50, 20)), ("b.png", "L", (7, 9)), ("c.png", "RGBA", (64, 64)),
             ("d.jpg", "RGB", (33, 80)), ("e.png", "P", (40, 40)), ("f.png", "I;16", (16, 48)),
             ("g.JPEG", "L", (100, 60)), ("h.png", "LA", (12, 12)), ("i.png", "1", (30, 31))]
    make_images(tmp_path / "mine", specs)
    (tmp_path / "mine" / "notes.txt").write_text("not an image")
    (tmp_path / "mine" / ".hidden.png").write_bytes(b"skipped")
    ds = data_colour.load_image_folder(tmp_path / "mine", size=24)
    assert ds.images.shape == (len(specs), 3, 24, 24) and ds.images.dtype == torch.float32
    assert ds.images.min() >= -1 and ds.images.max() <= 1
    assert ds.labels.tolist() == [0] * len(specs) and ds.classes == ["mine"] and ds.name == "mine"
    grey = ds.images[1]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])  # grey repeated as RGB
    sixteen = data.to_uint8(ds.images[5:6]).float()
    assert 100 < sixteen.mean() < 155  # the 16-bit ramp scaled to 8 bits, not clipped to white


def test_resize_then_centre_crop(tmp_path):
    # a wide image: left third red, middle green, right third blue; the crop keeps the middle
    a = np.zeros((30, 90, 3), np.uint8)
    a[:, :30, 0], a[:, 30:60, 1], a[:, 60:, 2] = 255, 255, 255
    (tmp_path / "f").mkdir()
    Image.fromarray(a).save(tmp_path / "f" / "wide.png")
    img = data_colour.read_image(tmp_path / "f" / "wide.png", size=10)
    assert img.shape == (3, 10, 10) and img.dtype == np.uint8
    assert (img[1, :, 2:8] == 255).all() and (img[0, :, 2:8] == 0).all() and (img[2] < 30).all()


def test_class_subfolders_give_labels(tmp_path):
    make_images(tmp_path / "pets" / "dogs", [("1.png", "RGB", (10, 10)), ("2.png", "RGB", (10, 10))])
    make_images(tmp_path / "pets" / "cats", [("1.png", "RGB", (8, 12))])
    (tmp_path / "pets" / "empty").mkdir()
    ds = data_colour.load_image_folder(str(tmp_path / "pets"), size=8)
    assert ds.classes == ["cats", "dogs"] and ds.labels.tolist() == [0, 1, 1]


def test_bad_folders_and_sizes_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="folder must be an existing folder.*does not exist"):
        data_colour.load_image_folder(tmp_path / "nowhere")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="folder must be an existing folder.*a file"):
        data_colour.load_image_folder(tmp_path / "file.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="folder .*empty holds no images"):
        data_colour.load_image_folder(tmp_path / "empty")
    with pytest.raises(TypeError, match="folder must be a str or Path"):
        data_colour.load_image_folder(3)
    make_images(tmp_path / "ok", [("a.png", "RGB", (5, 5))])
    for bad, error in ((0, ValueError), (-3, ValueError), (2, ValueError), (10**6, ValueError),
                       (32.0, TypeError), (True, TypeError), ("32", TypeError)):
        with pytest.raises(error, match="size must be an int in"):
            data_colour.load_image_folder(tmp_path / "ok", size=bad)
    make_images(tmp_path / "ok" / "sub", [("b.png", "RGB", (5, 5))])
    with pytest.raises(ValueError, match="both directly and in the subfolders"):
        data_colour.load_image_folder(tmp_path / "ok")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match="cannot read the image .*broken.png"):
        data_colour.load_image_folder(tmp_path / "bad")


# ----------------------------------------------------------------------------------------------
# The CIFAR-10 configuration, and a colour run end to end.

def test_cifar10_config_is_ddpms_and_its_documented_command_is_the_same():
    import argparse
    import shlex

    import sfs.__main__ as cli
    from sfs.train import cifar10_config
    from sfs.unet import UNet, count_params

    cfg = cifar10_config()
    m = cfg.model
    assert (m.in_channels, m.image_size, m.base_channels, m.channel_mults) == (3, 32, 128, (1, 2, 2, 2))
    assert (m.attn_resolutions, m.dropout, cfg.schedule, cfg.batch_size, cfg.ema_decay) == \
        ((16,), 0.1, "linear", 128, 0.9999)
    assert 35.6e6 < count_params(UNet(m)) < 35.8e6  # DDPM's CIFAR-10 model has 35.7 M
    doc = cifar10_config.__doc__.split("::", 1)[1]
    argv = shlex.split(doc.replace("\\\n", " ").replace("DATA", "."))[3:]  # after python -m sfs
    p = argparse.ArgumentParser()
    cli._add_train_args(p)
    from_shell = cli.config_from_args(p.parse_args(argv[1:]), argv)
    from_shell.command = cfg.command
    from_shell.data_dir = cfg.data_dir
    assert from_shell == cfg


def test_a_colour_run_trains_exports_and_loads(tmp_path):
    from dataclasses import replace

    from sfs.checkpoints import load_model
    from sfs.train import cifar10_config, train
    from sfs.unet import UNetConfig

    write_cifar10(tmp_path / "data", n_per_batch=2)
    cfg = cifar10_config()
    small = UNetConfig(in_channels=3, image_size=32, base_channels=8, channel_mults=(1, 2),
                       num_res_blocks=1, attn_resolutions=(16,), num_heads=1, norm_groups=4)
    cfg = replace(cfg, model=small, data_dir=str(tmp_path / "data"), steps=2, batch_size=4,
                  warmup_steps=1, bf16=False, device="cpu", out=str(tmp_path / "run"),
                  sample_every=0, sample_n=2, sample_steps=2, ckpt_every=2, export="tiny-cifar",
                  models_dir=str(tmp_path / "models"))
    train(cfg, progress=False)
    model, card = load_model("tiny-cifar", models_dir=tmp_path / "models")
    assert card["data"] == "cifar10" and card["data_size"] == 10 and "32x32" in card["description"]
    assert (tmp_path / "models" / "tiny-cifar-samples.png").is_file()
    out = model(torch.randn(2, 3, 32, 32), torch.tensor([0, 999]))
    assert out.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"holds images \(3, 32, 32\).*wants \(1, 28, 28\)"):
        train(replace(cfg, model=UNetConfig(base_channels=8, norm_groups=4, num_heads=1)),
              progress=False)


def test_cifar10_is_downloaded_only_when_asked_and_missing(tmp_path, monkeypatch):
    import sfs.__main__ as cli

    calls = []

    def fake_download(folder):  # stands in for the 163 MB download
        calls.append(folder)
        write_cifar10(folder, n_per_batch=2)
        return folder / data_colour.CIFAR10_ARCHIVE

    monkeypatch.setattr(data_colour, "_download_cifar10", fake_download)
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "data"))
    with pytest.raises(FileNotFoundError, match="download=True"):
        data.load_dataset("cifar10", "test")
    assert calls == []
    argv = ["train", "--data", "cifar10", "--download", "--base-channels", "8", "--channel-mults", "1,2",
            "--num-res-blocks", "1", "--attn-resolutions", "", "--num-heads", "1", "--norm-groups", "4",
            "--steps", "1", "--batch-size", "2", "--sample-every", "0", "--device", "cpu",
            "--out", str(tmp_path / "run"), "--no-progress", "--no-probe"]  # no wall-clock choice in a test
    cli.main(argv)
    assert calls == [tmp_path / "data" / "cifar10"]
    assert (tmp_path / "run" / "loss.jsonl").is_file()
    assert len(data.load_dataset("cifar10", "test", download=True)) == 2  # found: no second download
    assert len(calls) == 1

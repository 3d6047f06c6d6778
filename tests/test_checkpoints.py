"""Checkpoints: shipped models verified against their cards, and training states for resume."""

import json
import os

import pytest
import torch

from sfs.checkpoints import (CheckpointError, latest_training_state, load_model,
                             load_training_state, save_checkpoint, save_training_state,
                             write_model_card_md)
from sfs.unet import UNet, UNetConfig

TINY = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, num_heads=2,
                  attn_resolutions=(), num_classes=10)



@pytest.fixture
def shipped(tmp_path):
    torch.manual_seed(0)
    model = UNet(TINY)
    with torch.no_grad():  # non-zero everywhere, so a wrong load would show
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    card = save_checkpoint(tmp_path / "tiny.safetensors", model, TINY, {"target": "eps"})
    return tmp_path, model, card


def test_round_trip_by_name_and_by_path(shipped, monkeypatch):
    models_dir, model, card = shipped
    loaded, card2 = load_model("tiny", models_dir=models_dir)
    assert card2 == card and card["dtype"] == "float16" and card["target"] == "eps"
    assert loaded.config == TINY and not loaded.training
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert b.dtype == torch.float32
        assert torch.equal(a.half().float(), b), name  # exactly the fp16 rounding of the weights
    monkeypatch.setenv("SFS_MODELS_DIR", str(models_dir))
    assert load_model("tiny")[1] == card
    assert load_model(models_dir / "tiny.safetensors")[1] == card
    assert not list(models_dir.glob("*.tmp"))  # atomic writes leave no temporary files


def test_a_flipped_byte_is_a_sha256_mismatch(shipped):
    models_dir, _, _ = shipped
    path = models_dir / "tiny.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # inside the last tensor: the file still parses
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_model("tiny", models_dir=models_dir)


def test_a_truncated_file_is_reported_as_truncated(shipped):
    models_dir, _, _ = shipped
    path = models_dir / "tiny.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model("tiny", models_dir=models_dir)


def test_a_card_with_another_config_is_a_config_mismatch(shipped):
    models_dir, _, card = shipped
    card["config"]["base_channels"] = 16
    (models_dir / "tiny.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="config mismatch.*base_channels"):
        load_model("tiny", models_dir=models_dir)


def test_a_missing_card_is_refused(shipped):
    models_dir, _, _ = shipped
    os.remove(models_dir / "tiny.json")
    with pytest.raises(CheckpointError, match="missing card"):
        load_model("tiny", models_dir=models_dir)


def test_an_unknown_name_lists_the_known_models(shipped):
    models_dir, _, _ = shipped
    with pytest.raises(FileNotFoundError, match="tiny"):
        load_model("nope", models_dir=models_dir)


def test_training_state_round_trip_restores_everything(tmp_path):
    torch.manual_seed(0)
    model, ema = UNet(TINY), UNet(TINY)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    model(torch.randn(2, 1, 28, 28), torch.tensor([1, 2])).pow(2).mean().backward()
    opt.step()
    gen = torch.Generator().manual_seed(5)
    for keep in range(3):
        save_training_state(tmp_path, keep + 1, model, ema, opt, gen, extra={"wall_time_s": 1.5})
    assert sorted(p.name for p in tmp_path.glob("state-*.json")) == \
        ["state-0000002.json", "state-0000003.json"]  # only the last two are kept
    expected_cpu, expected_gen = torch.rand(3), torch.rand(3, generator=gen)

    model2, ema2 = UNet(TINY), UNet(TINY)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=5.0)
    gen2 = torch.Generator()
    side = load_training_state(latest_training_state(tmp_path), model2, ema2, opt2, gen2)
    assert side["step"] == 3 and side["wall_time_s"] == 1.5
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s2["param_groups"][0]["lr"] == 1e-3 and s2["param_groups"][0]["betas"] == (0.9, 0.99)
    for i in s1["state"]:
        for k in s1["state"][i]:
            assert torch.equal(s1["state"][i][k], s2["state"][i][k])
    assert torch.equal(torch.rand(3), expected_cpu)  # the global RNG continues where it was
    assert torch.equal(torch.rand(3, generator=gen2), expected_gen)


def test_a_damaged_newest_state_falls_back_to_the_previous_one(tmp_path):
    model, ema = UNet(TINY), UNet(TINY)
    opt, gen = torch.optim.AdamW(model.parameters()), torch.Generator()
    save_training_state(tmp_path, 1, model, ema, opt, gen)
    save_training_state(tmp_path, 2, model, ema, opt, gen)
    newest = tmp_path / "state-0000002.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])  # a crash half-way through a copy
    assert latest_training_state(tmp_path).name == "state-0000001.json"


def test_model_card_markdown_has_pictures(tmp_path):
    card = {"config": TINY.to_dict(), "target": "eps", "command": "python -m sfs train",
            "file": "tiny.safetensors"}
    md = write_model_card_md(tmp_path / "tiny.md", card, torch.rand(16, 1, 28, 28) * 2 - 1,
                             [1.0 / (i + 1) for i in range(50)])
    text = md.read_text()
    assert "![samples](tiny-samples.png)" in text and "python -m sfs train" in text
    assert (tmp_path / "tiny-samples.png").stat().st_size > 0
    assert (tmp_path / "tiny-loss.png").stat().st_size > 0


@pytest.mark.parametrize("name", ["mnist-uncond", "mnist-cond", "fashion-mnist-cond"])
def test_shipped_models_load_and_denoise(name):
    """The committed models pass their card checks and predict the noise far better than zero."""
    from sfs.data import load_sample
    from sfs.forward import q_sample
    from sfs.schedules import cosine_schedule

    model, card = load_model(name)
    assert card["target"] == "eps" and card["schedule"] == "cosine" and card["T"] == 1000
    assert card["conditional"] == name.endswith("-cond")
    assert (model.config.num_classes == 10) == card["conditional"]
    schedule = cosine_schedule(card["T"])
    x0 = load_sample(card["data"]).images[:16]
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(x0.shape, generator=g)
    t = torch.full((16,), 300)
    with torch.no_grad():
        eps_hat = model(q_sample(schedule, x0, t, eps), t)
    assert (eps_hat - eps).pow(2).mean() < 0.15  # shipped: 0.04-0.07; predicting 0 gives ~1.0


# ----------------------------------------------------------------------------------------------
# One loader for every kind, and damaged files refused cleanly.

import random  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from sfs.classifier import Classifier, ClassifierConfig, load_classifier, save_classifier  # noqa: E402
from sfs.loop import read_log  # noqa: E402


@pytest.fixture
def classifier_file(tmp_path):
    torch.manual_seed(0)
    model = Classifier(ClassifierConfig(width=8, num_classes=15))
    save_classifier(tmp_path / "clf", model, {"test_accuracy": 0.5})
    return tmp_path, model


def test_every_kind_loads_through_load_model(shipped, classifier_file):
    models_dir, _, _ = shipped
    cdir, clf = classifier_file
    unet, card = load_model("tiny", models_dir=models_dir, kind="unet")
    assert isinstance(unet, UNet) and card["kind"] == "unet"
    loaded, ccard = load_model(cdir / "clf.safetensors")
    assert isinstance(loaded, Classifier) and ccard["kind"] == "classifier"
    assert loaded.config.num_classes == 15
    assert load_classifier(cdir / "clf.safetensors")[1] == ccard


def test_a_file_of_another_kind_is_refused_by_name(shipped, classifier_file):
    models_dir, _, _ = shipped
    cdir, _ = classifier_file
    with pytest.raises(CheckpointError, match="holds a unet, not a classifier"):
        load_classifier(models_dir / "tiny.safetensors")
    with pytest.raises(CheckpointError, match="holds a classifier, not a unet"):
        load_model(cdir / "clf.safetensors", kind="unet")
    with pytest.raises(ValueError, match="kind"):
        load_model(cdir / "clf.safetensors", kind="vae")


def test_load_classifier_honours_the_models_dir_variable(classifier_file, monkeypatch):
    cdir, _ = classifier_file
    monkeypatch.setenv("SFS_MODELS_DIR", str(cdir))
    assert isinstance(load_classifier("clf")[0], Classifier)


def test_a_header_claiming_more_bytes_than_the_file_is_refused_before_reading(shipped):
    models_dir, _, _ = shipped
    path = models_dir / "tiny.safetensors"
    data = bytearray(path.read_bytes())
    data[:8] = struct.pack("<Q", 1 << 60)  # one flipped high bit claims an exabyte header
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="promise a header"):
        load_model("tiny", models_dir=models_dir)


@pytest.mark.parametrize("text, what", [("not json", "not a JSON model card"),
                                        ("[1, 2]", "not an object"), ('"x"', "not an object")])
def test_a_card_that_is_not_a_json_object_is_refused(shipped, text, what):
    models_dir, _, _ = shipped
    (models_dir / "tiny.json").write_text(text)
    with pytest.raises(CheckpointError, match=what):
        load_model("tiny", models_dir=models_dir)


def test_a_pickle_renamed_safetensors_is_refused(tmp_path):
    import pickle
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"a": 1}))
    (tmp_path / "evil.json").write_text(json.dumps({"file_sha256": "0", "config": {}}))
    with pytest.raises(CheckpointError):
        load_model(path)


def test_fuzzed_files_are_refused_cleanly(shipped):
    """Truncations and bit flips anywhere (header, metadata, data) end in CheckpointError,
    never in another exception and never in a silently different model."""
    models_dir, _, card = shipped
    path = models_dir / "tiny.safetensors"
    good = path.read_bytes()
    (n,) = struct.unpack("<Q", good[:8])
    rng = random.Random(0)
    cases = [good[:k] for k in (0, 4, 8, 9, 8 + n // 2, 8 + n, len(good) - 1)]
    for _ in range(60):
        data = bytearray(good)
        pos = rng.choice([rng.randrange(8), rng.randrange(8, 8 + n), rng.randrange(8 + n, len(good))])
        data[pos] ^= 1 << rng.randrange(8)
        cases.append(bytes(data))
    for data in cases:
        path.write_bytes(data)
        with pytest.raises(CheckpointError):
            load_model("tiny", models_dir=models_dir)
    path.write_bytes(good)
    assert load_model("tiny", models_dir=models_dir)[1] == card


def test_the_same_weights_give_the_same_bytes_in_every_process(tmp_path):
    """The metadata is one key, so no hash-map order can differ between processes."""
    code = ("import sys, torch; from sfs.checkpoints import save_checkpoint; "
            "from sfs.unet import UNet, UNetConfig; torch.manual_seed(0); "
            "c = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, num_heads=2, attn_resolutions=()); "
            "print(save_checkpoint(sys.argv[1], UNet(c), c, {})['file_sha256'])")
    digests = {subprocess.run([sys.executable, "-c", code, str(tmp_path / f"m{i}.safetensors")],
                              capture_output=True, text=True, check=True).stdout.strip()
               for i in range(3)}
    assert len(digests) == 1


def test_load_training_state_verifies_the_sha256_of_its_tensors(tmp_path):
    model = UNet(TINY)
    ema = UNet(TINY)
    opt = torch.optim.AdamW(model.parameters())
    g = torch.Generator().manual_seed(0)
    sidecar = save_training_state(tmp_path, 5, model, ema, opt, g)
    tensors = tmp_path / json.loads(sidecar.read_text())["tensors"]
    data = bytearray(tensors.read_bytes())
    data[-5] ^= 0xFF
    tensors.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_training_state(sidecar, model, ema, opt, g)


def test_a_torn_last_log_line_is_dropped_and_a_damaged_middle_line_is_an_error(tmp_path):
    log = tmp_path / "loss.jsonl"
    log.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n{"step": 3, "lo')
    assert [r["step"] for r in read_log(log)] == [1, 2]
    log.write_text('{"step": 1, "loss": 0.5}\n{"ste\n{"step": 3, "loss": 0.4}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_log(log)

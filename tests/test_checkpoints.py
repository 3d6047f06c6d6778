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

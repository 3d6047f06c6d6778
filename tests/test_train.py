"""Training: determinism, resume after a crash to the same weights, the CLI, export."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from sfs.__main__ import main
from sfs.checkpoints import load_model
from sfs.data import load_sample
from sfs.train import TrainConfig, batch_indices, ema_update, lr_at, train
from sfs.unet import UNet, UNetConfig

TINY = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, num_heads=2, attn_resolutions=())



class Crash(Exception):
    pass


def _cfg(out, **kw) -> TrainConfig:
    kw = {"lr": 1e-3, **kw}
    return TrainConfig(model=UNetConfig(**TINY), steps=6, batch_size=8, warmup_steps=2,
                       conditional=True, ckpt_every=3, sample_every=0, log_every=1, out=str(out),
                       device="cpu", **kw)


def _final_state(run_dir) -> dict:
    return load_file(str(run_dir / "state-0000006.safetensors"))


@pytest.fixture(scope="module")
def sample():
    data = load_sample("mnist")
    data.images, data.labels = data.images[:64], data.labels[:64]
    return data


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, sample):
    out = tmp_path_factory.mktemp("straight")
    train(_cfg(out), dataset=sample, progress=False)
    return out


def test_a_killed_run_resumes_to_the_same_weights(straight_run, sample, tmp_path):
    def crash_at_5(step):
        if step == 5:  # two steps after the checkpoint at step 3: they must be redone
            raise Crash
    with pytest.raises(Crash):
        train(_cfg(tmp_path), dataset=sample, on_step=crash_at_5, progress=False)
    assert [json.loads(s)["step"] for s in (tmp_path / "loss.jsonl").read_text().splitlines()] \
        == [1, 2, 3, 4, 5]
    train(_cfg(tmp_path), dataset=sample, progress=False)  # resumes from step 3

    a, b = _final_state(straight_run), _final_state(tmp_path)
    assert a.keys() == b.keys() and any(k.startswith("optim.") for k in a)
    for k in a:
        if not k.startswith("rng."):
            assert torch.equal(a[k], b[k]), k  # model, EMA and optimizer, bit for bit
    log_a = (straight_run / "loss.jsonl").read_text()
    assert log_a == (tmp_path / "loss.jsonl").read_text()  # the lost steps were logged once
    assert len(log_a.splitlines()) == 6


def test_resuming_with_other_settings_is_refused(straight_run, sample):
    cfg = _cfg(straight_run, lr=2e-3)
    cfg.steps = 8  # allowed to change
    with pytest.raises(ValueError, match="lr=0.001 there, 0.002 now"):
        train(cfg, dataset=sample, progress=False)


def test_another_seed_gives_other_weights(straight_run, sample, tmp_path):
    cfg = _cfg(tmp_path, seed=1)
    cfg.steps = 3
    train(cfg, dataset=sample, progress=False)
    a = load_file(str(straight_run / "state-0000003.safetensors"))
    b = load_file(str(tmp_path / "state-0000003.safetensors"))
    assert not torch.equal(a["model.conv_in.weight"], b["model.conv_in.weight"])


def test_batches_are_a_function_of_seed_and_step():
    seen = torch.cat([batch_indices(50, 8, seed=0, step=s) for s in range(6)])  # one epoch
    assert len(set(seen.tolist())) == 48  # a permutation: no image twice in an epoch
    assert torch.equal(batch_indices(50, 8, 0, 7), batch_indices(50, 8, 0, 7, cache={}))
    assert not torch.equal(batch_indices(50, 8, 0, 0), batch_indices(50, 8, 0, 6))  # new epoch
    with pytest.raises(ValueError, match="larger than the data set"):
        batch_indices(5, 8, 0, 0)


def test_warmup_and_ema():
    assert lr_at(0, 1e-3, 10) == pytest.approx(1e-4) and lr_at(50, 1e-3, 10) == 1e-3
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    w_a, w_b = a.weight.detach().clone(), b.weight.detach().clone()
    ema_update(a, b, decay=0.999, step=10**6)
    assert torch.allclose(a.weight, 0.999 * w_a + 0.001 * w_b)
    ema_update(a, b, decay=0.999, step=0)  # warm-up: d = 1/10 at step 0
    assert torch.allclose(a.weight, 0.1 * (0.999 * w_a + 0.001 * w_b) + 0.9 * w_b)


def test_cosine_decay_follows_its_formula_and_ends_near_zero():
    lr, warm, steps = 1e-3, 10, 110
    assert lr_at(3, lr, warm, "cosine", steps) == lr_at(3, lr, warm)  # the same warmup
    assert lr_at(10, lr, warm, "cosine", steps) == pytest.approx(lr)  # s = 0: the peak
    assert lr_at(60, lr, warm, "cosine", steps) == pytest.approx(lr / 2)  # s = 1/2
    s = 99 / 100
    assert lr_at(109, lr, warm, "cosine", steps) == pytest.approx(lr * (1 + math.cos(math.pi * s)) / 2)
    assert 0 < lr_at(109, lr, warm, "cosine", steps) < 1e-3 * lr  # the last step still moves
    rates = [lr_at(k, lr, warm, "cosine", steps) for k in range(warm, steps)]
    assert all(a > b for a, b in zip(rates, rates[1:]))  # strictly decreasing after the warmup
    assert lr_at(500, lr, warm, "cosine", steps) == 0.0  # past the end (a longer resume): 0


@pytest.mark.parametrize("decay, steps, match", [
    ("linear", 100, "lr_decay must be one of"), ("cosine", 10, "needs steps > warmup_steps"),
    ("cosine", None, "needs steps > warmup_steps")])
def test_bad_lr_decay_is_refused_at_the_call(decay, steps, match):
    with pytest.raises(ValueError, match=match):
        lr_at(0, 1e-3, 10, decay, steps)


def test_a_cosine_run_resumes_to_the_same_weights_and_refuses_other_steps(sample, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(_cfg(straight, lr_decay="cosine"), dataset=sample, progress=False)
    lrs = [json.loads(s)["lr"] for s in (straight / "loss.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([lr_at(k, 1e-3, 2, "cosine", 6) for k in range(6)])

    def crash_at_5(step):
        if step == 5:
            raise Crash
    with pytest.raises(Crash):
        train(_cfg(resumed, lr_decay="cosine"), dataset=sample, on_step=crash_at_5, progress=False)
    longer = _cfg(resumed, lr_decay="cosine")
    longer.steps = 8  # free to change for a constant rate, not for a decay that ends at steps
    with pytest.raises(ValueError, match="steps=6 there, 8 now"):
        train(longer, dataset=sample, progress=False)
    train(_cfg(resumed, lr_decay="cosine"), dataset=sample, progress=False)
    a, b = _final_state(straight), _final_state(resumed)
    for k in a:
        if not k.startswith("rng."):
            assert torch.equal(a[k], b[k]), k


def test_a_run_saved_before_lr_decay_existed_still_resumes(straight_run, sample, tmp_path):
    import shutil
    old = tmp_path / "old"
    shutil.copytree(straight_run, old)
    saved = json.loads((old / "config.json").read_text())
    del saved["lr_decay"]  # as written by sfs before the field
    (old / "config.json").write_text(json.dumps(saved))
    cfg = _cfg(old)
    cfg.steps = 7
    train(cfg, dataset=sample, progress=False)  # resumes from step 6
    assert (old / "state-0000007.safetensors").is_file()
    with pytest.raises(ValueError, match="lr_decay='constant' there, 'cosine' now"):
        train(_cfg(old, lr_decay="cosine"), dataset=sample, progress=False)


def test_training_reduces_the_loss(sample, tmp_path):
    cfg = _cfg(tmp_path)
    cfg.conditional = False
    cfg.steps, cfg.ckpt_every, cfg.lr = 30, 30, 3e-3
    train(cfg, dataset=sample, progress=False)
    losses = [json.loads(s)["loss"] for s in (tmp_path / "loss.jsonl").read_text().splitlines()]
    assert sum(losses[-8:]) / 8 < 0.8 * sum(losses[:8]) / 8


def test_cli_trains_exports_and_the_export_loads(tmp_path, monkeypatch):
    import sfs.train
    small = load_sample("mnist")
    small.images, small.labels = small.images[:32], small.labels[:32]
    monkeypatch.setattr(sfs.train, "load_dataset", lambda *a, **k: small)
    models = tmp_path / "models"
    main(["train", "--data", "mnist", "--steps", "2", "--batch-size", "8", "--base-channels", "8",
          "--channel-mults", "1,2", "--attn-resolutions", "", "--num-res-blocks", "1", "--num-heads", "2",
          "--sample-every", "2", "--sample-n", "4", "--sample-steps", "2", "--device", "cpu",
          "--threads", "1",  # as the rest of the suite (conftest.py); bf16 is left to the probe
          "--out", str(tmp_path / "run"), "--export", "tiny", "--models-dir", str(models),
          "--no-progress"])
    model, card = load_model("tiny", models_dir=models)
    assert card["steps"] == 2 and card["target"] == "eps" and card["schedule"] == "cosine"
    assert card["T"] == 1000 and card["command"].startswith("python -m sfs train")
    assert len(card["data_sha256"]) == 64 and len(card["file_sha256"]) == 64
    assert model.config.base_channels == 8 and model.config.num_classes is None
    assert (models / "tiny.md").is_file() and (models / "tiny-samples.png").is_file()
    assert (tmp_path / "run" / "samples" / "step-0000002.png").is_file()
    x = torch.randn(2, 1, 28, 28)
    assert model(x, torch.tensor([10, 900])).shape == x.shape


def test_a_time_limit_stops_with_a_checkpoint(sample, tmp_path):
    cfg = _cfg(tmp_path)
    cfg.minutes = 0.0  # out of time after the first step
    train(cfg, dataset=sample, progress=False)
    assert [p.name for p in tmp_path.glob("state-*.json")] == ["state-0000001.json"]


def test_a_torn_log_line_and_stale_temporaries_do_not_stop_a_resume(straight_run, sample, tmp_path):
    def crash_at_4(step):
        if step == 4:
            raise Crash
    with pytest.raises(Crash):
        train(_cfg(tmp_path), dataset=sample, on_step=crash_at_4, progress=False)
    with open(tmp_path / "loss.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # power lost in the middle of a line
    (tmp_path / ".state-0000006.safetensors.abc.tmp").write_bytes(b"half a file")
    train(_cfg(tmp_path), dataset=sample, progress=False)
    assert (straight_run / "loss.jsonl").read_text() == (tmp_path / "loss.jsonl").read_text()
    assert not list(tmp_path.glob(".*.tmp"))
    a, b = _final_state(straight_run), _final_state(tmp_path)
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("rng."))

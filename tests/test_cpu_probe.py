"""The CPU settings probe: the choice from measured rates (fake timers, not wall-clock), what the
run records, resume keeping the choice, and the command line."""

import json

import pytest
import torch
from safetensors.torch import load_file

from sfs import cpu_probe
from sfs.__main__ import main
from sfs.checkpoints import read_card
from sfs.cpu_probe import candidates, choose, measure_rate, probe, settle
from sfs.data import load_sample
from sfs.train import TrainConfig, train
from sfs.unet import UNetConfig

TINY = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, num_heads=2, attn_resolutions=())
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def keep_threads():
    """settle() sets torch's thread count for the process; put it back after each test."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def sample():
    data = load_sample("mnist")
    data.images, data.labels = data.images[:64], data.labels[:64]
    return data


def fake_rates(rates: dict, calls: list | None = None):
    """A training_step_rate stand-in: rate_of(c) returns rates[c] (an exception is raised)."""
    def make(*_):
        def rate_of(c):
            if calls is not None:
                calls.append(c)
            r = rates[c]
            if isinstance(r, Exception):
                raise r
            return r
        return rate_of
    return make


def _cfg(out, **kw) -> TrainConfig:
    return TrainConfig(model=UNetConfig(**TINY), steps=6, batch_size=8, warmup_steps=2,
                       ckpt_every=3, sample_every=0, log_every=1, out=str(out), device="cpu", **kw)


# ----------------------------------------------------------------------------------------------
# The choice: pure functions of measured rates.

def test_candidates_vary_only_what_the_user_left_unset():
    assert candidates(2) == [(False, 1), (False, 2), (True, 1), (True, 2)]
    assert candidates(1) == [(False, 1), (True, 1)]  # a single core: only bf16 is in question
    assert candidates(8, bf16=True) == [(True, 1), (True, 8)]
    assert candidates(8, threads=3) == [(False, 3), (True, 3)]
    assert candidates(8, bf16=False, threads=2) == [(False, 2)]


def test_the_fastest_wins_and_ties_go_to_the_plainer_setting():
    cands = candidates(2)
    assert choose(dict.fromkeys(cands, 100.0)) == (False, 1)  # exact tie: fp32, one thread
    assert choose(dict(zip(cands, [100.0, 90.0, 130.0, 160.0]))) == (True, 2)
    assert choose(dict(zip(cands, [100.0, 104.0, 80.0, 80.0]))) == (False, 1)  # within 5 %
    assert choose(dict(zip(cands, [100.0, 104.0, 80.0, 80.0])), margin=0) == (False, 2)
    assert choose(dict(zip(cands, [100.0, 50.0, 106.0, 50.0]))) == (True, 1)  # more than 5 %


def test_a_failed_candidate_is_never_chosen():
    cands = candidates(1)
    rates = {(False, 1): 10.0, (True, 1): RuntimeError("bf16 autocast is not supported\nmore")}
    choice, measured, errors = probe(cands, fake_rates(rates)())
    assert choice == (False, 1) and measured == {(False, 1): 10.0, (True, 1): None}
    assert errors == {(True, 1): "RuntimeError: bf16 autocast is not supported"}
    with pytest.raises(ValueError, match="no CPU setting could be measured"):
        choose({(False, 1): None, (True, 1): None})


def test_measure_rate_skips_the_warm_up_and_stops_after_min_s():
    # the clock is read around the warm-up step, then at the start and after each timed step
    ticks = iter([0.0, 0.5, 1.0, 1.2, 1.4, 1.6, 1.8])
    steps = []
    rate = measure_rate(lambda: steps.append(1) or 8, min_s=0.35, max_steps=5,
                        clock=lambda: next(ticks))
    assert len(steps) == 3  # warm-up + two timed steps (0.2 s, then 0.4 s >= 0.35)
    assert rate == pytest.approx(16 / 0.4)
    ticks = iter([0.0, 0.1, 0.1, 0.2, 0.3])
    assert measure_rate(lambda: 4, min_s=10, max_steps=2, clock=lambda: next(ticks)) == \
        pytest.approx(8 / 0.2)  # max_steps reached first
    ticks, steps = iter([0.0, 5.0]), []
    assert measure_rate(lambda: steps.append(1) or 8, clock=lambda: next(ticks)) == 8 / 5.0
    assert len(steps) == 1  # a 5 s warm-up step is the measurement: no more of them


# ----------------------------------------------------------------------------------------------
# settle(): what a run records and applies.

def test_settle_probes_what_is_unset_and_records_it(monkeypatch):
    monkeypatch.setattr(cpu_probe, "usable_cpus", lambda: 2)
    rates = dict(zip(candidates(2), [50.0, 80.0, 40.0, RuntimeError("no bf16")]))
    monkeypatch.setattr(cpu_probe, "training_step_rate", fake_rates(rates))
    cfg = TrainConfig(bf16=None, probe=True, device="cpu")
    settle(cfg, None, None, 64, CPU)
    assert (cfg.bf16, cfg.threads) == (False, 2) and torch.get_num_threads() == 2
    assert cfg.cpu_settings == {"bf16": False, "threads": 2,
                                "probe_img_s": {"fp32, 1 thread": 50.0, "fp32, 2 threads": 80.0,
                                                "bf16, 1 thread": 40.0, "bf16, 2 threads": None},
                                "probe_errors": {"bf16, 2 threads": "RuntimeError: no bf16"}}
    json.dumps(cfg.to_dict())  # config.json can hold it


def test_settle_respects_the_user_and_probes_only_on_cpu(monkeypatch):
    monkeypatch.setattr(cpu_probe, "usable_cpus", lambda: 2)
    calls = []
    monkeypatch.setattr(cpu_probe, "training_step_rate",
                        fake_rates(dict.fromkeys(candidates(2), 1.0), calls))
    cfg = TrainConfig(bf16=True, probe=True)  # bf16 set: only the threads are probed
    settle(cfg, None, None, 64, CPU)
    assert calls == [(True, 1), (True, 2)] and (cfg.bf16, cfg.threads) == (True, 1)
    calls.clear()
    for cfg in (TrainConfig(bf16=False, threads=2, probe=True),  # both set
                TrainConfig(bf16=None, probe=False),             # --no-probe
                TrainConfig(bf16=None, probe=True)):             # but on a GPU
        settle(cfg, None, None, 64, torch.device("cuda") if cfg.probe and cfg.bf16 is None else CPU)
        assert calls == [] and cfg.bf16 in (True, False) and cfg.cpu_settings is None
    assert TrainConfig(bf16=None).bf16 is None  # (unchanged defaults) ...
    cfg = TrainConfig(bf16=None, probe=False)
    settle(cfg, None, None, 64, CPU)
    assert cfg.bf16 is False and cfg.threads is None  # ... unset without a probe: fp32, torch's


def test_a_resumed_run_keeps_the_recorded_choice_without_probing(monkeypatch):
    def no_probe(*_):
        raise AssertionError("a resumed run must not probe")
    monkeypatch.setattr(cpu_probe, "training_step_rate", no_probe)
    recorded = {"bf16": True, "threads": 1, "probe_img_s": {"bf16, 1 thread": 9.0}, "probe_errors": {}}
    saved = {"bf16": True, "threads": 1, "probe": True, "cpu_settings": recorded}
    cfg = TrainConfig(bf16=None, probe=True)
    settle(cfg, None, None, 64, CPU, saved)
    assert (cfg.bf16, cfg.threads, cfg.cpu_settings) == (True, 1, recorded)
    cfg = TrainConfig(bf16=False, threads=2, probe=True)  # set by the user on resume: honoured
    settle(cfg, None, None, 64, CPU, saved)
    assert (cfg.bf16, cfg.threads) == (False, 2) and torch.get_num_threads() == 2
    cfg = TrainConfig(bf16=None, probe=True)  # a run from before the probe existed
    settle(cfg, None, None, 64, CPU, {"bf16": False})
    assert (cfg.bf16, cfg.threads, cfg.cpu_settings) == (False, None, None)


@pytest.mark.parametrize("field, value, error, match", [
    ("threads", 0, ValueError, "threads must be an int >= 1, got 0"),
    ("threads", 1.5, TypeError, "threads must be an int >= 1, got float"),
    ("bf16", "yes", TypeError, "bf16 must be True, False or None, got str"),
    ("probe", None, TypeError, "probe must be bool, got NoneType"),
])
def test_bad_settings_name_the_parameter(field, value, error, match):
    cfg = TrainConfig(probe=True)
    setattr(cfg, field, value)
    with pytest.raises(error, match=match):
        settle(cfg, None, None, 64, CPU)


# ----------------------------------------------------------------------------------------------
# In a real (tiny) run: real steps, so the choice itself is whatever this machine measures.

def test_probing_leaves_the_training_bit_exact(sample, tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_probe, "usable_cpus", lambda: 1)  # one thread: quick on a busy machine
    quick = cpu_probe.measure_rate
    monkeypatch.setattr(cpu_probe, "measure_rate", lambda step: quick(step, min_s=0.1))
    probed = _cfg(tmp_path / "probed", bf16=None, probe=True)
    train(probed, dataset=sample, progress=False)
    settings = json.loads((tmp_path / "probed" / "config.json").read_text())["cpu_settings"]
    assert set(settings["probe_img_s"]) == {"fp32, 1 thread", "bf16, 1 thread"}
    assert (settings["bf16"], settings["threads"]) == (probed.bf16, probed.threads)
    plain = _cfg(tmp_path / "plain", bf16=probed.bf16, threads=probed.threads)
    train(plain, dataset=sample, progress=False)
    a = load_file(str(tmp_path / "probed" / "state-0000006.safetensors"))
    b = load_file(str(tmp_path / "plain" / "state-0000006.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the probe drew nothing from the run's RNGs

    def no_probe(*_):
        raise AssertionError("a resumed run must not probe")
    monkeypatch.setattr(cpu_probe, "training_step_rate", no_probe)
    again = _cfg(tmp_path / "probed", bf16=None, probe=True)
    again.steps = 7  # the same command, resumed for one more step
    train(again, dataset=sample, progress=False)
    assert (again.bf16, again.threads, again.cpu_settings) == (probed.bf16, probed.threads, settings)


def test_the_cli_probes_and_the_card_records_it(tmp_path, monkeypatch, sample):
    import sfs.train
    monkeypatch.setattr(sfs.train, "load_dataset", lambda *a, **k: sample)
    monkeypatch.setattr(cpu_probe, "usable_cpus", lambda: 1)
    rates = {(False, 1): 10.0, (True, 1): 20.0}
    monkeypatch.setattr(cpu_probe, "training_step_rate", fake_rates(rates))
    models = tmp_path / "models"
    args = ["train", "--steps", "2", "--batch-size", "8", "--base-channels", "8", "--channel-mults",
            "1,2", "--attn-resolutions", "", "--num-res-blocks", "1", "--num-heads", "2",
            "--sample-every", "0", "--sample-n", "2", "--sample-steps", "2", "--device", "cpu",
            "--out", str(tmp_path / "run"), "--models-dir", str(models), "--no-progress"]
    main(args + ["--export", "tiny"])
    card = read_card("tiny", models_dir=models)
    assert card["bf16"] is True and card["cpu_settings"]["probe_img_s"] == \
        {"fp32, 1 thread": 10.0, "bf16, 1 thread": 20.0}
    assert "| CPU settings | bf16, 1 thread(s), chosen by timing images/s at start-up: fp32, 1 " \
        "thread 10.0, bf16, 1 thread 20.0 |" in (models / "tiny.md").read_text()
    main(args + ["--no-probe", "--no-bf16", "--out", str(tmp_path / "run2")])
    cfg = json.loads((tmp_path / "run2" / "config.json").read_text())
    assert (cfg["bf16"], cfg["probe"], cfg["cpu_settings"]) == (False, False, None)


def test_train_help_shows_the_flags(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--bf16, --no-bf16" in text and "--no-probe" in text and "--threads" in text


@pytest.mark.parametrize("argv, match", [
    (["--threads", "0"], "argument --threads: '0' is not an int >= 1"),
    (["--threads", "two"], "argument --threads: 'two' is not an int >= 1"),
    (["--bf16=yes"], "argument --bf16/--no-bf16: ignored explicit argument 'yes'"),
    (["--no-probe=1"], "argument --no-probe: ignored explicit argument '1'"),
])
def test_bad_flags_end_in_one_line_naming_them(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--device", "cpu", *argv])
    assert e.value.code == 2 and match in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train-autoencoder", "train-text2image"])
def test_every_training_command_shares_the_probe_options(command):
    """--bf16/--no-bf16, --threads and --no-probe mean the same for every training command: by
    default a CPU run probes the settings left unset; --no-probe or setting both turns it off."""
    import argparse
    from sfs import train_autoencoder, train_text2image
    mod = train_autoencoder if command == "train-autoencoder" else train_text2image
    p = argparse.ArgumentParser()
    mod.add_args(p)
    cfg = mod.config_from_args(p.parse_args([]), [command])
    assert (cfg.bf16, cfg.threads, cfg.probe, cfg.cpu_settings) == (None, None, True, None)
    cfg = mod.config_from_args(p.parse_args(["--no-bf16", "--threads", "1", "--no-probe"]), [command])
    assert (cfg.bf16, cfg.threads, cfg.probe) == (False, 1, False)
    library_default = (train_autoencoder.AutoencoderTrainConfig() if mod is train_autoencoder
                       else train_text2image.TextToImageTrainConfig())
    assert (library_default.bf16, library_default.probe) == (False, False)  # Python calls: as told

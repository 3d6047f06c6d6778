"""benchmarks/cpu_recipe.sh and bench_cpu_recipe.py without training for minutes: the recipe's and the
previous recipe's options are valid ``python -m sfs train`` options that build the networks they
claim, the script refuses a wrong call, and --quick's IDX copy of the bundled sample reads back."""

import argparse
import importlib.util
import re
import shlex
import subprocess
from pathlib import Path

import torch

from sfs import data
from sfs.__main__ import _add_train_args, config_from_args

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "cpu_recipe.sh"
spec = importlib.util.spec_from_file_location("bench_cpu_recipe", ROOT / "benchmarks" / "bench_cpu_recipe.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def parse_train(argv: list[str]):
    p = argparse.ArgumentParser()
    _add_train_args(p)
    return config_from_args(p.parse_args(argv), ["train", *argv])


def recipe_argv(minutes="20", out="runs/x") -> list[str]:
    """The options that cpu_recipe.sh passes to `python -m sfs train`, read from the script."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if "-m sfs train" in ln)
    argv = shlex.split(line.split("-m sfs train", 1)[1].replace('"$MINUTES"', minutes).replace('"$OUT', '"' + out))
    return argv


def test_the_recipe_is_the_lean_unet_with_the_probe():
    cfg = parse_train(recipe_argv("7.5", "/tmp/r"))
    assert (cfg.minutes, cfg.export, cfg.models_dir, cfg.out) == (7.5, "cpu-recipe", "/tmp/r", "/tmp/r/run")
    m = cfg.model
    assert (m.base_channels, m.channel_mults, m.num_res_blocks, m.attn_resolutions, m.dropout) == \
        (32, (1, 2, 4), 1, (7,), 0.0)
    assert cfg.bf16 is None and cfg.threads is None and cfg.probe  # the probe chooses the CPU settings
    assert cfg.data == "mnist" and not cfg.conditional and cfg.target == "eps"


def test_the_previous_recipe_parses_and_is_fixed_fp32_one_thread(tmp_path):
    argv = bench.train_command("previous", 20, tmp_path)
    assert argv[1:4] == ["-m", "sfs", "train"]
    cfg = parse_train(argv[4:])
    assert (cfg.minutes, cfg.batch_size, cfg.model.base_channels, cfg.bf16, cfg.threads) == (20, 32, 16, False, 1)
    assert bench.train_command("recipe", 5, tmp_path)[-2:] == ["5", str(tmp_path)]


def test_the_script_refuses_a_wrong_call():
    out = subprocess.run(["bash", str(SCRIPT), "20"], capture_output=True, text=True)
    assert out.returncode == 2 and re.search(r"usage: bash benchmarks/cpu_recipe.sh MINUTES OUT_DIR", out.stderr)


def test_quick_data_is_the_bundled_sample(tmp_path):
    folder = bench.sample_as_idx(tmp_path / "q")
    got, want = data.load("mnist", "train", folder), data.load_sample("mnist")
    assert torch.equal(got.images, want.images) and torch.equal(got.labels, want.labels)


def test_flops_per_image_counts_forward_and_backward():
    from sfs.unet import UNet, UNetConfig
    small = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(),
                            norm_groups=4))
    wide = UNet(UNetConfig(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(),
                           norm_groups=4))
    f_small, f_wide = bench.flops_per_image(small), bench.flops_per_image(wide)
    assert 2 * f_small < f_wide < 5 * f_small  # about 4x: the convolutions' FLOPs grow with channels^2

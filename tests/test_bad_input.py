"""Bad input, generated: every checked parameter of the public API and the command line is fed
values outside its range or of the wrong kind, and must be refused at the call with a ValueError or
TypeError (FileNotFoundError for a data folder; exit status 2 for the command line) whose message
names the parameter. Values inside the range must pass the same checks.

Hypothesis generates the values (derandomized: CI sees the same cases on every run; no example
database is written). Run with ``--hypothesis-show-statistics`` to see how many cases each test ran.
"""

import contextlib
import functools
import gzip
import io
import math
import struct
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfs import data, data_colour, metrics
from sfs.__main__ import main
from sfs.classifier import ClassifierConfig, NoisyClassifier
from sfs.guidance import CFGModel, ClassifierGuidedModel
from sfs.samplers import ddim_sample, ddim_sigma, ddim_timesteps
from sfs.schedules import cosine_schedule
from sfs.unet import MAX_T, UNet, UNetConfig
from sfs.validate import check_float, check_int, check_ints, check_plain_name

FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SCHEDULE = cosine_schedule(100)


def refused(call, name: str, errors=(ValueError, TypeError)) -> Exception:
    """call() must raise one of ``errors`` whose message names ``name``."""
    with pytest.raises(errors) as info:
        call()
    assert name in str(info.value), f"message does not name {name!r}: {info.value}"
    return info.value


# ----------------------------------------------------------------------------------------------
# Strategies: values that are not numbers of the kind asked for, or are outside the range.

not_ints = st.one_of(st.floats(allow_nan=True), st.booleans(), st.text(max_size=3), st.none(),
                     st.lists(st.integers(), max_size=2), st.just(torch.tensor(1.0)))
not_numbers = st.one_of(st.booleans(), st.text(max_size=3), st.none(),
                        st.lists(st.floats(), max_size=2), st.just(torch.tensor(0.5)))


def bad_ints(low=None, high=None):
    parts = [not_ints]
    if low is not None:
        parts.append(st.integers(max_value=low - 1))
    if high is not None:
        parts.append(st.integers(min_value=high + 1))
    return st.one_of(*parts)


def bad_floats(low=None, high=None, low_open=False, high_open=False):
    parts = [not_numbers, st.sampled_from([math.nan, math.inf, -math.inf])]
    if low is not None:
        parts.append(st.floats(max_value=low, exclude_max=not low_open, allow_nan=False))
    if high is not None:
        parts.append(st.floats(min_value=high, exclude_min=not high_open, allow_nan=False))
    return st.one_of(*parts)


# ----------------------------------------------------------------------------------------------
# sfs.validate itself: the range it states is the range it accepts.

@FAST
@given(st.integers(-10**6, 10**6), st.integers(-100, 100), st.integers(0, 100))
def test_check_int_accepts_exactly_its_range(value, low, width):
    high = low + width
    if low <= value <= high:
        assert check_int("n", value, low, high) == value
    else:
        refused(lambda: check_int("n", value, low, high), f"n must be an int in [{low}, {high}]")


@FAST
@given(not_ints)
def test_check_int_refuses_what_is_not_an_int(value):
    refused(lambda: check_int("n", value, 0), "n must be an int", TypeError)


@FAST
@given(st.floats(allow_nan=True, allow_infinity=True), st.floats(-10, 10), st.floats(0, 10),
       st.booleans(), st.booleans())
def test_check_float_accepts_exactly_its_range(value, low, width, low_open, high_open):
    high = low + width
    inside = (math.isfinite(value) and (value > low if low_open else value >= low)
              and (value < high if high_open else value <= high))
    if inside:
        assert check_float("x", value, low, high, low_open, high_open) == value
    else:
        refused(lambda: check_float("x", value, low, high, low_open, high_open), "x must be a finite number")


# ----------------------------------------------------------------------------------------------
# The U-Net: every config field, and the forward inputs.

INT_FIELDS = ["in_channels", "image_size", "base_channels", "num_res_blocks", "num_heads", "norm_groups"]


@FAST
@given(st.sampled_from(INT_FIELDS), bad_ints(low=1))
def test_unet_config_refuses_bad_counts(field, bad):
    refused(lambda: UNetConfig(**{field: bad}), field)


@FAST
@given(bad_ints(low=1).filter(lambda v: v is not None))
def test_unet_config_refuses_bad_num_classes(bad):
    refused(lambda: UNetConfig(num_classes=bad), "num_classes")


@FAST
@given(bad_floats(0, 1, high_open=True))
def test_unet_config_refuses_bad_dropout(bad):
    refused(lambda: UNetConfig(dropout=bad), "dropout")


def _with_one_bad(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """Lists of good values with one bad value inserted somewhere."""
    return st.tuples(st.lists(good, max_size=2), bad, st.lists(good, max_size=2)).map(
        lambda p: [*p[0], p[1], *p[2]])


@FAST
@given(st.one_of(st.just(()), st.just([]), _with_one_bad(st.integers(1, 4), bad_ints(low=1)),
                 st.integers(), st.text(max_size=3), st.none()))
def test_unet_config_refuses_bad_channel_mults(bad):
    refused(lambda: UNetConfig(channel_mults=bad, attn_resolutions=()), "channel_mults")


@FAST
@given(st.one_of(_with_one_bad(st.sampled_from([7, 14, 28]),
                               st.one_of(bad_ints(low=1), st.integers(1, 100).filter(lambda r: r not in (7, 14, 28)))),
                 st.integers(), st.none()))
def test_unet_config_refuses_attention_at_resolutions_it_does_not_have(bad):
    refused(lambda: UNetConfig(attn_resolutions=bad), "attn_resolutions")


@FAST
@given(st.integers(1, 3), st.integers(1, 200))
def test_unet_config_refuses_image_sizes_its_levels_do_not_divide(levels, size):
    mults = (1,) * levels
    if size % 2 ** (levels - 1) == 0:
        assert UNetConfig(image_size=size, channel_mults=mults, attn_resolutions=()).image_size == size
    else:
        refused(lambda: UNetConfig(image_size=size, channel_mults=mults, attn_resolutions=()), "image_size")


@FAST
@given(st.integers(1, 48), st.integers(1, 16), st.integers(1, 16))
def test_unet_config_refuses_channels_its_groups_or_heads_do_not_divide(base, groups, heads):
    make = lambda: UNetConfig(base_channels=base, channel_mults=(1, 2), attn_resolutions=(28,),  # noqa: E731
                              norm_groups=groups, num_heads=heads)
    if base % groups:
        refused(make, "norm_groups")
    elif base % heads:  # attention at 28x28 sees base channels
        refused(make, "num_heads")
    else:
        assert make().base_channels == base


@FAST
@given(st.one_of(st.dictionaries(st.sampled_from(INT_FIELDS), st.integers(1, 8), max_size=3),
                 st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=2)))
def test_unet_refuses_a_config_that_is_not_a_unet_config(bad):
    err = refused(lambda: UNet(bad), "config must be a UNetConfig", TypeError)
    if isinstance(bad, dict):
        assert "UNetConfig(**d)" in str(err)


@settings(FAST, max_examples=25)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 4), st.sampled_from([1, 2]),
       st.lists(st.booleans(), min_size=3, max_size=3), st.booleans())
def test_any_channel_count_and_any_size_its_levels_divide(channels, levels, k, heads, attn, conditional):
    """Valid configs build and map x_t (B, C, S, S) to the same shape, for C channels and any S
    that 2 ** (levels - 1) divides (the capstone uses 3 x 48 x 48 and 4 x 12 x 12)."""
    size = k * 2 ** (levels - 1) * 3
    res = [size // 2 ** i for i in range(levels)]
    cfg = UNetConfig(in_channels=channels, image_size=size, base_channels=4, channel_mults=(1, 2, 2)[:levels],
                     num_res_blocks=1, attn_resolutions=tuple(r for r, a in zip(res, attn) if a),
                     num_heads=heads, norm_groups=2, dropout=0.0, num_classes=3 if conditional else None)
    model = UNet(cfg).eval()
    x_t = torch.randn(2, channels, size, size)
    cond = torch.tensor([0, 3]) if conditional else None
    with torch.no_grad():
        out = model(x_t, torch.tensor([0, 99]), cond)
    assert out.shape == x_t.shape and torch.isfinite(out).all()


TINY = UNetConfig(image_size=8, base_channels=4, channel_mults=(1, 2), num_res_blocks=1,
                  attn_resolutions=(), num_heads=1, norm_groups=2, dropout=0.0, num_classes=10)
COND_NET, UNCOND_NET = UNet(TINY).eval(), UNet(UNetConfig(**{**TINY.to_dict(), "num_classes": None})).eval()
X, T_OK = torch.zeros(2, 1, 8, 8), torch.tensor([0, 5])


@FAST
@given(st.one_of(
    st.lists(st.integers(1, 9), min_size=1, max_size=5).filter(lambda s: len(s) != 4 or s[1:] != [1, 8, 8])
    .map(torch.zeros),
    st.sampled_from([torch.long, torch.int32, torch.uint8, torch.bool]).map(lambda d: torch.zeros(2, 1, 8, 8, dtype=d)),
    st.one_of(st.none(), st.floats(), st.lists(st.floats(), max_size=2))))
def test_unet_refuses_bad_images(x_t):
    refused(lambda: COND_NET(x_t, T_OK), "x_t")


bad_t = st.one_of(
    st.sampled_from([torch.float32, torch.float64, torch.bool]).map(lambda d: torch.zeros(2, dtype=d)),
    st.integers(0, 5).filter(lambda n: n != 2).map(lambda n: torch.zeros(n, dtype=torch.long)),
    st.just(torch.zeros(2, 1, dtype=torch.long)),
    st.one_of(st.integers(-2**62, -1), st.integers(MAX_T, 2**62)).map(lambda v: torch.tensor([0, v])),
    st.one_of(st.floats(), st.none(), st.text(max_size=2), st.integers(max_value=-1), st.integers(min_value=MAX_T)))


@FAST
@given(bad_t)
def test_unet_refuses_bad_timesteps(t):
    refused(lambda: COND_NET(X, t), "t must")


bad_cond = st.one_of(
    st.sampled_from([torch.float32, torch.float64, torch.bool]).map(lambda d: torch.zeros(2, dtype=d)),
    st.integers(0, 5).filter(lambda n: n != 2).map(lambda n: torch.zeros(n, dtype=torch.long)),
    st.one_of(st.integers(max_value=-1), st.integers(min_value=11, max_value=2**62)).map(lambda v: torch.tensor([0, v])),
    st.one_of(st.integers(), st.floats(), st.lists(st.integers(0, 9), min_size=2, max_size=2)))


@FAST
@given(bad_cond)
def test_unet_refuses_bad_labels(cond):
    refused(lambda: COND_NET(X, T_OK, cond), "cond")


@FAST
@given(st.integers(0, 10).map(lambda v: torch.tensor([v, v])))
def test_an_unconditional_unet_refuses_any_label(cond):
    refused(lambda: UNCOND_NET(X, T_OK, cond), "cond must be None")


@settings(FAST, max_examples=30)
@given(st.integers(0, MAX_T - 1), st.integers(0, 10))
def test_unet_accepts_every_valid_timestep_and_label(t, y):
    with torch.no_grad():
        a = COND_NET(X, torch.tensor([t, t]), torch.tensor([y, y]))
        b = COND_NET(X, t, torch.tensor([y, y]))  # a scalar t is used for the whole batch
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------
# Metrics: NaN/inf or misshapen features, bad k / subsets.

def _feats(n, d=3, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


METRIC_CALLS = {  # function -> (its two feature parameters, a call with two feature sets)
    "precision_recall": (("real_feats", "fake_feats"), lambda a, b: metrics.precision_recall(a, b, k=1)),
    "kid": (("feats_a", "feats_b"), lambda a, b: metrics.kid(a, b, 2, 4)),
    "mmd2_unbiased": (("x", "y"), metrics.mmd2_unbiased),
    "frechet_distance": (("feats", "feats"), metrics.frechet_distance),
}


@FAST
@given(st.sampled_from(sorted(METRIC_CALLS)), st.integers(0, 1), st.integers(0, 7), st.integers(0, 2),
       st.sampled_from([math.nan, math.inf, -math.inf]))
def test_metrics_refuse_non_finite_features(fn, which, i, j, value):
    names, call = METRIC_CALLS[fn]
    feats = [_feats(8), _feats(8, seed=1)]
    feats[which][i, j] = value
    err = refused(lambda: call(*feats), names[which])
    assert "finite" in str(err)


@FAST
@given(st.sampled_from(sorted(METRIC_CALLS)), st.integers(0, 1), st.one_of(
    st.lists(st.integers(0, 4), min_size=1, max_size=3).filter(lambda s: len(s) != 2 or s[0] < 2).map(tuple),
    st.just("int")))
def test_metrics_refuse_misshapen_features(fn, which, shape):
    names, call = METRIC_CALLS[fn]
    feats = [_feats(8), _feats(8, seed=1)]
    feats[which] = torch.zeros(8, 3, dtype=torch.long) if shape == "int" else torch.zeros(shape, dtype=torch.float64)
    refused(lambda: call(*feats), names[which])


@FAST
@given(st.sampled_from(["precision_recall", "kid", "mmd2_unbiased"]), st.integers(1, 5).filter(lambda d: d != 3))
def test_metrics_refuse_feature_sets_of_different_dimension(fn, d):
    names, call = METRIC_CALLS[fn]
    err = refused(lambda: call(_feats(8), _feats(8, d=d)), "same feature dimension")
    assert names[0] in str(err)


@FAST
@given(bad_ints(1, 5))
def test_precision_recall_refuses_bad_k(k):
    refused(lambda: metrics.precision_recall(_feats(6), _feats(7), k=k), "k must be an int in [1, 5]")


@FAST
@given(st.one_of(st.tuples(st.just("num_subsets"), bad_ints(low=1)),
                 st.tuples(st.just("subset_size"), bad_ints(low=2))))
def test_kid_refuses_bad_subsets(arg):
    name, bad = arg
    refused(lambda: metrics.kid(_feats(8), _feats(8, seed=1), **{name: bad}), name)


@FAST
@given(st.one_of(st.tuples(st.just("batch_size"), bad_ints(low=1)),
                 st.tuples(st.just("feature"), st.text(max_size=8).filter(lambda f: f not in metrics.FEATURES))))
def test_extract_features_refuses_bad_arguments(arg):
    name, bad = arg
    refused(lambda: metrics.extract_features(torch.zeros(2, 1, 28, 28), None, **{name: bad}), name)


@FAST
@given(st.integers(0, 1), st.sampled_from([math.nan, math.inf]))
def test_extract_features_refuses_non_finite_images(i, value):
    images = torch.zeros(2, 1, 28, 28)
    images[i, 0, 3, 4] = value
    refused(lambda: metrics.extract_features(images, None), "images must be finite")


# ----------------------------------------------------------------------------------------------
# Samplers: eta (the rest of the sampler arguments is tested in test_samplers.py).

class ZeroEps(nn.Module):
    class config:
        in_channels, image_size, num_classes = 1, 4, None

    def forward(self, x_t, t, cond=None):
        return torch.zeros_like(x_t)


@FAST
@given(bad_floats(0, 1))
def test_ddim_refuses_eta_outside_0_1(eta):
    refused(lambda: ddim_sample(ZeroEps(), torch.randn(1, 1, 4, 4), SCHEDULE, 4, eta=eta), "eta")


@FAST
@given(st.floats(0, 1), st.integers(1, 30), st.sampled_from(["uniform", "trailing"]))
def test_ddim_is_finite_for_every_eta_in_0_1(eta, steps, spacing):
    """The reason for the bound: 1 - alpha_bar_prev - sigma^2 >= 0 for eta <= 1 at every step
    (so the sampler's square root is real), and it goes negative for eta > 1."""
    ab = SCHEDULE.alpha_bar.double()
    ts = ddim_timesteps(SCHEDULE.T, steps, spacing).tolist()
    a_t, a_prev = ab[ts[:-1]], ab[ts[1:]]  # the steps with noise (the last one goes to x0_hat)
    if steps > 1:
        assert (1 - a_prev - ddim_sigma(a_t, a_prev, eta) ** 2).min() >= -1e-12
    x = ddim_sample(ZeroEps(), torch.randn(2, 1, 4, 4), SCHEDULE, steps, eta=eta, spacing=spacing,
                    generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()
    if steps > 1:  # above 1, the same schedule gives NaN (without the check)
        assert (1 - a_prev - ddim_sigma(a_t, a_prev, 1.5) ** 2).min() < 0


# ----------------------------------------------------------------------------------------------
# Data: IDX files of the wrong kind or shape, labels outside the classes, missing folders.

def _idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = struct.pack(">ii", magic, array.shape[0])
    if array.ndim == 3:
        header += struct.pack(">ii", *array.shape[1:])
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _folder(tmp: Path, images=None, labels=None, image_magic=data.IMAGE_MAGIC, label_magic=data.LABEL_MAGIC):
    """The four IDX files of a 2-image data set; the test split's may be replaced."""
    ok_images, ok_labels = np.zeros((2, 28, 28), np.uint8), np.array([3, 9], np.uint8)
    for split in ("train", "test"):
        img, lbl = data.FILES[split]
        bad = split == "test"
        _idx(tmp / f"{img}.gz", images if bad and images is not None else ok_images, image_magic if bad else data.IMAGE_MAGIC)
        _idx(tmp / f"{lbl}.gz", labels if bad and labels is not None else ok_labels, label_magic if bad else data.LABEL_MAGIC)
    return tmp


@FAST
@given(st.integers(-2**31, 2**31 - 1).filter(lambda m: m not in (data.IMAGE_MAGIC, data.LABEL_MAGIC)))
def test_idx_with_a_wrong_magic_number_is_refused_by_file(magic):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x-idx3-ubyte"
        path.write_bytes(struct.pack(">iiii", magic, 1, 28, 28) + bytes(784))
        refused(lambda: data.read_idx(path), "x-idx3-ubyte")


@FAST
@given(st.one_of(
    st.tuples(st.integers(1, 3), st.integers(1, 40), st.integers(1, 40)).filter(lambda s: s[1:] != (28, 28))
    .map(lambda s: ("images", np.zeros(s, np.uint8), data.IMAGE_MAGIC)),
    st.just(("images", np.zeros(2, np.uint8), data.LABEL_MAGIC)),          # a label file as images
    st.just(("labels", np.zeros((2, 28, 28), np.uint8), data.IMAGE_MAGIC)),  # an image file as labels
    st.lists(st.integers(10, 255), min_size=1, max_size=2).map(
        lambda v: ("labels", np.array([0, *v][:2], np.uint8), data.LABEL_MAGIC))))
def test_idx_of_the_wrong_kind_or_labels_outside_the_classes_are_refused(case):
    which, array, magic = case
    with tempfile.TemporaryDirectory() as tmp:
        kw = {"images": array, "image_magic": magic} if which == "images" else {"labels": array, "label_magic": magic}
        folder = _folder(Path(tmp), **kw)
        assert len(data.load_dataset("mnist", "train", folder)) == 2  # the good split loads
        refused(lambda: data.load_dataset("mnist", "test", folder), data.FILES["test"][which == "labels"])


@FAST
@given(st.text(alphabet="abcxyz-_", min_size=1, max_size=8))
def test_an_explicit_data_dir_that_does_not_exist_is_an_error_not_the_sample(name):
    missing = Path(tempfile.gettempdir()) / "sfs-no-such-dir" / name
    for load in (data.load, data.load_dataset):
        refused(lambda: load("mnist", "test", missing), "does not exist", FileNotFoundError)


@FAST
@given(st.one_of(st.tuples(st.just("name"), st.text(max_size=8).filter(lambda n: n not in data.CLASSES)),
                 st.tuples(st.just("split"), st.text(max_size=8).filter(lambda s: s not in data.FILES)),
                 st.tuples(st.just("data_dir"), st.one_of(st.integers(), st.floats(), st.lists(st.text(), max_size=1))),
                 st.tuples(st.just("download"), st.one_of(st.integers(), st.text(max_size=2), st.none()))))
def test_load_dataset_refuses_bad_arguments(arg):
    name, bad = arg
    refused(lambda: data.load_dataset(**{"name": "mnist", "split": "test", name: bad}), name)


@FAST
@given(st.one_of(st.tuples(st.just("split"), st.text(max_size=8).filter(lambda s: s not in data.FILES)),
                 st.tuples(st.just("data_dir"), st.one_of(st.integers(), st.floats(), st.lists(st.text(), max_size=1))),
                 st.tuples(st.just("download"), st.one_of(st.integers(), st.text(max_size=2), st.none()))))
def test_load_cifar10_refuses_bad_arguments(arg):
    name, bad = arg
    refused(lambda: data_colour.load_cifar10(**{"split": "test", name: bad}), name)


@functools.lru_cache(maxsize=1)
def _image_folder() -> Path:
    import atexit
    import shutil

    from PIL import Image
    folder = Path(tempfile.mkdtemp(prefix="sfs-images-"))
    atexit.register(shutil.rmtree, folder, True)
    Image.new("RGB", (9, 7), (10, 200, 30)).save(folder / "one.png")
    return folder


@FAST
@given(st.one_of(st.tuples(st.just("size"), bad_ints(low=4, high=4096)),
                 st.tuples(st.just("folder"), st.one_of(st.integers(), st.floats(), st.none(),
                                                        st.lists(st.text(), max_size=1))),
                 st.tuples(st.just("folder"), st.text(alphabet="abcxyz-_", min_size=1, max_size=8).map(
                     lambda n: Path(tempfile.gettempdir()) / "sfs-no-such-dir" / n))))
def test_load_image_folder_refuses_bad_arguments(arg):
    name, bad = arg
    refused(lambda: data_colour.load_image_folder(**{"folder": _image_folder(), "size": 8, name: bad}), name)
    assert data_colour.load_image_folder(_image_folder(), 8).images.shape == (1, 3, 8, 8)


@FAST
@given(st.one_of(st.tuples(st.just("name"), st.text(max_size=8).filter(lambda n: n not in data.TOYS)),
                 st.tuples(st.just("n"), bad_ints(low=1))))
def test_make_toy_refuses_bad_arguments(arg):
    name, bad = arg
    refused(lambda: data.make_toy(**{"name": "two_moons", "n": 4, name: bad}), name)


# ----------------------------------------------------------------------------------------------
# The command line: one line naming the option, exit status 2, nothing trained.

def _text(values: st.SearchStrategy) -> st.SearchStrategy:
    return values.map(lambda v: repr(v) if isinstance(v, float) else str(v))


words = st.sampled_from(["", "one", "1e3x", "0x10", " ", "None", "True", "[1]", "1;2", "--"])
bad_int_text = lambda low: st.one_of(_text(st.integers(max_value=low - 1)), words,  # noqa: E731
                                     _text(st.floats(allow_nan=True).filter(lambda f: not f.is_integer() if math.isfinite(f) else True)))
bad_float_text = lambda low=None, high=None, lo=False, hi=False: st.one_of(  # noqa: E731
    words, _text(bad_floats(low, high, lo, hi).filter(lambda v: isinstance(v, float))))
CLI_OPTIONS = {
    **{opt: bad_int_text(1) for opt in ["--T", "--base-channels", "--num-res-blocks", "--num-heads", "--steps",
                                         "--batch-size", "--threads", "--ckpt-every", "--sample-n",
                                         "--sample-steps", "--log-every"]},
    **{opt: bad_int_text(0) for opt in ["--warmup-steps", "--seed", "--sample-every"]},
    "--label-dropout": bad_float_text(0, 1),
    "--dropout": bad_float_text(0, 1, hi=True),
    "--ema-decay": bad_float_text(0, 1, hi=True),
    "--lr": bad_float_text(0, lo=True),
    "--grad-clip": bad_float_text(0, lo=True),
    "--minutes": bad_float_text(0),
    "--weight-decay": bad_float_text(0),
    "--guidance-scale": bad_float_text(),
    "--lr-decay": st.sampled_from(["", "linear", "Cosine", "none", "1", "--"]),
    "--channel-mults": st.one_of(st.just(""), _with_one_bad(st.integers(1, 4), st.integers(max_value=0))
                                 .map(lambda v: ",".join(map(str, v))), words.filter(bool)),
    "--attn-resolutions": _with_one_bad(st.sampled_from([7, 14]), st.integers(max_value=0)).map(
        lambda v: ",".join(map(str, v))),
    "--export": st.one_of(st.sampled_from(["", ".", "..", "../x", "a/b", "/abs", "a\\b", ".hidden"]),
                          st.tuples(st.text(max_size=3), st.sampled_from(["/", "\\"]), st.text(max_size=3))
                          .map("".join)),
    "--data-dir": st.text(alphabet="abcxyz", min_size=1, max_size=6).map(lambda n: f"/nonexistent-sfs/{n}"),
}


def _never_train(*args, **kwargs):
    raise AssertionError("bad arguments reached train()")


def _cli_error(argv: list[str]) -> str:
    err = io.StringIO()
    with (mock.patch("sfs.__main__.train", _never_train), contextlib.redirect_stderr(err),
          pytest.raises(SystemExit) as info):
        main(argv)
    assert info.value.code == 2, err.getvalue()
    lines = err.getvalue().strip().splitlines()
    assert lines and lines[-1].startswith("python -m sfs train: error: "), err.getvalue()
    return lines[-1]


@pytest.mark.parametrize("option", sorted(CLI_OPTIONS))
@settings(FAST, max_examples=25)
@given(data=st.data())
def test_cli_refuses_bad_values_in_one_line(option, data):
    value = data.draw(CLI_OPTIONS[option], label=option)
    line = _cli_error(["train", f"{option}={value}", "--device", "cpu"])
    assert f"argument {option}:" in line, line


@pytest.mark.parametrize("command", ["train", "train-text2image", "train-autoencoder"])
def test_a_cosine_decay_without_steps_after_its_warmup_is_refused_in_one_line(command):
    err = io.StringIO()
    with (mock.patch("sfs.__main__.train", _never_train), contextlib.redirect_stderr(err),
          pytest.raises(SystemExit) as info):
        main([command, "--lr-decay", "cosine", "--steps", "100", "--warmup-steps", "100", "--device", "cpu"])
    assert info.value.code == 2
    line = err.getvalue().strip().splitlines()[-1]
    assert line.startswith(f"python -m sfs {command}: error: lr_decay='cosine' needs steps > warmup_steps"), line


@pytest.mark.parametrize("option", ["--out", "--device", "--models-dir", "--steps", "--export", "--data-dir"])
def test_a_value_argparse_drops_is_refused_too(option):
    # Python 3.11's argparse turns "--steps=--" into [] without calling the option's type.
    assert f"argument {option}: expected one value" in _cli_error(["train", f"{option}=--"])


@FAST
@given(st.integers(1, 2000), st.integers(1, 2000))
def test_cli_refuses_more_sample_steps_than_T(T, extra):
    line = _cli_error(["train", f"--T={T}", f"--sample-steps={T + extra}", "--device", "cpu"])
    assert f"--sample-steps must be an int in [1, {T}]" in line, line


@FAST
@given(st.text(max_size=12))
def test_an_accepted_export_name_stays_inside_the_models_dir(name):
    models = Path(tempfile.gettempdir()) / "sfs-models"
    try:
        check_plain_name("export", name)
    except ValueError:
        assert not name or "/" in name or "\\" in name or name.startswith(".") or "\0" in name
        return
    target = (models / f"{name}.safetensors").resolve()
    assert target.parent == models.resolve(), (name, target)


@FAST
@given(st.lists(st.integers(-3, 5), max_size=4), st.booleans())
def test_check_ints_states_its_rule(values, nonempty):
    if all(v >= 1 for v in values) and (values or not nonempty):
        assert check_ints("mults", values, 1, nonempty) == tuple(values)
    else:
        refused(lambda: check_ints("mults", values, 1, nonempty), "mults must be a")


# ----------------------------------------------------------------------------------------------
# Guidance wrappers.

class LabelModel(nn.Module):
    config = TINY

    def forward(self, x_t, t, cond=None):
        return torch.zeros_like(x_t)


@FAST
@given(bad_ints(0, 10).filter(lambda v: v is not None))
def test_cfg_refuses_a_null_label_the_model_does_not_have(null_label):
    refused(lambda: CFGModel(LabelModel(), 2.0, null_label), "null_label")


def test_cfg_refuses_an_unconditional_model():
    refused(lambda: CFGModel(UNCOND_NET, 2.0), "num_classes is None")
    refused(lambda: CFGModel(None, 2.0), "model", TypeError)


CLASSIFIER = NoisyClassifier(ClassifierConfig(noisy=True, width=8, feature_dim=16)).eval()
bad_guidance = st.one_of(
    st.tuples(st.just("model"), st.one_of(st.none(), st.integers(), st.text(max_size=2))),
    st.tuples(st.just("classifier"), st.one_of(st.none(), st.integers(), st.text(max_size=2))),
    st.tuples(st.just("schedule"), st.one_of(st.none(), st.integers(), st.just(SCHEDULE.alpha_bar))),
    st.tuples(st.just("y"), st.one_of(
        st.none(), st.lists(st.integers(0, 9), max_size=2),
        st.just(torch.tensor([1.0, 2.0])), st.just(torch.tensor([[1, 2]])), st.just(torch.tensor(3)),
        st.one_of(st.integers(max_value=-1), st.integers(min_value=10, max_value=2**62)).map(lambda v: torch.tensor([0, v])))),
    st.tuples(st.just("scale"), bad_floats()))


@FAST
@given(bad_guidance)
def test_classifier_guidance_refuses_bad_arguments(arg):
    name, bad = arg
    kw = dict(model=LabelModel(), classifier=CLASSIFIER, schedule=SCHEDULE, y=torch.tensor([1, 2]), scale=1.0)
    refused(lambda: ClassifierGuidedModel(**{**kw, name: bad}), name)


def test_classifier_guidance_refuses_labels_of_another_batch_at_the_call():
    guided = ClassifierGuidedModel(LabelModel(), CLASSIFIER, SCHEDULE, torch.tensor([1, 2, 3]), 1.0)
    refused(lambda: guided(torch.zeros(2, 1, 28, 28), torch.tensor([5, 5])), "y must have shape (B,)")

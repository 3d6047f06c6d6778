"""Classifiers: shapes, a short training run that learns, save/load with the card's sha256,
and the shipped checkpoints' accuracy on the bundled sample."""

import json
from pathlib import Path

import pytest
import torch

from sfs.classifier import (Classifier, ClassifierConfig, NoisyClassifier, accuracy,
                            load_classifier, main_train_classifier, save_classifier,
                            train_classifier, train_noisy_classifier)
from sfs.data import load_sample
from sfs.schedules import cosine_schedule

MODELS = Path(__file__).resolve().parents[1] / "models"



def test_shapes():
    x, t = torch.randn(5, 1, 28, 28), torch.randint(0, 1000, (5,))
    clf = Classifier().eval()
    assert clf(x).shape == (5, 10) and clf.features(x).shape == (5, 128)
    assert (clf.features(x) >= 0).all()  # after the ReLU
    assert NoisyClassifier()(x, t).shape == (5, 10)


def test_short_training_learns_and_round_trips(tmp_path):
    data = load_sample("mnist")
    x, y = data.images[:512], data.labels[:512]
    cfg = ClassifierConfig(width=8, feature_dim=32)
    model, steps = train_classifier(x, y, epochs=4, batch_size=64, lr=1e-2, seed=0, config=cfg,
                                     log_every=0)
    acc = accuracy(model, data.images[800:], data.labels[800:])
    assert steps == 32 and acc > 0.6, acc  # chance is 0.1; the full run reaches 0.99
    card = save_classifier(tmp_path / "c", model, {"test_accuracy": acc})
    loaded, card2 = load_classifier(tmp_path / "c.safetensors")
    assert card2["file_sha256"] == card["file_sha256"] and card2["dtype"] == "float16"
    assert isinstance(loaded, Classifier) and loaded.config == cfg
    assert accuracy(loaded, data.images[800:], data.labels[800:]) == pytest.approx(acc, abs=0.01)
    # A changed byte is caught by the sha256 in the card.
    p = tmp_path / "c.safetensors"
    raw = bytearray(p.read_bytes())
    raw[-1] ^= 1
    p.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_classifier(p)


def test_noisy_classifier_trains_on_noised_images(tmp_path):
    data = load_sample("mnist")
    sched = cosine_schedule(100)
    cfg = ClassifierConfig(width=8, feature_dim=16, noisy=True)
    model, steps = train_noisy_classifier(data.images[:256], data.labels[:256], sched, epochs=1,
                                          batch_size=128, config=cfg, log_every=0)
    assert steps == 2 and isinstance(model, NoisyClassifier)
    save_classifier(tmp_path / "n", model, {})
    loaded, _ = load_classifier(tmp_path / "n")
    assert isinstance(loaded, NoisyClassifier)


def test_cli_writes_weights_and_card(tmp_path, monkeypatch):
    # The CLI on the bundled sample, standing in for the full data set (--limit keeps it short).
    import sfs.data
    monkeypatch.setattr(sfs.data, "load_dataset", lambda name, split, data_dir=None: load_sample(name))
    card = main_train_classifier(["--data", "mnist", "--out", str(tmp_path / "m"), "--epochs", "1",
                                  "--limit", "128", "--width", "8"])
    written = json.loads((tmp_path / "m.json").read_text())
    assert written["test_accuracy"] == card["test_accuracy"] and written["train_images"] == 128
    assert written["command"].startswith("python -m sfs.classifier --data mnist")


@pytest.mark.parametrize("name, data, floor", [("mnist-classifier", "mnist", 0.99),
                                               ("fashion-mnist-classifier", "fashion-mnist", 0.92)])

def test_shipped_classifiers(name, data, floor):
    if not (MODELS / f"{name}.safetensors").is_file():
        pytest.skip(f"{name} not trained yet")
    model, card = load_classifier(name)
    assert card["test_accuracy"] >= floor and card["test_images"] == 10000 and card["data"] == data
    assert (MODELS / f"{name}.safetensors").stat().st_size < 2_000_000
    sample = load_sample(data)  # 1000 test images: a loose check that the weights are the card's
    assert accuracy(model, sample.images, sample.labels) >= floor - 0.03


def test_random_blur_keeps_sharp_images_below_sigma_and_softens_above():
    from sfs.classifier import random_blur
    x = torch.zeros(4, 1, 28, 28)
    x[:, :, 14, 14] = 1.0  # a single bright pixel
    g = torch.Generator().manual_seed(0)
    same = random_blur(x, 0.29, g)  # every sigma < 0.3: untouched
    assert torch.equal(same, x)
    soft = random_blur(x, 2.0, torch.Generator().manual_seed(1))
    assert soft.shape == x.shape
    assert torch.allclose(soft.sum((1, 2, 3)), x.sum((1, 2, 3)), atol=1e-5)  # kernels sum to 1
    assert (soft[:, 0, 14, 14] <= 1.0).all() and (soft[:, 0, 14, 14] < 1.0).any()


def test_train_classifier_rejects_a_bad_blur():
    from sfs.classifier import train_classifier
    x, y = torch.zeros(8, 1, 28, 28), torch.zeros(8, dtype=torch.long)
    with pytest.raises(ValueError, match="blur"):
        train_classifier(x, y, epochs=1, blur=-1.0)
    with pytest.raises(TypeError, match="blur"):
        train_classifier(x, y, epochs=1, blur="1")

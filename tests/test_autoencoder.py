"""The autoencoder: shapes, the KL of eq. (10.1), the scale factor, training it through sfs.loop, loading it."""

import math

import pytest
import torch

from sfs.autoencoder import (Autoencoder, AutoencoderConfig, autoencoder_loss, kl_diagonal_gaussian,
                             measure_scale)
from sfs.canvas import make_canvases
from sfs.checkpoints import load_model
from sfs.train_autoencoder import AutoencoderTrainConfig, train_autoencoder

TINY = AutoencoderConfig(base_channels=8, channel_mults=(1, 2, 2))


def test_shapes_48_to_12x12x4_and_back():
    ae = Autoencoder(TINY)
    x = torch.rand(2, 3, 48, 48) * 2 - 1
    z = ae.encode(x)
    assert z.shape == (2, 4, 12, 12)
    assert ae.decode(z).shape == x.shape
    x_hat, mean, logvar = ae(x)
    assert x_hat.shape == x.shape and mean.shape == logvar.shape == (2, 4, 12, 12)
    other = Autoencoder(AutoencoderConfig(image_size=32, channel_mults=(1, 2), latent_channels=3,
                                          base_channels=8))
    assert other.encode(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 16, 16)


def test_kl_matches_the_closed_form_and_torch_distributions():
    mean, logvar = torch.randn(3, 4, 2, 2, dtype=torch.float64), torch.randn(3, 4, 2, 2, dtype=torch.float64)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    ref = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    assert torch.allclose(kl_diagonal_gaussian(mean, logvar), ref, rtol=1e-12)
    assert kl_diagonal_gaussian(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0.0


def test_the_scale_factor_is_applied_in_encode_and_undone_in_decode():
    torch.manual_seed(0)
    ae = Autoencoder(TINY).eval()
    x = torch.rand(4, 3, 48, 48) * 2 - 1
    z1 = ae.encode(x)
    ae.config.scale_factor = 0.25
    z2 = ae.encode(x)
    assert torch.allclose(z2, 0.25 * z1, atol=1e-6)
    assert torch.allclose(ae.decode(z2), ae.decoder(z1), atol=1e-5)


def test_measure_scale_gives_unit_std_latents():
    torch.manual_seed(0)
    ae = Autoencoder(TINY).eval()
    x = torch.rand(64, 3, 48, 48) * 2 - 1
    s = measure_scale(ae, x, generator=torch.Generator().manual_seed(0))
    ae.config.scale_factor = s
    z = ae.encode(x, sample=True, generator=torch.Generator().manual_seed(0))
    assert abs(z.std().item() - 1.0) < 1e-4


def test_loss_is_l1_plus_beta_kl_per_value():
    torch.manual_seed(0)
    ae = Autoencoder(TINY)
    x = torch.rand(2, 3, 48, 48) * 2 - 1
    loss0, parts = autoencoder_loss(ae, x, 0.0, torch.Generator().manual_seed(1))
    loss1, parts1 = autoencoder_loss(ae, x, 10.0, torch.Generator().manual_seed(1))
    assert torch.allclose(loss0, parts["rec"]) and parts["kl"] > 0
    assert torch.allclose(loss1, parts1["rec"] + 10.0 * parts1["kl"])


@pytest.mark.parametrize("kwargs, name", [
    ({"latent_channels": 0}, "latent_channels"), ({"base_channels": 2.5}, "base_channels"),
    ({"channel_mults": ()}, "channel_mults"), ({"channel_mults": (1, 0)}, "channel_mults"),
    ({"image_size": 50}, "image_size"), ({"scale_factor": 0.0}, "scale_factor"),
    ({"scale_factor": float("nan")}, "scale_factor"), ({"norm_groups": True}, "norm_groups"),
])
def test_bad_configs_name_the_field(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AutoencoderConfig(**kwargs)


def test_bad_inputs_are_refused_at_the_call():
    ae = Autoencoder(TINY)
    with pytest.raises(ValueError, match="shape"):
        ae.encode(torch.zeros(1, 1, 48, 48))
    with pytest.raises(TypeError, match="floating"):
        ae.encode(torch.zeros(1, 3, 48, 48, dtype=torch.uint8))
    with pytest.raises(ValueError, match="shape"):
        ae.decode(torch.zeros(1, 4, 6, 6))
    with pytest.raises(TypeError, match="AutoencoderConfig"):
        Autoencoder({"base_channels": 8})


def test_training_resumes_bit_exactly_and_exports_a_verified_checkpoint(tmp_path):
    canvases = make_canvases(64, seed=0)
    common = dict(model=TINY, steps=6, batch_size=8, ckpt_every=3, sample_every=0, log_every=1,
                  device="cpu")
    straight = train_autoencoder(AutoencoderTrainConfig(out=str(tmp_path / "a"), **common),
                                 canvases, progress=False)
    first = AutoencoderTrainConfig(out=str(tmp_path / "b"), **{**common, "steps": 3})
    train_autoencoder(first, canvases, progress=False)
    resumed = train_autoencoder(AutoencoderTrainConfig(out=str(tmp_path / "b"), export="ae",
                                                       models_dir=str(tmp_path / "m"), **common),
                                canvases, progress=False)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    model, card = load_model(tmp_path / "m" / "ae.safetensors", kind="autoencoder")
    assert isinstance(model, Autoencoder) and card["kind"] == "autoencoder"
    assert math.isclose(model.config.scale_factor, card["scale_factor"]) and card["scale_factor"] > 0
    assert card["steps"] == 6 and (tmp_path / "m" / "ae.md").is_file()
    x = canvases.images_float(slice(0, 4))
    assert torch.allclose(model.encode(x), resumed.encode(x), atol=2e-2)  # fp16 weights

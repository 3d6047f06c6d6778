"""Guidance wrappers: the CFG formula and its convention, one doubled forward pass, classifier gradients."""

import math

import pytest
import torch
import torch.nn as nn

from sfs.classifier import ClassifierConfig, NoisyClassifier
from sfs.guidance import CFGModel, ClassifierGuidedModel, classifier_guided_model
from sfs.samplers import ddim_sample
from sfs.schedules import cosine_schedule


SCHEDULE = cosine_schedule(100)


def close(a, b):
    """float32 equality up to rounding (torch.testing.assert_close imports far too much)."""
    return torch.allclose(a, b, rtol=1e-5, atol=1e-6)


class LabelModel(nn.Module):
    """Conditional toy model: eps depends on the label, so cond and null give different answers."""

    def __init__(self, image_size=4):
        super().__init__()
        self.config = type("Config", (), dict(in_channels=1, image_size=image_size, num_classes=10))()
        self.calls, self.batch_sizes = 0, []

    def forward(self, x_t, t, cond=None):
        self.calls += 1
        self.batch_sizes.append(x_t.shape[0])
        if cond is None:
            cond = torch.full_like(t, self.config.num_classes)
        return 0.5 * x_t + 0.1 * cond.float().view(-1, 1, 1, 1) + 0.01 * t.float().view(-1, 1, 1, 1)


def inputs(B=3, size=4):
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, 1, size, size, generator=g), torch.tensor([5, 50, 99][:B]), torch.tensor([1, 2, 3][:B])


def test_doubled_batch_is_one_forward_call():
    model = LabelModel()
    x, t, y = inputs()
    CFGModel(model, 3.0)(x, t, y)
    assert model.calls == 1 and model.batch_sizes == [6]


def test_w1_is_conditional_w0_is_unconditional_and_linear_in_w():
    model = LabelModel()
    x, t, y = inputs()
    cond, uncond = model(x, t, y), model(x, t, None)
    assert close(CFGModel(model, 1.0)(x, t, y), cond)
    assert close(CFGModel(model, 0.0)(x, t, y), uncond)
    e = {w: CFGModel(model, w)(x, t, y) for w in (0.0, 2.0, 4.0, 7.5)}
    assert close(e[4.0] - e[2.0], e[2.0] - e[0.0])  # affine in w
    assert close(e[7.5], uncond + 7.5 * (cond - uncond))


def test_scales_below_1_interpolate_unlike_diffusers():
    # diffusers skips guidance at guidance_scale <= 1 (returns eps_cond); sfs applies the formula at
    # every w, so 0 < w < 1 lies between the unconditional and the conditional prediction.
    model = LabelModel()
    x, t, y = inputs()
    cond, uncond = model(x, t, y), model(x, t, None)
    assert (cond - uncond).abs().min() > 0.05
    for w in (0.25, 0.5, 0.9):
        e = CFGModel(model, w)(x, t, y)
        assert close(e, (1 - w) * uncond + w * cond)
        assert (e - cond).abs().min() > 0.004   # not eps_cond, which diffusers would return


def test_ho_salimans_convention():
    # Ho & Salimans 2022: (1 + w') eps_c - w' eps_u. Ours with w = 1 + w' is the same.
    model = LabelModel()
    x, t, y = inputs()
    w_prime = 2.0
    ref = (1 + w_prime) * model(x, t, y) - w_prime * model(x, t, None)
    assert close(CFGModel(model, 1 + w_prime)(x, t, y), ref)


def test_cfg_without_cond_is_unconditional_and_works_in_samplers():
    model = LabelModel()
    x, t, _ = inputs()
    assert close(CFGModel(model, 5.0)(x, t, None), model(x, t, None))
    guided = CFGModel(model, 2.0)
    out = ddim_sample(guided, torch.randn(2, 1, 4, 4), SCHEDULE, 5, cond=torch.tensor([0, 9]))
    assert out.shape == (2, 1, 4, 4) and model.batch_sizes[-1] == 4
    with pytest.raises(ValueError, match="x_T must have shape"):  # config is passed through
        ddim_sample(guided, torch.randn(2, 1, 8, 8), SCHEDULE, 5)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_scales_are_rejected(bad):
    with pytest.raises(ValueError, match="w .*finite"):
        CFGModel(LabelModel(), bad)
    with pytest.raises(ValueError, match="scale .*finite"):
        ClassifierGuidedModel(LabelModel(), NoisyClassifier(), SCHEDULE, torch.tensor([0]), bad)


def test_null_label_must_be_known():
    class Bare(nn.Module):
        def forward(self, x_t, t, cond=None):
            return x_t
    with pytest.raises(ValueError, match="null_label"):
        CFGModel(Bare(), 2.0)
    assert CFGModel(Bare(), 2.0, null_label=7).null_label == 7


def test_classifier_guidance_moves_logits_of_y_up():
    torch.manual_seed(0)
    clf = NoisyClassifier(ClassifierConfig(noisy=True, width=8, feature_dim=16)).eval()
    model = LabelModel(28)
    x, t, _ = inputs(size=28)
    y = torch.tensor([3, 7, 0])
    guided = classifier_guided_model(model, clf, SCHEDULE, y, scale=1.0)
    grad = guided.grad_log_prob(x, t)
    # A small step along the gradient raises log p(y | x_t).
    with torch.no_grad():
        def log_p(z):
            return clf(z, t).log_softmax(-1)[torch.arange(3), y]
        assert torch.all(log_p(x + 1e-2 * grad) > log_p(x))
        # The guided eps is eps_hat - scale * sqrt(1 - alpha_bar) * grad: the x0 it implies moves
        # along +grad, and guidance 0 changes nothing.
        sigma = SCHEDULE.sqrt_one_minus_alpha_bar[t].view(-1, 1, 1, 1)
        assert close(guided(x, t), model(x, t) - sigma * grad)
        assert close(ClassifierGuidedModel(model, clf, SCHEDULE, y, 0.0)(x, t), model(x, t))


def test_classifier_guidance_runs_under_no_grad_sampling():
    clf = NoisyClassifier(ClassifierConfig(noisy=True, width=8, feature_dim=16)).eval()
    guided = ClassifierGuidedModel(LabelModel(28), clf, SCHEDULE, torch.tensor([1, 2]), 3.0)
    out = ddim_sample(guided, torch.randn(2, 1, 28, 28), SCHEDULE, 3)
    assert out.shape == (2, 1, 28, 28) and torch.isfinite(out).all()

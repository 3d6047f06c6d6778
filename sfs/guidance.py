"""Guidance: steering a diffusion model towards a class, as wrappers with the model's own contract.

Book chapter 8 ("Guidance"). A guided model is called like any model, ``model(x_t, t, cond) -> eps``,
so every sampler in ``sfs.samplers`` supports guidance without a flag:

    guided = CFGModel(model, w=3.0)
    x0 = ddim_sample(guided, x_T, schedule, 50, cond=labels)

Guidance scale convention, stated once for the whole library. Classifier-free guidance returns

    eps = eps_uncond + w (eps_cond - eps_uncond),

so **w = 1 is the plain conditional model and w = 0 the unconditional one**; w > 1 extrapolates past
the conditional model. For w >= 1 this w is diffusers' ``guidance_scale``; below 1 they part:
diffusers pipelines skip guidance when ``guidance_scale <= 1`` (``do_classifier_free_guidance`` is
``guidance_scale > 1``) and return the conditional prediction, while sfs applies the formula at every
w, so 0 < w < 1 interpolates towards the unconditional model and w = 0 is unconditional.
Ho & Salimans 2021 (eq. 6) write (1 + w') eps_cond - w' eps_uncond instead: their w' is our w - 1
(their w' = 0 is our w = 1).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sfs.forward import extract
from sfs.schedules import Schedule
from sfs.validate import check_float, check_int, check_range, check_tensor, check_type


def _check_scale(name: str, value: float) -> float:
    return check_float(name, value, hint="any real; 0 switches guidance off")


def _check_callable(name: str, fn, contract: str) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be a model called as {contract}, got {type(fn).__name__}")


class CFGModel(nn.Module):
    """Classifier-free guidance: eps = eps_uncond + w (eps_cond - eps_uncond).

    Book eq. (8.2); Ho & Salimans 2021, eq. 6 (with their w' = w - 1, see the module docstring).
    ``model`` is class-conditional; its "no class" label is ``null_label``, by default
    ``model.config.num_classes`` (the U-Net's convention). One forward pass on the doubled batch
    [x_t with cond; x_t with the null label], (2B, ...), then split. ``cond=None`` returns the
    unconditional eps_hat. Shapes: x_t (B, C, H, W), t (B,), cond (B,) int64 -> eps (B, C, H, W).
    """

    def __init__(self, model: nn.Module, w: float, null_label: int | None = None):
        super().__init__()
        _check_callable("model", model, "model(x_t, t, cond)")
        self.model = model
        self.w = _check_scale("w (the guidance scale)", w)
        self.config = getattr(model, "config", None)  # so samplers can check x_T's shape
        if hasattr(model, "check_cond"):  # so samplers check cond as the wrapped model would
            self.check_cond = model.check_cond
        self.null_cond = getattr(model, "null_cond", None)  # text models: the empty prompt
        if self.null_cond is not None:
            self.null_label = None
            return
        K = getattr(self.config, "num_classes", None)
        if hasattr(self.config, "num_classes") and K is None:
            raise ValueError("model must be class-conditional for CFG: its config.num_classes is None")
        if null_label is None and K is None:
            raise ValueError("null_label is needed: the model has no config.num_classes, so the "
                             "'no class' label is unknown")
        # The U-Net's labels are 0..K, K the null one: any other null label is not in its table.
        self.null_label = check_int("null_label", K if null_label is None else null_label, 0, K,
                                    hint="" if K is None else f"labels of the model; {K}: its 'no class'")

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None
                ) -> torch.Tensor:
        if cond is None:
            return self.model(x_t, t, None)
        null = (self.null_cond(len(cond), cond.device) if self.null_cond is not None
                else torch.full_like(cond, self.null_label))
        eps = self.model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, null]))  # (2B, ...)
        eps_cond, eps_uncond = eps.chunk(2)
        return eps_uncond + self.w * (eps_cond - eps_uncond)


class ClassifierGuidedModel(nn.Module):
    """Classifier guidance: eps = eps_hat - scale * sqrt(1 - alpha_bar_t) * grad_x log p(y | x_t, t).

    Book eq. (8.1); Dhariwal & Nichol 2021, sec. 4.2 and Alg. 2 (their s is ``scale``). Subtracting a
    multiple of sqrt(1 - alpha_bar_t) grad log p(y | x_t) from eps_hat adds ``scale`` times that
    gradient to the score (book eq. (4.3)), i.e. samples from p(x_t) p(y | x_t)^scale.
    ``classifier(x_t, t) -> logits`` is noise-aware (``sfs.classifier.NoisyClassifier``); ``y`` (B,)
    holds the target classes. ``cond`` of the call goes to ``model`` unchanged (None for an
    unconditional model). Shapes: x_t (B, C, H, W), t (B,) -> eps (B, C, H, W).
    """

    def __init__(self, model: nn.Module, classifier: nn.Module, schedule: Schedule,
                 y: torch.Tensor, scale: float):
        super().__init__()
        _check_callable("model", model, "model(x_t, t, cond)")
        _check_callable("classifier", classifier, "classifier(x_t, t) -> logits")
        check_type("schedule", schedule, Schedule, "a sfs.schedules.Schedule")
        check_tensor("y", y, "int", ndim=1)  # (B,) target classes
        K = getattr(getattr(classifier, "config", None), "num_classes", None)
        if K is not None:
            check_range("y", y, 0, K - 1, "class labels", f"the classifier has {K} classes")
        self.model, self.classifier, self.schedule = model, classifier, schedule
        self.config = getattr(model, "config", None)
        self.y = y
        self.scale = _check_scale("scale (the classifier guidance scale)", scale)

    def grad_log_prob(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """grad_x log p(y | x_t, t) (B, C, H, W), computed with autograd even under no_grad."""
        if self.y.shape != x_t.shape[:1]:
            raise ValueError(f"y must have shape (B,) = ({x_t.shape[0]},), got {tuple(self.y.shape)}")
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            log_p = F.log_softmax(self.classifier(x, t).float(), dim=-1)   # (B, num_classes)
            check_range("y", self.y, 0, log_p.shape[-1] - 1, "class labels", "one per logit")
            selected = log_p[torch.arange(len(x), device=x.device), self.y.to(x.device)]  # (B,)
            return torch.autograd.grad(selected.sum(), x)[0]  # images independent: sum is fine

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None
                ) -> torch.Tensor:
        eps_hat = self.model(x_t, t, cond)
        if self.scale == 0:
            return eps_hat
        sigma = extract(self.schedule.sqrt_one_minus_alpha_bar, t, x_t.ndim).to(x_t)  # (B, 1, 1, 1)
        return eps_hat - self.scale * sigma * self.grad_log_prob(x_t, t)


def classifier_guided_model(model: nn.Module, classifier: nn.Module, schedule: Schedule,
                            y: torch.Tensor, scale: float) -> ClassifierGuidedModel:
    """``ClassifierGuidedModel(model, classifier, schedule, y, scale)``; book eq. (8.1)."""
    return ClassifierGuidedModel(model, classifier, schedule, y, scale)

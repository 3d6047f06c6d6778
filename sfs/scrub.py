"""Scrubbers: a slider over diffusion time, live in a kernel and still working in the static book.

Three scrubbers, one function each; each returns something a notebook cell displays:

    from sfs import scrub
    scrub.forward_scrubber(x0, schedule)          # x0 (B, C, H, W) in [-1, 1]: x_t for t = 0..T,
                                                  # with the noise level sqrt(1 - alpha_bar_t) and SNR
    steps = []
    x = ddim_sample(model, x_T, schedule, callback=steps.append)
    scrub.reverse_scrubber(steps)                 # x_t and x0_hat side by side, step by step
    traj = [x_T, ..., x_0]                        # a list of (N, 2) tensors, e.g. from a callback
    scrub.particles_scrubber(traj, data=x0)       # a 2-D toy's particles moving under the score

Two renderings. **Static**: a self-contained HTML snippet (PNG frames in base64 behind an
``<input type="range">``, a play button and a few lines of JavaScript): it needs no kernel, no
widget manager and no CDN, so it works in the built HTML book, offline, and in any notebook
front end that runs an output's scripts. **Live**: an ipywidgets ``IntSlider`` + ``Output`` that
computes each frame on demand in the kernel (every timestep of the forward process, every
recorded step of a trajectory).

Which one you get (``live=None``, the default, decides with ``is_live()``):
1. ``live=True`` / ``live=False`` passed to the function wins;
2. else the environment variable ``SFS_SCRUB=static`` or ``SFS_SCRUB=live``. The book build sets
   ``SFS_SCRUB=static`` (the Sphinx extension ``tools/sfs_book.py`` does it before any kernel
   starts), because myst-nb executes chapters in a real kernel, indistinguishable from a reader's;
3. else live in Colab (``google.colab`` imported), on Binder / JupyterHub (``BINDER_*`` or
   ``JUPYTERHUB_*`` in the environment) and in a kernel started by a local Jupyter server
   (``JPY_SESSION_NAME``), provided ipywidgets imports;
4. otherwise static: it works everywhere, so it is the safe default.

The static version is what the built HTML shows. Its size is frames x (PNG size): a forward
scrubber of 8 MNIST images with 21 frames is about 70 kB; a particle scrubber of 1,000 points with
25 frames about 300 kB. ``frames`` and ``dpi`` trade smoothness for page weight.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import sys
import uuid
from typing import Sequence

import matplotlib
import numpy as np

import torch

from sfs.forward import q_sample
from sfs.schedules import Schedule

# ----------------------------------------------------------------------------------------------
# Which rendering


def is_live() -> bool:
    """True where a slider can run Python: see the module docstring for the rules, in order."""
    mode = os.environ.get("SFS_SCRUB", "").strip().lower()
    if mode in ("static", "live"):
        return mode == "live"
    env = os.environ
    interactive = ("google.colab" in sys.modules or any(k.startswith(("BINDER_", "JUPYTERHUB_")) for k in env)
                   or "JPY_SESSION_NAME" in env)
    if not interactive:
        return False
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and hasattr(ip, "kernel")


def _decide(live: bool | None) -> bool:
    return is_live() if live is None else bool(live)


# ----------------------------------------------------------------------------------------------
# Pictures: tensors -> PNG bytes


def _grid(x: torch.Tensor, nrow: int | None = None, pad: int = 1) -> torch.Tensor:
    """Images (B, C, H, W) in [-1, 1] -> one (H', W', C) array in [0, 1], side by side, pad px apart."""
    x = x.detach().float().cpu().clamp(-1, 1).add(1).div(2)
    B, C, H, W = x.shape
    nrow = min(B, nrow or B)
    rows = math.ceil(B / nrow)
    out = torch.ones(C, rows * (H + pad) - pad, nrow * (W + pad) - pad)
    for k in range(B):
        r, c = divmod(k, nrow)
        out[:, r * (H + pad):r * (H + pad) + H, c * (W + pad):c * (W + pad) + W] = x[k]
    return out.permute(1, 2, 0)


def _png_of_images(x: torch.Tensor, nrow: int | None = None) -> bytes:
    """A grid of images as an 8-bit PNG (grey or RGB) at one pixel per pixel; the page enlarges it."""
    from PIL import Image
    g = (_grid(x, nrow) * 255).round().to(torch.uint8).numpy()
    img = Image.fromarray(g[:, :, 0], "L") if g.shape[2] == 1 else Image.fromarray(g[:, :, :3], "RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _png_of_figure(fig, dpi: int, colors: int = 32) -> bytes:
    """A matplotlib figure as a palette PNG of ``colors`` colours (plots need few; it is ~3x smaller)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image
    fig.set_dpi(dpi)  # no bbox_inches="tight": axes positions, used to place the marker, stay known
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    img = Image.fromarray(np.ascontiguousarray(rgba[:, :, :3]), "RGB").quantize(colors=colors)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _as_images(x: torch.Tensor, max_images: int) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim == 3:      # (C, H, W) -> (1, C, H, W)
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(x.shape)}")
    return x[:max_images]


def _pick(n: int, frames: int) -> list[int]:
    """``frames`` indices spread evenly over 0..n-1, first and last included."""
    if n <= frames:
        return list(range(n))
    return sorted({round(k * (n - 1) / (frames - 1)) for k in range(frames)})


# ----------------------------------------------------------------------------------------------
# The static rendering: a self-contained HTML slider over pre-rendered frames

_CSS = """<style>
.sfs-scrub{font-size:.9em;margin:.5em 0 1em 0}
.sfs-scrub-panels{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-end}
.sfs-scrub figure{margin:0;text-align:center}
.sfs-scrub figcaption{font-size:.85em;color:#555}
.sfs-scrub img.sfs-px{image-rendering:pixelated;image-rendering:crisp-edges}
.sfs-scrub-curve{position:relative;display:inline-block}
.sfs-scrub-mark{position:absolute;width:2px;margin-left:-1px;background:#d62728;pointer-events:none}
.sfs-scrub-controls{display:flex;gap:.6em;align-items:center;margin-top:.4em;flex-wrap:wrap}
.sfs-scrub-controls input[type=range]{width:min(360px,60vw)}
.sfs-scrub-label{font-family:var(--pst-font-family-monospace,monospace)}
</style>"""

_JS = """<script>(function(){
var root=document.getElementById(%(id)s);if(!root)return;
var F=%(frames)s,L=%(labels)s,M=%(marks)s;
var imgs=root.querySelectorAll("img[data-sfs-panel]"),s=root.querySelector("input[type=range]"),
lab=root.querySelector(".sfs-scrub-label"),mark=root.querySelector(".sfs-scrub-mark"),
btn=root.querySelector("button"),timer=null;
function show(k){for(var p=0;p<imgs.length;p++){imgs[p].src=F[k][p];}
lab.textContent=L[k];if(mark&&M){mark.style.left=(100*M[k])+"%%";}s.value=k;}
function stop(){clearInterval(timer);timer=null;btn.textContent="\\u25B6 play";}
s.addEventListener("input",function(){if(timer)stop();show(+s.value);});
btn.addEventListener("click",function(){if(timer){stop();return;}
if(+s.value>=F.length-1)show(0);btn.textContent="\\u275A\\u275A pause";
timer=setInterval(function(){var k=+s.value+1;show(k);if(k>=F.length-1)stop();},%(interval)d);});
show(%(start)d);})();</script>"""


class StaticScrubber:
    """Pre-rendered frames behind a slider; displays as self-contained HTML (``_repr_html_``).

    panels: titles of the image panels; frames[k][p]: PNG bytes of panel p in frame k;
    labels[k]: the text shown for frame k; curve: an optional fixed PNG with a moving vertical
    marker at x = marks[k] (a fraction of its width) between y fractions curve_box = (top, height).
    """

    def __init__(self, panels: Sequence[str], frames: Sequence[Sequence[bytes]], labels: Sequence[str],
                 widths: Sequence[int], curve: bytes | None = None, marks: Sequence[float] | None = None,
                 curve_box: tuple[float, float] = (0.0, 1.0), title: str = "", pixelated: bool = True,
                 interval_ms: int = 200, start: int = 0):
        if not (len(frames) == len(labels) > 0):
            raise ValueError(f"need as many labels as frames (> 0), got {len(frames)} and {len(labels)}")
        self.panels, self.frames, self.labels, self.widths = list(panels), frames, list(labels), list(widths)
        self.curve, self.marks, self.curve_box = curve, marks, curve_box
        self.title, self.pixelated, self.interval_ms, self.start = title, pixelated, interval_ms, start

    def to_html(self) -> str:
        uid = "sfs-scrub-" + uuid.uuid4().hex[:10]
        cls = "sfs-px" if self.pixelated else ""
        uris = [[_uri(p) for p in fr] for fr in self.frames]
        figs = [f'<figure><img data-sfs-panel="{p}" class="{cls}" width="{w}" alt="{html.escape(t)}" '
                f'src="{uris[self.start][p]}"><figcaption>{html.escape(t)}</figcaption></figure>'
                for p, (t, w) in enumerate(zip(self.panels, self.widths))]
        if self.curve is not None:
            top, height = self.curve_box
            figs.append('<figure><div class="sfs-scrub-curve">'
                        f'<img src="{_uri(self.curve)}" alt="schedule curves">'
                        f'<div class="sfs-scrub-mark" style="top:{100 * top:.2f}%;height:{100 * height:.2f}%"></div>'
                        '</div></figure>')
        n = len(self.frames)
        head = f'<div class="sfs-scrub-title">{html.escape(self.title)}</div>' if self.title else ""
        body = (f'<div class="sfs-scrub" id="{uid}">{head}<div class="sfs-scrub-panels">{"".join(figs)}</div>'
                '<div class="sfs-scrub-controls"><button type="button">&#9654; play</button>'
                f'<input type="range" min="0" max="{n - 1}" step="1" value="{self.start}" '
                f'aria-label="{html.escape(self.title or "frame")}">'
                f'<span class="sfs-scrub-label">{html.escape(self.labels[self.start])}</span></div></div>')
        js = _JS % dict(id=json.dumps(uid), frames=json.dumps(uris), labels=json.dumps(self.labels),
                        marks=json.dumps(self.marks), interval=self.interval_ms, start=self.start)
        return _CSS + body + js

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        return f"<StaticScrubber: {len(self.frames)} frames; display it in a notebook>"


# ----------------------------------------------------------------------------------------------
# (a) The forward process of an image


def _book_t_label(t_book: int, T: int, schedule: Schedule) -> tuple[str, float]:
    """Text for book step t (0 = data) and the marker's x in data units."""
    if t_book == 0:
        return f"t = 0 / {T} \u00b7 noise level \u221a(1 \u2212 \u1fb1) = 0 \u00b7 SNR = \u221e", 0.0
    i = t_book - 1  # code index
    noise = float(schedule.sqrt_one_minus_alpha_bar[i])
    snr = float(schedule.snr[i])
    return (f"t = {t_book} / {T} \u00b7 noise level \u221a(1 \u2212 \u1fb1) = {noise:.3f} \u00b7 SNR = {snr:.3g}",
            float(t_book))


def _forward_frame(x0: torch.Tensor, schedule: Schedule, t_book: int, eps: torch.Tensor) -> torch.Tensor:
    if t_book == 0:
        return x0
    t = torch.full((x0.shape[0],), t_book - 1, dtype=torch.long)
    return q_sample(schedule, x0, t, eps)


def _curve_figure(schedule: Schedule, figsize=(3.4, 2.3)):
    """sqrt(alpha_bar), sqrt(1 - alpha_bar) and log10 SNR against the book's t = 1..T (with t = 0)."""
    from matplotlib.figure import Figure
    T = schedule.T
    tb = torch.arange(0, T + 1)
    ab = torch.cat([torch.ones(1), schedule.alpha_bar.double().float()])
    fig = Figure(figsize=figsize)
    ax = fig.add_axes((0.15, 0.2, 0.68, 0.72))
    tb, ab = tb.numpy(), ab.numpy()
    ax.plot(tb, ab ** 0.5, label=r"signal $\sqrt{\bar\alpha_t}$", color="#1f77b4")
    ax.plot(tb, (1 - ab) ** 0.5, label=r"noise $\sqrt{1-\bar\alpha_t}$", color="#ff7f0e")
    ax.set_xlim(0, T)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("t", fontsize=8, labelpad=1)
    ax.tick_params(labelsize=7)
    ax2 = ax.twinx()
    snr = schedule.snr.double().clamp(min=1e-12).log10().numpy()
    ax2.plot(tb[1:], snr, color="#2ca02c", ls="--", label=r"$\log_{10}$ SNR")
    ax2.tick_params(labelsize=7, colors="#2ca02c")
    ax2.set_xlim(0, T)
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=6.5, loc="center right", frameon=False)
    return fig, ax


def forward_scrubber(x0: torch.Tensor, schedule: Schedule, frames: int = 21, eps: torch.Tensor | None = None,
                     seed: int = 0, max_images: int = 8, scale: int = 3, dpi: int = 90,
                     live: bool | None = None):
    """Scrub the forward process: x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, t = 0..T.

    x0: images (B, C, H, W) in [-1, 1] (at most ``max_images`` shown); one eps (drawn with ``seed``
    unless given) is used for every t, so each image dissolves into the same noise. Static: ``frames``
    evenly spaced timesteps (book t = 0 is the data itself). Live: every t. ``scale`` enlarges pixels.
    """
    x0 = _as_images(x0, max_images).float()
    if eps is None:
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    eps = torch.as_tensor(eps)[: x0.shape[0]].to(x0)
    T = schedule.T
    width = scale * (_grid(x0).shape[1])
    if _decide(live):
        return _live_forward(x0, schedule, eps, scale)
    ts = _pick(T + 1, frames)
    with matplotlib.rc_context({"font.size": 8}):
        fig, ax = _curve_figure(schedule)
        curve = _png_of_figure(fig, dpi)
    x_left, x_right = ax.get_position().x0, ax.get_position().x1
    pos = ax.get_position()
    box = (1 - pos.y1, pos.height)  # from the top of the image
    frames_png, labels, marks = [], [], []
    for tb in ts:
        frames_png.append([_png_of_images(_forward_frame(x0, schedule, tb, eps))])
        text, xd = _book_t_label(tb, T, schedule)
        labels.append(text)
        marks.append(x_left + (x_right - x_left) * xd / T)
    return StaticScrubber(["x_t"], frames_png, labels, [width], curve=curve, marks=marks, curve_box=box,
                          title="The forward process: drag t")


def _live_forward(x0, schedule, eps, scale):
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    T = schedule.T
    slider = widgets.IntSlider(value=0, min=0, max=T, step=1, description="t",
                               continuous_update=True, layout=widgets.Layout(width="420px"))
    out = widgets.Output()

    def draw(change=None):
        tb = slider.value
        x = _forward_frame(x0, schedule, tb, eps)
        text, _ = _book_t_label(tb, T, schedule)
        with out:
            out.clear_output(wait=True)
            fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 2.4), gridspec_kw=dict(width_ratios=[2, 1]))
            g = _grid(x).numpy()
            a1.imshow(g[:, :, 0] if g.shape[2] == 1 else g, cmap="gray", vmin=0, vmax=1)
            a1.set_axis_off()
            a1.set_title(text, fontsize=8)
            ab = torch.cat([torch.ones(1), schedule.alpha_bar.float()])
            a2.plot(ab.sqrt().numpy(), label="signal")
            a2.plot((1 - ab).sqrt().numpy(), label="noise")
            a2.axvline(tb, color="#d62728")
            a2.legend(fontsize=7)
            a2.set_xlabel("t")
            plt.show()

    slider.observe(draw, names="value")
    draw()
    return widgets.VBox([slider, out])


# ----------------------------------------------------------------------------------------------
# (b) A sampler's reverse trajectory


def reverse_scrubber(steps: Sequence[dict], frames: int = 20, max_images: int = 8, scale: int = 3,
                     live: bool | None = None, titles: Sequence[str] = ("x_t", "x0_hat (predicted)")):
    """Scrub a sampler's steps: x_t (its input) and x0_hat (its guess of the clean image) side by side.

    steps: the dicts a sampler passes to ``callback``, ``dict(i=..., t=..., x_t=..., x0_hat=...)``,
    collected with ``callback=steps.append``; x_t and x0_hat are images (B, C, H, W) in [-1, 1]
    (for a latent model, decode both first and name them in ``titles``).
    """
    titles = list(titles)
    if len(titles) != 2 or not all(isinstance(t, str) for t in titles):
        raise ValueError(f"titles must be two strings (for x_t and x0_hat), got {titles!r}")
    steps = list(steps)
    if not steps:
        raise ValueError("steps is empty: pass the list filled by callback=steps.append")
    for key in ("t", "x_t", "x0_hat"):
        if key not in steps[0]:
            raise ValueError(f"each step must be a dict with keys i, t, x_t, x0_hat; missing {key!r}")
    n = len(steps)

    def label(k):
        s = steps[k]
        return f"step {k + 1} / {n} \u00b7 t = {int(s['t']) + 1}"  # book step = code index + 1

    def images(k):
        return _as_images(steps[k]["x_t"], max_images), _as_images(steps[k]["x0_hat"], max_images)

    x, _ = images(0)
    width = scale * _grid(x).shape[1]
    if _decide(live):
        return _live_indexed(n, lambda k: [_grid(a) for a in images(k)], titles, label, start=n - 1)
    idx = _pick(n, frames)
    frames_png = [[_png_of_images(a) for a in images(k)] for k in idx]
    return StaticScrubber(titles, frames_png, [label(k) for k in idx], [width, width],
                          title="Sampling: drag through the steps", start=len(idx) - 1)


def _live_indexed(n, grids, titles, label, start=0):
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    slider = widgets.IntSlider(value=start, min=0, max=n - 1, step=1, description="step",
                               layout=widgets.Layout(width="420px"))
    out = widgets.Output()

    def draw(change=None):
        k = slider.value
        gs = grids(k)
        with out:
            out.clear_output(wait=True)
            fig, axes = plt.subplots(1, len(gs), figsize=(4 * len(gs), 2.6), squeeze=False)
            for ax, g, title in zip(axes[0], gs, titles):
                g = g.numpy()
                ax.imshow(g[:, :, 0] if g.shape[2] == 1 else g, cmap="gray", vmin=0, vmax=1)
                ax.set_title(title, fontsize=9)
                ax.set_axis_off()
            fig.suptitle(label(k), fontsize=9)
            plt.show()

    slider.observe(draw, names="value")
    draw()
    return widgets.VBox([slider, out])


# ----------------------------------------------------------------------------------------------
# (c) Particles of a 2-D toy moving under the score


def _scatter_png(pts: torch.Tensor, data: torch.Tensor | None, lim: float, title: str, dpi: int, size: float) -> bytes:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(size, size))
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.9))
    if data is not None:
        ax.scatter(data[:, 0].numpy(), data[:, 1].numpy(), s=2, c="#cccccc", linewidths=0, rasterized=True)
    ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), s=3, c="#1f77b4", linewidths=0, rasterized=True)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    return _png_of_figure(fig, dpi)


def particles_scrubber(trajectory: Sequence[torch.Tensor], data: torch.Tensor | None = None,
                       labels: Sequence[str] | None = None, frames: int = 25, lim: float = 3.0,
                       max_points: int = 1000, dpi: int = 72, size: float = 3.2, live: bool | None = None):
    """Scrub particles of a 2-D toy: trajectory[k] is an (N, 2) tensor at step k (noise first).

    data: optional (M, 2) points of the target distribution, drawn in grey behind the particles.
    labels: optional text per step (default "step k / n").
    """
    traj = [torch.as_tensor(p).detach().float().cpu()[:max_points] for p in trajectory]
    if not traj:
        raise ValueError("trajectory is empty")
    for p in traj:
        if p.ndim != 2 or p.shape[1] != 2:
            raise ValueError(f"each element of trajectory must be (N, 2), got {tuple(p.shape)}")
    n = len(traj)
    if labels is not None and len(labels) != n:
        raise ValueError(f"need one label per step: {n} steps, {len(labels)} labels")
    labels = list(labels) if labels is not None else [f"step {k} / {n - 1}" for k in range(n)]
    bg = None if data is None else torch.as_tensor(data).detach().float().cpu()[:2000]
    if _decide(live):
        return _live_particles(traj, bg, labels, lim)
    idx = _pick(n, frames)
    with matplotlib.rc_context({"font.size": 8}):
        frames_png = [[_scatter_png(traj[k], bg, lim, "", dpi, size)] for k in idx]
    return StaticScrubber(["particles"], frames_png, [labels[k] for k in idx], [int(size * dpi)],
                          title="Particles under the learned score: drag", pixelated=False)


def _live_particles(traj, bg, labels, lim):
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    slider = widgets.IntSlider(value=0, min=0, max=len(traj) - 1, description="step",
                               layout=widgets.Layout(width="420px"))
    out = widgets.Output()

    def draw(change=None):
        k = slider.value
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(4, 4))
            if bg is not None:
                ax.scatter(bg[:, 0].numpy(), bg[:, 1].numpy(), s=2, c="#cccccc")
            ax.scatter(traj[k][:, 0].numpy(), traj[k][:, 1].numpy(), s=3)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_title(labels[k], fontsize=9)
            plt.show()

    slider.observe(draw, names="value")
    draw()
    return widgets.VBox([slider, out])


__all__ = ["forward_scrubber", "reverse_scrubber", "particles_scrubber", "is_live", "StaticScrubber"]


# ----------------------------------------------------------------------------------------------
# (d) A prompt box for the text-to-image model (book ch. 12)


def prompt_box(model, autoencoder, prompt: str = "a red 3 left of a blue 7", n: int = 4,
               live: bool | None = None):
    """Type a prompt, press "draw": ``n`` images from ``sfs.text2image.generate`` (live kernels only).

    Live (Colab, Binder, a local Jupyter): a text box, guidance scale, steps and seed, and a button;
    a prompt the tokenizer refuses shows its error message instead of images. Static (the built
    book, where no Python runs): returns None, and the chapter shows its pre-rendered gallery.
    """
    if not _decide(live):
        return None
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    text = widgets.Text(value=prompt, description="prompt", layout=widgets.Layout(width="420px"))
    scale = widgets.FloatSlider(value=3.0, min=0.0, max=10.0, step=0.5, description="guidance")
    steps = widgets.IntSlider(value=20, min=1, max=50, description="steps")
    seed = widgets.IntText(value=0, description="seed")
    button = widgets.Button(description="draw")
    out = widgets.Output()

    def draw(_=None):
        with out:
            out.clear_output(wait=True)
            imgs, error = _prompt_images(model, autoencoder, text.value, scale.value, steps.value,
                                         seed.value, n)
            if error:
                print(error)
                return
            fig, ax = plt.subplots(figsize=(1.6 * n, 1.8))
            ax.imshow(_grid(imgs, nrow=n).numpy(), interpolation="nearest")
            ax.set_title(text.value, fontsize=9)
            ax.set_axis_off()
            plt.show()

    button.on_click(draw)
    draw()
    return widgets.VBox([text, widgets.HBox([scale, steps]), widgets.HBox([seed, button]), out])


def _prompt_images(model, autoencoder, prompt, scale, steps, seed, n):
    """(images, None), or (None, a message) for a prompt the tokenizer or the sampler refuses."""
    from sfs.text2image import generate
    try:
        return generate(prompt, model, autoencoder, scale, steps, seed, n), None
    except (ValueError, TypeError) as e:  # the tokenizer's message names the bad word
        return None, f"Not a prompt this model can read: {e}"

"""Scrubbers: the static HTML is self-contained, small and moves; the live one is an ipywidgets slider."""

import json
import re

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from sfs import data, scrub  # noqa: E402
from sfs.schedules import cosine_schedule, linear_schedule  # noqa: E402


@pytest.fixture(scope="module")
def images():
    return data.load("mnist", "test").images[:8]


def frames_of(html):
    """The frames array the page's script shows: a list (frames) of lists (panels) of data URIs."""
    m = re.search(r"var F=(\[.*?\]),L=", html, re.S)
    return json.loads(m.group(1))


def test_forward_static_is_self_contained_and_small(images):
    s = scrub.forward_scrubber(images, linear_schedule(1000), frames=21, live=False)
    html = s.to_html()
    assert '<input type="range"' in s._repr_html_()  # what a notebook front end displays
    assert '<input type="range" min="0" max="20"' in html
    assert "http://" not in html and "https://" not in html and "require(" not in html  # no CDN, no widget manager
    frames = frames_of(html)
    assert len(frames) == 21 and all(len(f) == 1 and f[0].startswith("data:image/png;base64,") for f in frames)
    assert len(set(f[0] for f in frames)) == 21  # every frame differs
    assert len(html) < 300_000, len(html)  # page weight: 8 MNIST images, 21 frames
    labels = json.loads(re.search(r",L=(\[.*?\]),M=", html, re.S).group(1))
    assert labels[0].startswith("t = 0 / 1000") and labels[-1].startswith("t = 1000 / 1000")
    assert "SNR" in labels[5] and "noise level" in labels[5]
    marks = json.loads(re.search(r",M=(\[.*?\]);", html, re.S).group(1))
    assert marks == sorted(marks) and 0 < marks[0] < marks[-1] < 1


def test_forward_last_frame_is_noise_and_first_is_data(images):
    eps = torch.randn(images.shape, generator=torch.Generator().manual_seed(1))
    x = scrub._forward_frame(images, linear_schedule(1000), 0, eps)
    assert torch.equal(x, images)
    xT = scrub._forward_frame(images, linear_schedule(1000), 1000, eps)
    assert (xT - eps).abs().max() < 0.02


def test_reverse_static_from_callback_dicts(images):
    steps = [dict(i=i, t=999 - 100 * i, x_t=torch.randn(4, 1, 28, 28), x0_hat=images[:4] * i / 9) for i in range(10)]
    s = scrub.reverse_scrubber(steps, frames=5, live=False)
    frames = frames_of(s.to_html())
    assert len(frames) == 5 and all(len(f) == 2 for f in frames)  # x_t and x0_hat side by side
    assert "step 10 / 10" in s.to_html()  # opens on the final step
    with pytest.raises(ValueError, match="x0_hat"):
        scrub.reverse_scrubber([dict(i=0, t=0, x_t=images)], live=False)
    with pytest.raises(ValueError, match="empty"):
        scrub.reverse_scrubber([], live=False)


def test_particles_static():
    x0 = data.make_toy("two_moons", 500)
    traj = [x0 * k / 10 + torch.randn(500, 2) * (1 - k / 10) for k in range(11)]
    html = scrub.particles_scrubber(traj, data=x0, frames=6, live=False).to_html()
    assert len(frames_of(html)) == 6
    assert len(html) < 200_000
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        scrub.particles_scrubber([torch.zeros(5, 3)], live=False)


def test_mode_rules(monkeypatch):
    monkeypatch.setenv("SFS_SCRUB", "live")
    assert scrub.is_live()
    monkeypatch.setenv("SFS_SCRUB", "static")
    assert not scrub.is_live()
    monkeypatch.delenv("SFS_SCRUB")
    for k in [k for k in __import__("os").environ if k.startswith(("BINDER_", "JUPYTERHUB_", "JPY_SESSION"))]:
        monkeypatch.delenv(k)
    assert not scrub.is_live()  # plain Python (a script, pytest, a build): static
    monkeypatch.setenv("BINDER_REPO_URL", "https://example.org/repo")
    assert not scrub.is_live()  # no IPython kernel here, so still static


def test_book_build_forces_static(monkeypatch):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "tools" / "sfs_book.py"
    spec = importlib.util.spec_from_file_location("sfs_book", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setenv("SFS_SCRUB", "live")
    mod.force_static_scrubbers()
    assert not scrub.is_live()


def test_live_widgets(images):
    ipywidgets = pytest.importorskip("ipywidgets")
    box = scrub.forward_scrubber(images[:2], cosine_schedule(50), live=True)
    assert isinstance(box, ipywidgets.VBox)
    slider = box.children[0]
    assert isinstance(slider, ipywidgets.IntSlider) and slider.max == 50
    slider.value = 25  # computes the frame on demand; must not raise
    steps = [dict(i=i, t=9 - i, x_t=torch.randn(2, 1, 8, 8), x0_hat=torch.zeros(2, 1, 8, 8)) for i in range(10)]
    box = scrub.reverse_scrubber(steps, live=True)
    box.children[0].value = 3
    box = scrub.particles_scrubber([torch.randn(50, 2) for _ in range(4)], live=True)
    box.children[0].value = 2


def test_reverse_titles_name_the_panels(images):
    steps = [dict(i=i, t=9 - i, x_t=torch.randn(2, 3, 8, 8), x0_hat=torch.zeros(2, 3, 8, 8)) for i in range(3)]
    html = scrub.reverse_scrubber(steps, live=False, titles=("decoded z_t", "decoded z0_hat")).to_html()
    assert "decoded z_t" in html and "decoded z0_hat" in html
    with pytest.raises(ValueError, match="titles"):
        scrub.reverse_scrubber(steps, live=False, titles=("only one",))


def test_prompt_box_live_draws_and_reports_bad_prompts():
    ipywidgets = pytest.importorskip("ipywidgets")
    from sfs.exercises.tiny_sd import _tiny_models
    model, ae = _tiny_models()
    assert scrub.prompt_box(model, ae, live=False) is None  # static: the chapter shows its gallery
    box = scrub.prompt_box(model, ae, "two bags", n=2, live=True)
    assert isinstance(box, ipywidgets.VBox)
    text, button, out = box.children[0], box.children[2].children[1], box.children[3]
    text.value = "a purple unicorn"
    box.children[1].children[1].value = 2  # steps: keep it quick
    button.click()  # must not raise
    imgs, err = scrub._prompt_images(model, ae, text.value, 3.0, 2, 0, 2)
    assert imgs is None and "Not a prompt" in err and "unicorn" in err
    imgs, err = scrub._prompt_images(model, ae, "two bags", 3.0, 2, 0, 2)
    assert err is None and imgs.shape == (2, 3, 48, 48)

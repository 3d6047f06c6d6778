"""The built book in a real browser: headless Debian chromium, driven by Playwright, network off.

Serves ``_build/html`` (or ``$SFS_BOOK_HTML``) on 127.0.0.1 and blocks every other request, then
opens every page and checks: no JavaScript error, math rendered by MathJax (no raw TeX left),
every image loaded, every launch link (Colab, Binder) pointing at a notebook that exists in this
repository, and on each scrubber page that moving the slider changes the frame shown.
Screenshots of a few pages go to ``_build/screenshots/`` (CI keeps them as artifacts).

Playwright never downloads a browser here: it launches ``/usr/bin/chromium`` (``$SFS_CHROMIUM``).
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HTML = Path(os.environ.get("SFS_BOOK_HTML", ROOT / "_build" / "html"))
SHOTS = Path(os.environ.get("SFS_SCREENSHOTS", ROOT / "_build" / "screenshots"))
CHROMIUM = os.environ.get("SFS_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-default-apps", "--no-first-run", "--metrics-recording-only", "--mute-audio"]
SCREENSHOT_PAGES = ("index", "book/data", "book/interactive", "book/forward_process", "book/schedules")


def pages() -> list[str]:
    """Every HTML page of the build, as a path relative to its root."""
    return sorted(str(p.relative_to(HTML)) for p in HTML.rglob("*.html")
                  if "_static" not in p.parts and "_sources" not in p.parts)


@pytest.fixture(scope="module")
def server():
    if not (HTML / "index.html").is_file():
        pytest.fail(f"no built book at {HTML}: run `make book` first")
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} not found: apt-get install -y chromium (CI's .ci/run does)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def _repo_parts() -> tuple[str, str, str]:
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    url = cfg["repository"]["url"].rstrip("/")
    org, repo = url.split("github.com/")[1].split("/")[:2]
    return org, repo, str(cfg["repository"].get("branch", "main"))


def _launch_target(href: str) -> str | None:
    """The repository path a Colab or Binder link opens, or None for other links."""
    u = urlparse(href)
    org, repo, branch = _repo_parts()
    if u.netloc == "colab.research.google.com":
        m = re.fullmatch(rf"/github/{org}/{repo}/blob/{branch}/(.+)", u.path)
        assert m, f"Colab link not to {org}/{repo}@{branch}: {href}"
        return unquote(m.group(1))
    if "binder" in u.netloc and u.path.startswith("/v2/"):
        assert u.path.rstrip("/") == f"/v2/gh/{org}/{repo}/{branch}", f"Binder link not to {org}/{repo}: {href}"
        urlpath = parse_qs(u.query).get("urlpath", [""])[0]
        return re.sub(r"^(lab/)?tree/", "", urlpath)
    return None


class Page:
    """One page opened with the network off: what it logged and what it tried to fetch."""

    def __init__(self, browser, base: str, rel: str):
        self.ctx = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
        self.errors: list[str] = []
        self.blocked: list[str] = []
        self.ctx.route("**/*", self._route(base))
        self.page = self.ctx.new_page()
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}")
                     if m.type == "error" else None)
        self.page.goto(base + rel, wait_until="load")
        # MathJax typesets after load; wait for it where it is on the page
        self.page.wait_for_function(
            "() => !window.MathJax || (MathJax.startup && MathJax.startup.promise && "
            "MathJax.startup.promise.then(() => true))", timeout=30_000)
        self.page.wait_for_timeout(300)

    def _route(self, base):
        def handle(route):
            url = route.request.url
            if url.startswith(base) or url.startswith("data:"):
                route.continue_()
            else:
                self.blocked.append(url)
                route.abort()
        return handle

    def close(self):
        self.ctx.close()


@pytest.fixture(scope="module")
def opened(browser, server):
    """Every page, opened once; the tests below read what was recorded."""
    out = {}
    for rel in pages():
        p = Page(browser, server, rel)
        name = rel[:-len(".html")]
        if name in SCREENSHOT_PAGES:
            SHOTS.mkdir(parents=True, exist_ok=True)
            p.page.screenshot(path=str(SHOTS / (name.replace("/", "_") + ".png")), full_page=True)
        out[rel] = p
    yield out
    for p in out.values():
        p.close()


def test_there_are_pages():
    assert "index.html" in pages() and len(pages()) >= 4, pages()


def test_no_javascript_errors_and_nothing_fetched_from_outside(opened):
    bad = {rel: p.errors for rel, p in opened.items() if p.errors}
    assert not bad, f"JavaScript errors: {bad}"
    outside = {rel: p.blocked for rel, p in opened.items() if p.blocked}
    assert not outside, f"pages tried to load from the network: {outside}"


def test_math_is_rendered(opened):
    with_math = 0
    for rel, p in opened.items():
        n_math = p.page.locator(".math").count()
        if not n_math:
            continue
        with_math += 1
        raw = p.page.evaluate("() => [...document.querySelectorAll('.math')]"
                              ".filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 60))")
        assert not raw, f"{rel}: math left as raw TeX: {raw[:3]}"
        assert p.page.locator("mjx-container").count() >= n_math
        text = p.page.evaluate("() => { const c = document.querySelector('main') || document.body;"
                               " const k = c.cloneNode(true); k.querySelectorAll('pre, code, mjx-container, script')"
                               ".forEach(e => e.remove()); return k.innerText; }")
        assert "$$" not in text and "\\frac" not in text, f"{rel}: raw TeX visible"
    assert with_math >= 2, "expected math on several pages"


def test_every_image_loaded(opened):
    for rel, p in opened.items():
        broken = p.page.evaluate("() => [...document.images].filter(i => !(i.complete && i.naturalWidth > 0))"
                                 ".map(i => i.currentSrc.slice(0, 80) || i.outerHTML.slice(0, 80))")
        assert not broken, f"{rel}: images not loaded: {broken}"


def test_launch_links_point_to_notebooks_in_the_repository(opened):
    n = 0
    for rel, p in opened.items():
        hrefs = p.page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
        for href in hrefs:
            target = _launch_target(href)
            if target is None:
                continue
            n += 1
            assert target.endswith(".ipynb"), f"{rel}: launch link opens {target}, not a notebook"
            assert (ROOT / target).is_file(), f"{rel}: launch link to {target}, which is not in the repository"
    assert n >= 2, "no Colab/Binder launch links found"


def test_scrubbers_move(opened):
    scrubbers = 0
    for rel, p in opened.items():
        for k in range(p.page.locator(".sfs-scrub").count()):
            scrubbers += 1
            root = p.page.locator(".sfs-scrub").nth(k)
            img = root.locator("img[data-sfs-panel]").first
            label = root.locator(".sfs-scrub-label")
            slider = root.locator("input[type=range]")
            slider.focus()
            p.page.keyboard.press("Home")  # real keyboard events on the range input
            home_src, home_label = img.get_attribute("src"), label.inner_text()
            p.page.keyboard.press("End")
            end_src, end_label = img.get_attribute("src"), label.inner_text()
            assert end_src != home_src, f"{rel}: scrubber {k}: the frame did not change when the slider moved"
            assert end_label != home_label, f"{rel}: scrubber {k}: the label did not change"
            p.page.keyboard.press("Home")
            after = img.get_attribute("src")
            assert after == home_src and label.inner_text() == home_label, \
                f"{rel}: scrubber {k}: frame and label did not follow the slider back to the start"
            root.locator("button").click()  # play advances frames on its own
            p.page.wait_for_timeout(700)
            assert img.get_attribute("src") != after, f"{rel}: scrubber {k}: play did not advance"
            root.locator("button").click()
    assert scrubbers >= 1, "no scrubber found in the book"

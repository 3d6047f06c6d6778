"""sfs outside its repository: shipped models found by name through the download cache.

Every download here comes from an HTTP server on 127.0.0.1 (``http.server`` in a thread) that
serves a temporary folder holding a tiny model; nothing reaches the outside network.
"""

import functools
import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from sfs import model_cache
from sfs.checkpoints import CheckpointError, load_model, read_card, resolve_models_dir, save_checkpoint
from sfs.classifier import ClassifierConfig, Classifier, load_classifier
from sfs.unet import UNet, UNetConfig

TINY = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, num_heads=2,
                  attn_resolutions=())


class Server:
    """``http.server`` serving ``folder`` on 127.0.0.1 in a thread; ``requests`` lists the paths."""

    def __init__(self, folder):
        self.requests = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                server.requests.append(self.path)
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/models/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def stop(self):
        if self.thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A tiny U-Net "tiny" and a tiny classifier "tinyclf" served from tmp/www/models/; sfs set up
    as if installed with pip: no repository models/, no $SFS_MODELS_DIR, the cache in tmp/cache."""
    www = tmp_path / "www" / "models"
    torch.manual_seed(0)
    card = save_checkpoint(www / "tiny.safetensors", UNet(TINY), TINY, {"target": "eps"})
    save_checkpoint(www / "tinyclf.safetensors", Classifier(ClassifierConfig(width=8)))
    server = Server(tmp_path / "www")
    monkeypatch.setattr(model_cache, "repo_models_dir", lambda: None)
    monkeypatch.delenv("SFS_MODELS_DIR", raising=False)
    monkeypatch.setenv("SFS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SFS_MODELS_URL", server.url)
    yield www, tmp_path / "cache", server, card
    server.stop()


def test_first_use_downloads_then_the_cache_needs_no_network(served, capsys):
    www, cache, server, card = served
    assert resolve_models_dir() == cache
    model, card2 = load_model("tiny")
    assert "sfs: downloading tiny.safetensors" in capsys.readouterr().err  # the progress bar
    assert card2 == card and model.config == TINY
    assert server.requests == ["/models/tiny.json", "/models/tiny.safetensors"]
    assert (cache / "tiny.safetensors").read_bytes() == (www / "tiny.safetensors").read_bytes()
    assert (cache / "tiny.json").read_bytes() == (www / "tiny.json").read_bytes()
    assert not list(cache.glob("*.tmp"))
    server.stop()  # from now on any download would fail
    assert load_model("tiny")[1] == card
    assert read_card("tiny") == card
    assert len(server.requests) == 2


def test_every_loader_goes_through_the_cache(served):
    _, cache, server, _ = served
    model, card = load_classifier("tinyclf")
    assert isinstance(model, Classifier) and card["kind"] == "classifier"
    assert (cache / "tinyclf.safetensors").is_file()
    with pytest.raises(CheckpointError, match="holds a unet, not a classifier"):
        load_classifier("tiny")  # downloaded, verified, then refused for its kind


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_corrupted_download_is_refused_and_not_cached(served, damage):
    www, cache, _, _ = served
    path = www / "tiny.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-10] ^= 0xFF
    else:
        data = data[:-100]
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch" if damage == "flip" else "truncated"):
        load_model("tiny")
    assert not list(cache.iterdir())  # no weights, no card, no temporary file


def test_a_server_that_is_down_gives_an_error_that_says_what_to_do(served, monkeypatch):
    _, cache, _, _ = served
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/models/"
    monkeypatch.setenv("SFS_MODELS_URL", url)
    with pytest.raises(model_cache.DownloadError) as e:
        load_model("tiny")
    msg = str(e.value)
    assert "tiny.json" in msg and url + "tiny.json" in msg and str(cache) in msg
    assert "tiny.safetensors" in msg and "SFS_MODELS_DIR" in msg
    assert isinstance(e.value, FileNotFoundError)  # as for a model missing from a folder
    assert not cache.exists() or not list(cache.iterdir())


def test_an_unknown_name_is_a_404_naming_the_url(served):
    _, _, server, _ = served
    with pytest.raises(model_cache.DownloadError, match=r"nothing-here\.json.*HTTP 404"):
        load_model("nothing-here")
    assert server.requests == ["/models/nothing-here.json"]


def test_models_dir_and_the_environment_come_before_the_cache(served, tmp_path, monkeypatch):
    www, cache, server, card = served
    assert load_model("tiny", models_dir=www)[1] == card  # explicit folder
    monkeypatch.setenv("SFS_MODELS_DIR", str(www))
    assert resolve_models_dir() == www
    assert load_model("tiny")[1] == card
    with pytest.raises(FileNotFoundError, match="no model"):  # no download for these folders
        load_model("tiny", models_dir=tmp_path)
    assert server.requests == [] and not cache.exists()


def test_the_checkout_is_recognised():
    # these tests run from the repository: its models/ folder comes before the cache
    assert model_cache.repo_models_dir() == model_cache.REPO_MODELS_DIR
    assert (model_cache.REPO_MODELS_DIR / "mnist-uncond.json").is_file()


@pytest.mark.parametrize("name", ["../tiny", ".hidden", "", "a/b", 3])
def test_names_that_are_not_plain_are_refused(name):
    with pytest.raises(ValueError, match="name must be the plain name"):
        model_cache.fetch_model(name)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SFS_PIP_TEST") != "1",
                    reason="builds a virtual environment and a wheel (about 25 s): SFS_PIP_TEST=1")
def test_a_pip_installed_copy_runs_the_readme_example():
    script = Path(__file__).resolve().parents[1] / "tools" / "check_pip_install.py"
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr

"""Inception FID (sfs.inception_fid): opt-in, and offline it says what is missing.

No test here needs torch-fidelity, the Inception weights or the network: the imports are
simulated through sys.modules, torch's hub cache is a temporary folder, and a stand-in metric
records what it is given. The one test of the real network runs only where both are present.
"""

import sys
import types
import urllib.error

import pytest
import torch

import sfs.inception_fid as ifid
import sfs.metrics as metrics
from sfs.inception_fid import WEIGHTS_URL, inception_fid


def images(n=4, c=1, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g) * 2 - 1


class RecordingFID:
    """Stands in for torchmetrics' FrechetInceptionDistance: records updates, returns 1.25."""
    made = []

    def __init__(self, feature, normalize):
        assert feature == 2048 and normalize is False
        self.updates = []
        RecordingFID.made.append(self)

    def to(self, device):
        return self

    def update(self, imgs, real):
        self.updates.append((imgs.clone(), real))

    def compute(self):
        return torch.tensor(1.25)


@pytest.fixture
def fake_packages(monkeypatch, tmp_path):
    """torch_fidelity and torchmetrics.image.fid as stand-ins; the hub cache in tmp_path."""
    def install(fid_class=RecordingFID):
        tf = types.ModuleType("torch_fidelity")
        tf_inception = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
        tf_inception.URL_INCEPTION_V3 = WEIGHTS_URL
        tf.feature_extractor_inceptionv3 = tf_inception
        image = types.ModuleType("torchmetrics.image")
        fid = types.ModuleType("torchmetrics.image.fid")
        fid.FrechetInceptionDistance = fid_class
        image.fid = fid
        for name, mod in [("torch_fidelity", tf), (tf_inception.__name__, tf_inception),
                          ("torchmetrics.image", image), ("torchmetrics.image.fid", fid)]:
            monkeypatch.setitem(sys.modules, name, mod)
        return tmp_path / "hub" / "checkpoints" / WEIGHTS_URL.rsplit("/", 1)[1]
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    RecordingFID.made.clear()
    return install


def test_without_the_package_the_message_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # import torch_fidelity now fails
    with pytest.raises(ModuleNotFoundError) as e:
        inception_fid(images(), images(seed=1), download=True)
    msg = str(e.value)
    assert 'pip install "sfs[fid]"' in msg and "torch-fidelity" in msg
    assert WEIGHTS_URL in msg and "first use" in msg  # where the weights come from, and when
    assert "sfs.metrics" in msg and "offline" in msg  # and what the default is instead


def test_without_cached_weights_and_without_download_nothing_is_fetched(fake_packages):
    def forbidden(**kw):
        raise AssertionError("download=False must not build the metric (it would download)")
    path = fake_packages(forbidden)
    with pytest.raises(FileNotFoundError) as e:
        inception_fid(images(), images(seed=1))
    msg = str(e.value)
    assert "download=True" in msg and WEIGHTS_URL in msg and str(path) in msg and "sfs.metrics" in msg


def test_a_failed_download_says_what_failed_and_where_to_put_the_file(fake_packages):
    def offline(**kw):  # what torch.hub.load_state_dict_from_url raises without a network
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    path = fake_packages(offline)
    with pytest.raises(ConnectionError) as e:
        inception_fid(images(), images(seed=1), download=True)
    msg = str(e.value)
    assert WEIGHTS_URL in msg and str(path) in msg and "name resolution" in msg
    assert "sfs.metrics" in msg


def test_images_reach_the_metric_as_uint8_rgb_in_batches(fake_packages):
    path = fake_packages()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"cached")  # cached weights: download=False is enough
    fake = images(5, c=1)
    fake[0] = -1
    fake[1] = 1
    real = images(3, c=1, seed=1)
    assert inception_fid(fake, real, batch_size=2) == 1.25
    (metric,) = RecordingFID.made
    assert [(len(x), r) for x, r in metric.updates] == [(2, True), (1, True), (2, False), (2, False),
                                                       (1, False)]
    first_fake = metric.updates[2][0]
    assert first_fake.dtype == torch.uint8 and first_fake.shape == (2, 3, 8, 8)
    assert first_fake[0].eq(0).all() and first_fake[1].eq(255).all()  # -1 -> 0, 1 -> 255


@pytest.mark.parametrize("fake, real, kw, error, name", [
    ([[0.0]], images(), {}, TypeError, "fake"),
    (images(), (images() * 100).long(), {}, TypeError, "real"),
    (images()[0], images(), {}, ValueError, "fake"),                 # 3-D
    (images(c=2), images(c=2), {}, ValueError, "fake"),              # 2 channels
    (images(), images(n=1), {}, ValueError, "real"),                 # N = 1
    (images() * 1.5, images(), {}, ValueError, "fake"),              # outside [-1, 1]
    (images(), images().fill_(float("nan")), {}, ValueError, "real"),
    (images(size=8), images(size=16), {}, ValueError, "fake and real"),
    (images(), images(), {"batch_size": 0}, ValueError, "batch_size"),
    (images(), images(), {"download": "yes"}, TypeError, "download"),
])
def test_bad_input_is_refused_before_anything_is_loaded(monkeypatch, fake, real, kw, error, name):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # loading would fail otherwise
    with pytest.raises(error, match=name):
        inception_fid(fake, real, **kw)


def test_inception_features_of_sfs_metrics_give_the_same_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    with pytest.raises(ModuleNotFoundError, match=r'pip install "sfs\[fid\]"'):
        metrics.extract_features(images(), feature="inception")


def test_real_inception_fid_of_a_set_with_itself_is_zero():
    pytest.importorskip("torch_fidelity")
    if not ifid.weights_path().is_file():
        pytest.skip(f"Inception weights not cached at {ifid.weights_path()} (offline)")
    x = images(4, c=3, size=32)
    assert inception_fid(x, x) < 1e-3

"""The committed notebooks (.ipynb) that the launch buttons open: one per chapter, in sync, installable.

`make notebooks` (tools/sync_notebooks.py) regenerates them from the MyST chapters; this test fails
when a chapter changed and its notebook was not regenerated.
"""

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import sync_notebooks  # noqa: E402

CHAPTERS = sync_notebooks.chapters()


def test_some_chapters_are_notebooks():
    assert any(p.name == "data.md" for p in CHAPTERS)


@pytest.mark.parametrize("md", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_notebook_exists_and_is_in_sync(md):
    ipynb = md.with_suffix(".ipynb")
    assert ipynb.is_file(), f"{ipynb.relative_to(ROOT)} is missing: run `make notebooks` and commit it"
    assert ipynb.read_text() == sync_notebooks.notebook_text(md), \
        f"{ipynb.relative_to(ROOT)} is out of date with {md.name}: run `make notebooks` and commit it"


@pytest.mark.parametrize("md", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_first_cell_installs_sfs_only_in_colab(md):
    nb = nbformat.read(md.with_suffix(".ipynb"), as_version=4)
    nbformat.validate(nb)
    first = nb.cells[0]
    assert first.cell_type == "code" and first.metadata.get("tags") == ["remove-cell"]
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].rstrip("/")
    assert f'"{url}"' in first.source, "the install cell must clone _config.yml's repository.url"
    assert 'if "google.colab" in sys.modules:' in first.source
    assert "pip" in first.source and "git" in first.source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_install_cell_does_nothing_outside_colab(monkeypatch):
    """Run the cell here (no google.colab): it must not clone, install or change directory."""
    called = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: called.append(a))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    cwd = Path.cwd()
    exec(sync_notebooks.COLAB_CELL.format(url="https://github.com/x/y", branch="main"), {})
    assert not called and Path.cwd() == cwd


def test_install_cell_in_colab_clones_and_installs(monkeypatch, tmp_path):
    called = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: called.append(cmd))
    monkeypatch.setitem(sys.modules, "google.colab", object())
    monkeypatch.setattr("os.chdir", lambda p: called.append(["chdir", p]))
    monkeypatch.setattr(sys, "path", list(sys.path))
    exec(sync_notebooks.COLAB_CELL.format(url="https://github.com/x/y", branch="main"), {})
    assert called[0][:4] == ["git", "clone", "--depth", "1"] and "https://github.com/x/y" in called[0]
    assert any("pip" in c and "-e" in c for c in called)
    assert called[-1] == ["chdir", "/content/sfs/book"]


def test_notebooks_are_not_built_by_sphinx():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert "**/*.ipynb" in cfg["exclude_patterns"]  # else "multiple files found" for each chapter


def test_binder_environment():
    req = (ROOT / "binder" / "requirements.txt").read_text()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in req
    lines = [ln.strip() for ln in req.splitlines()]
    assert any(ln.startswith("torch==") and ln.endswith("+cpu") for ln in lines)
    assert any(ln.startswith("jupytext") for ln in lines)
    assert "-e ." in lines  # sfs itself

"""Regenerate the committed notebooks (.ipynb) from the book's MyST chapters (.md): ``make notebooks``.

The ``.md`` chapter is the source; its ``.ipynb`` twin exists for the launch buttons (Colab opens
only notebooks; sphinx-book-theme links to a same-named ``.ipynb`` beside the ``.md``). Each
notebook gets one extra first cell, tagged ``remove-cell``, that installs ``sfs`` from the
repository when, and only when, it runs in Colab; the repository URL and branch come from
``_config.yml`` (``repository.url``, ``repository.branch``), the one place they live.

Notebooks carry no outputs and deterministic cell ids, so regenerating is reproducible and
``--check`` (run by ``tests/test_notebooks.py`` in CI) can compare byte for byte.

    python tools/sync_notebooks.py           # write every book/<chapter>.ipynb
    python tools/sync_notebooks.py --check   # exit 1 and name the notebooks that are out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jupytext
import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]

COLAB_CELL = '''\
# Colab only (this cell is hidden in the book): install sfs and fetch the shipped checkpoints.
import os, subprocess, sys
if "google.colab" in sys.modules:
    REPO, BRANCH, DEST = "{url}", "{branch}", "/content/sfs"
    if not os.path.isdir(DEST):
        subprocess.run(["git", "clone", "--depth", "1", "--branch", BRANCH, REPO, DEST], check=True)
        subprocess.run(["git", "-C", DEST, "lfs", "pull"], check=False)  # checkpoints, if kept in LFS
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", DEST], check=True)
    sys.path.insert(0, DEST)           # importable now, without restarting the runtime
    os.chdir(os.path.join(DEST, "book"))  # chapters run from book/, as in the build'''


def repository(root: Path = ROOT) -> tuple[str, str]:
    """(url, branch) from _config.yml."""
    cfg = yaml.safe_load((root / "_config.yml").read_text())
    repo = cfg.get("repository") or {}
    url = str(repo.get("url", "")).rstrip("/")
    if not url:
        raise SystemExit("_config.yml has no repository.url")
    return url, str(repo.get("branch") or "main")


def _toc_files(node) -> list[str]:
    out = []
    if isinstance(node, dict):
        for key in ("root", "file"):
            if isinstance(node.get(key), str):
                out.append(node[key])
        for key in ("parts", "chapters", "sections"):
            for child in node.get(key) or []:
                out += _toc_files(child)
    return out


def chapters(root: Path = ROOT) -> list[Path]:
    """Every page of _toc.yml that is an executable MyST notebook (jupytext front matter + kernelspec)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    out = []
    for f in _toc_files(toc):
        path = root / (f if f.endswith(".md") else f + ".md")
        if path.is_file():
            meta = jupytext.read(path).metadata
            if "kernelspec" in meta and "jupytext" in meta:
                out.append(path)
    return out


def notebook_text(md: Path, root: Path = ROOT) -> str:
    """The .ipynb (as text) for one chapter: the Colab cell, then the chapter's cells, no outputs."""
    url, branch = repository(root)
    nb = jupytext.read(md)
    first = nbformat.v4.new_code_cell(COLAB_CELL.format(url=url, branch=branch),
                                      metadata={"tags": ["remove-cell"]})
    nb.cells.insert(0, first)
    for k, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{k:03d}"
        if cell.cell_type == "code":
            cell["outputs"], cell["execution_count"] = [], None
    nb.metadata = {"kernelspec": nb.metadata["kernelspec"],
                   "language_info": {"name": "python"},
                   "colab": {"provenance": []}}
    nb.nbformat, nb.nbformat_minor = 4, 5
    return nbformat.writes(nb, version=4) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if any notebook is stale")
    args = ap.parse_args(argv)
    stale = []
    for md in chapters():
        ipynb = md.with_suffix(".ipynb")
        text = notebook_text(md)
        if ipynb.is_file() and ipynb.read_text() == text:
            continue
        stale.append(ipynb.relative_to(ROOT))
        if not args.check:
            ipynb.write_text(text)
    if args.check and stale:
        print("out of date (run `make notebooks` and commit them):", *map(str, stale), sep="\n  ")
        return 1
    print(("stale: " if args.check else "wrote: ") + (", ".join(map(str, stale)) or "none, all in sync"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

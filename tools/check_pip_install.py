"""Check that sfs installed with pip (not editable) runs README's example, with no repository.

    python tools/check_pip_install.py            # about a minute; prints what it checked

What it does, all on this machine:
1. a fresh virtual environment in a temporary folder; the torch, numpy, ... of the interpreter
   running this script are made visible to it by a ``.pth`` line (the role Colab's preinstalled
   torch plays: installing sfs must use it, not replace it);
2. ``pip install --dry-run <repo>`` must not want to install torch or torchvision (the ones there
   satisfy the lower bounds and are kept); then ``pip install --no-deps --no-build-isolation <repo>``: a
   wheel built from the repository, installed into site-packages (no models/ folder comes with it);
3. an HTTP server on 127.0.0.1 serving a copy of ``models/mnist-uncond.*`` as the models URL;
4. from a folder outside the repository, with no PYTHONPATH, the new environment's python runs
   ``load_model("mnist-uncond")`` and a DDIM sample, then loads it again with the server stopped
   (from the cache).

Exit status 0 when everything worked. ``tests/test_model_cache.py`` runs it when SFS_PIP_TEST=1.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
import threading
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = "mnist-uncond"

EXAMPLE = f"""
import json, torch
import sfs
from sfs.data import load_sample
from sfs.checkpoints import load_model, resolve_models_dir
from sfs.samplers import ddim_sample
from sfs.schedules import cosine_schedule
model, card = load_model("{NAME}")  # README's example
x_T = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
x0 = ddim_sample(model, x_T, cosine_schedule(card["T"]), steps=2)
print(json.dumps({{"sfs": sfs.__file__, "models_dir": str(resolve_models_dir()),
                  "torch": torch.__version__, "shape": list(x0.shape),
                  "finite": bool(torch.isfinite(x0).all()),
                  "bundled_sample": len(load_sample("mnist"))}}))  # package data came along
"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(QuietHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="sfs-pip-") as tmp:
        tmp = Path(tmp)
        env_dir = tmp / "venv"
        venv.EnvBuilder(with_pip=True).create(env_dir)
        py = env_dir / "bin" / "python"
        target = Path(subprocess.check_output(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
        # the running interpreter's packages (torch ...), appended after the venv's own: a plain
        # path line, so the .pth files there (an editable sfs) are not processed
        (target / "host-packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
        build = tmp / "src"  # a clean copy: no build/ or egg-info of an earlier run in the repo
        shutil.copytree(ROOT, build, ignore=shutil.ignore_patterns(
            ".git", ".venv", "_build", "runs", "models", "book", "benchmarks", "*.egg-info", "build"))
        # with its dependencies, pip must not touch the torch there (it may want a newer
        # setuptools than the one a fresh venv of Python 3.11 starts with)
        report = json.loads(subprocess.run(
            [py, "-m", "pip", "install", "--quiet", "--dry-run", "--no-build-isolation",
             "--report", "-", str(build)], check=True, capture_output=True, text=True).stdout)
        would = sorted(item["metadata"]["name"] for item in report["install"])
        print(f"pip install (with dependencies, dry run) would install: {would}")
        subprocess.run([py, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                        str(build)], check=True)

        www = tmp / "www"
        www.mkdir()
        for suffix in (".json", ".safetensors"):
            shutil.copy(ROOT / "models" / f"{NAME}{suffix}", www)
        httpd, url = serve(www)
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "SFS_MODELS_DIR", "VIRTUAL_ENV")}
        env.update(SFS_CACHE_DIR=str(tmp / "cache"), SFS_MODELS_URL=url, PYTHONNOUSERSITE="1")
        outside = tmp / "elsewhere"
        outside.mkdir()
        run = functools.partial(subprocess.run, [py, "-c", EXAMPLE],
                                cwd=outside, env=env, capture_output=True, text=True)
        first = run()
        httpd.shutdown()
        httpd.server_close()
        second = run()  # the server is gone: the cache must suffice
        ok = "sfs" in would and not {"torch", "torchvision"} & set(would)
        for label, r in (("first use (downloads)", first), ("second use (server stopped)", second)):
            print(f"--- {label}: exit status {r.returncode}")
            print(r.stdout.strip() or r.stderr.strip()[-3000:])
            if r.returncode != 0:
                ok = False
                continue
            out = json.loads(r.stdout.strip().splitlines()[-1])
            installed = out["sfs"].startswith(str(target)) and str(ROOT) not in out["sfs"]
            print(f"    sfs imported from the installed copy: {installed}; models_dir: "
                  f"{out['models_dir']}; shape {out['shape']}, finite {out['finite']}")
            ok &= installed and out["finite"] and out["models_dir"] == str(tmp / "cache")
        cached = sorted(p.name for p in (tmp / "cache").iterdir()) if (tmp / "cache").is_dir() else []
        print(f"cache: {cached}")
        ok &= cached == [f"{NAME}.json", f"{NAME}.safetensors"]
        print("OK" if ok else "FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""A small Sphinx extension for the book (loaded by ``_config.yml``: ``sphinx: local_extensions``).

1. Scrubbers render statically in the build. myst-nb executes chapters in a real Jupyter kernel,
   which ``sfs.scrub`` cannot tell from a reader's, so the build says so explicitly: it sets
   ``SFS_SCRUB=static`` in this process before any kernel starts (kernels inherit the environment).

2. No duplicate inline scripts. A default Jupyter Book page logs
   ``SyntaxError: Identifier 'THEBE_JS_URL' has already been declared``. Cause: sphinx-thebe adds
   its configuration as an inline script (``app.add_js_file(None, body="const THEBE_JS_URL = ...")``)
   in ``env-before-read-docs``, after the HTML builder exists. Sphinx 7.4's ``Sphinx.add_js_file``
   then records it twice: in the registry and directly in the builder, as ``_JavaScript(None, ...)``.
   When writing starts, ``StandaloneHTMLBuilder.prepare_writing`` re-adds every registry script as
   ``_JavaScript(filename or '', ...)``; ``None != ''``, so the de-duplication misses it and every
   page gets the ``const`` declaration twice. We drop exact duplicates (same body, same attributes,
   file name ``None`` or ``''``) from the builder's script list before each page is rendered.

3. No console error on a first visit. pydata-sphinx-theme (under sphinx-book-theme) starts each page
   with ``dataset.mode = localStorage.getItem("mode") || "<default_mode>"``; Jupyter Book leaves
   ``default_mode`` (a template variable, from ``html_context``) empty, so a visitor with nothing
   stored gets ``console.error("Got invalid theme mode: . Resetting to auto.")``. We set it to
   ``auto`` unless the configuration chose one.
"""

from __future__ import annotations

import os

from sphinx.application import Sphinx


def force_static_scrubbers() -> None:
    """The book shows pre-rendered scrubbers: see ``sfs.scrub.is_live``."""
    os.environ["SFS_SCRUB"] = "static"


def _key(js) -> tuple:
    return (js.filename or "", js.priority, tuple(sorted(js.attributes.items())))


def _dedupe(scripts: list) -> None:
    seen, keep = set(), []
    for js in scripts:
        k = _key(js)
        if k not in seen:
            seen.add(k)
            keep.append(js)
    scripts[:] = keep


def dedupe_scripts(app: Sphinx, pagename, templatename, context, doctree) -> None:
    builder = app.builder
    for name in ("_js_files", "_orig_js_files"):
        scripts = getattr(builder, name, None)
        if isinstance(scripts, list):
            _dedupe(scripts)
    if isinstance(context.get("script_files"), list):
        _dedupe(context["script_files"])


def default_theme_mode(app: Sphinx, pagename, templatename, context, doctree) -> None:
    if not context.get("default_mode"):
        context["default_mode"] = "auto"


def setup(app: Sphinx) -> dict:
    force_static_scrubbers()
    app.connect("html-page-context", default_theme_mode)
    app.connect("html-page-context", dedupe_scripts, priority=900)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}

"""Sphinx extension of this book: offer each chapter's jupytext source (``book/NN_name.py``) for download.

The theme's download menu links the page's ``.ipynb`` (``_sources/...``). For every page whose notebook
has a paired ``.py`` beside it, this copies the ``.py`` next to that ``.ipynb`` in the built
``_sources/`` and names it in a ``<meta name="py-source">`` tag; ``_static/py-download.js`` then adds a
``.py`` item to the menu (the browser check, ``tests/browser/check_pages.py``, follows that link).
"""

from __future__ import annotations

import shutil
from pathlib import Path


def _py_of(app, docname: str) -> Path | None:
    src = Path(app.env.doc2path(docname))
    py = src.with_suffix(".py")
    return py if src.suffix == ".ipynb" and py.is_file() else None


def _page_context(app, pagename, templatename, context, doctree):
    if doctree is None or _py_of(app, pagename) is None:
        return
    depth = pagename.count("/")
    href = "../" * depth + f"_sources/{pagename}.py"
    context["metatags"] = context.get("metatags", "") + f'\n<meta name="py-source" content="{href}">'


def _copy_sources(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    for docname in app.env.found_docs:
        py = _py_of(app, docname)
        if py is not None:
            dest = Path(app.outdir) / "_sources" / f"{docname}.py"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(py, dest)


def setup(app):
    app.connect("html-page-context", _page_context)
    app.connect("build-finished", _copy_sources)
    app.add_js_file("py-download.js")
    return {"parallel_read_safe": True, "parallel_write_safe": True}

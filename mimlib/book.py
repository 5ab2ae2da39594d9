"""Small helpers for the chapters: show the library's code beside the equation it implements."""

from __future__ import annotations

import contextlib
import inspect
import re
import textwrap
from pathlib import Path

import pandas as pd

from .atomic import check_writable, remove_orphans, write_atomic

__all__ = ["show_source", "print_table", "write_results", "print_run_settings", "check_parameters",
           "check_writable", "as_list"]

#: Names IPython puts in a notebook's namespace (never parameters).
_IPYTHON_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})


def show_source(obj, lines: tuple[int, int] | None = None, strip_docstring: bool = False):
    """The source of a mimlib function or class, highlighted (an IPython ``Code`` object).

    ``lines=(a, b)`` keeps lines a..b (1-based, inclusive) of the object's source;
    ``strip_docstring`` drops the docstring so only the code shows.
    """
    from IPython.display import Code

    src = textwrap.dedent(inspect.getsource(obj))
    if strip_docstring and obj.__doc__:
        src = re.sub(r'\n[ \t]*[rRuU]?"""(.|\n)*?"""[ \t]*\n', "\n", src, count=1)
    if lines is not None:
        a, b = lines
        src = "\n".join(src.splitlines()[a - 1:b])
    return Code(src, language="python")


def print_table(rows: list[dict] | pd.DataFrame, index: str | None = "seed", decimals: int = 6) -> None:
    """Print a table of values rounded to ``decimals`` (what nbval compares across machines);
    a rounding-level negative zero prints as 0."""
    df = pd.DataFrame(rows)
    if index is not None:
        df = df.set_index(index)
    df = df.round(decimals)
    floats = df.select_dtypes("float").columns
    df[floats] = df[floats] + 0.0  # -0.0 + 0.0 == 0.0
    print(df.to_string())


def write_results(df: pd.DataFrame, results_dir: str | Path, name: str,
                  replace: dict[str, object] | None = None) -> Path:
    """Write ``df`` to ``results_dir/name.csv`` atomically (temporary file, then rename); return the path.

    ``replace={"model": "pixelhvae"}`` lets two chapters share one file: rows of an existing file
    that match every ``column: value`` of ``replace`` are dropped and ``df`` (whose rows must all
    match) takes their place; the other rows are kept, in their order, before ``df``'s. Writers of
    one file (processes or threads) take turns on an exclusive lock (``fcntl.flock`` on
    ``.name.csv.lock``, released when the writer ends, even by a crash), so the read-modify-write
    of ``replace`` never loses another writer's rows and a reader never sees half a file.
    """
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.csv"
    if replace:
        for col, value in replace.items():
            if col not in df.columns or not (df[col] == value).all():
                raise ValueError(f"write_results: every row to write must have {col} == {value!r}")
    with _locked(out / f".{name}.csv.lock"):
        remove_orphans(out, (f".{name}.csv.*.tmp",))   # of a writer killed mid-write (we hold the lock)
        if replace and path.exists():
            old = pd.read_csv(path)
            match = pd.Series(True, index=old.index)
            for col, value in replace.items():
                match &= old[col] == value if col in old.columns else False
            kept = old[~match]
            if len(kept):
                df = pd.concat([kept, df], ignore_index=True)
        write_atomic(path, df.to_csv(index=False, float_format="%.6g"))
    return path


@contextlib.contextmanager
def _locked(lock_path: Path):
    """An exclusive advisory lock on ``lock_path`` for the block (no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:   # Windows: no advisory locks; writes stay atomic, concurrent replace may race
        yield
        return
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def print_run_settings(preset: str, cfg, skip: tuple[str, ...] = (), train_images: int | str | None = None) -> None:
    """Print which preset produced a page's outputs (and what that means), then every setting of
    ``cfg`` (a dataclass) except ``skip``. ``train_images``: the smoke preset's training-set size."""
    import dataclasses

    banner = {
        "smoke": "SMOKE PRESET: every output on this page comes from models trained for a few optimiser steps "
                 f"on {train_images} images. They check that the chapter runs; they are NOT results.",
        "book": "BOOK PRESET: the outputs on this page come from the book schedule (see 'Training schedule'), "
                "far shorter than the paper's; compare with the paper only with that in mind.",
        "paper": "PAPER PRESET: the outputs on this page come from appendix D.2's settings.",
        "screen": "SCREEN PRESET: the outputs on this page come from short screening runs of one equal budget "
                  "(see 'The screening budget'); they compare choices early in training, not final models.",
    }.get(preset, f"CUSTOM PRESET {preset!r}")
    print(f"preset: {preset}\n{banner}\n")
    for f in dataclasses.fields(cfg):
        if f.name not in skip:
            print(f"  {f.name} = {getattr(cfg, f.name)}")


def check_parameters(namespace: dict, parameters: dict) -> None:
    """Refuse names a notebook run was given that its parameters cell does not define.

    The parameters cell ends with ``PARAMETERS = dict(globals())``; papermill injects its values in
    the cell after it, so a misspelt name (``-p hiden 5``) would otherwise run the whole chapter on the
    preset's values. Call ``check_parameters(globals(), PARAMETERS)`` in the next cell, before it assigns
    anything (imports may come first: modules, functions, classes and containers imported from
    ``mimlib`` are not parameters): any new public data name raises ``NameError`` naming it and listing
    the valid ones.
    """
    import sys
    import types

    def imported(v) -> bool:
        """A container that is an attribute of a loaded mimlib module (``from mimlib.plots import
        DATASET_NAMES as NAMES``): imported, not injected (papermill's values are fresh objects)."""
        if not isinstance(v, (dict, list, tuple, set, frozenset)):
            return False
        return any(any(a is v for a in vars(m).values())
                   for n, m in list(sys.modules.items()) if (n == "mimlib" or n.startswith("mimlib.")) and m)

    known = set(parameters) | {"PARAMETERS"}
    unknown = sorted(k for k, v in namespace.items() if not k.startswith("_") and k not in known
                     and k not in _IPYTHON_NAMES and not isinstance(v, types.ModuleType) and not callable(v)
                     and not imported(v))
    if unknown:
        valid = sorted(k for k in known - _IPYTHON_NAMES - {"PARAMETERS"} if not k.startswith("_"))
        raise NameError(f"unknown parameter(s) {unknown}; this notebook's parameters are {valid}")


def as_list(value, name: str, item_type: type, default: list | None = None) -> list:
    """A list parameter of a chapter (papermill ``-y "datasets: [mnist]"``), checked before anything runs.

    ``None`` gives ``default``; a bare item (``"mnist"``, ``0``) is taken as a one-element list; a list or
    tuple must hold ``item_type`` items and must not be empty. Anything else raises ``TypeError`` (or
    ``ValueError`` for an empty list) naming the parameter, what it got, and what it expects, so that
    ``datasets="mnist"`` does not become ``["m", "n", ...]`` and ``seeds="0,1"`` does not fail deep inside.
    """
    def ok(v) -> bool:
        return isinstance(v, item_type) and not (item_type is int and isinstance(v, bool))

    example = '["mnist"]' if item_type is str else "[0, 1]"
    if value is None:
        if default is None:
            raise ValueError(f"{name}: no value and no default")
        return list(default)
    if ok(value):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name}: expected a list of {item_type.__name__} (e.g. {example}), "
                        f"got {value!r} ({type(value).__name__})")
    bad = [v for v in value if not ok(v)]
    if bad:
        raise TypeError(f"{name}: expected a list of {item_type.__name__} (e.g. {example}), "
                        f"got {list(value)!r}, whose item {bad[0]!r} is a {type(bad[0]).__name__}")
    if not value:
        raise ValueError(f"{name}: the list is empty; give at least one value (e.g. {example}) or None for the default")
    return list(value)

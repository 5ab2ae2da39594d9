"""Run records: what a chapter needs of a finished run, small enough to commit, without the weights.

A record is one folder ``<root>/<study>/<run name>/`` holding

* ``record.json``: the format version, the study, the run's name, its full identity config (what
  it was trained with), and ``info`` (training seconds, epochs, precision, machine, versions);
* ``history.csv``: the per-epoch training history;
* ``eval-<hash>.json``: one file per evaluation setting (the hash of the evaluation config): the
  results rows of that evaluation and that evaluation config;
* ``arrays.npz`` (optional): the small arrays the chapter's figures need (e.g. 2-D posterior means,
  t-SNE coordinates, sample images).

Chapters read records first (:func:`read_record`); a run's weights (``runs/``, untracked) are only
needed to train further or to compute something the record lacks. Every file is written through a
temporary name and renamed, so an interrupted write leaves the previous record or none, never half
of one (the temporary files of a writer killed mid-write are removed by the next
:func:`write_record` of that run). Floats are stored at full precision (JSON and CSV ``repr``), so a chapter re-executed
from its records prints exactly what it printed when the runs were trained.
"""

from __future__ import annotations

import io
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .atomic import remove_orphans, write_atomic
from .train import config_hash

__all__ = ["FORMAT_VERSION", "RunRecord", "record_dir", "read_record", "write_record", "write_evaluation",
           "read_evaluation", "RecordError"]

#: Bumped whenever the layout changes; a record of another version is refused with its path.
FORMAT_VERSION = 1

#: A temporary file in a record folder older than this (seconds) is a killed writer's: removed.
ORPHAN_SECONDS = 600


class RecordError(ValueError):
    """A record that exists but cannot be used (another format version, another config, damaged)."""


@dataclass
class RunRecord:
    """One finished run: its identity config, history, info and figure arrays (evaluations apart)."""

    study: str
    name: str
    config: dict[str, Any]
    history: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def record_dir(root: str | os.PathLike, study: str, name: str) -> Path:
    return Path(root) / study / name


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, allow_nan=True, default=_default) + "\n").encode()


def _default(o: Any):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON-able: {type(o).__name__}")


def _load_json(path: Path, remedy: str) -> dict[str, Any]:
    """A record file's JSON, checked for this format version; :class:`RecordError` naming the file otherwise."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RecordError(f"{path} is damaged ({e}); {remedy}") from e
    if data.get("format_version") != FORMAT_VERSION:
        raise RecordError(f"{path} has format version {data.get('format_version')!r}, this mimlib reads "
                          f"{FORMAT_VERSION}; {remedy}")
    return data


def _machine() -> dict[str, Any]:
    import torch

    from .precision import cpu_info
    return {"cpu": cpu_info().model, "torch": torch.__version__, "python": platform.python_version()}


def write_record(root: str | os.PathLike, record: RunRecord) -> Path:
    """Write ``record`` under ``root`` (history and arrays first, ``record.json`` last: a folder
    without ``record.json`` is not a record). Returns its folder."""
    d = record_dir(root, record.study, record.name)
    if d.is_dir():   # temporary files of a writer killed mid-write (a live writer's are seconds old)
        remove_orphans(d, ("*.tmp",), older_than=ORPHAN_SECONDS)
    buf = io.StringIO()
    record.history.to_csv(buf, index=False)
    write_atomic(d / "history.csv", buf.getvalue().encode())
    if record.arrays:
        b = io.BytesIO()
        np.savez_compressed(b, **record.arrays)
        write_atomic(d / "arrays.npz", b.getvalue())
    meta = {"format_version": FORMAT_VERSION, "study": record.study, "name": record.name,
            "config": record.config, "info": {**_machine(), "written": time.strftime("%Y-%m-%d %H:%M:%S"),
                                              **record.info},
            "arrays": sorted(record.arrays)}
    write_atomic(d / "record.json", _json(meta))
    return d


def read_record(root: str | os.PathLike | None, study: str, name: str,
                config: dict[str, Any] | None = None) -> RunRecord | None:
    """The record ``root/study/name``, or None if there is none. ``config``: the identity the caller
    expects; a record written with another one (or another format version) raises :class:`RecordError`."""
    if root is None:
        return None
    d = record_dir(root, study, name)
    meta_path = d / "record.json"
    if not meta_path.exists():
        return None
    meta = _load_json(meta_path, f"delete the folder {d} to train the run again (or use the matching mimlib)")
    if config is not None and json.loads(json.dumps(config, default=_default)) != meta["config"]:
        raise RecordError(f"{meta_path} was written for another configuration:\n  stored:  {meta['config']}\n"
                          f"  current: {config}")
    try:
        history = pd.read_csv(d / "history.csv")
        arrays = {}
        if meta.get("arrays"):
            with np.load(d / "arrays.npz") as z:
                arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise RecordError(f"record {d} is damaged ({e}); delete it to train the run again") from e
    return RunRecord(meta["study"], meta["name"], meta["config"], history, meta.get("info", {}), arrays)


def _eval_path(root, study: str, name: str, eval_config: dict[str, Any]) -> Path:
    return record_dir(root, study, name) / f"eval-{config_hash(eval_config)}.json"


def write_evaluation(root: str | os.PathLike, study: str, name: str, eval_config: dict[str, Any],
                     rows: pd.DataFrame) -> Path:
    """Store the results ``rows`` of one evaluation setting beside the record ``study/name``."""
    path = _eval_path(root, study, name, eval_config)
    write_atomic(path, _json({"format_version": FORMAT_VERSION, "eval_config": eval_config,
                               "rows": rows.to_dict("records")}))
    return path


def read_evaluation(root: str | os.PathLike | None, study: str, name: str,
                    eval_config: dict[str, Any]) -> pd.DataFrame | None:
    """The rows :func:`write_evaluation` stored for ``eval_config``, or None."""
    if root is None:
        return None
    path = _eval_path(root, study, name, eval_config)
    if not path.exists():
        return None
    return pd.DataFrame(_load_json(path, "delete it to evaluate again")["rows"])

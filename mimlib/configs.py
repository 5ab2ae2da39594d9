"""Config fields tagged with what they govern, so a run's identity is derived, never hand-listed.

Every field of a study's config dataclass is declared with one of

* :func:`grid`    - which runs a study holds (datasets, priors, objectives, seeds, widths);
  each run's own value of these is part of its identity;
* :func:`train`   - what is trained and how (model, optimiser, schedule, data cuts, and anything
  that steers early stopping): the run's identity, which names its folder;
* :func:`evaluate` - how a trained run is evaluated: the identity of its evaluation row;
* :func:`runtime` - where and how fast it runs (threads, device, precision, memory layout) and
  labels: never part of an identity, so changing them never retrains or re-evaluates.

:func:`key` collects the fields of some groups as a JSON-able dict (tuples become lists), and
:func:`check_groups` (called by each config's ``__post_init__``) refuses a field declared without
a group, so a new setting cannot silently stay out of the hash.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["GROUPS", "grid", "train", "evaluate", "runtime", "key", "fields_of", "check_groups"]

GROUPS = ("grid", "train", "evaluate", "runtime")


def _field(group: str, default: Any, joined: bool = False):
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples (immutable) for sequence defaults")
    return dataclasses.field(default=default, metadata={"group": group, "joined": joined})


def grid(default: Any):
    """A field that selects runs of a study (part of each run's identity)."""
    return _field("grid", default)


def train(default: Any, joined: bool = False):
    """A field that changes what is trained (part of the run's identity).

    ``joined=True`` for a field added after runs were recorded, whose default is what those runs
    did: it enters the identity only when set away from that default, so their names stay valid.
    """
    return _field("train", default, joined)


def evaluate(default: Any, joined: bool = False):
    """A field that changes the evaluation of a trained run (part of the evaluation's identity;
    ``joined`` as for :func:`train`)."""
    return _field("evaluate", default, joined)


def runtime(default: Any):
    """A field that changes only where or how fast a run computes, or labels it (no identity)."""
    return _field("runtime", default)


def fields_of(cls_or_obj, *groups: str) -> list[str]:
    """Names of the fields of ``groups``, in declaration order."""
    for g in groups:
        if g not in GROUPS:
            raise ValueError(f"unknown field group {g!r}; choose from {GROUPS}")
    return [f.name for f in dataclasses.fields(cls_or_obj) if f.metadata.get("group") in groups]


def key(cfg, *groups: str) -> dict[str, Any]:
    """The values of ``cfg``'s fields in ``groups`` (tuples as lists): a JSON-able identity. A field
    declared ``joined`` is left out while it holds its default (see :func:`train`)."""
    out = {}
    for f in dataclasses.fields(cfg):
        if f.metadata.get("group") in groups:
            v = getattr(cfg, f.name)
            if not (f.metadata.get("joined") and v == f.default):
                out[f.name] = _jsonable(v)
    for g in groups:
        if g not in GROUPS:
            raise ValueError(f"unknown field group {g!r}; choose from {GROUPS}")
    return out


def _jsonable(v: Any) -> Any:
    return [_jsonable(x) for x in v] if isinstance(v, tuple) else v


def check_groups(cfg) -> None:
    """Raise if a field of ``cfg``'s dataclass was declared without one of :data:`GROUPS`."""
    bad = [f.name for f in dataclasses.fields(cfg) if f.metadata.get("group") not in GROUPS]
    if bad:
        raise TypeError(f"{type(cfg).__name__}: fields {bad} have no group; declare each with "
                        f"mimlib.configs.{{grid,train,evaluate,runtime}}(default)")

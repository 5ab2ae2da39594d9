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
a group, so a new setting cannot silently stay out of the hash. :func:`check_types` checks every field's value
against its annotation (one check for every config, naming the field, the value and what it expects).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from typing import Any

__all__ = ["GROUPS", "grid", "train", "evaluate", "runtime", "key", "fields_of", "check_groups", "check_types",
           "check_range"]

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


# ----------------------------------------------------------------------------- types and values


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe(t: Any) -> str:
    """``t`` (an annotation) in words."""
    if t is bool:
        return "True or False"
    if t is int:
        return "an integer"
    if t is float:
        return "a finite number"
    if t is str:
        return "a string"
    if t is type(None):
        return "None"
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        example = {int: "(0, 1)", str: "('a', 'b')", float: "(0.5, 1.0)"}.get(args[0], "(a, b)")
        return f"a sequence (tuple or list) of {_describe(args[0]).split(' ', 1)[-1]}s, e.g. {example}"
    return getattr(t, "__name__", str(t))


def _problem(v: Any, t: Any) -> str | None:
    """Why ``v`` is not a value of annotation ``t`` (None if it is, or if ``t`` is not checked here)."""
    if t is bool:
        return None if isinstance(v, bool) else ""
    if t is int:
        return None if isinstance(v, numbers.Integral) and not isinstance(v, bool) else ""
    if t is float:
        if not isinstance(v, numbers.Real) or isinstance(v, bool):
            return ""
        return None if math.isfinite(v) else " (not finite)"
    if t is str:
        return None if isinstance(v, str) else ""
    if t is type(None):
        return None if v is None else ""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        probs = [_problem(v, a) for a in args]
        if any(p is None for p in probs):
            return None
        return next((p for p in probs if p), "")
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if isinstance(v, str) or not isinstance(v, (tuple, list)):
            one = f": write ({v!r},) for one element" if _problem(v, args[0]) is None else ""
            return f" (a single {'string' if isinstance(v, str) else 'value'}, not a sequence{one})"
        for i, x in enumerate(v):
            p = _problem(x, args[0])
            if p is not None:
                return f" (element {i}, {x!r}, is not {_describe(args[0])}{p})"
        return None
    return None   # other annotations are not checked here


def _show(v: Any) -> str:
    return f"{v!r} ({type(v).__name__})"


def check_types(cfg) -> None:
    """Raise :class:`TypeError` naming the field, the value it got and what it expects, for the first
    field of the dataclass instance ``cfg`` whose value does not match its annotation (``int``,
    ``float`` (finite), ``str``, ``bool``, ``X | None``, ``tuple[X, ...]`` (a list is accepted too); a
    bool is not an integer, a bare string or number is not a sequence). Call it first in
    ``__post_init__``, so the value checks after it compare numbers with numbers."""
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        t = hints.get(f.name)
        if t is None:
            continue
        v = getattr(cfg, f.name)
        p = _problem(v, t)
        if p is not None:
            raise TypeError(f"{type(cfg).__name__}: {f.name} expects {_describe(t)}, got {_show(v)}{p}")


def check_range(cfg, name: str, low: float | None = None, high: float | None = None, *,
                strict_low: bool = False, what: str = "") -> None:
    """Raise :class:`ValueError` naming ``name`` unless ``low <= cfg.name <= high`` (``low <`` with
    ``strict_low``); None passes (optional fields), ``what`` is added to the message."""
    v = getattr(cfg, name)
    if v is None:
        return
    bad = (low is not None and (v <= low if strict_low else v < low)) or (high is not None and v > high)
    if bad:
        rule = " and ".join(r for r in (
            f"{'>' if strict_low else '>='} {low}" if low is not None else "",
            f"<= {high}" if high is not None else "") if r)
        raise ValueError(f"{type(cfg).__name__}: {name} must be {rule}, got {v!r}{what}")

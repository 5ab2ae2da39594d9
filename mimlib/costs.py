"""What re-running a chapter costs, from measurements only: the box at the top of each experiment chapter.

Two sources, both committed:

* the chapter's results table (``book/results/*.csv``): every trained model's training and evaluation
  seconds, its precision and (for newer rows) the machine it ran on;
* ``benchmarks/results/chapter_times.csv``, written by ``benchmarks/time_chapters.py``: the wall time of
  a chapter's ``smoke`` run (papermill, what CI executes) and of its re-execution from the committed run
  records, each with the machine it was measured on.

Nothing here is estimated except the ``paper`` row, which says so and shows its arithmetic: the paper's
epoch cap times the book runs' measured seconds per epoch-equivalent (an upper bound: early stopping
ends runs sooner).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import presets

__all__ = ["CHAPTERS", "TIMES_CSV", "chapter_times", "rerun_costs", "rerun_box"]

ROOT = Path(__file__).resolve().parents[1]
#: Training images per pass of the paper's image split (60,000 of the train file less 10,000 for
#: validation, :func:`mimlib.images.split_and_binarize`): the paper preset's epoch.
_PAPER_EPOCH_IMAGES = 50_000
#: Measured wall times of chapter runs (``benchmarks/time_chapters.py`` appends to it).
TIMES_CSV = ROOT / "benchmarks" / "results" / "chapter_times.csv"


@dataclass(frozen=True)
class _Chapter:
    results: str            # file under book/results with one row per trained model
    study: str              # mimlib.presets study of its models
    query: str = ""         # pandas query selecting the chapter's rows of that file
    records: bool = True    # whether its committed run records let it re-execute without training
    paper: bool = True      # whether a paper-preset row makes sense (not for a screen of short runs)


#: Experiment chapters and where their measured costs live.
CHAPTERS: dict[str, _Chapter] = {
    "04_mixture2d": _Chapter("mixture2d.csv", "mixture2d"),
    "05_images": _Chapter("images.csv", "images", "model == 'convhvae' and preset == 'book'", records=False),
    "06_pixelhvae": _Chapter("images.csv", "pixelhvae", "model == 'pixelhvae' and preset == 'book'", records=False),
    "07_ablations": _Chapter("ablations.csv", "pixelhvae", paper=False),
}


def chapter_times(path: str | Path = TIMES_CSV) -> pd.DataFrame:
    """The measured chapter times (columns chapter, mode, seconds (wall), machine, precision, date, cpu_seconds,
    load: the 1-minute load average at the start; the last two empty in older rows); empty if none."""
    cols = ["chapter", "mode", "seconds", "machine", "precision", "date", "cpu_seconds", "load"]
    p = Path(path)
    return pd.read_csv(p) if p.is_file() else pd.DataFrame(columns=cols)


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 2 * 3600:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _latest(times: pd.DataFrame, chapter: str, mode: str) -> str | None:
    t = times[(times["chapter"] == chapter) & (times["mode"] == mode)]
    if t.empty:
        return None
    r = t.iloc[-1]
    cpu = r.get("cpu_seconds")
    cpu = "" if cpu is None or pd.isna(cpu) else f" ({_duration(float(cpu))} CPU)"
    load = r.get("load")
    shared = ("" if load is None or pd.isna(load) or float(load) < 0.5 else
              f"; other work shared the CPU (load average {float(load):.1f}), so the wall time is longer than idle")
    return f"{_duration(float(r['seconds']))} wall{cpu} on {r['machine']}, {r['precision']} ({r['date']}){shared}"


def _where(rows: pd.DataFrame) -> str:
    prec = "/".join(sorted(rows["precision"].dropna().astype(str).unique())) if "precision" in rows else "?"
    machines = rows["machine"].dropna().unique() if "machine" in rows else []
    machine = "; ".join(map(str, machines)) if len(machines) else "machine not recorded"
    return f"{prec}, {machine}"


def rerun_costs(chapter: str, results_dir: str | Path = ROOT / "book" / "results",
                times: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows (how, trains, measured) for ``chapter`` (a key of :data:`CHAPTERS`)."""
    if chapter not in CHAPTERS:
        raise ValueError(f"chapter must be one of {sorted(CHAPTERS)}, got {chapter!r}")
    spec = CHAPTERS[chapter]
    times = chapter_times() if times is None else times
    rows = pd.read_csv(Path(results_dir) / spec.results)
    if spec.query:
        rows = rows.query(spec.query)
    unit, preset = "model", str(rows["preset"].iloc[0]) if "preset" in rows else "book"
    paper = presets.resolve(spec.study, "paper")
    if chapter == "04_mixture2d":   # one record per group (objective, width), its seeds batched
        from .mixture2d import group_name

        book = presets.resolve("mixture2d", "book")   # the sweep's groups (not the ablation's)
        names = [group_name(o, h, book) for o in book.objectives for h in book.hidden]
        found = [Path(results_dir) / "records" / "mixture2d" / n / "record.json" for n in names]
        infos = [json.loads(p.read_text())["info"] for p in found if p.is_file()]
        train_s, eval_s = float(sum(i["train_seconds"] for i in infos)), None
        per_epoch = float(sum(i["train_seconds"] / max(i["epochs"]) for i in infos) / max(len(infos), 1))
        what, unit = f"{len(rows)} models ({len(infos)} groups, each of its seeds batched)", "group"
        where = f"fp32, {', '.join(sorted({i.get('cpu', '?') for i in infos})) or 'machine not recorded'}"
    else:
        train_s, eval_s = float(rows["seconds"].sum()), float(rows["eval_seconds"].sum())
        per_step = float((rows["seconds"] / (rows["epochs"] * rows["steps_per_epoch"])).mean())
        per_epoch = per_step * _PAPER_EPOCH_IMAGES / paper.batch_size
        what, where = f"{len(rows)} models", _where(rows)
    out = [("smoke preset (what CI runs)", "a few tiny models",
            _latest(times, chapter, "smoke") or "not measured yet (benchmarks/time_chapters.py)")]
    if spec.records:
        out.append((f"{preset} preset, from the committed run records", "nothing",
                    _latest(times, chapter, "records") or "not measured yet (benchmarks/time_chapters.py)"))
    else:
        out.append((f"{preset} preset, from the committed run records", "-",
                    "not possible yet: these runs predate run records, so re-executing retrains them"))
    evaluation = "" if eval_s is None else f" + {_duration(eval_s)} of evaluation"
    out.append((f"{preset} preset, from scratch", what,
                f"{_duration(train_s)} of training{evaluation}, single-thread CPU time summed over the runs ({where})"))
    if spec.paper:
        out.append(("paper preset", f"up to {paper.max_epochs} epochs per {unit}",
                    f"not run here; at most {_duration(paper.max_epochs * per_epoch)} per {unit}: {paper.max_epochs} "
                    f"epochs x {per_epoch:.3g} s, the {preset} runs' measured time per epoch of the paper's size "
                    f"(early stopping ends sooner); meant for a GPU"))
    out.append(("on a GPU", "-", "not measured: no GPU was available to the sessions that ran this book"))
    return pd.DataFrame(out, columns=["how", "trains", "measured"])


def rerun_box(chapter: str, **kwargs):
    """:func:`rerun_costs` as an admonition box (HTML) for the top of the chapter."""
    from IPython.display import HTML

    table = rerun_costs(chapter, **kwargs).to_html(index=False, escape=True, border=0, classes="rerun-costs")
    return HTML(f'<div class="admonition tip"><p class="admonition-title">{html.escape("What re-running this chapter costs")}'
                f"</p>{table}<p>Measured figures only (sources: <code>book/results/</code> and "
                f"<code>benchmarks/results/chapter_times.csv</code>); times on other CPUs differ, see "
                f"<code>benchmarks/</code>.</p></div>")

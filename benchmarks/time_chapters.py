"""Wall time of re-running each experiment chapter (not a test): the figures of the "What re-running this
chapter costs" box (:mod:`mimlib.costs`).

    .venv/bin/python benchmarks/time_chapters.py [--chapters 04_mixture2d 07_ablations] [--modes smoke records]

``smoke``: the chapter's source executed with papermill and ``-p preset smoke`` into temporary results
and runs folders, exactly as ``make smoke`` (what CI runs) does. ``records``: the chapter executed with
its committed preset from a temporary copy of ``book/results`` (run records included) and an empty runs
folder, so nothing can be loaded from weights: the time of re-executing the committed page without
training (chapters whose runs have records only). Each measurement is appended to
``benchmarks/results/chapter_times.csv`` with its wall and CPU seconds (papermill and its kernel), the
machine (:func:`mimlib.precision.machine_label`), the precision ``auto`` resolves to, the date and the
1-minute load average when it started. Run it on an otherwise idle machine; where other work shares the
CPU (load above 0), the wall time is longer than on an idle machine and the CPU time is the figure to
read (the box says so).

``--refresh-boxes`` then executes the box cell of each committed chapter notebook (``book/<chapter>.ipynb``,
the cell that calls :func:`mimlib.costs.rerun_box`) on its own and writes its new output into the
notebook, leaving every other cell as it is: the box of a chapter that cannot be re-executed without its
weights (05, 06) stays current with the measurements.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from mimlib import costs  # noqa: E402
from mimlib.atomic import write_atomic  # noqa: E402
from mimlib.precision import describe, machine_label, resolve_precision  # noqa: E402

BIN = Path(sys.executable).parent


def _papermill(chapter: str, work: Path, params: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (papermill and its kernel: user + system time of the finished child
    processes) of one papermill execution of ``book/<chapter>.py`` (converted to a notebook in ``work``)."""
    src, out = work / "src.ipynb", work / f"{chapter}.ipynb"
    subprocess.run([BIN / "jupytext", "--quiet", "--to", "ipynb", "--output", src, ROOT / "book" / f"{chapter}.py"],
                   check=True)
    env = {**os.environ, "MIMLIB_PROGRESS": "0"}
    env.setdefault("MIMLIB_DATA", str(ROOT.parent / "shared" / "data"))
    t, r = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([BIN / "papermill", "--log-level", "WARNING", "-k", "python3", "--cwd", ROOT / "book",
                    src, out, *params], check=True, env=env)
    wall, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - r.ru_utime) + (after.ru_stime - r.ru_stime)


def measure(chapter: str, mode: str) -> tuple[float, float]:
    """(wall, CPU) seconds of re-running ``chapter`` in ``mode`` (module docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "runs").mkdir()
        if mode == "smoke":
            (work / "results").mkdir()
            params = ["-p", "preset", "smoke"]
        elif mode == "records":
            shutil.copytree(ROOT / "book" / "results", work / "results")
            params = []
        else:
            raise ValueError(f"mode must be 'smoke' or 'records', got {mode!r}")
        return _papermill(chapter, work, [*params, "-p", "results_dir", str(work / "results"),
                                          "-p", "runs_dir", str(work / "runs")])


def refresh_box(chapter: str) -> None:
    """Re-execute the ``rerun_box`` cell of ``book/<chapter>.ipynb`` alone (cwd ``book``) and keep its output."""
    import nbformat
    from nbclient import NotebookClient

    path = ROOT / "book" / f"{chapter}.ipynb"
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and "rerun_box(" in c.source]
    if len(cells) != 1:
        raise ValueError(f"{path}: expected one cell calling rerun_box, found {len(cells)}")
    alone = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cells[0].source)], metadata=nb.metadata)
    NotebookClient(alone, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "book")}}).execute()
    cells[0].outputs = alone.cells[0].outputs
    buf = io.StringIO()
    nbformat.write(nb, buf)
    write_atomic(path, buf.getvalue().encode())
    print(f"{path.name}: box refreshed")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chapters", nargs="+", default=list(costs.CHAPTERS), choices=list(costs.CHAPTERS))
    ap.add_argument("--modes", nargs="+", default=["smoke", "records"], choices=["smoke", "records"])
    ap.add_argument("--out", default=str(costs.TIMES_CSV))
    ap.add_argument("--refresh-boxes", action="store_true", help="only re-execute each chapter's cost box")
    args = ap.parse_args(argv)
    if args.refresh_boxes:
        for chapter in args.chapters:
            refresh_box(chapter)
        return
    print(describe())
    machine, prec = machine_label(), resolve_precision("auto")
    rows = []
    for chapter in args.chapters:
        for mode in args.modes:
            if mode == "records" and not costs.CHAPTERS[chapter].records:
                print(f"{chapter}: no run records yet, 'records' skipped")
                continue
            busy = os.getloadavg()[0]
            s, cpu = measure(chapter, mode)
            print(f"{chapter} {mode}: {s:.1f} s wall, {cpu:.1f} s CPU (load average {busy:.1f} at the start)")
            rows.append(dict(chapter=chapter, mode=mode, seconds=round(s, 1), machine=machine, precision=prec,
                             date=time.strftime("%Y-%m-%d"), cpu_seconds=round(cpu, 1), load=round(busy, 1)))
    table = pd.concat([costs.chapter_times(args.out), pd.DataFrame(rows)], ignore_index=True)
    buf = io.StringIO()
    table.to_csv(buf, index=False)
    write_atomic(Path(args.out), buf.getvalue().encode())
    print(f"appended {len(rows)} row(s) to {args.out}")


if __name__ == "__main__":
    main()

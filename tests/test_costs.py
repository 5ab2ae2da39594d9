"""The re-run cost box reports measured figures only, from the files it names."""

import pandas as pd
import pytest

from mimlib import costs, presets


def _images_rows(tmp_path):
    rows = pd.DataFrame(dict(model=["convhvae", "convhvae", "pixelhvae"], preset=["book"] * 3, epochs=[10, 10, 5],
                             steps_per_epoch=[100, 100, 100], seconds=[3600.0, 1800.0, 999.0],
                             eval_seconds=[60.0, 60.0, 1.0], precision=["fp32"] * 3,
                             machine=["Test CPU (AVX2), 1 thread(s)"] * 3))
    rows.to_csv(tmp_path / "images.csv", index=False)


def test_costs_sum_the_chapters_measured_seconds_and_show_the_arithmetic(tmp_path):
    _images_rows(tmp_path)
    times = pd.DataFrame([dict(chapter="05_images", mode="smoke", seconds=95.0, machine="Test CPU", precision="fp32",
                               date="2026-12-01")])
    t = costs.rerun_costs("05_images", results_dir=tmp_path, times=times).set_index("how")["measured"]
    assert t["smoke preset (what CI runs)"] == "95 s wall on Test CPU, fp32 (2026-12-01)"
    # 3600 + 1800 s of training (the pixelhvae row is another chapter's), 120 s of evaluation
    assert t["book preset, from scratch"].startswith("90 min of training + 2 min of evaluation")
    assert "Test CPU (AVX2)" in t["book preset, from scratch"]
    assert "re-executing retrains" in t["book preset, from the committed run records"]
    # a newer row with CPU time and a busy machine: the latest is shown, and the box says the CPU was shared
    busy = pd.concat([times, pd.DataFrame([dict(chapter="05_images", mode="smoke", seconds=300.0, machine="Test CPU",
                                                precision="fp32", date="2026-12-02", cpu_seconds=110.0, load=2.4)])])
    t2 = costs.rerun_costs("05_images", results_dir=tmp_path, times=busy).set_index("how")["measured"]
    assert t2["smoke preset (what CI runs)"] == ("5 min wall (110 s CPU) on Test CPU, fp32 (2026-12-02); other work "
                                                 "shared the CPU (load average 2.4), so the wall time is longer than idle")
    # paper row: its epoch cap x the measured seconds per step (mean of 3.6 and 1.8 s) x 500 steps per pass
    paper = presets.resolve("images", "paper")
    per_epoch = (3.6 + 1.8) / 2 * 50_000 / paper.batch_size
    assert f"{paper.max_epochs} epochs x {per_epoch:.3g} s" in t["paper preset"]
    assert f"at most {paper.max_epochs * per_epoch / 3600:.1f} h per model" in t["paper preset"]


def test_unmeasured_figures_say_so_and_unknown_chapters_are_refused(tmp_path):
    _images_rows(tmp_path)
    t = costs.rerun_costs("05_images", results_dir=tmp_path, times=costs.chapter_times(tmp_path / "none.csv"))
    assert t.set_index("how").loc["smoke preset (what CI runs)", "measured"].startswith("not measured yet")
    assert "not measured" in t.set_index("how").loc["on a GPU", "measured"]
    with pytest.raises(ValueError, match="chapter must be one of"):
        costs.rerun_costs("08_nothing", results_dir=tmp_path)


@pytest.mark.parametrize("chapter", list(costs.CHAPTERS))
def test_every_chapter_has_a_box_from_the_committed_files(chapter):
    html = costs.rerun_box(chapter).data
    assert "What re-running this chapter costs" in html and "<table" in html

"""Writing a report: the files, a self-contained page, no lost data, the command, the demo."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

import autowarm
from autowarm.cli import main

from .conftest import make_study

pytest.importorskip("matplotlib", reason="report files need matplotlib (extra plot)")


def test_write_files(suggestion: autowarm.Suggestion, tmp_path: Path) -> None:
    rep = suggestion.report()
    paths = rep.write(tmp_path / "out")
    names = sorted(p.name for p in paths)
    expected = ["report.html", "report.md"]
    expected += [f"{t}.csv" for t in rep.tables] + [f"{f}.png" for f in rep.figures]
    assert names == sorted(expected) and paths[0].name == "report.html"
    for name, frame in rep.tables.items():
        back = pd.read_csv(tmp_path / "out" / f"{name}.csv")
        assert list(back.columns) == list(frame.columns) and len(back) == len(frame)
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert summary.loc[0, "warmup_steps"] == suggestion.warmup_steps
    for f in rep.figures:
        assert (tmp_path / "out" / f"{f}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_html_is_self_contained(suggestion: autowarm.Suggestion, tmp_path: Path) -> None:
    rep = suggestion.report()
    html = rep.to_html()
    srcs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert len(srcs) == len(rep.figures)
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<script" not in html and "http://" not in html and "https://" not in html
    for f in rep.figures.values():
        assert f.title.replace("'", "&#x27;") in html
    md = rep.to_markdown()
    for f in rep.figures:
        assert f"]({f}.png)" in md
    assert "| warmup (steps) | " + str(suggestion.warmup_steps) + " |" in md
    assert "near-best" not in md and "| trials |" not in md  # unknown for a probe alone


def test_write_keeps_other_files(
    suggestion: autowarm.Suggestion, study: optuna.Study, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    autowarm.report(study).write(out)
    assert (out / "trials.csv").exists() and (out / "history.png").exists()
    autowarm.report(suggestion).write(out)  # a probe report has no trials table
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "trials.csv").exists()  # written by the previous report, not this one
    assert not (out / "history.png").exists()
    with pytest.raises(NotADirectoryError):
        autowarm.report(suggestion).write(out / "notes.txt")


def test_write_refuses_to_replace_files_it_did_not_write(
    suggestion: autowarm.Suggestion, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("mine")
    (out / "summary.csv").write_text("mine too")
    with pytest.raises(FileExistsError) as err:
        autowarm.report(suggestion).write(out)
    assert f"{out} already has report.md, summary.csv, which an autowarm report" in str(err.value)
    assert "another folder, or move or remove those files" in str(err.value)
    assert sorted(p.name for p in out.iterdir()) == ["report.md", "summary.csv"]  # nothing
    assert (out / "report.md").read_text() == "mine"
    assert (out / "summary.csv").read_text() == "mine too"
    path = suggestion.save(tmp_path / "s.json")
    assert main(["report", str(path), "-o", str(out)]) == 1
    assert "report.md, summary.csv" in capsys.readouterr().err
    assert (out / "report.md").read_text() == "mine"
    # a report's own files, listed in its manifest, are replaced by the next report
    (out / "report.md").unlink()
    (out / "summary.csv").unlink()
    autowarm.report(suggestion).write(out)
    (out / "report.md").write_text("stale")
    autowarm.report(suggestion).write(out)
    assert (out / "report.md").read_text().startswith("# autowarm report")


def test_a_write_cut_short_leaves_a_folder_the_next_write_takes_back(
    suggestion: autowarm.Suggestion, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The list of its files was written last, so files written before a full disk or a
    # Ctrl-C were not listed, and the rerun refused them as someone else's.
    from autowarm.reporting import _report

    real, calls = _report.atomic_write, []

    def full_disk(path: Path, data: str | bytes) -> Path:
        calls.append(path)
        if len(calls) == 4:
            raise OSError(28, "No space left on device")
        return real(path, data)

    rep = suggestion.report()
    monkeypatch.setattr(_report, "atomic_write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        rep.write(tmp_path / "half")
    monkeypatch.setattr(_report, "atomic_write", real)
    paths = rep.write(tmp_path / "half")
    assert {p.name for p in paths} <= {p.name for p in (tmp_path / "half").iterdir()}
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(NotADirectoryError, match="afile is a file, not a folder"):
        rep.write(afile / "sub")


def test_cli_suggestion_and_study(
    suggestion: autowarm.Suggestion, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = suggestion.save(tmp_path / "s.json")
    assert main(["report", str(path), "-o", str(tmp_path / "probe")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "probe" / "report.html")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.copy_study(
        from_study_name="night",
        from_storage=make_study(suggestion, running=True)._storage,
        to_storage=url,
    )
    out = tmp_path / "reports" / "night"
    assert main(["-q", "report", "--storage", url, "--study-name", "night", "-o", str(out)]) == 0
    assert "Still running, or interrupted" in (out / "report.md").read_text()
    assert pd.read_csv(out / "trials.csv")["state"].tolist()[-1] == "running"
    assert main(["report", "--storage", url, "--study-name", "nope", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "nope" in err and "night" in err and len(err.strip().splitlines()) == 1
    assert main(["report", str(path), "--storage", url, "--study-name", "x", "-o", "o"]) == 1
    assert main(["report", "-o", str(out)]) == 1
    assert "nothing to report" in capsys.readouterr().err
    # the storage's only study, without --study-name (as export finds it)
    alone = tmp_path / "alone"
    assert main(["-q", "report", "--storage", url, "-o", str(alone)]) == 0
    assert (alone / "trials.csv").read_text() == (out / "trials.csv").read_text()


def test_demo_writes_a_report(tmp_path: Path) -> None:
    from autowarm._demo import run_demo

    result = run_demo(tmp_path / "demo", progress=False, total_steps=400)
    assert result.report_path == tmp_path / "demo" / "report" / "report.html"
    assert (tmp_path / "demo" / "report" / "range_test.png").exists()
    assert f"report: {result.report_path}" in result.text
    # A report folder holding someone else's report.md: refused before the probe, and the
    # demo's other files left as they were (it used to replace them, then fail on the report)
    own = tmp_path / "own"
    (own / "report").mkdir(parents=True)
    (own / "report" / "report.md").write_text("my notes")
    with pytest.raises(FileExistsError, match=r"already has report\.md"):
        run_demo(own, progress=False, total_steps=400)
    assert sorted(p.name for p in own.iterdir()) == ["report"]
    # a clash only the finished report finds (a figure's name) leaves the results, and says so
    (own / "report" / "report.md").unlink()
    (own / "report" / "range_test.png").write_text("mine")
    again = run_demo(own, progress=False, total_steps=400)
    assert again.report_path is None and "report: not written: " in again.text
    assert "range_test.png" in again.text and (own / "suggestion.json").exists()
    assert (own / "report" / "range_test.png").read_text() == "mine"


# ---------------------------------------------------------------------------- the reader's check
def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_page_renders_in_chromium(
    suggestion: autowarm.Suggestion, study: optuna.Study, tmp_path: Path
) -> None:
    """Open the page as a reader would: headless Chromium renders it to a PNG, not blank."""
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have Chromium for the reader's check (.ci/run installs it)")
        pytest.skip("no chromium on PATH: apt-get install chromium to run the reader's check")
    from PIL import Image

    page = autowarm.report(study).write(tmp_path / "out")[0]
    shot = tmp_path / "page.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                f"--screenshot={shot}",
                "--window-size=1200,2000",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
    pixels = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("L"), dtype=float)
    assert pixels.shape == (2000, 1200)
    assert pixels.std() > 10, "the rendered page is blank"
    # the embedded figures drew: a band of the page's lower half is far from plain white
    assert (pixels[1000:] < 200).mean() > 0.01


def test_missing_matplotlib_says_how_to_install(
    suggestion: autowarm.Suggestion, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rep = suggestion.report()  # tables and figure data need no matplotlib
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'autowarm\[plot\]'"):
        rep.write(tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_a_study_report_says_whose_reasoning_it_shows(
    suggestion: autowarm.Suggestion, study: optuna.Study
) -> None:
    # the study may pick another schedule than the probe: the probe's paragraph and its
    # deciding signal and confidence are labelled as the probe's
    md = autowarm.report(study).to_markdown()
    assert "## Why the probe suggested its schedule (where the study started)" in md
    assert "| probe's deciding signal | " in md and "| probe's confidence | " in md
    alone = autowarm.report(suggestion)
    assert "## Why\n" in alone.to_markdown() and "<h2>Why</h2>" in alone._html({})


def test_a_probe_of_parameter_groups_says_which_lr_the_figures_show(
    suggestion: autowarm.Suggestion,
) -> None:
    import dataclasses

    from autowarm._groups import GroupSpec
    from autowarm._suggest import _groups_note, trained_in_groups

    assert not trained_in_groups(suggestion.rationale)
    note = _groups_note([GroupSpec((), {}, 0.1), GroupSpec((), {}, 1.0)])
    assert note is not None and note.startswith("The probe trained 2 parameter groups at 0.1, 1")
    grouped = dataclasses.replace(suggestion, rationale=f"{note} ... {suggestion.rationale}")
    assert trained_in_groups(grouped.rationale)
    assert any("those of a group at scale 1" in n for n in autowarm.report(grouped).notes)
    assert not any("scale 1" in n for n in autowarm.report(suggestion).notes)


def test_markdown_shows_user_text_instead_of_taking_it_for_html(
    suggestion: autowarm.Suggestion, tmp_path: Path
) -> None:
    import dataclasses

    odd = dataclasses.replace(
        suggestion, rationale="a loss of <class 'torch.Tensor'> & a | pipe <b>bold</b>"
    )
    rep = autowarm.report(odd)
    md = (rep.write(tmp_path / "r")[0].parent / "report.md").read_text()
    assert "&lt;class 'torch.Tensor'&gt; &amp; a | pipe &lt;b&gt;bold&lt;/b&gt;" in md
    assert "<b>" not in md and "<class" not in md


def test_a_folder_where_a_report_file_goes_is_refused_before_anything_is_written(
    suggestion: autowarm.Suggestion, tmp_path: Path
) -> None:
    # it failed half-way: the new pages beside the earlier report's figures and tables
    out = tmp_path / "r"
    rep = autowarm.report(suggestion)
    rep.write(out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    (out / "trace.csv").unlink()
    (out / "trace.csv").mkdir()
    with pytest.raises(FileExistsError, match=r"folders named trace\.csv"):
        rep.write(out)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == {k: v for k, v in before.items() if k != "trace.csv"}


def test_reports_say_which_optimizer_settings_the_schedule_was_measured_under(
    suggestion: autowarm.Suggestion, study: optuna.Study
) -> None:
    # the warmup follows Adam's beta2: a morning reader found no optimizer setting anywhere
    probe = suggestion.report().to_markdown()
    assert "Settings: the probe trained with torch.optim.AdamW(betas=" in probe
    assert "--format trainer" in probe
    # a study says its trials' settings: its own record, else its probe's
    assert (
        "Settings: the trials trained with torch.optim.AdamW("
        in autowarm.report(study).to_markdown()
    )
    study.set_user_attr(
        "autowarm.training",
        {**suggestion.training, "optimizer_settings": {"betas": [0.9, 0.95]}, "grad_clip": 1.0},
    )
    text = autowarm.report(study).to_markdown()
    assert "betas=[0.9, 0.95]), gradient clipping at 1.0" in text


def test_a_table_shows_values_that_differ_with_as_many_digits_as_tell_them_apart() -> None:
    from autowarm.reporting._render import _HEADLINE, markdown_table, table_texts, to_html

    frame = pd.DataFrame(
        {
            "value": [0.7365012, 0.7365049, 0.7365012, np.nan, 1.5],
            "lr": [0.01, 0.02, 0.03, 0.04, 0.05],
            "steps": [100.0, 200.0, 300.0, 400.0, 500.0],
        }
    )
    texts = table_texts(frame)
    # the first two differ in their 6th digit: shown with 6, equal values stay equal
    assert list(texts["value"]) == ["0.736501", "0.736505", "0.736501", "", "1.5"]
    assert list(texts["lr"]) == ["0.01", "0.02", "0.03", "0.04", "0.05"]  # 4 digits suffice
    assert list(texts["steps"]) == ["100", "200", "300", "400", "500"]
    md = markdown_table(frame)
    assert "| 0.736501 | 0.01 | 100 |" in md and "| 0.736505 | 0.02 | 200 |" in md
    summary = pd.DataFrame([{col: np.nan for col, _ in _HEADLINE}])
    page = to_html("t", "done", "s", (), "", {"summary": summary, "t": frame}, {})
    assert "0.736505" in page
    # at most 6 digits: a trace's column of many close losses does not print 12 (its CSV has
    # them all)
    tiny = pd.DataFrame({"v": [1.0, float(np.nextafter(1.0, 2.0)), 5.6023149, 5.6023181]})
    assert list(table_texts(tiny)["v"]) == ["1", "1", "5.60231", "5.60232"]
    # a frame with a repeated column name keeps both columns
    twice = pd.DataFrame([[0.5, 0.25]], columns=["v", "v"])
    assert table_texts(twice).values.tolist() == [["0.5", "0.25"]]


def test_vs_best_is_shown_as_a_signed_percentage() -> None:
    # 1.249 was read as "1.25 times the best"; it is 125% worse (the CSV keeps the fraction)
    from autowarm.reporting._render import table_texts

    frame = pd.DataFrame({"vs_best": [1.249, 0.0, 0.00213, -0.05, np.nan, 12.5, 1e-9]})
    assert list(table_texts(frame)["vs_best"]) == [
        "+125%", "0%", "+0.213%", "-5%", "", "+1,250%", "+<0.01%"
    ]  # fmt: skip


def test_a_near_best_range_of_one_trial_is_said_to_be_none() -> None:
    # "warmup 0 to 0, peak LR 0.08577 to 0.08577" read as a certainty: one trial met the rule
    from autowarm.reporting._render import _HEADLINE, headline

    row: dict[str, object] = {col: np.nan for col, _ in _HEADLINE}
    row.update(n_trials=8, warmup_steps_low=0, warmup_steps_high=0)
    row.update(peak_lr_low=0.08577, peak_lr_high=0.08577, range_rule="within 1%")
    shown = dict(headline(pd.DataFrame([row])))
    assert shown["near-best range"] == "none: the trials that met the rule share one schedule"
    assert not any(
        k.startswith("near-best warmup") or k.startswith("near-best peak") for k in shown
    )
    row.update(peak_lr_high=0.085774)  # equal to 4 digits, not equal: a range
    assert "near-best range" not in dict(headline(pd.DataFrame([row])))
    row.update(peak_lr_high=0.08577, warmup_steps_high=40)
    shown = dict(headline(pd.DataFrame([row])))
    assert "near-best range" not in shown and shown["near-best warmup, high (steps)"] == "40"


def test_a_stored_studys_report_says_where_it_is_and_how_to_export_it(
    suggestion: autowarm.Suggestion, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the morning reader had the figures but not the storage to export or resume from
    import shlex

    import optuna

    from autowarm.cli import main
    from autowarm.study import _storage

    study = make_study(suggestion)
    assert not any("is stored in" in n for n in autowarm.report(study).notes)  # memory
    for target in (f"sqlite:///{tmp_path / 'my study.db'}", str(tmp_path / "night.log")):
        url = _storage.normalize_url(target)
        optuna.copy_study(
            from_study_name="night",
            from_storage=study._storage,
            to_storage=_storage.open_storage(url, heartbeat_interval=None),
        )
        (note,) = [n for n in autowarm.report((url, "night")).notes if "is stored in" in n]
        assert note.startswith(f"The study 'night' is stored in {url}: `autowarm export")
        command = note.split("`")[1]
        assert main([*shlex.split(command)[1:-2], "--format", "json"]) == 0
        assert json.loads(capsys.readouterr().out)["peak_lr"] > 0


def test_the_where_note_names_a_dash_study_with_equals_and_skips_a_foreign_study(
    suggestion: autowarm.Suggestion, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shlex

    import optuna

    from autowarm.study import _storage

    url = _storage.normalize_url(str(tmp_path / "night.log"))
    storage = _storage.open_storage(url, heartbeat_interval=None)
    optuna.copy_study(
        from_study_name="night",
        from_storage=make_study(suggestion)._storage,
        to_storage=storage,
        to_study_name="-night",
    )
    (note,) = [n for n in autowarm.report((url, "-night")).notes if "is stored in" in n]
    command = shlex.split(note.split("`")[1])
    assert "--study-name=-night" in command  # "--study-name -night" reads as an option
    assert main([*command[1:-2], "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["peak_lr"] > 0
    # a study autowarm tune did not write: export would refuse it, so no command is offered
    foreign = optuna.create_study(storage=storage, study_name="other")
    foreign.add_trial(
        optuna.trial.create_trial(
            params={"peak_lr": 0.01, "warmup_steps": 10},
            distributions={
                "peak_lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True),
                "warmup_steps": optuna.distributions.IntDistribution(0, 100),
            },
            value=1.0,
        )
    )
    assert not any("is stored in" in n for n in autowarm.report((url, "other")).notes)

"""The ``autowarm`` command, run as a user would run it (a subprocess)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from autowarm import ScheduleConfig


def autowarm(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autowarm", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


@pytest.fixture
def sched_file(tmp_path: Path) -> Path:
    cfg = ScheduleConfig(peak_lr=1e-3, total_steps=1000, warmup_steps=100, min_lr=1e-5)
    return cfg.save(tmp_path / "schedule.yaml")


def test_version() -> None:
    r = autowarm("--version")
    assert r.returncode == 0
    assert r.stdout.startswith("autowarm ")


def test_schedule_show(sched_file: Path) -> None:
    r = autowarm("schedule", "show", str(sched_file))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(line.startswith("start") and line.split()[1] == "0" for line in lines)
    warm = next(line for line in lines if line.startswith("warmup end"))
    assert warm.split()[2] == "100" and float(warm.split()[3]) == pytest.approx(1e-3)
    assert any(line.startswith("last step") and "999" in line for line in lines)


def test_schedule_show_json(sched_file: Path) -> None:
    r = autowarm("schedule", "show", str(sched_file), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    steps = [p["step"] for p in out["key_points"]]
    assert steps == [0, 100, 250, 500, 750, 999, 1000]
    assert out["key_points"][1]["lr"] == pytest.approx(1e-3)
    assert out["key_points"][-1]["lr"] == pytest.approx(1e-5)


def test_schedule_show_plot(sched_file: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib not installed (extra plot)")
    png = tmp_path / "out" / "s.png"
    r = autowarm("schedule", "show", str(sched_file), "--plot", str(png))
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 5000


@pytest.mark.parametrize("fmt", ["json", "yaml", "transformers", "trainer", "lightning"])
def test_export_formats(sched_file: Path, fmt: str, tmp_path: Path) -> None:
    r = autowarm("export", str(sched_file), "--format", fmt)
    assert r.returncode == 0, r.stderr
    cfg = ScheduleConfig.load(sched_file)
    if fmt == "yaml":
        import yaml

        assert ScheduleConfig.from_dict(yaml.safe_load(r.stdout)) == cfg
        return
    out = json.loads(r.stdout)
    expected = {
        "json": cfg.to_dict(),
        "transformers": cfg.to_transformers(),
        "trainer": cfg.to_trainer_args(),
    }.get(fmt)
    if expected is not None:
        assert out == expected
    else:
        assert out["lr_scheduler"]["interval"] == "step"
        assert ScheduleConfig.from_dict(out["schedule"]) == cfg


def test_export_to_file_converts(sched_file: Path, tmp_path: Path) -> None:
    dest = tmp_path / "converted.json"
    r = autowarm("export", str(sched_file), "-o", str(dest))
    assert r.returncode == 0, r.stderr
    assert ScheduleConfig.load(dest) == ScheduleConfig.load(sched_file)


@pytest.mark.parametrize("fmt", ["trainer", "transformers", "lightning"])
def test_export_never_overwrites_what_is_not_an_earlier_export(
    sched_file: Path, tmp_path: Path, fmt: str
) -> None:
    db = tmp_path / "k.db"
    sqlite3.connect(db).execute("create table t (x)").connection.commit()
    task = tmp_path / "task.py"
    task.write_text("task = None\n")
    before = {p: p.read_bytes() for p in (db, task, sched_file)}
    for target, match in (
        (db, "is a SQLite database"),
        (task, "not a schedule config or an earlier export"),
        (sched_file, "is the file being exported"),
        (tmp_path, "is a directory"),
    ):
        r = autowarm("export", str(sched_file), "-f", fmt, "-o", str(target))
        assert r.returncode == 1 and match in r.stderr, (target, r.stderr)
    assert {p: p.read_bytes() for p in before} == before
    named_like_a_config = tmp_path / "study.json"
    db.rename(named_like_a_config)
    r = autowarm("export", str(sched_file), "-o", str(named_like_a_config))
    assert r.returncode == 1 and "is a SQLite database" in r.stderr
    empty = tmp_path / "empty.json"
    empty.write_text("")  # as mktemp --suffix .json makes it
    assert autowarm("export", str(sched_file), "-f", fmt, "-o", str(empty)).returncode == 0
    earlier = tmp_path / "args.json"
    for _ in range(2):  # an earlier export is replaced
        r = autowarm("export", str(sched_file), "-f", fmt, "-o", str(earlier))
        assert r.returncode == 0, r.stderr


def test_export_never_replaces_the_users_own_config_or_a_suggestion(
    sched_file: Path, tmp_path: Path
) -> None:
    # Any JSON or YAML mapping used to count as "an earlier export" and was replaced.
    own = {
        tmp_path / "train_config.json": '{"model": "gpt2", "learning_rate": 3e-4}\n',
        tmp_path / "hp.yaml": "learning_rate: 0.0003\nlr_scheduler_type: cosine\nseed: 1\n",
        tmp_path / "sug.json": '{"format": "autowarm.suggestion", "peak_lr": 0.001}\n',
    }
    for path, text in own.items():
        path.write_text(text)
    for path in own:
        for fmt in ("yaml", "transformers") if path.suffix == ".yaml" else ("json", "trainer"):
            r = autowarm("export", str(sched_file), "-f", fmt, "-o", str(path))
            assert r.returncode == 1, (path, fmt, r.stdout)
            assert "is not a schedule config or an earlier export" in r.stderr
    assert {p: p.read_text() for p in own} == own


def test_export_refuses_a_suggestion_with_a_field_given_twice(tmp_path: Path) -> None:
    from autowarm._suggest import Suggestion

    src = tmp_path / "s.json"
    cfg = ScheduleConfig(peak_lr=1e-3, total_steps=1000, warmup_steps=100)
    data = Suggestion.from_dict(
        {
            "warmup_steps": 100,
            "peak_lr": 1e-3,
            "probe_steps": 99,
            "confidence": "high",
            "low_confidence_reasons": [],
            "deciding_signal": "second moment",
            "wall_seconds": 1.0,
            "rationale": "r",
            "schedule": cfg.to_dict(),
        }
    ).to_dict()
    text = json.dumps(data)[:-1] + ', "confidence": "low"}'
    src.write_text(text)
    r = autowarm("export", str(src), "-f", "trainer")
    assert r.returncode == 1 and "field 'confidence' is given twice" in r.stderr, r.stderr
    afile = tmp_path / "afile"
    afile.write_text("x")
    sched = cfg.save(tmp_path / "sched.yaml")
    for fmt in ("trainer", "json"):  # every format says it plainly, through atomic_write
        r = autowarm("export", str(sched), "-f", fmt, "-o", str(afile / "x.json"))
        assert r.returncode == 1 and "afile is a file, not a folder" in r.stderr, r.stderr


def test_export_dash_o_dash_is_stdout(sched_file: Path, tmp_path: Path) -> None:
    for fmt in ("yaml", "transformers"):
        r = autowarm("export", str(sched_file), "-f", fmt, "-o", "-", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "peak_lr" in r.stdout or "num_warmup_steps" in r.stdout
    assert list(tmp_path.iterdir()) == [sched_file]  # no file named "-"


def test_schedule_plot_never_replaces_what_is_not_a_png(sched_file: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib not installed (extra plot)")
    notes = tmp_path / "notes.png"
    notes.write_text("my notes")
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR a photo of the user's")
    before = sched_file.read_bytes()
    for target, match in (
        (sched_file, "is the schedule file being shown"),
        (tmp_path / "plot.pdf", "pass a name ending in .png"),
        (notes, "notes.png exists and is not a PNG image"),
        (photo, "photo.png exists and is not a PNG image autowarm drew"),
    ):
        r = autowarm("schedule", "show", str(sched_file), "--plot", str(target))
        assert r.returncode == 1 and match in r.stderr, (target, r.stderr)
        assert r.stdout == ""  # refused before anything is printed
    assert sched_file.read_bytes() == before and notes.read_text() == "my notes"
    assert photo.read_bytes().endswith(b"a photo of the user's")
    assert not (tmp_path / "plot.pdf").exists()
    png = tmp_path / "s.png"
    for _ in range(2):  # its own plot is replaced
        assert autowarm("schedule", "show", str(sched_file), "--plot", str(png)).returncode == 0


def test_error_is_one_line_exit_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"peak_lr": -1, "total_steps": 10, "warmup_steps": 1}')
    r = autowarm("export", str(bad))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1
    assert "peak_lr" in r.stderr and "Traceback" not in r.stderr


def test_missing_file_error(tmp_path: Path) -> None:
    r = autowarm("schedule", "show", str(tmp_path / "nope.json"))
    assert r.returncode == 1
    assert "nope.json" in r.stderr


def test_debug_shows_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"peak_lr": 1, "total_steps": 10, "warmup_steps": 1, "decay": "cosin"}')
    r = autowarm("--debug", "export", str(bad))
    assert r.returncode != 0
    assert "Traceback" in r.stderr


def test_transformers_export_error(tmp_path: Path) -> None:
    cfg = ScheduleConfig(
        peak_lr=1.0, total_steps=10, warmup_steps=2, decay="cosine_with_restarts", min_lr=0.1
    )
    path = cfg.save(tmp_path / "s.json")
    r = autowarm("export", str(path), "--format", "trainer")
    assert r.returncode == 1
    assert "closest transformers type" in r.stderr


def test_demo_quick(tmp_path: Path) -> None:
    r = autowarm("demo", "--out", str(tmp_path / "demo"), "--total-steps", "500", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "suggested warmup:" in r.stdout and "rationale:" in r.stdout
    cfg = ScheduleConfig.load(tmp_path / "demo" / "schedule.yaml")
    assert cfg.total_steps == 500
    data = json.loads((tmp_path / "demo" / "suggestion.json").read_text())
    assert data["schedule"] == cfg.to_dict()
    assert data["probe_steps"] <= 60
    assert (tmp_path / "demo" / "suggestion.trace.csv").exists()


def test_export_format_follows_the_output_name_and_conflicts_fail(
    sched_file: Path, tmp_path: Path
) -> None:
    from autowarm.cli import export_format

    assert export_format(None, None) == "json"
    assert export_format(None, tmp_path / "a.yml") == "yaml"
    assert export_format("transformers", tmp_path / "a.yaml") == "transformers"
    with pytest.raises(ValueError, match=r"--format json but -o .*a.yaml names a yaml file"):
        export_format("json", tmp_path / "a.yaml")
    with pytest.raises(ValueError, match="is a directory: pass a file path"):
        export_format("yaml", tmp_path)
    # a config without a suffix could not be read back; the other formats may take any name
    with pytest.raises(ValueError, match=r"noext has no \.json.*pass -o .*noext\.json"):
        export_format(None, tmp_path / "noext")
    with pytest.raises(ValueError, match=r"pass -o .*noext\.yaml"):
        export_format("yaml", tmp_path / "noext")
    assert export_format("trainer", tmp_path / "noext") == "trainer"
    dest = tmp_path / "converted.yaml"
    r = autowarm("export", str(sched_file), "-o", str(dest))  # no --format: the suffix decides
    assert r.returncode == 0, r.stderr
    assert dest.read_text().startswith("format: autowarm.schedule")
    r = autowarm("export", str(sched_file), "-f", "json", "-o", str(tmp_path / "x.yaml"))
    assert r.returncode == 1 and "names a yaml file" in r.stderr
    assert not (tmp_path / "x.yaml").exists()
    r = autowarm("export")
    assert r.returncode == 1 and "pass a schedule file, or --storage" in r.stderr
    assert "not both" not in r.stderr


@pytest.fixture
def no_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """``suggest`` fails the test if called: the demo's checks must come before the probe."""

    def probe(*args: object, **kwargs: object) -> None:
        raise AssertionError("the probe ran before the demo's output paths were checked")

    monkeypatch.setattr("autowarm._suggest.suggest", probe)


@pytest.mark.usefixtures("no_probe")
def test_demo_refuses_a_file_as_its_folder_before_probing(tmp_path: Path) -> None:
    from autowarm import _demo

    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ValueError, match="afile is a file: pass --out a folder"):
        _demo.run_demo(afile, progress=False)
    assert afile.read_text() == "x"
    for short in (-5, 30):  # refused before its folder is made
        with pytest.raises(ValueError, match="--total-steps must be an int >= 40"):
            _demo.run_demo(tmp_path / "new", progress=False, total_steps=short)
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*32\)"):
        _demo.run_demo(tmp_path / "new", progress=False, seed=-1)
    assert not (tmp_path / "new").exists()


@pytest.mark.usefixtures("no_probe")
def test_demo_refuses_files_of_the_users_own_before_probing(tmp_path: Path) -> None:
    from autowarm import _demo

    for name, text in (
        ("schedule.yaml", "lr: 0.1  # my hand-written schedule\n"),
        ("suggestion.json", '{"notes": "mine"}'),
        ("suggestion.trace.csv", "epoch,loss\n1,2\n"),
    ):
        out = tmp_path / name.replace(".", "_")
        out.mkdir()
        (out / name).write_text(text)
        with pytest.raises(FileExistsError, match=f"{name} exists and is not"):
            _demo.run_demo(out, progress=False)
        assert [p.name for p in out.iterdir()] == [name] and (out / name).read_text() == text
    out = tmp_path / "report_file"
    out.mkdir()
    (out / "report").write_text("x")  # where the report folder goes
    with pytest.raises(ValueError, match="is a file, where the demo writes its report folder"):
        _demo.run_demo(out, progress=False)
    assert [p.name for p in out.iterdir()] == ["report"]


def test_a_key_error_prints_its_message_without_quotes() -> None:
    r = autowarm("bench", "grid", "--tasks", "nosuch", "--seeds", "1")
    assert r.returncode == 1
    assert r.stderr.startswith("autowarm: error: no benchmark task named 'nosuch'; valid names")


def test_commands_other_than_bench_do_not_import_torch(sched_file: Path) -> None:
    # `autowarm --version` or `schedule show` must not pay for bench's parser (torch, scipy).
    code = (
        "import sys; from autowarm.cli import main; "
        "main(['schedule', 'show', sys.argv[1]]); print('torch' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code, str(sched_file)], capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "False"


def test_a_reader_that_stops_early_is_not_an_error(sched_file: Path) -> None:
    # `autowarm schedule show s.yaml | head -1`: the pipe closes before the output is written.
    proc = subprocess.Popen(
        [sys.executable, "-m", "autowarm", "schedule", "show", str(sched_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the command has written anything (it is still importing)
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141  # as a process killed by SIGPIPE (128 + 13)
    assert "error" not in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["tune", "task.py:task", "--n-trial", "3"],  # a prefix of --n-trials
        ["bench", "grid", "--seed", "2"],  # of --seeds
        ["export", "--stor", "s.db"],  # of --storage
    ],
)
def test_an_abbreviated_option_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # argparse took them as the full option, so a typo could run as another option
    from autowarm.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_schedule_plot_without_matplotlib_prints_nothing(
    sched_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from autowarm.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    rc = main(["schedule", "show", str(sched_file), "--plot", str(tmp_path / "s.png")])
    out, err = capsys.readouterr()
    assert rc == 1 and out == "" and "matplotlib" in err
    assert not (tmp_path / "s.png").exists()


def test_one_v_shows_debug_lines() -> None:
    import logging

    from autowarm.cli import _setup_logging

    logger = logging.getLogger("autowarm")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    try:
        _setup_logging(0, False)
        assert logger.level == logging.INFO
        _setup_logging(1, False)
        assert logger.level == logging.DEBUG
        _setup_logging(0, True)
        assert logger.level == logging.ERROR
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_schedule_show_takes_a_suggestion(tmp_path: Path) -> None:
    # `autowarm probe -o suggestion.json` writes no schedule.yaml beside it, which the error
    # told the reader to pass instead
    import torch.nn.functional as F

    from autowarm import suggest
    from tests._tiny import cls_batches, mlp

    s = suggest(mlp(), cls_batches(), criterion=F.cross_entropy, total_steps=600,
                         progress=False)  # fmt: skip
    path = s.save(tmp_path / "suggestion.json")
    r = autowarm("schedule", "show", str(path), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["schedule"] == s.schedule.to_dict()
    with pytest.raises(ValueError, match=r"autowarm export SUGGESTION\.json -o schedule\.yaml"):
        ScheduleConfig.load(path)


def test_a_transformers_export_names_the_lr_to_build_the_optimizer_with(sched_file: Path) -> None:
    r = autowarm("export", str(sched_file), "--format", "transformers")
    assert r.returncode == 0, r.stderr
    assert "lr" not in json.loads(r.stdout)  # get_scheduler's keywords alone
    assert "build the optimizer with lr=0.001 (the peak LR)" in r.stderr


def test_an_error_caused_by_the_disk_or_database_says_so() -> None:
    # A full disk under a journal printed optuna's "Should not reach." and under SQLite
    # "An exception is raised during the commit ... invalid data": the cause was never named.
    import sqlite3

    from autowarm._checks import error_line

    def chained(outer: BaseException, inner: BaseException) -> BaseException:
        try:
            try:
                raise inner
            except BaseException:
                raise outer  # noqa: B904 (the implicit context is the point)
        except BaseException as exc:
            return exc

    full = chained(AssertionError("Should not reach."), OSError(28, "No space left on device"))
    assert error_line(full) == (
        "Should not reach. (caused by OSError: [Errno 28] No space left on device)"
    )
    db = chained(
        RuntimeError("An exception is raised during the commit."),
        sqlite3.OperationalError("database or disk is full"),
    )
    assert error_line(db).endswith("(caused by OperationalError: database or disk is full)")
    # an error of the user's own code keeps its one line
    assert error_line(chained(ValueError("bad lr"), KeyError("x"))) == "bad lr"
    assert (
        error_line(OSError(28, "No space left on device")) == "[Errno 28] No space left on device"
    )
    quoted = chained(
        ValueError("cannot open storage x: disk I/O error"), OSError("disk I/O error")
    )
    assert error_line(quoted) == "cannot open storage x: disk I/O error"
    # a cause chain that loops back (raise a from b, b having been raised from a) ends
    first, second = OSError("disk gone"), RuntimeError("retry failed")
    first.__cause__, second.__cause__ = second, first
    assert error_line(RuntimeError("Should not reach.")) == "Should not reach."
    looped = chained(RuntimeError("Should not reach."), first)
    assert error_line(looped) == "Should not reach. (caused by OSError: disk gone)"
    assert error_line(second) == "retry failed (caused by OSError: disk gone)"

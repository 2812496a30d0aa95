"""ScheduleConfig files: round trips, strict loading, and property-based malformed input."""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import autowarm
from autowarm import ScheduleConfig

CONFIGS = [
    ScheduleConfig(peak_lr=3e-4, total_steps=1000, warmup_steps=100),
    ScheduleConfig(peak_lr=1e-3, total_steps=50, warmup_steps=0, decay="linear"),
    ScheduleConfig(
        peak_lr=2e-3,
        total_steps=500,
        warmup_steps=7,
        decay="cosine_with_restarts",
        num_cycles=3,
        min_lr=0.0,
    ),
    ScheduleConfig(
        peak_lr=1e-2,
        total_steps=500,
        warmup_steps=20,
        decay="polynomial",
        power=2.5,
        min_lr=1e-5,
        warmup_start_factor=0.01,
    ),
    ScheduleConfig(
        peak_lr=1e-2, total_steps=500, warmup_steps=20, decay="inverse_sqrt", timescale=77
    ),
    ScheduleConfig(
        peak_lr=1e-2,
        total_steps=500,
        warmup_steps=20,
        decay="warmup_stable_decay",
        wsd_decay_fraction=0.3,
        wsd_decay_shape="1-sqrt",
    ),
]


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: str(c.decay.value))
def test_round_trip(cfg: ScheduleConfig, suffix: str, tmp_path: Path) -> None:
    path = cfg.save(tmp_path / f"sched{suffix}")
    loaded = ScheduleConfig.load(path)
    assert loaded == cfg
    assert loaded.lrs() == cfg.lrs()
    assert ScheduleConfig.from_dict(cfg.to_dict()) == cfg
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left beside it


def test_file_has_format_and_version(tmp_path: Path) -> None:
    data = json.loads(CONFIGS[0].save(tmp_path / "s.json").read_text())
    assert data["format"] == "autowarm.schedule"
    assert data["format_version"] == 1


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_rejects_unknown_key(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "s.json",
        '{"peak_lr": 1e-3, "total_steps": 10, "warmup_steps": 1, "warmup_ratio": 0.1}',
    )
    with pytest.raises(ValueError, match="'warmup_ratio'"):
        ScheduleConfig.load(p)


def test_a_step_count_written_as_a_float_says_how_to_write_it(tmp_path: Path) -> None:
    p = _write(tmp_path, "s.yaml", "peak_lr: 0.1\ntotal_steps: 1e4\nwarmup_steps: 1\n")
    with pytest.raises(
        ValueError,
        match=r"total_steps=10000.0 \(float\): an int is written without a point or exponent "
        r"\(10000, not 10000.0\)",
    ):
        ScheduleConfig.load(p)


def test_a_warmup_ratio_passed_as_warmup_steps_says_to_count_updates() -> None:
    # transformers 5 folded warmup_ratio into warmup_steps; 0.1 here is not 10%
    with pytest.raises(
        ValueError,
        match=r"warmup_steps=0.1 \(float\): warmup_steps counts updates, not a fraction of the "
        r"run; pass round\(0.1 \* total_steps\) for 10% warmup",
    ):
        ScheduleConfig(peak_lr=1e-3, total_steps=1000, warmup_steps=0.1)  # type: ignore[arg-type]


def test_a_misspelt_key_names_the_field_meant(tmp_path: Path) -> None:
    p = _write(tmp_path, "s.yaml", "peak_lr: 0.1\ntotal_steps: 10\nwarmup_step: 1\n")
    with pytest.raises(ValueError, match="'warmup_step': did you mean 'warmup_steps'"):
        ScheduleConfig.load(p)


def test_rejects_newer_version(tmp_path: Path) -> None:
    p = _write(
        tmp_path, "s.yaml", "format_version: 9\npeak_lr: 0.1\ntotal_steps: 5\nwarmup_steps: 1\n"
    )
    with pytest.raises(ValueError, match="newer autowarm"):
        ScheduleConfig.load(p)


@pytest.mark.parametrize(
    ("head", "match"),
    [
        ("format: other\n", r"format must be 'autowarm.schedule', but got format='other'"),
        ("format_version: true\n", r"format_version must be an int >= 1, but got .*True"),
        ("format_version: 0\n", r"format_version must be an int >= 1, but got .*=0"),
    ],
)
def test_rejects_another_format_or_a_version_that_is_no_version(
    tmp_path: Path, head: str, match: str
) -> None:
    p = _write(tmp_path, "s.yaml", head + "peak_lr: 0.1\ntotal_steps: 5\nwarmup_steps: 1\n")
    with pytest.raises(ValueError, match=match):
        ScheduleConfig.load(p)


def test_missing_required(tmp_path: Path) -> None:
    p = _write(tmp_path, "s.yaml", "peak_lr: 0.1\ntotal_steps: 5\n")
    with pytest.raises(ValueError, match="'warmup_steps'"):
        ScheduleConfig.load(p)


def test_yaml_never_executes(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    p = _write(
        tmp_path, "s.yaml", f"peak_lr: !!python/object/apply:os.system ['touch {marker}']\n"
    )
    with pytest.raises(ValueError, match="not valid YAML"):
        ScheduleConfig.load(p)
    assert not marker.exists()


def test_a_yaml_syntax_error_is_one_line_without_runs_of_spaces(tmp_path: Path) -> None:
    p = _write(tmp_path, "s.yaml", "peak_lr: [1\nx: 2\n")
    with pytest.raises(ValueError, match="not valid YAML") as err:
        ScheduleConfig.load(p)
    assert "\n" not in str(err.value) and "  " not in str(err.value)
    assert "line 2" in str(err.value)


@pytest.mark.parametrize("text", ["[1, 2]", "{", "", "3"])
def test_malformed_json(text: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"s\.json"):
        ScheduleConfig.load(_write(tmp_path, "s.json", text))


def test_wrong_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.json, \.yaml or \.yml"):
        CONFIGS[0].save(tmp_path / "s.toml")


# ------------------------------------------------------------------ property-based
VALID: dict[str, Any] = {"peak_lr": 1e-3, "total_steps": 100, "warmup_steps": 10}
FIELDS = [
    "peak_lr",
    "total_steps",
    "warmup_steps",
    "decay",
    "min_lr",
    "warmup_start_factor",
    "num_cycles",
    "power",
    "timescale",
    "wsd_decay_fraction",
    "wsd_decay_shape",
]
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.text(max_size=8),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(FIELDS), value=junk)
def test_malformed_field_raises_value_error_naming_it(field: str, value: Any) -> None:
    data = {
        **VALID,
        "decay": "warmup_stable_decay" if field.startswith("wsd") else "cosine",
        field: value,
    }
    try:
        cfg = ScheduleConfig.from_dict(data)
    except ValueError as exc:
        assert field in str(exc), str(exc)
    else:  # the junk happened to be valid: it must then really be usable
        assert math.isfinite(cfg.lr_at(cfg.total_steps - 1))


@settings(max_examples=200, deadline=None)
@given(data=st.dictionaries(st.text(max_size=12), junk, max_size=6))
def test_arbitrary_mapping_raises_only_value_error(data: dict[str, Any]) -> None:
    # Anything but ValueError (TypeError, KeyError, ...) escapes and fails the test.
    with contextlib.suppress(ValueError):
        ScheduleConfig.from_dict(data)


@settings(max_examples=100, deadline=None)
@given(data=junk)
def test_non_mapping_raises_value_error(data: Any) -> None:
    if isinstance(data, dict):
        return
    with pytest.raises(ValueError, match="mapping"):
        ScheduleConfig.from_dict(data)


def test_hand_written_yaml_exponents_are_numbers(tmp_path: Path) -> None:
    # PyYAML follows YAML 1.1, where 1e-3 (no dot) is a string; people write it that way.
    path = tmp_path / "s.yaml"
    path.write_text(
        "peak_lr: 3e-4\ntotal_steps: 1000\nwarmup_steps: 10\nmin_lr: 1E-6\n", encoding="utf-8"
    )
    cfg = ScheduleConfig.load(path)
    assert (cfg.peak_lr, cfg.min_lr) == (3e-4, 1e-6)
    assert isinstance(cfg.peak_lr, float)
    # what YAML 1.1 already read as numbers still is; other strings stay strings
    path.write_text("peak_lr: 3.0e-04\ntotal_steps: 1_000\nwarmup_steps: 10\n", encoding="utf-8")
    cfg = ScheduleConfig.load(path)
    assert (cfg.peak_lr, cfg.total_steps) == (3e-4, 1000)
    path.write_text("peak_lr: e-4\ntotal_steps: 1000\nwarmup_steps: 10\n", encoding="utf-8")
    with pytest.raises(ValueError, match="peak_lr must be a finite float > 0"):
        ScheduleConfig.load(path)


@pytest.mark.parametrize(
    "text, match",
    [
        ("warmup_steps: 10\nwarmup_steps: 500\n", "field 'warmup_steps' is given twice"),
        ("total_steps: 010000\n", "'010000' reads as another number in YAML 1.1"),
        ("warmup_steps: 1:40\n", "'1:40' reads as another number"),
    ],
)
def test_yaml_that_reads_as_another_value_is_an_error(
    text: str, match: str, tmp_path: Path
) -> None:
    # A key given twice kept its last value, 010000 was 4096 and 1:40 was 100, silently.
    path = tmp_path / "s.yaml"
    base = {"peak_lr": "1.0e-3", "total_steps": "1000", "warmup_steps": "10"}
    given = text.split(":")[0]
    lines = "".join(f"{k}: {v}\n" for k, v in base.items() if k != given)
    path.write_text(lines + text, encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        ScheduleConfig.load(path)


def test_json_with_a_key_given_twice_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(
        '{"peak_lr": 1e-3, "total_steps": 1000, "warmup_steps": 10, "warmup_steps": 500}',
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match=r"s\.json: field 'warmup_steps' is given twice"):
        ScheduleConfig.load(path)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_a_byte_order_mark_is_not_part_of_the_config(suffix: str, tmp_path: Path) -> None:
    cfg = ScheduleConfig(peak_lr=1e-3, total_steps=1000, warmup_steps=10)
    path = tmp_path / f"s{suffix}"
    cfg.save(path)
    path.write_text("\ufeff" + path.read_text(encoding="utf-8"), encoding="utf-8")
    assert ScheduleConfig.load(path) == cfg


def test_a_shape_field_of_another_decay_is_an_error_not_ignored() -> None:
    base = {"peak_lr": 1e-3, "total_steps": 100, "warmup_steps": 10}
    with pytest.raises(
        ValueError,
        match="'num_cycles' applies to decay 'cosine_with_restarts', not to decay 'cosine'",
    ):
        ScheduleConfig.from_dict({**base, "num_cycles": 3})
    with pytest.raises(
        ValueError, match="'power' applies to decay 'polynomial', not to decay 'linear'"
    ):
        ScheduleConfig.from_dict({**base, "decay": "linear", "power": 2.0})
    cfg = ScheduleConfig.from_dict({**base, "decay": "polynomial", "power": 2.0})
    assert cfg.power == 2.0 and ScheduleConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="decay"):  # a bad decay is still named as such
        ScheduleConfig.from_dict({**base, "decay": "nope", "power": 2.0})


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_a_file_that_is_not_utf8_is_named(suffix: str, tmp_path: Path) -> None:
    # a config saved as UTF-16 (Windows editors) starts with the bytes FF FE
    path = tmp_path / f"sched{suffix}"
    path.write_bytes('{"peak_lr": 0.001}'.encode("utf-16"))
    with pytest.raises(ValueError, match=rf"sched\{suffix}: not UTF-8 text .*byte 0xff"):
        ScheduleConfig.load(path)


def test_a_schedule_config_passed_as_a_suggestion_says_what_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from autowarm.cli import main

    cfg = ScheduleConfig(peak_lr=1e-3, total_steps=100, warmup_steps=10)
    sched = cfg.save(tmp_path / "sched.yaml")
    with pytest.raises(ValueError, match=r"sched\.yaml is a schedule config, not a suggestion"):
        autowarm.report(sched)
    hand = tmp_path / "hand.yaml"  # written by hand: no format line
    hand.write_text("peak_lr: 3e-4\ntotal_steps: 100\nwarmup_steps: 10\n")
    with pytest.raises(ValueError, match=r"hand\.yaml is a schedule config, not a suggestion"):
        autowarm.report(hand)
    other = tmp_path / "train.yaml"
    other.write_text("model: gpt2\nepochs: 3\n")
    with pytest.raises(ValueError, match=r"train\.yaml is not a suggestion JSON file: it is YAML"):
        autowarm.report(other)
    assert main(["report", str(sched), "-o", str(tmp_path / "out")]) == 1
    assert "is a schedule config, not a suggestion" in capsys.readouterr().err


def test_a_suggestion_passed_as_a_schedule_config_says_what_to_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from autowarm._suggest import SUGGESTION_FORMAT
    from autowarm.cli import main

    path = tmp_path / "suggestion.json"
    path.write_text(json.dumps({"format": SUGGESTION_FORMAT, "format_version": 1}))
    with pytest.raises(ValueError, match=r"suggestion\.json: this is a probe's suggestion"):
        ScheduleConfig.load(path)
    # export takes a suggestion JSON (its schedule); this one is malformed, and says so
    assert main(["export", str(path), "-o", str(tmp_path / "out.yaml")]) == 1
    err = capsys.readouterr().err
    assert "suggestion.json: missing field 'schedule'" in err
    assert not (tmp_path / "out.yaml").exists()


def _saved_suggestion(path: Path, **training: Any) -> Path:
    # A suggestion as Suggestion.save writes it (no probe: the record of a bf16 AdamW run).
    import pandas as pd
    import torch

    from autowarm._suggest import training_record

    cfg = ScheduleConfig(peak_lr=1e-3, total_steps=1000, warmup_steps=100)
    record = training_record(torch.optim.AdamW, {"betas": (0.9, 0.95)}, 1.0, 2, "bf16-mixed")
    suggestion = autowarm.Suggestion(
        warmup_steps=100,
        peak_lr=1e-3,
        schedule=cfg,
        probe_steps=60,
        rationale="made by hand",
        trace=pd.DataFrame({"step": [0, 1], "loss": [2.0, 1.5]}),
        signals=pd.DataFrame({"name": ["x"], "value": [1.0]}),
        training={**record, **training},
    )
    return suggestion.save(path)


def _trainer_export(path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    from autowarm.cli import main

    assert main(["export", str(path), "-f", "trainer"]) == 0, capsys.readouterr().err
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def test_export_reads_a_suggestion_with_a_byte_order_mark(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _saved_suggestion(tmp_path / "s.json")
    want = _trainer_export(path, capsys)
    assert want["bf16"] is True and want["adam_beta2"] == 0.95 and want["max_grad_norm"] == 1.0
    # as a Windows editor saves it: read as the suggestion it is, not as a schedule config
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert autowarm.Suggestion.load(bom).training["precision"] == "bf16-mixed"
    assert _trainer_export(bom, capsys) == want


def test_export_of_a_suggestion_does_not_read_its_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from autowarm.cli import main

    path = _saved_suggestion(tmp_path / "s.json")
    want = _trainer_export(path, capsys)
    # another suggestion's trace beside it: load refuses it, but export never reads tables
    (tmp_path / "s.trace.csv").write_text("step,loss\n0,9.0\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"s\.trace\.csv is not the table s\.json was saved"):
        autowarm.Suggestion.load(path)
    assert _trainer_export(path, capsys) == want
    assert main(["export", str(path), "-f", "transformers"]) == 0
    assert json.loads(capsys.readouterr().out)["num_warmup_steps"] == 100
    (tmp_path / "s.signals.csv").write_bytes(b'a,b\n"1,2\n')  # not even a table
    assert main(["export", str(path), "-o", str(tmp_path / "out.yaml")]) == 0
    assert ScheduleConfig.load(tmp_path / "out.yaml").warmup_steps == 100
    capsys.readouterr()
    # what is wrong with the JSON itself is still said, naming the file and the field
    bad = _saved_suggestion(tmp_path / "bad.json", precision="bf16")
    assert main(["export", str(bad), "-f", "trainer"]) == 1
    err = capsys.readouterr().err
    assert f"autowarm: error: {bad}: field 'training': precision must be one of" in err
    assert "but got precision='bf16'" in err and len(err.strip().splitlines()) == 1


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002], ids=oct)
def test_a_saved_config_gets_the_mode_open_would_give_it(mask: int, tmp_path: Path) -> None:
    cfg = CONFIGS[0]
    with _umask(mask):
        new = cfg.save(tmp_path / "new.yaml")  # new: 0o666 less the umask, not mkstemp's 0o600
        assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~mask
        old = CONFIGS[1].save(tmp_path / "old.json")  # an earlier config, replaced
        old.chmod(0o640)
        cfg.save(old)  # existing: keeps its mode, whatever the umask
    assert stat.S_IMODE(old.stat().st_mode) == 0o640
    assert ScheduleConfig.load(old) == cfg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.yaml", "old.json"]


@pytest.mark.skipif(os.name != "posix", reason="symlinks")
@pytest.mark.parametrize("relative", [True, False])
def test_saving_through_a_symlink_writes_its_target(
    relative: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_dir = tmp_path / "configs"
    real_dir.mkdir()
    target = CONFIGS[0].save(real_dir / "sched.yaml")  # an earlier config, replaced
    target.chmod(0o644)
    link_dir = tmp_path / "run"
    link_dir.mkdir()
    link = link_dir / "sched.yaml"
    link.symlink_to(os.path.relpath(target, link_dir) if relative else target)
    renames: list[tuple[Path, Path]] = []
    replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        renames.append((Path(src), Path(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    cfg = CONFIGS[1]
    with _umask(0o077):
        cfg.save(link)
    assert link.is_symlink() and link.resolve() == target.resolve()  # the link stays
    # the temporary file was beside the target (one filesystem: the rename is atomic)
    [(src, dst)] = renames
    assert src.parent == dst.parent == target.resolve().parent
    assert ScheduleConfig.load(target) == cfg  # and its target has the new text
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    # and no temporary file is left, on either side
    assert list(link_dir.iterdir()) == [link]
    assert list(real_dir.iterdir()) == [target]
    # a dangling link: the file it names is created, as open(link, "w") would
    dangling = link_dir / "new.json"
    dangling.symlink_to(real_dir / "new.json")
    cfg.save(dangling)
    assert dangling.is_symlink() and ScheduleConfig.load(real_dir / "new.json") == cfg


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = CONFIGS[0].save(tmp_path / "sched.json")
    before = path.read_text()

    def boom(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        CONFIGS[1].save(path)
    assert path.read_text() == before
    assert list(tmp_path.iterdir()) == [path]


def test_yaml_merge_keys_merge_and_base_60_floats_are_refused(tmp_path: Path) -> None:
    merged = tmp_path / "m.yaml"
    merged.write_text("<<: {peak_lr: 3.0e-4, total_steps: 100}\nwarmup_steps: 10\n")
    assert ScheduleConfig.load(merged) == ScheduleConfig(
        peak_lr=3e-4, total_steps=100, warmup_steps=10
    )
    sexagesimal = tmp_path / "b.yaml"
    sexagesimal.write_text("peak_lr: 1:30.5\ntotal_steps: 100\nwarmup_steps: 10\n")
    with pytest.raises(ValueError, match=r"base-60 number in YAML 1\.1: write the number in"):
        ScheduleConfig.load(sexagesimal)


def test_a_study_storage_given_as_a_schedule_file_points_at_storage(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "autowarm.db"
    sqlite3.connect(db).execute("create table t (x)").connection.commit()
    with pytest.raises(ValueError, match=r"is a SQLite database, a study's storage.*--storage"):
        ScheduleConfig.load(db)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_a_number_too_long_to_read_names_the_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"h{suffix}"
    big = "9" * 5000  # past Python's 4300-digit int-from-str limit
    text = (
        f'{{"peak_lr": 0.001, "total_steps": {big}, "warmup_steps": 1}}'
        if suffix == ".json"
        else f"peak_lr: 0.001\ntotal_steps: {big}\nwarmup_steps: 1\n"
    )
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"h\{suffix}: a value cannot be read"):
        ScheduleConfig.load(path)
    with pytest.raises(ValueError, match=r"total_steps=an integer of about 5001 digits"):
        ScheduleConfig(peak_lr=1e-3, total_steps=10**5000, warmup_steps=1)

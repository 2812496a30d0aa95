"""What an output path may replace: only files autowarm wrote (or empty ones), never the user's."""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
import threading
import warnings
from pathlib import Path

import pytest
import torch.nn.functional as F

import autowarm
from autowarm import ScheduleConfig
from autowarm._config_io import atomic_write, check_writable, special_file
from autowarm._outputs import (
    SIGNALS_HEADER,
    TRACE_HEADER,
    check_replaceable,
    is_png,
    is_schedule_output,
    is_suggestion,
    is_table,
)
from autowarm.cli import EXPORT_FORMATS, export_text
from tests._tiny import cls_batches, mlp, one_thread  # noqa: F401 (one_thread: a fixture)

CFG = ScheduleConfig(peak_lr=1e-3, total_steps=1000, warmup_steps=100, min_lr=1e-5)
TRAINING = {
    "optimizer": "torch.optim.AdamW",
    "optimizer_settings": {"betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1},
    "grad_clip": 1.0,
    "accumulation_steps": 4,
    "precision": "bf16-mixed",
}
SGD_TRAINING = {
    "optimizer": "torch.optim.SGD",
    "optimizer_settings": {"momentum": 0.9},
    "grad_clip": None,
    "accumulation_steps": 1,
    "precision": "32-true",
}


@pytest.fixture(scope="module")
def tiny_suggestion() -> autowarm.Suggestion:
    return autowarm.suggest(
        mlp(), cls_batches(), criterion=F.cross_entropy, total_steps=600, progress=False
    )


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
@pytest.mark.parametrize(
    "training",
    [None, TRAINING, {**TRAINING, "precision": "16-mixed"}, SGD_TRAINING],
    ids=["bare", "adamw-bf16", "adamw-fp16", "sgd"],
)
def test_every_export_autowarm_writes_is_recognised_as_its_own(
    fmt: str, training: dict[str, object] | None
) -> None:
    # A field added to an export without adding it here would make the next run refuse to
    # replace its own earlier output.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SGD: "TrainingArguments cannot select"
        text = export_text(CFG, fmt, training)
    assert is_schedule_output(text.encode())
    assert not is_suggestion(text.encode())


@pytest.mark.parametrize(
    "text",
    [
        '{"model": "gpt2", "learning_rate": 3e-4}',  # a training config of the user's
        '{"learning_rate": 3e-4, "lr_scheduler_type": "cosine", "output_dir": "runs"}',
        # the trainer's keys, but not the schedule's fields every trainer export holds
        '{"learning_rate": 3e-4, "lr_scheduler_type": "linear", "max_steps": 5000, "bf16": true}',
        # a hand-written TrainingArguments config: the schedule's fields, and settings of its
        # own that no export writes alone (weight_decay without the betas, no accumulation)
        '{"learning_rate": 1e-3, "warmup_steps": 100, "lr_scheduler_type": "linear", '
        '"lr_scheduler_kwargs": {}, "max_steps": 50000, "weight_decay": 0.1, '
        '"max_grad_norm": 0.5}',
        # the same fields in YAML (autowarm writes its trainer exports as JSON) or another order
        "learning_rate: 0.001\nwarmup_steps: 100\nlr_scheduler_type: cosine_with_min_lr\n"
        "lr_scheduler_kwargs: {min_lr_rate: 0.1}\nmax_steps: 50000\n",
        '{"max_steps": 50000, "learning_rate": 1e-3, "warmup_steps": 100, '
        '"lr_scheduler_type": "linear", "lr_scheduler_kwargs": {}}',
        "name: cosine\nnum_warmup_steps: 10\nnum_training_steps: 100\n"
        "scheduler_specific_kwargs: {}\n",
        "services:\n  web:\n    image: nginx\n",  # docker-compose.yaml
        '{"format": "autowarm.suggestion", "peak_lr": 0.001}',
        '{"lr_scheduler": {}, "schedule": {"format": "other"}, "usage": ""}',
        "x = 1\n",
        "[1, 2, 3]",
    ],
)
def test_files_of_the_users_own_are_not_schedule_outputs(text: str) -> None:
    assert not is_schedule_output(text.encode())


def test_an_export_indented_with_tabs_is_recognised() -> None:
    # JSON allows tabs, YAML does not: read as YAML alone, it was someone else's file
    text = json.dumps(CFG.to_transformers(), indent="\t")
    assert "\t" in text and is_schedule_output(text.encode())


def test_tables_and_pngs_are_recognised_by_their_first_bytes() -> None:
    assert is_table(TRACE_HEADER)(b"phase,burst,step,lr,loss\nrange,0,0,1e-7,2.3\n")
    assert is_table(SIGNALS_HEADER)(b"\xef\xbb\xbfname,value,unit,description\n")
    assert not is_table(TRACE_HEADER)(b"epoch,loss\n1,2\n")
    assert not is_png(b"# notes\n")


def test_only_a_png_autowarm_drew_is_its_own() -> None:
    pytest.importorskip("matplotlib", reason="matplotlib not installed (extra plot)")
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from autowarm.reporting._draw import png_bytes
    from autowarm.reporting._figures import schedule_figure

    assert is_png(png_bytes(schedule_figure(CFG)))
    fig = plt.figure()  # a PNG of the user's own, drawn by matplotlib too
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    assert buf.getvalue().startswith(b"\x89PNG") and not is_png(buf.getvalue())


def test_check_replaceable_refuses_a_foreign_file_and_keeps_it(tmp_path: Path) -> None:
    mine = tmp_path / "notes.json"
    mine.write_text('{"mine": true}')
    with pytest.raises(FileExistsError, match=r"notes\.json exists and is not a schedule config"):
        check_replaceable(mine, is_schedule_output, "a schedule config")
    assert mine.read_text() == '{"mine": true}'
    empty = tmp_path / "empty.json"
    empty.write_text("\n")
    check_replaceable(empty, is_schedule_output, "a schedule config")  # nothing to lose
    check_replaceable(tmp_path / "absent.json", is_schedule_output, "a schedule config")


def test_atomic_write_says_what_is_wrong_with_the_path(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ValueError, match="afile is a file, not a folder"):
        atomic_write(afile / "s.yaml", "x")
    (tmp_path / "isdir.yaml").mkdir()
    with pytest.raises(ValueError, match=r"isdir.yaml is a folder: pass a file name in it"):
        atomic_write(tmp_path / "isdir.yaml", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "isdir.yaml"]  # no .tmp


def test_a_folder_where_a_table_goes_is_named_as_that(
    tmp_path: Path, tiny_suggestion: autowarm.Suggestion
) -> None:
    (tmp_path / "s.trace.csv").mkdir()
    with pytest.raises(
        ValueError, match=r"s\.trace\.csv is a folder, where the suggestion's table"
    ):
        tiny_suggestion.save(tmp_path / "s.json")
    assert not (tmp_path / "s.json").exists()


def test_suggestion_save_never_replaces_files_of_the_users_own(
    tmp_path: Path, tiny_suggestion: autowarm.Suggestion
) -> None:
    for name, text in (
        ("mine.trace.csv", "epoch,loss\n1,2\n"),
        ("mine.signals.csv", "a,b\n"),
        ("mine.json", '{"results": [1, 2]}'),
    ):
        folder = tmp_path / name.split(".", 1)[1]
        folder.mkdir()
        (folder / name).write_text(text)
        with pytest.raises(
            FileExistsError, match=f"{re.escape(name)} exists and is not a suggestion"
        ):
            tiny_suggestion.save(folder / "mine.json")
        assert [p.name for p in folder.iterdir()] == [name]  # nothing written beside it
        assert (folder / name).read_text() == text
    again = tmp_path / "again.json"
    tiny_suggestion.save(again)
    tiny_suggestion.save(again)  # its own files are replaced
    assert json.loads(again.read_text())["format"] == "autowarm.suggestion"


def test_schedule_config_save_never_replaces_files_of_the_users_own(tmp_path: Path) -> None:
    mine = tmp_path / "train_config.yaml"
    mine.write_text("epochs: 10\nlr: 3.0e-4\n")
    with pytest.raises(FileExistsError, match=r"train_config\.yaml exists and is not a schedule"):
        CFG.save(mine)
    assert mine.read_text() == "epochs: 10\nlr: 3.0e-4\n"
    assert [p.name for p in tmp_path.iterdir()] == ["train_config.yaml"]  # no temporary left
    ours = tmp_path / "schedule.json"
    CFG.save(ours)
    CFG.replace(warmup_steps=7).save(ours)  # an earlier schedule is replaced
    assert ScheduleConfig.load(ours).warmup_steps == 7


def test_the_regret_tables_bench_writes_are_recognised_as_its_own() -> None:
    import pandas as pd

    from autowarm._outputs import REGRET_HEADER, is_regret_markdown
    from autowarm.bench._evaluate import regret_markdown

    row = {"task": "t", "total_steps": 100, "probe_cost": 0.0, "oracle_heldout_regret": 0.0}
    table = pd.DataFrame(
        [
            {**row, "method": "autowarm", "seeds": 2, "regret": 0.01},
            {"task": "median", "method": "autowarm", "regret": 0.01},
        ]
    )[["task", "method", "total_steps", "seeds", "regret", "probe_cost", "oracle_heldout_regret"]]
    assert is_regret_markdown(regret_markdown(table).encode())
    assert is_table(REGRET_HEADER)(table.to_csv(index=False).encode())
    assert not is_regret_markdown(b"# my notes on regret\n")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_named_pipe_is_written_through_not_replaced(tmp_path: Path) -> None:
    # `-o PIPE` (or -o /dev/null, a character device): renaming a temporary file over it
    # would replace the node itself with a regular file
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    atomic_write(fifo, "lr\n")
    reader.join(timeout=10)
    assert got == [b"lr\n"]
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert special_file(fifo) == "a FIFO"


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="no /dev/null here")
def test_dev_null_is_a_character_device_written_through() -> None:
    assert special_file(Path("/dev/null")) == "a character device"
    check_writable(Path("/dev/null"))  # not refused: written through, as open() would


def test_a_socket_is_refused(tmp_path: Path) -> None:
    socket = pytest.importorskip("socket")
    if not hasattr(socket, "AF_UNIX"):
        pytest.skip("no unix sockets here")
    path = Path(tempfile.mkdtemp(dir="/tmp" if Path("/tmp").is_dir() else None)) / "s"
    with socket.socket(socket.AF_UNIX) as sock:  # a short path: AF_UNIX allows ~100 bytes
        sock.bind(str(path))
        with pytest.raises(ValueError, match=r"is a socket, not a file: pass a file name"):
            atomic_write(path, "x")
    path.unlink()
    path.parent.rmdir()

"""The overhead benchmark's measurement on a tiny model: fields and sanity, not the 5% bar."""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import pytest
import torch

from autowarm.bench._overhead import (
    COLUMNS,
    add_arguments,
    build_model,
    format_table,
    measure_overhead,
    monitor_nbytes,
    run,
)
from autowarm.probe._moments import SecondMomentMonitor


@pytest.fixture(scope="module")
def result() -> dict[str, object]:
    # max_coords above the model size, so the whole model is sampled (test_memory relies on it)
    return dict(
        measure_overhead(50_000, steps=4, warmup_steps=2, batch=32, seed=0, max_coords=65536)
    )


def test_fields_and_sanity(result: dict[str, object]) -> None:
    assert set(COLUMNS) <= set(result)
    n_params = result["n_params"]
    assert isinstance(n_params, int)
    assert abs(n_params - 50_000) / 50_000 < 0.1
    assert result["steps"] == 4 and result["warmup_steps"] == 2
    assert result["threads"] == 1 and result["torch_version"] == torch.__version__
    for key in ("step_ms_plain", "step_ms_monitored", "monitor_update_ms", "cpu_ms_plain"):
        value = result[key]
        assert isinstance(value, float) and math.isfinite(value) and value > 0
    for key in ("overhead_ratio", "ratio_of_mins", "direct_ratio", "cpu_overhead_ratio"):
        value = result[key]
        assert isinstance(value, float) and value > 0
    low, ratio, high = result["ratio_ci_low"], result["overhead_ratio"], result["ratio_ci_high"]
    assert isinstance(low, float) and isinstance(high, float) and isinstance(ratio, float)
    assert low <= ratio <= high
    direct = result["direct_ratio"]
    assert isinstance(direct, float) and direct > 1.0


def test_memory(result: dict[str, object]) -> None:
    n_params = result["n_params"]
    assert isinstance(n_params, int)
    assert result["snapshot_bytes"] == 4 * n_params  # fp32 weights, no gradients yet
    assert result["snapshot_mb"] == pytest.approx(4 * n_params / 2**20)
    # The whole model is sampled (fewer parameters than max_coords). Per coordinate the
    # monitor holds an int64 index and a few state entries (the exact layout is _moments.py's).
    assert result["monitor_coords"] == n_params
    monitor_bytes = result["monitor_bytes"]
    assert isinstance(monitor_bytes, int)
    assert 12 * n_params <= monitor_bytes <= 128 * n_params


def test_monitor_nbytes_excludes_parameters() -> None:
    model, _ = build_model(20_000)
    monitor = SecondMomentMonitor(torch.optim.AdamW(model.parameters()), max_coords=1000)
    # Counting the referenced parameters (~20k fp32) would exceed this bound.
    assert 12 * monitor.n_coords <= monitor_nbytes(monitor) < 4 * 20_000


def test_build_model_hits_targets() -> None:
    for target in (1e5, 1e6, 1e7):
        model, width = build_model(int(target))
        n = sum(p.numel() for p in model.parameters())
        assert abs(n - target) / target < 0.05
        out = model(torch.zeros(2, 3, width))
        assert out.shape == (2, 3, 256)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="multiple of seq_len"):
        measure_overhead(50_000, steps=2, warmup_steps=0, batch=20)
    with pytest.raises(ValueError, match="steps"):
        measure_overhead(50_000, steps=0, warmup_steps=0, batch=32)


def test_cli_writes_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            *("--sizes", "3e4,5e4", "--steps", "2", "--warmup-steps", "0", "--batch", "16"),
            *("--out", str(tmp_path)),
        ]
    )
    assert run(args) == 0
    with (tmp_path / "overhead.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["n_params"]) > 0 for r in rows] == [True, True]
    assert list(rows[0]) == list(COLUMNS)
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert len(table) == 4 and "overhead.csv" in out  # header, rule, two rows


def test_format_table_one_row_per_size(result: dict[str, object]) -> None:
    table = format_table([result, result])  # type: ignore[list-item]
    assert len(table.splitlines()) == 4


def test_result_names_its_device(result: dict[str, object]) -> None:
    assert result["device"] == "cpu"


def test_cuda_without_cuda_is_refused_with_what_to_pass(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--sizes", "3e4", "--device", "cuda", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="pass --device cpu"):
        run(args)
    assert not (tmp_path / "overhead.csv").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_measures_on_cuda() -> None:
    row = measure_overhead(
        50_000, steps=4, warmup_steps=2, batch=64, seed=0, max_coords=4096, device="cuda"
    )
    assert row["device"].startswith("cuda")
    assert row["step_ms_plain"] > 0 and row["step_ms_monitored"] > 0
    assert 0 < row["monitor_coords"] <= 4096  # spread over the tensors, rounded down

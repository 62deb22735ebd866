"""``volara-cli sweep`` on the README pipeline, and ``volara-cli status``
before, during and after a run; real subprocesses, real workers."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from funlib.geometry import Coordinate

from processes import volara_cli as cli
from volara.blockwise import (
    AffAgglom,
    ExtractFrags,
    GraphMWS,
    LambdaTask,
    Relabel,
    pipeline_config,
)
from volara.blockwise.registry import dump_config
from volara.datasets import Affs, Labels
from volara.dbs import SQLite
from volara.lut import LUT
from volara.sample_data import generate_sample_data


def readme_pipeline(workers: int = 2):
    """The README's segmentation pipeline, on smaller blocks."""
    affs = Affs(store="sample.zarr/affinities")
    db = SQLite(
        path="graph.sqlite", edge_attrs={"adj_weight": "float", "lr_weight": "float"}
    )
    fragments = Labels(store="sample.zarr/fragments")
    lut = LUT(path="lut.npz")
    block_size, context = Coordinate(10, 40, 40), Coordinate(5, 20, 20)
    short, long = affs.neighborhood[:3], affs.neighborhood[3:]
    return (
        ExtractFrags(db=db, affs_data=affs, frags_data=fragments, block_size=block_size,
                     context=context, bias=[-0.4] * 3 + [-0.7] * 6,
                     num_workers=workers)
        + AffAgglom(db=db, affs_data=affs, frags_data=fragments, block_size=block_size,
                    context=context, scores={"adj_weight": short, "lr_weight": long},
                    num_workers=workers)
        + GraphMWS(db=db, lut=lut, roi=affs.array("r").roi,
                   weights={"adj_weight": (1.0, -0.4), "lr_weight": (1.0, -0.7)})
        + Relabel(frags_data=fragments, seg_data=Labels(store="sample.zarr/segments"),
                  lut=lut, block_size=block_size, num_workers=workers)
    )  # fmt: skip


@pytest.fixture
def neurites(tmp_path) -> Path:
    """Thin neurites with noisy, blurred affinities: the GraphMWS bias
    changes the segmentation."""
    generate_sample_data(
        tmp_path / "sample.zarr",
        shape=(20, 80, 80),
        objects="neurites",
        membrane_width=1,
        blur=0.5,
        noise=0.3,
        num_cells=12,
    )
    dump_config(pipeline_config(readme_pipeline()), tmp_path / "pipeline.yaml")
    return tmp_path


@pytest.mark.slow
def test_sweep_of_graph_mws_biases(neurites):
    original = neurites / "sample.zarr" / "segments"
    result = cli(
        "sweep", "pipeline.yaml", "--gt", "sample.zarr/labels",
        "--vary", "graph-mws.weights.adj_weight.1=-0.3,-0.4,-0.5",
        "--out", "sweep", cwd=neurites,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with (neurites / "sweep" / "sweep.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == [
        "graph-mws.weights.adj_weight.1", "voi_split", "voi_merge", "arand", "seconds"
    ]  # fmt: skip
    assert [float(r["graph-mws.weights.adj_weight.1"]) for r in rows] == [
        -0.3,
        -0.4,
        -0.5,
    ]
    # the shared tasks wrote where the config says; the varied ones did not
    assert (neurites / "sample.zarr" / "fragments").exists()
    assert not original.exists() and not (neurites / "lut.npz").exists()
    for row in range(1, 4):
        assert (neurites / "sweep" / f"combination-{row}" / "lut.npz").exists()
    png = (neurites / "sweep" / "sweep.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    scores = [(float(r["voi_split"]), float(r["voi_merge"])) for r in rows]
    assert len(set(scores)) == 3, scores

    # the row of the config's own value (-0.4) is what a plain run scores
    plain = cli("run", "pipeline.yaml", cwd=neurites)
    assert plain.returncode == 0, plain.stderr
    evaluated = cli(
        "evaluate", "sample.zarr/segments", "sample.zarr/labels", "--json", cwd=neurites
    )
    assert evaluated.returncode == 0, evaluated.stderr
    plain_scores = json.loads(evaluated.stdout)
    for key in ("voi_split", "voi_merge", "arand"):
        assert float(rows[1][key]) == pytest.approx(plain_scores[key], abs=1e-12)
    combination = zarr.open_array(
        str(neurites / "sweep/combination-2/sample.zarr/segments"), mode="r"
    )[:]
    np.testing.assert_array_equal(combination, zarr.open_array(str(original))[:])


def test_sweep_of_two_fields_runs_every_combination(neurites):
    result = cli(
        "sweep", "pipeline.yaml", "--gt", "sample.zarr/labels",
        "--vary", "extract-frags.bias.0=-0.3,-0.5",
        "--vary", "graph-mws.weights.lr_weight.1=-0.6,-0.8",
        "--out", "sweep", cwd=neurites,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with (neurites / "sweep" / "sweep.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [
        (float(r["extract-frags.bias.0"]), float(r["graph-mws.weights.lr_weight.1"]))
        for r in rows
    ] == [(-0.3, -0.6), (-0.3, -0.8), (-0.5, -0.6), (-0.5, -0.8)]
    # ExtractFrags is varied: every combination has its own fragments and graph
    for row in range(1, 5):
        directory = neurites / "sweep" / f"combination-{row}"
        assert (directory / "graph.sqlite").exists()
        assert (directory / "sample.zarr" / "fragments").exists()
    assert not (neurites / "graph.sqlite").exists()


@pytest.mark.parametrize(
    "vary, message",
    [
        ("graph-mws.weights.nope.1=-0.3", r"graph-mws\.weights\.nope names no field"),
        ("graph-mws.weights.adj_weight.5=-0.3", r"give an index below 2"),
        (
            "graph-mws.weights.adj_weight.1=abc,-0.3",
            r"--vary graph-mws\.weights\.adj_weight\.1=abc: graph-mws refuses it: .*valid number",
        ),
        ("no-such-task.bias=1", r"the config has no task of task_type 'no-such-task'"),
        ("graph-mws-weights", r"expected TASK\.FIELD=V1,V2"),
        ("aff-agglom.context.0=2,3", r"aff-agglom adds to the graph graph\.sqlite"),
    ],
)
def test_bad_vary_is_refused_before_anything_runs(neurites, vary, message):
    result = cli(
        "sweep", "pipeline.yaml", "--gt", "sample.zarr/labels", "--vary", vary,
        "--out", "sweep", cwd=neurites, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert re.search(message, result.stderr, re.S), result.stderr
    assert not (neurites / "sweep").exists()
    assert not (neurites / "sample.zarr" / "fragments").exists()


def test_sweep_needs_an_existing_ground_truth(neurites):
    result = cli(
        "sweep", "pipeline.yaml", "--gt", "sample.zarr/nothing",
        "--vary", "graph-mws.weights.adj_weight.1=-0.3", "--out", "sweep",
        cwd=neurites, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "--gt: no zarr array at sample.zarr/nothing" in result.stderr


# ------------------------------------------------------------------ status


def status(cwd: Path) -> dict[str, dict]:
    result = cli("status", "pipeline.yaml", "--json", cwd=cwd, timeout=120)
    assert result.returncode == 0, result.stderr
    return {task["task"]: task for task in json.loads(result.stdout)["tasks"]}


def slow_pipeline(tmp_path: Path, delay: float, fail_first: bool = False):
    """A LambdaTask copying a 2 x 4 x 4 grid of blocks, ``delay`` seconds
    each; ``fail_first`` makes the block at the origin raise."""
    data = np.arange(16 * 32 * 32, dtype=np.uint32).reshape(16, 32, 32)
    source = zarr.create_array(
        str(tmp_path / "in.zarr" / "raw"), shape=data.shape, dtype=data.dtype,
        chunks=(8, 8, 8),
    )  # fmt: skip
    source[:] = data

    def copy(block, in_data, out_data):
        if fail_first and block.write_roi.offset == Coordinate(0, 0, 0):
            raise RuntimeError("this block fails on purpose")
        time.sleep(delay)
        out_data[block.write_roi] = in_data[block.write_roi]

    return LambdaTask(
        in_data=Labels(store="in.zarr/raw"),
        out_data=Labels(store="out.zarr/copy"),
        lambda_func=copy,
        call_style="block",
        block_size=(8, 8, 8),
        num_workers=1,
        max_retries=0,
    )


def test_status_before_during_and_after_a_run(tmp_path):
    task = slow_pipeline(tmp_path, delay=0.4)
    dump_config(pipeline_config(task), tmp_path / "pipeline.yaml")
    before = status(tmp_path)[task.task_name]
    assert (before["blocks"], before["done"], before["failed"]) == (32, 0, 0)

    run = subprocess.Popen(
        [sys.executable, "-m", "volara.cli", "run", "pipeline.yaml"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    try:
        deadline = time.monotonic() + 120
        while run.poll() is None and time.monotonic() < deadline:
            seen.append(status(tmp_path)[task.task_name]["done"])
            time.sleep(0.3)
        _, stderr = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 0, stderr
    assert any(0 < done < 32 for done in seen), seen  # seen part-way
    assert seen == sorted(seen)
    after = status(tmp_path)[task.task_name]
    assert (after["blocks"], after["done"], after["failed"]) == (32, 32, 0)
    text = cli("status", "pipeline.yaml", cwd=tmp_path)
    assert f"{task.task_name} (lambda): 32 of 32 blocks done, 0 failed; done" in (
        text.stdout
    )


def test_status_lists_failed_blocks(tmp_path):
    task = slow_pipeline(tmp_path, delay=0.0, fail_first=True)
    dump_config(pipeline_config(task), tmp_path / "pipeline.yaml")
    run = cli("run", "pipeline.yaml", cwd=tmp_path)
    assert run.returncode == 1
    after = status(tmp_path)[task.task_name]
    assert (after["done"], after["failed"]) == (31, 1)
    assert after["failed_blocks"] == ["[0:8, 0:8, 0:8] (8, 8, 8)"]
    text = cli("status", "pipeline.yaml", cwd=tmp_path)
    assert "31 of 32 blocks done, 1 failed; not done" in text.stdout
    assert "  failed block, write region [0:8, 0:8, 0:8]" in text.stdout


def test_status_of_a_pipeline_not_run_yet(neurites):
    tasks = status(neurites)
    assert [t["task_type"] for t in tasks.values()] == [
        "extract-frags", "aff-agglom", "graph-mws", "relabel"
    ]  # fmt: skip
    assert all(t["done"] == 0 for t in tasks.values())
    assert tasks["fragments-extract-frags"]["blocks"] == 2 * 2 * 2
    # the fragments AffAgglom reads do not exist yet: its blocks are unknown
    assert tasks["graph-aff-agglom"]["blocks"] is None

"""The blockwise base: block tracking, reruns, layout changes, drop,
validation before any block runs, worker configs, and resuming an
interrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from itertools import product
from pathlib import Path

import daisy.v2 as daisy
import numpy as np
import pytest
import yaml
import zarr
from funlib.geometry import Coordinate, Roi
from pydantic import TypeAdapter, ValidationError

from conftest import write_array
from tasks_for_tests import AddArrays, SlowCopy, WorldBlocks, WriteNodes
from volara.blockwise import BlockwiseTask, Threshold
from volara.datasets import Labels, Raw
from volara.dbs import PostgreSQL, SQLite
from volara.workers import (
    AnyWorker,
    LocalWorker,
    LSFWorker,
    SlurmWorker,
    Worker,
    volara_cli,
)

TESTS_DIR = Path(__file__).parent


def make_input(tmp_path: Path, shape=(8, 8, 8), voxel_size=(2, 1, 1)) -> Labels:
    data = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape) % 7
    write_array(tmp_path / "in.zarr" / "labels", data, voxel_size=voxel_size)
    return Labels(store=tmp_path / "in.zarr" / "labels")


def slow_copy(tmp_path: Path, **kwargs) -> SlowCopy:
    options = dict(
        in_data=Labels(store=tmp_path / "in.zarr" / "labels"),
        out_data=Labels(store=tmp_path / "out.zarr" / "copy"),
        block_size=[4, 4, 4],
    )
    options.update(kwargs)
    return SlowCopy(**options)


def expected_copy(tmp_path: Path) -> np.ndarray:
    data = zarr.open_array(str(tmp_path / "in.zarr" / "labels"), mode="r")[:]
    return data.astype(np.uint64) * 2 + 1


def blocks_of(task: BlockwiseTask) -> list[daisy.Block]:
    roi, size = task.write_roi, task.write_size
    counts = [-(-s // b) for s, b in zip(roi.shape, size, strict=True)]
    blocks = []
    for index in product(*(range(c) for c in counts)):
        offset = roi.offset + Coordinate(index) * size
        write_roi = Roi(offset, size).intersect(roi)
        blocks.append(daisy.Block(write_roi, write_roi, write_roi))
    return blocks


def test_blocks_are_tracked_and_a_rerun_skips_them(tmp_path):
    make_input(tmp_path)
    task = slow_copy(tmp_path, num_workers=2)
    check_block = task.check_block_func()
    assert not any(check_block(block) for block in blocks_of(task))

    context_before = os.environ.get("DAISY_CONTEXT")
    state = task.run_blockwise(multiprocessing=True)[task.task_name]
    # the run's worker context must not leak into later subprocesses
    assert os.environ.get("DAISY_CONTEXT") == context_before
    assert state.total_block_count == 8
    assert state.completed_count == 8 and state.skipped_count == 0
    assert state.failed_count == 0 and state.orphaned_count == 0
    np.testing.assert_array_equal(
        task.out_data.array().to_ndarray(task.write_roi), expected_copy(tmp_path)
    )

    assert (
        task.block_ds
        == tmp_path / "volara_logs" / "copy-slow-copy-meta" / "blocks_done.zarr"
    )
    done = zarr.open_array(str(task.block_ds / "done"), mode="r")[:]
    assert done.shape == (2, 2, 2) and done.all()
    assert all(check_block(block) for block in blocks_of(task))

    rerun = task.run_blockwise(multiprocessing=False)[task.task_name]
    assert os.environ.get("DAISY_CONTEXT") == context_before
    assert rerun.total_block_count == 8
    assert rerun.skipped_count == 8 and rerun.completed_count == 8


def test_changed_block_size_or_roi_is_refused_with_the_changes(tmp_path):
    make_input(tmp_path)
    slow_copy(tmp_path).run_blockwise(multiprocessing=False)
    with pytest.raises(
        ValueError, match=r"write_size: was \[8, 4, 4\], now \[4, 2, 2\]"
    ):
        slow_copy(tmp_path, block_size=[2, 2, 2]).run_blockwise(multiprocessing=False)
    with pytest.raises(
        ValueError, match=r"write_roi: was .*, now \[\[0, 0, 0\], \[8, 8, 8\]\]"
    ):
        slow_copy(tmp_path, roi=[[0, 0, 0], [8, 8, 8]]).run_blockwise(
            multiprocessing=False
        )
    # the refusal changed nothing: the original layout still resumes
    state = slow_copy(tmp_path).run_blockwise(multiprocessing=False)["copy-slow-copy"]
    assert state.skipped_count == state.total_block_count == 8


def test_same_task_name_for_another_output_is_refused(tmp_path):
    # both tasks are named "copy-slow-copy": the second must not skip the
    # blocks the first one finished
    make_input(tmp_path)
    slow_copy(tmp_path).run_blockwise(multiprocessing=False)
    other = slow_copy(tmp_path, out_data=Labels(store=tmp_path / "other.zarr" / "copy"))
    with pytest.raises(
        ValueError, match=r"outputs: was .*out.zarr/copy.*now .*other.zarr/copy"
    ):
        other.run_blockwise(multiprocessing=False)
    assert not (tmp_path / "other.zarr").exists()


def test_roi_limits_the_processed_region(tmp_path):
    make_input(tmp_path)
    task = slow_copy(tmp_path, roi=[[0, 0, 0], [8, 4, 8]])
    state = task.run_blockwise(multiprocessing=False)[task.task_name]
    assert state.total_block_count == 2
    out = task.out_data.array()
    assert out.roi == Roi((0, 0, 0), (8, 4, 8))
    np.testing.assert_array_equal(
        out.to_ndarray(out.roi), expected_copy(tmp_path)[:4, :4, :]
    )


def test_bogus_fit_is_rejected_at_construction(tmp_path):
    with pytest.raises(
        ValidationError, match=r"fit\n.*fit must be one of valid, overhang, shrink"
    ):
        slow_copy(tmp_path, fit="bogus")
    with pytest.raises(ValidationError, match="fit"):
        Threshold(
            in_data=Raw(store="x"),
            mask=Labels(store="y"),
            threshold=0,
            block_size=[1, 1, 1],
            fit="bogus",
        )


def test_drop_forgets_progress_and_optionally_outputs(tmp_path):
    make_input(tmp_path)
    task = slow_copy(tmp_path)
    task.run_blockwise(multiprocessing=False)
    assert task.meta_dir.exists()
    task.drop(drop_outputs=False)
    assert not task.meta_dir.exists()
    assert task.out_data.exists()
    assert not any(task.check_block_func()(block) for block in blocks_of(task))
    state = task.run_blockwise(multiprocessing=False)[task.task_name]
    assert state.skipped_count == 0 and state.completed_count == 8
    task.drop()  # deletes the outputs too, as in volara 1.0.5
    assert not task.meta_dir.exists()
    assert not (tmp_path / "out.zarr" / "copy").exists()


def test_process_roi_outside_daisy(tmp_path):
    make_input(tmp_path)
    task = slow_copy(tmp_path)
    task.init()
    task.process_roi(Roi((0, 0, 0), (8, 4, 4)))
    out = task.out_data.array().to_ndarray(task.write_roi)
    np.testing.assert_array_equal(out[:4, :4, :4], expected_copy(tmp_path)[:4, :4, :4])
    assert (out[4:] == 0).all()


def test_worker_configs_round_trip():
    adapter: TypeAdapter = TypeAdapter(AnyWorker)
    workers = [
        LocalWorker(),
        SlurmWorker(
            queue="gpu", num_gpus=1, num_cpus=4, memory=8000, flags=["--time=1:00:00"]
        ),
        LSFWorker(queue="short", num_cpus=2, flags=["-W", "60"]),
    ]
    for worker in workers:
        from_json = adapter.validate_json(worker.model_dump_json())
        assert type(from_json) is type(worker) and from_json == worker
        from_yaml = adapter.validate_python(
            yaml.safe_load(yaml.safe_dump(worker.model_dump()))
        )
        assert type(from_yaml) is type(worker) and from_yaml == worker
    tags = [w.worker_type for w in workers]
    assert len(set(tags)) == len(tags)


def test_volara_1_worker_config_loads_as_local_worker(tmp_path):
    legacy = {"queue": None, "num_gpus": 0, "num_cpus": 2, "memory": None, "flags": []}
    worker = TypeAdapter(AnyWorker).validate_python(legacy)
    assert type(worker) is LocalWorker and worker.num_cpus == 2
    task = slow_copy(tmp_path, worker_config=legacy)
    assert type(task.worker_config) is LocalWorker
    plain = slow_copy(tmp_path, worker_config=Worker(num_cpus=3))
    assert (
        type(plain.worker_config) is LocalWorker and plain.worker_config.num_cpus == 3
    )
    reloaded = SlowCopy.model_validate_json(plain.model_dump_json())
    assert reloaded == plain and type(reloaded.worker_config) is LocalWorker


def test_cluster_worker_commands():
    config = Path("/x/config.json")
    assert LocalWorker().get_command(config, "t") == [
        *volara_cli(),
        "blockwise-worker",
        "-c",
        "/x/config.json",
    ]
    if os.environ.get("PATH") and not any(
        (Path(p) / "sbatch").exists() for p in os.environ["PATH"].split(os.pathsep)
    ):
        with pytest.raises(FileNotFoundError, match="sbatch is not on PATH"):
            SlurmWorker().get_command(config, "t")


# --------------------------------------------------------- errors before any block


def assert_nothing_ran(task: BlockwiseTask) -> None:
    assert not task.block_ds.exists(), "no block may be recorded after a refused run"


def test_missing_input_dataset(tmp_path):
    task = Threshold(
        in_data=Raw(store=tmp_path / "missing.zarr/raw"),
        mask=Labels(store=tmp_path / "out.zarr/mask"),
        threshold=0.5,
        block_size=[2, 2, 2],
    )
    with pytest.raises(
        FileNotFoundError, match="Raw.store: no zarr array at .*missing.zarr"
    ):
        task.run_blockwise(multiprocessing=False)
    assert_nothing_ran(task)
    assert not (tmp_path / "out.zarr").exists()


def test_mismatched_voxel_sizes(tmp_path):
    write_array(
        tmp_path / "d.zarr/a", np.ones((4, 4, 4), np.uint8), voxel_size=(1, 1, 1)
    )
    write_array(
        tmp_path / "d.zarr/b", np.ones((4, 4, 4), np.uint8), voxel_size=(2, 1, 1)
    )
    task = AddArrays(
        a=Labels(store=tmp_path / "d.zarr/a"),
        b=Labels(store=tmp_path / "d.zarr/b"),
        out=Labels(store=tmp_path / "d.zarr/sum"),
        block_size=[2, 2, 2],
    )
    with pytest.raises(ValueError, match=r"AddArrays.b: voxel size \(2, 1, 1\)"):
        task.run_blockwise(multiprocessing=False)
    assert_nothing_ran(task)
    assert not (tmp_path / "d.zarr/sum").exists()


def test_block_size_not_a_multiple_of_the_voxel_size(tmp_path):
    write_array(
        tmp_path / "d.zarr/a", np.ones((4, 4, 4), np.uint8), voxel_size=(4, 4, 4)
    )
    task = WorldBlocks(
        in_data=Labels(store=tmp_path / "d.zarr/a"),
        out_data=Labels(store=tmp_path / "d.zarr/b"),
        block_size_world=[8, 6, 8],
    )
    with pytest.raises(
        ValueError, match=r"block size \(8, 6, 8\).*voxel size \(4, 4, 4\)"
    ):
        task.run_blockwise(multiprocessing=False)
    assert_nothing_ran(task)
    assert not (tmp_path / "d.zarr/b").exists()
    # a multiple works
    ok = task.model_copy(update={"block_size_world": Coordinate(8, 8, 8)})
    assert ok.run_blockwise(multiprocessing=False)[ok.task_name].completed_count == 8


def test_block_size_with_wrong_dimensions(tmp_path):
    make_input(tmp_path)
    task = slow_copy(tmp_path, block_size=[4, 4])
    with pytest.raises(ValueError, match="block"):
        task.run_blockwise(multiprocessing=False)
    assert_nothing_ran(task)


def test_unwritable_output_path(tmp_path):
    make_input(tmp_path)
    (tmp_path / "afile").write_text("a regular file, not a directory")
    task = slow_copy(tmp_path, out_data=Labels(store=tmp_path / "afile" / "out.zarr"))
    with pytest.raises(OSError, match="afile"):
        task.run_blockwise(multiprocessing=False)
    assert_nothing_ran(task)


def test_unreachable_postgres_is_refused_before_any_block(tmp_path):
    make_input(tmp_path)
    task = WriteNodes(
        labels=Labels(store=tmp_path / "in.zarr/labels"),
        block_size=[4, 4, 4],
        db=PostgreSQL(host="127.0.0.1", port=1, name="nowhere"),
    )
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=r"127\.0\.0\.1:1"):
        task.run_blockwise(multiprocessing=False)
    assert time.monotonic() - start < 10
    assert_nothing_ran(task)


def _check_nodes(task: WriteNodes, labels: np.ndarray) -> None:
    graph = task.db.open("r").read_graph(Roi((-100, -100, -100), (1000, 1000, 1000)))
    assert sorted(graph.nodes) == list(range(1, 9))
    for node, attrs in graph.nodes(data=True):
        z, y, x = np.unravel_index(node - 1, (2, 2, 2))
        block = labels[z * 4 : (z + 1) * 4, y * 4 : (y + 1) * 4, x * 4 : (x + 1) * 4]
        assert attrs["size"] == np.count_nonzero(block)
        assert tuple(attrs["position"]) == (z * 8 + 4.0, y * 4 + 2.0, x * 4 + 2.0)


def test_two_workers_write_one_sqlite_graph(tmp_path):
    make_input(tmp_path)
    task = WriteNodes(
        labels=Labels(store=tmp_path / "in.zarr/labels"),
        block_size=[4, 4, 4],
        db=SQLite(path=tmp_path / "g.db"),
        num_workers=2,
    )
    assert task.run_blockwise(multiprocessing=True)[task.task_name].completed_count == 8
    _check_nodes(task, zarr.open_array(str(tmp_path / "in.zarr/labels"))[:])
    task.drop(drop_outputs=True)
    assert not task.db.exists()


@pytest.mark.postgres
def test_blocks_write_one_postgres_graph(tmp_path, postgres):
    make_input(tmp_path)
    task = WriteNodes(
        labels=Labels(store=tmp_path / "in.zarr/labels"),
        block_size=[4, 4, 4],
        db=postgres,
    )
    assert (
        task.run_blockwise(multiprocessing=False)[task.task_name].completed_count == 8
    )
    _check_nodes(task, zarr.open_array(str(tmp_path / "in.zarr/labels"))[:])


# ------------------------------------------------------------ interrupted runs

RUN_SCRIPT = """
import sys
from pathlib import Path

import volara.logging
from tasks_for_tests import SlowCopy
from volara.datasets import Labels

root = Path(sys.argv[1])
volara.logging.set_log_basedir(root / "volara_logs")
task = SlowCopy(
    in_data=Labels(store=root / "in.zarr" / "labels"),
    out_data=Labels(store=root / "out.zarr" / "copy"),
    block_size=[4, 2, 2],
    delay=0.2,
    num_workers=2,
)
task.run_blockwise(multiprocessing=True)
"""


def _done_count(block_ds: Path) -> int:
    try:
        return int(zarr.open_array(str(block_ds / "done"), mode="r")[:].sum())
    except Exception:  # not created yet, or being written
        return 0


def test_interrupted_run_resumes(tmp_path):
    make_input(tmp_path)
    task = slow_copy(tmp_path, block_size=[4, 2, 2], delay=0.2, num_workers=2)
    total = 32
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(RUN_SCRIPT))
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
    )
    process = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while _done_count(task.block_ds) < 4:
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the run never marked a block done"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    done_before = _done_count(task.block_ds)
    assert 4 <= done_before < total, "the run must be interrupted in the middle"

    check_block = task.check_block_func()
    done = zarr.open_array(str(task.block_ds / "done"), mode="r")[:]
    for block in blocks_of(task):
        index = tuple(
            (block.write_roi.offset - task.write_roi.offset) / task.write_size
        )
        assert check_block(block) == bool(done[index])

    resumed = task.model_copy(update={"delay": 0.0})
    state = resumed.run_blockwise(multiprocessing=False)[task.task_name]
    assert state.total_block_count == total
    assert state.skipped_count >= done_before > 0
    assert state.completed_count == total and state.failed_count == 0

    reference = slow_copy(
        tmp_path,
        out_data=Labels(store=tmp_path / "ref.zarr" / "reference"),
        block_size=[4, 2, 2],
    )
    reference.run_blockwise(multiprocessing=False)
    np.testing.assert_array_equal(
        task.out_data.array().to_ndarray(task.write_roi),
        reference.out_data.array().to_ndarray(task.write_roi),
    )
    np.testing.assert_array_equal(
        task.out_data.array().to_ndarray(task.write_roi), expected_copy(tmp_path)
    )


# ------------------------------------------------- the README's custom task

README = Path(__file__).parents[1] / "README.md"


def _readme_custom_task() -> str:
    """The python block under the README's "A custom task" heading, so the
    test runs exactly what the README shows."""
    section = README.read_text().split("## A custom task", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


README_OUTPUT = """\
[[5. 0. 9. 0. 8. 9. 2. 4. 3. 4.]
 [9. 0. 0. 4. 9. 9. 4. 0. 5. 3.]
 [3. 6. 8. 9. 8. 0. 6. 5. 4. 7.]]
[1. 2. 0. 2. 1. 0. 2. 2. 1. 2.]
"""


def test_readme_custom_task_runs_as_printed(tmp_path):
    (tmp_path / "example.py").write_text(_readme_custom_task())
    result = subprocess.run(
        [sys.executable, "example.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(README_OUTPUT), result.stdout
    assert "simple-argmax ✔        8           8        0" in result.stdout

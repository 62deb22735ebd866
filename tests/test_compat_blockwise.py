"""volara 1.0.5's BlockwiseTask surface on volara 2: block tracking driven by
a loop of one's own (`init_block_array`, `check_block_func`,
`mark_block_done_func`) shared with `run_blockwise`, and `drop()` deleting
outputs by default."""

from __future__ import annotations

import inspect
from itertools import product
from pathlib import Path

import daisy.v2 as daisy
import numpy as np
import pytest
import zarr
from funlib.geometry import Coordinate, Roi

from conftest import write_array
from tasks_for_tests import SlowCopy
from volara.blockwise import BlockwiseTask, Pipeline
from volara.datasets import Labels

SENTINEL = 99


def copy_task(tmp_path: Path, **kwargs) -> SlowCopy:
    data = (np.arange(8**3, dtype=np.uint16).reshape(8, 8, 8) % 7).astype(np.uint16)
    write_array(tmp_path / "in.zarr" / "labels", data, voxel_size=(2, 1, 1))
    return SlowCopy(
        in_data=Labels(store=tmp_path / "in.zarr" / "labels"),
        out_data=Labels(store=tmp_path / "out.zarr" / "copy"),
        block_size=[4, 4, 4],
        **kwargs,
    )


def blocks_of(task: BlockwiseTask) -> list[daisy.Block]:
    roi, size = task.write_roi, task.write_size
    blocks = []
    for index in product(
        *(range(-(-s // b)) for s, b in zip(roi.shape, size, strict=True))
    ):
        write_roi = Roi(roi.offset + Coordinate(index) * size, size).intersect(roi)
        blocks.append(daisy.Block(roi, write_roi, write_roi))
    return blocks


def output(task: SlowCopy) -> np.ndarray:
    return zarr.open_array(str(task.out_data.store), mode="r")[:]


def test_blocks_marked_by_a_driver_loop_are_skipped_by_run_blockwise(tmp_path):
    task = copy_task(tmp_path, num_workers=2)
    assert not task.block_ds.exists()
    task.init_block_array()
    task.init()
    assert task.block_ds.exists()
    check_block, mark_block_done = task.check_block_func(), task.mark_block_done_func()
    blocks = blocks_of(task)
    assert len(blocks) == 8 and not any(check_block(b) for b in blocks)

    # volara 1.0.5's custom driver loop, over three of the blocks
    mine = blocks[:3]
    with task.process_block_func() as process_block:
        for block in mine:
            if not check_block(block):
                process_block(block)
                mark_block_done(block)
                assert block.status == daisy.BlockStatus.SUCCESS
    assert [check_block(b) for b in blocks] == [True] * 3 + [False] * 5
    # a recorded block must not run again: overwrite what the loop wrote
    target = task.out_data.array("r+")
    for block in mine:
        target[block.write_roi] = np.full((4, 4, 4), SENTINEL, np.uint64)

    state = task.run_blockwise(multiprocessing=True)[task.task_name]
    assert state.skipped_count == 3 and state.completed_count == 8
    assert state.failed_count == 0
    copied = output(task)
    expected = zarr.open_array(str(task.in_data.store))[:].astype(np.uint64) * 2 + 1
    for block in blocks:
        region = tuple(
            slice(b // v, e // v)
            for b, e, v in zip(
                block.write_roi.begin, block.write_roi.end, (2, 1, 1), strict=True
            )
        )
        want = SENTINEL if block in mine else expected[region]
        np.testing.assert_array_equal(copied[region], want)
    # and the other way round: the loop sees every block as done now
    assert all(check_block(b) for b in blocks)


def test_mark_block_done_outside_a_run_creates_the_tracking(tmp_path):
    task = copy_task(tmp_path)
    mark_block_done = task.mark_block_done_func()
    block = blocks_of(task)[-1]
    mark_block_done(block)
    assert task.block_ds.exists()
    assert task.check_block_func()(block)
    state = task.run_blockwise(multiprocessing=False)[task.task_name]
    assert state.skipped_count == 1 and state.completed_count == 8


def test_a_failed_block_is_not_marked_done(tmp_path):
    task = copy_task(tmp_path)
    task.init_block_array()
    block = blocks_of(task)[0]
    block.status = daisy.BlockStatus.FAILED
    task.mark_block_done_func()(block)
    assert block.status == daisy.BlockStatus.FAILED
    assert not task.check_block_func()(block)


def test_init_block_array_keeps_progress_and_refuses_another_layout(tmp_path):
    task = copy_task(tmp_path)
    task.run_blockwise(multiprocessing=False)
    task.init_block_array()  # existing tracking: kept as it is
    assert all(task.check_block_func()(b) for b in blocks_of(task))
    other = task.model_copy(update={"block_size": Coordinate(2, 4, 4)})
    with pytest.raises(ValueError, match=r"drop\(drop_outputs=False\)"):
        other.init_block_array()


def test_a_block_outside_the_grid_is_a_clear_error(tmp_path):
    task = copy_task(tmp_path)
    task.init_block_array()
    outside = Roi((64, 0, 0), (8, 4, 4))
    with pytest.raises(ValueError, match="outside the task's block grid"):
        task.check_block_func()(daisy.Block(outside, outside, outside))


def test_drop_deletes_outputs_by_default_as_in_volara_1(tmp_path):
    assert inspect.signature(BlockwiseTask.drop).parameters["drop_outputs"].default
    assert inspect.signature(Pipeline.drop).parameters["drop_outputs"].default
    task = copy_task(tmp_path)
    task.run_blockwise(multiprocessing=False)
    task.drop(drop_outputs=False)
    assert task.out_data.exists() and not task.meta_dir.exists()
    task.run_blockwise(multiprocessing=False)
    Pipeline(task).drop()
    assert not task.out_data.exists() and not task.meta_dir.exists()

"""Threshold, Argmax and Relabel: config round trips and runs on tiny
volumes, with two worker processes and serially."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from funlib.geometry import Coordinate, Roi
from pydantic import ValidationError

from conftest import write_array
from volara.blockwise import Argmax, Relabel, Threshold, get_task
from volara.datasets import Labels, Raw
from volara.lut import LUT

RNG = np.random.default_rng(42)


def round_trips(task) -> None:
    from_json = get_task(task.task_type).model_validate_json(task.model_dump_json())
    assert type(from_json) is type(task) and from_json == task
    from_yaml = get_task(task.task_type).model_validate(
        yaml.safe_load(yaml.safe_dump(task.model_dump(mode="json")))
    )
    assert type(from_yaml) is type(task) and from_yaml == task


def run(task, multiprocessing: bool):
    state = task.run_blockwise(multiprocessing=multiprocessing)[task.task_name]
    assert state.failed_count == 0 and state.orphaned_count == 0
    assert state.completed_count == state.total_block_count
    return state


# ----------------------------------------------------------------- Threshold


def threshold_task(tmp_path, **kwargs) -> Threshold:
    options = dict(
        in_data=Raw(store=tmp_path / "d.zarr/raw"),
        mask=Labels(store=tmp_path / "d.zarr/mask"),
        threshold=0.5,
        block_size=[3, 4, 4],
        roi=None,
    )
    options.update(kwargs)
    return Threshold(**options)


def test_threshold_round_trip(tmp_path):
    round_trips(threshold_task(tmp_path, roi=Roi((0, 0, 0), (6, 8, 8)), num_workers=3))


@pytest.mark.parametrize("multiprocessing", [True, False], ids=["2workers", "serial"])
def test_threshold_run(tmp_path, multiprocessing):
    raw = RNG.random((6, 8, 8)).astype(np.float32)
    raw[0, 0, 0] = 0.5  # not strictly greater
    write_array(tmp_path / "d.zarr/raw", raw, voxel_size=(4, 2, 2), offset=(8, 0, 0))
    task = threshold_task(tmp_path, num_workers=2)
    state = run(task, multiprocessing)
    assert state.total_block_count == 2 * 2 * 2
    mask = task.mask.array()
    assert mask.dtype == np.uint8
    assert mask.roi == Roi((8, 0, 0), (24, 16, 16))
    assert mask.voxel_size == Coordinate(4, 2, 2)
    np.testing.assert_array_equal(
        mask.to_ndarray(mask.roi), (raw > 0.5).astype(np.uint8)
    )
    assert mask.to_ndarray(mask.roi)[0, 0, 0] == 0


def test_threshold_with_a_channel_selection_and_scale(tmp_path):
    raw = np.stack(
        [np.zeros((4, 4, 4), np.uint8), np.arange(64, dtype=np.uint8).reshape(4, 4, 4)]
    )
    write_array(tmp_path / "d.zarr/raw", raw)
    task = threshold_task(
        tmp_path,
        in_data=Raw(
            store=tmp_path / "d.zarr/raw", channels=[1], scale_shift=(1 / 63, 0)
        ),
        block_size=[2, 2, 2],
    )
    run(task, False)
    mask = task.mask.array()
    assert mask.shape == (4, 4, 4)
    # 0..63 scaled to 0..1: above 0.5 from 32 on
    expected = (np.arange(64).reshape(4, 4, 4) / 63 > 0.5).astype(np.uint8)
    np.testing.assert_array_equal(mask.to_ndarray(mask.roi), expected)


def test_threshold_refuses_multichannel_input(tmp_path):
    write_array(tmp_path / "d.zarr/raw", np.zeros((2, 4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="Threshold.in_data: .*channel axes"):
        run(threshold_task(tmp_path, block_size=[2, 2, 2]), False)
    assert not (tmp_path / "d.zarr/mask").exists()


def test_threshold_needs_a_number():
    with pytest.raises(ValidationError, match="threshold"):
        Threshold(
            in_data=Raw(store="r"),
            mask=Labels(store="m"),
            threshold="high",
            block_size=[1, 1, 1],
        )


# -------------------------------------------------------------------- Argmax


def argmax_task(tmp_path, **kwargs) -> Argmax:
    options = dict(
        probs_data=Raw(store=tmp_path / "d.zarr/probs"),
        sem_data=Labels(store=tmp_path / "d.zarr/classes"),
        block_size=[2, 4, 4],
    )
    options.update(kwargs)
    return Argmax(**options)


def test_argmax_round_trip(tmp_path):
    round_trips(argmax_task(tmp_path))
    round_trips(argmax_task(tmp_path, combine_classes=[[0, 2], [1]], num_workers=2))


@pytest.mark.parametrize("multiprocessing", [True, False], ids=["2workers", "serial"])
def test_argmax_run(tmp_path, multiprocessing):
    probs = RNG.random((3, 4, 8, 8)).astype(np.float32)
    write_array(tmp_path / "d.zarr/probs", probs)
    task = argmax_task(tmp_path, num_workers=2)
    assert run(task, multiprocessing).total_block_count == 2 * 2 * 2
    classes = task.sem_data.array()
    assert classes.dtype == np.uint8
    np.testing.assert_array_equal(classes.to_ndarray(classes.roi), probs.argmax(axis=0))


def test_argmax_combine_classes(tmp_path):
    # by hand: channels 0 and 2 form class 0, channel 1 is class 1
    probs = np.zeros((3, 1, 1, 3), np.float32)
    probs[:, 0, 0, 0] = [0.3, 0.4, 0.3]  # 0.6 vs 0.4 -> 0 (plain argmax: 1)
    probs[:, 0, 0, 1] = [0.1, 0.8, 0.1]  # 0.2 vs 0.8 -> 1
    probs[:, 0, 0, 2] = [0.0, 0.5, 0.5]  # 0.5 vs 0.5 -> tie -> 0
    write_array(tmp_path / "d.zarr/probs", probs)
    task = argmax_task(tmp_path, combine_classes=[[0, 2], [1]], block_size=[1, 1, 3])
    run(task, False)
    classes = task.sem_data.array()
    np.testing.assert_array_equal(classes.to_ndarray(classes.roi), [[[0, 1, 0]]])


def test_argmax_combine_classes_must_name_existing_channels(tmp_path):
    write_array(tmp_path / "d.zarr/probs", np.zeros((3, 2, 2, 2), np.float32))
    with pytest.raises(
        ValueError, match=r"combine_classes: channels \[5\] do not exist"
    ):
        run(argmax_task(tmp_path, combine_classes=[[0, 5]]), False)
    with pytest.raises(ValidationError, match="combine_classes"):
        argmax_task(tmp_path, combine_classes=[[0], []])


# ------------------------------------------------------------------- Relabel


def relabel_task(tmp_path, **kwargs) -> Relabel:
    options = dict(
        frags_data=Labels(store=tmp_path / "d.zarr/frags"),
        seg_data=Labels(store=tmp_path / "d.zarr/segments"),
        lut=LUT(path=tmp_path / "lut.npz"),
        block_size=[2, 4, 4],
    )
    options.update(kwargs)
    return Relabel(**options)


def test_relabel_round_trip(tmp_path):
    round_trips(relabel_task(tmp_path, roi=[[0, 0, 0], [2, 2, 2]]))


@pytest.mark.parametrize("multiprocessing", [True, False], ids=["2workers", "serial"])
def test_relabel_run(tmp_path, multiprocessing):
    frags = RNG.integers(0, 20, size=(4, 8, 8), dtype=np.uint32)
    write_array(tmp_path / "d.zarr/frags", frags, voxel_size=(2, 1, 1))
    table = np.array([[1, 2, 3, 4, 19], [100, 100, 200, 200, 7]])
    LUT(path=tmp_path / "lut.npz").save(table)
    task = relabel_task(tmp_path, num_workers=2)
    run(task, multiprocessing)
    lookup = dict(zip(*table.tolist(), strict=True))
    expected = np.vectorize(lambda v: lookup.get(int(v), int(v)))(frags)
    segments = task.seg_data.array()
    assert segments.dtype == np.uint64
    np.testing.assert_array_equal(segments.to_ndarray(segments.roi), expected)


def test_relabel_without_a_lut_errors_before_running(tmp_path):
    write_array(tmp_path / "d.zarr/frags", np.ones((2, 2, 2), np.uint32))
    task = relabel_task(tmp_path)
    with pytest.raises(FileNotFoundError, match="LUT.path: no look-up table"):
        run(task, False)
    assert not (tmp_path / "d.zarr/segments").exists()
    assert not task.block_ds.exists()


def test_relabel_reads_a_remote_lut(tmp_path):
    # volara 1.0.5 configs may name an s3:// table; any fsspec url is read
    # the same way (memory:// here, so the run stays in this process)
    frags = np.arange(1, 9, dtype=np.uint64).reshape(2, 2, 2)
    write_array(tmp_path / "d.zarr/frags", frags)
    lut = LUT(path="memory://tables/relabel-test")
    lut.save(np.array([[1, 2, 8], [5, 5, 0]]))
    try:
        task = relabel_task(tmp_path, lut=lut)
        run(task, False)
        segments = task.seg_data.array()
        expected = [[[5, 5], [3, 4]], [[5, 6], [7, 0]]]
        np.testing.assert_array_equal(segments.to_ndarray(segments.roi), expected)
    finally:
        lut.drop()

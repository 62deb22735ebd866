"""volara 1.0.5 members that scripts call directly: the per-block functions
of ApplyShift, Relabel and Argmax, ``init_out_array`` on every task that had
it, and a few module attributes."""

from __future__ import annotations

import daisy
import numpy as np
import pytest
from funlib.geometry import Coordinate, Roi

import volara.blockwise
import volara.logging
from conftest import write_array
from volara.blockwise import (
    ApplyShift,
    Argmax,
    ComputeShift,
    ExtractFrags,
    LambdaTask,
    Relabel,
    SeededExtractFrags,
    Threshold,
    registry,
)
from volara.datasets import Affs, Labels, Raw
from volara.dbs import SQLite
from volara.lut import LUT
from volara.segment_utils import prepare_mapping

RNG = np.random.default_rng(7)


def block_at(offset, shape) -> daisy.Block:
    roi = Roi(offset, shape)
    return daisy.Block(roi, roi, roi)


# ------------------------------------------------------------ apply_shift


def test_apply_shift_moves_the_middle_block_by_a_uniform_shift():
    intensities = RNG.random((2, 12, 12, 12)).astype(np.float32)
    voxel_size = np.array([2, 1, 1])
    shifts = np.zeros((2, 3, 3, 3, 3), np.float32)
    shifts[0] = np.array([2.0, 1.0, 0.0]).reshape(3, 1, 1, 1)  # one voxel in z, y
    shifts[1] = np.array([0.0, 0.0, -2.0]).reshape(3, 1, 1, 1)  # two voxels back in x
    aligned, interp = ApplyShift.apply_shift(
        intensities, shifts, Roi((4, 4, 4), (4, 4, 4)), voxel_size
    )
    assert aligned.shape == (2, 4, 4, 4) and aligned.dtype == np.float32
    assert interp.shape == (2, 3, 4, 4, 4) and interp.dtype == np.float32
    middle = (slice(4, 8),) * 3
    # aligned(x) = intensities(x - shift)
    np.testing.assert_allclose(aligned[0], intensities[0][3:7, 3:7, 4:8], atol=1e-6)
    np.testing.assert_allclose(aligned[1], intensities[1][4:8, 4:8, 6:10], atol=1e-6)
    assert not np.allclose(aligned[0], intensities[0][middle])
    np.testing.assert_allclose(interp[0, :, 1, 2, 3], [2.0, 1.0, 0.0])
    np.testing.assert_allclose(interp[1, 2], -2.0)


def test_apply_shift_ignores_long_shifts_like_the_task():
    intensities = RNG.random((1, 12, 12, 12)).astype(np.float32)
    shifts = np.zeros((1, 3, 3, 3, 3), np.float32)
    shifts[0, 0] = 1.0
    shifts[0, :, 1, 1, 1] = [50.0, 0.0, 0.0]  # a failed registration
    voxel_write_roi = Roi((4, 4, 4), (4, 4, 4))
    _, trusted = ApplyShift.apply_shift(
        intensities, shifts, voxel_write_roi, np.ones(3)
    )
    assert trusted[0, 0].max() > 10
    aligned, filled = ApplyShift.apply_shift(
        intensities, shifts, voxel_write_roi, np.ones(3), shift_threshold=5.0
    )
    # the ignored vector is replaced by its neighbours' mean: (1, 0, 0)
    np.testing.assert_allclose(filled[0, 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(filled[0, 1:], 0.0, atol=1e-6)
    np.testing.assert_allclose(aligned[0], intensities[0][3:7, 4:8, 4:8], atol=1e-6)


def test_apply_shift_matches_the_task_on_the_middle_block(tmp_path):
    voxel_size = (2, 1, 1)
    intensities = RNG.random((1, 12, 12, 12)).astype(np.float32)
    shifts = RNG.uniform(-2, 2, (1, 3, 3, 3, 3)).astype(np.float32)
    write_array(tmp_path / "d.zarr/moving", intensities, voxel_size)
    write_array(tmp_path / "d.zarr/shifts", shifts, (8, 4, 4))
    task = ApplyShift(
        intensities=Raw(store=tmp_path / "d.zarr/moving"),
        shifts=Raw(store=tmp_path / "d.zarr/shifts"),
        aligned=Raw(store=tmp_path / "d.zarr/aligned"),
        interp_shifts=Raw(store=tmp_path / "d.zarr/interp"),
    )
    state = task.run_blockwise(multiprocessing=False)[task.task_name]
    assert state.failed_count == 0
    aligned, interp = ApplyShift.apply_shift(
        intensities,
        shifts,
        Roi((4, 4, 4), (4, 4, 4)),
        np.array(voxel_size),
    )
    middle = Roi((8, 4, 4), (8, 4, 4))
    np.testing.assert_allclose(
        aligned, task.aligned.array("r").to_ndarray(middle), atol=1e-5
    )
    np.testing.assert_allclose(
        interp, task.interp_shifts.array("r").to_ndarray(middle), atol=1e-5
    )


# -------------------------------------------------- map_block, argmax_block


def test_relabel_map_block_relabels_only_its_block(tmp_path):
    frags = np.array([[[1, 2, 3, 4], [5, 6, 7, 0]]] * 2, np.uint64)
    write_array(tmp_path / "d.zarr/frags", frags, (1, 1, 1))
    task = Relabel(
        frags_data=Labels(store=tmp_path / "d.zarr/frags"),
        seg_data=Labels(store=tmp_path / "d.zarr/segs"),
        lut=LUT(path=tmp_path / "lut"),
        block_size=(2, 2, 2),
    )
    task.init_out_array()
    src, dst = prepare_mapping(np.array([3, 1, 2]), np.array([30, 10, 10]))
    segs = task.seg_data.array("r+")
    task.map_block(
        block_at((0, 0, 0), (2, 2, 2)), task.frags_data.array("r"), segs, src, dst
    )
    result = segs[segs.roi]
    assert result.dtype == np.uint64
    np.testing.assert_array_equal(result[:, :, :2], [[[10, 10], [5, 6]]] * 2)
    np.testing.assert_array_equal(result[:, :, 2:], 0)  # block not run yet
    task.map_block(
        block_at((0, 0, 2), (2, 2, 2)), task.frags_data.array("r"), segs, src, dst
    )
    np.testing.assert_array_equal(segs[segs.roi][0], [[10, 10, 30, 4], [5, 6, 7, 0]])


def test_argmax_block_combines_classes(tmp_path):
    probs = np.zeros((3, 2, 2, 2), np.float32)
    probs[0] = 0.4
    probs[1] = 0.35
    probs[2] = 0.25
    probs[2, 1] = 0.5
    write_array(tmp_path / "d.zarr/probs", probs, (1, 1, 1))
    task = Argmax(
        probs_data=Raw(store=tmp_path / "d.zarr/probs"),
        sem_data=Labels(store=tmp_path / "d.zarr/sem"),
        block_size=(2, 2, 2),
        combine_classes=[[0], [1, 2]],
    )
    task.init_out_array()
    semantic = task.sem_data.array("r+")
    task.argmax_block(
        block_at((0, 0, 0), (2, 2, 2)), task.probs_data.array("r"), semantic
    )
    result = semantic[semantic.roi]
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result[0], 1)  # 0.35 + 0.25 beats 0.4
    np.testing.assert_array_equal(result[1], 1)
    task.combine_classes = None
    task.argmax_block(
        block_at((0, 0, 0), (2, 2, 2)), task.probs_data.array("r"), semantic
    )
    np.testing.assert_array_equal(semantic[semantic.roi][0], 0)
    np.testing.assert_array_equal(semantic[semantic.roi][1], 2)


# ---------------------------------------------------------- init_out_array


def check_prepared(dataset, shape, dtype, voxel_size=(2, 1, 1), offset=(4, 0, 0)):
    array = dataset.array("r")
    assert array.shape == shape
    assert array.dtype == np.dtype(dtype)
    assert array.voxel_size == Coordinate(voxel_size)
    assert array.offset == Coordinate(offset)


def test_init_out_array_prepares_grid_task_outputs(tmp_path):
    raw = RNG.random((2, 6, 8, 8)).astype(np.float32)
    write_array(tmp_path / "d.zarr/raw", raw, (2, 1, 1), (4, 0, 0))
    write_array(tmp_path / "d.zarr/one", raw[0], (2, 1, 1), (4, 0, 0))
    frags = np.arange(6 * 8 * 8, dtype=np.uint64).reshape(6, 8, 8)
    write_array(tmp_path / "d.zarr/frags", frags, (2, 1, 1), (4, 0, 0))
    affs = RNG.random((3, 6, 8, 8)).astype(np.float32)
    write_array(
        tmp_path / "d.zarr/affs",
        affs,
        (2, 1, 1),
        (4, 0, 0),
        attrs={"neighborhood": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]},
    )
    block = dict(block_size=(3, 4, 4))

    Threshold(
        in_data=Raw(store=tmp_path / "d.zarr/one"),
        mask=Labels(store=tmp_path / "d.zarr/mask"),
        threshold=0.5,
        **block,
    ).init_out_array()
    check_prepared(Labels(store=tmp_path / "d.zarr/mask"), (6, 8, 8), np.uint8)

    Argmax(
        probs_data=Raw(store=tmp_path / "d.zarr/raw"),
        sem_data=Labels(store=tmp_path / "d.zarr/sem"),
        **block,
    ).init_out_array()
    check_prepared(Labels(store=tmp_path / "d.zarr/sem"), (6, 8, 8), np.uint8)

    Relabel(
        frags_data=Labels(store=tmp_path / "d.zarr/frags"),
        seg_data=Labels(store=tmp_path / "d.zarr/segs"),
        lut=LUT(path=tmp_path / "lut"),
        **block,
    ).init_out_array()
    check_prepared(Labels(store=tmp_path / "d.zarr/segs"), (6, 8, 8), np.uint64)

    extract = ExtractFrags(
        db=SQLite(path=tmp_path / "frags.db"),
        affs_data=Affs(store=tmp_path / "d.zarr/affs"),
        frags_data=Labels(store=tmp_path / "d.zarr/ef"),
        bias=[-0.5, -0.5, -0.5],
        context=(1, 1, 1),
        **block,
    )
    extract.init_out_array()
    check_prepared(extract.frags_data, (6, 8, 8), np.uint64)
    assert not (tmp_path / "frags.db").exists()  # only the array, as in 1.0.5

    seeded = SeededExtractFrags(
        affs_data=Affs(store=tmp_path / "d.zarr/affs"),
        segs_data=Labels(store=tmp_path / "d.zarr/seeded"),
        graph_db=SQLite(path=tmp_path / "skeletons.db"),
        bias=[-0.5, -0.5, -0.5],
        context=(1, 1, 1),
        **block,
    )
    seeded.init_out_array()
    check_prepared(seeded.segs_data, (6, 8, 8), np.uint64)

    lam = LambdaTask(
        in_data=Raw(store=tmp_path / "d.zarr/one"),
        out_data=Raw(store=tmp_path / "d.zarr/lam"),
        lambda_func=np.negative,
        out_array_dtype="float64",
        **block,
    )
    lam.init_out_array()
    check_prepared(lam.out_data, (6, 8, 8), np.float64)


def test_init_out_array_prepares_shift_outputs(tmp_path):
    moving = RNG.random((2, 8, 16, 16)).astype(np.float32)
    write_array(tmp_path / "d.zarr/moving", moving, (2, 1, 1), (4, 0, 0))
    write_array(tmp_path / "d.zarr/target", moving[0], (2, 1, 1), (4, 0, 0))
    compute = ComputeShift(
        intensities=Raw(store=tmp_path / "d.zarr/moving"),
        target=Raw(store=tmp_path / "d.zarr/target"),
        shifts=Raw(store=tmp_path / "d.zarr/shifts"),
        block_size=(4, 8, 8),
        context=(0, 0, 0),
    )
    compute.init_out_array()
    check_prepared(compute.shifts, (2, 3, 2, 2, 2), np.float32, (8, 8, 8))

    apply = ApplyShift(
        intensities=Raw(store=tmp_path / "d.zarr/moving"),
        shifts=Raw(store=tmp_path / "d.zarr/shifts"),
        aligned=Raw(store=tmp_path / "d.zarr/aligned"),
        interp_shifts=Raw(store=tmp_path / "d.zarr/interp"),
    )
    apply.init_out_array()
    check_prepared(apply.aligned, (2, 8, 16, 16), np.float32)
    check_prepared(apply.interp_shifts, (2, 3, 8, 16, 16), np.float32)


# ------------------------------------------------------- module attributes


def test_lut_replace_values():
    from volara.lut import replace_values

    values = np.array([[1, 2], [3, 9]], np.uint64)
    np.testing.assert_array_equal(
        replace_values(values, np.array([1, 3]), np.array([7, 8])), [[7, 2], [8, 9]]
    )


def test_log_basedir_follows_set_log_basedir(tmp_path):
    volara.logging.set_log_basedir(tmp_path / "elsewhere")
    assert volara.logging.LOG_BASEDIR == tmp_path / "elsewhere"
    assert volara.logging.LOG_BASEDIR == volara.logging.get_log_basedir()
    with pytest.raises(AttributeError):
        _ = volara.logging.NOT_THERE


def test_tasks_discovered_tracks_the_entry_point_scan(monkeypatch):
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    assert volara.blockwise.TASKS_DISCOVERED is False
    volara.blockwise.get_blockwise_tasks_type()
    assert volara.blockwise.TASKS_DISCOVERED is True
    from volara.blockwise import TASKS_DISCOVERED

    assert TASKS_DISCOVERED is True

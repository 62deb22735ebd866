"""ComputeShift and ApplyShift on generated volumes, and their kernels.

The volumes are a smooth random texture (the target) and the same texture
displaced by known vectors (the moving intensities), with anisotropic voxels
(4, 2, 2). Shifts are recovered per block to within a voxel, and warping by
them brings the intensities back onto the target.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from funlib.geometry import Coordinate, Roi
from pydantic import ValidationError
from scipy import ndimage

from conftest import write_array
from volara.blockwise import ApplyShift, ComputeShift, get_task
from volara.datasets import Labels, Raw
from volara.kernels.shift import (
    fill_ignored_shifts,
    ignored_shifts,
    interpolate_shifts,
    measure_shift,
    warp,
)

VOXEL_SIZE = np.array([4, 2, 2])
BLOCK = (16, 32, 32)  # voxels
PAD = 8  # voxels of texture around the volume, so shifted reads stay real


def smooth_texture(shape, seed=0) -> np.ndarray:
    """Blobs about 4 world units wide (sigma 1 voxel in z, 2 in y and x),
    zero mean, unit standard deviation."""
    noise = np.random.default_rng(seed).normal(size=shape)
    texture = ndimage.gaussian_filter(noise, (1, 2, 2))
    return ((texture - texture.mean()) / texture.std()).astype(np.float32)


def padded_texture(shape, seed=0) -> np.ndarray:
    return smooth_texture(tuple(s + 2 * PAD for s in shape), seed)


def inner(padded: np.ndarray) -> np.ndarray:
    return padded[PAD:-PAD, PAD:-PAD, PAD:-PAD]


def shifted_regions(padded: np.ndarray, shape, displacements) -> np.ndarray:
    """The texture displaced by ``displacements[block index]`` (whole voxels)
    in each block region: ``moving[x] = texture[x - d]``."""
    moving = np.empty(shape, np.float32)
    for index, d in displacements.items():
        start = [i * b for i, b in zip(index, BLOCK, strict=True)]
        region = tuple(slice(s, s + b) for s, b in zip(start, BLOCK, strict=True))
        source = tuple(
            slice(s + PAD - di, s + b + PAD - di)
            for s, b, di in zip(start, BLOCK, d, strict=True)
        )
        moving[region] = padded[source]
    return moving


def displaced(padded: np.ndarray, shape, field) -> np.ndarray:
    """``moving(x) = texture(x - field(x))`` for a displacement field in
    voxels, ``field(points) -> (3, *points_shape)``."""
    points = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    sources = points - field(points) + PAD
    return ndimage.map_coordinates(padded, sources, order=3).astype(np.float32)


def compute_task(tmp_path, **kwargs) -> ComputeShift:
    options = dict(
        intensities=Raw(store=tmp_path / "d.zarr/moving"),
        target=Raw(store=tmp_path / "d.zarr/target"),
        shifts=Raw(store=tmp_path / "d.zarr/shifts"),
        block_size=BLOCK,
        context=(4, 8, 8),
    )
    options.update(kwargs)
    return ComputeShift(**options)


def apply_task(tmp_path, **kwargs) -> ApplyShift:
    options = dict(
        intensities=Raw(store=tmp_path / "d.zarr/moving"),
        shifts=Raw(store=tmp_path / "d.zarr/shifts"),
        aligned=Raw(store=tmp_path / "d.zarr/aligned"),
    )
    options.update(kwargs)
    return ApplyShift(**options)


def run(task, multiprocessing=True):
    state = task.run_blockwise(multiprocessing=multiprocessing)[task.task_name]
    assert state.failed_count == 0 and state.orphaned_count == 0
    assert state.completed_count == state.total_block_count
    return state


def round_trips(task) -> None:
    from_json = get_task(task.task_type).model_validate_json(task.model_dump_json())
    assert type(from_json) is type(task) and from_json == task
    from_yaml = get_task(task.task_type).model_validate(
        yaml.safe_load(yaml.safe_dump(task.model_dump(mode="json")))
    )
    assert type(from_yaml) is type(task) and from_yaml == task


# --------------------------------------------------------------- kernels


def test_measure_shift_finds_whole_and_sub_voxel_shifts():
    reference = inner(padded_texture((16, 32, 32)))
    rolled = np.roll(reference, (1, -3, 2), axis=(0, 1, 2))
    np.testing.assert_allclose(measure_shift(rolled, reference), [-1, 3, -2], atol=0.1)
    masked = measure_shift(rolled, reference, mask=np.ones(reference.shape))
    np.testing.assert_array_equal(masked, [-1, 3, -2])
    # a periodic sub-voxel shift: moving(x) = reference(x - d)
    d = (1.0, -2.5, 3.3)
    spectrum = ndimage.fourier_shift(np.fft.fftn(reference), d)
    moving = np.fft.ifftn(spectrum).real
    np.testing.assert_allclose(
        measure_shift(moving, reference), np.negative(d), atol=0.15
    )


def test_measure_shift_is_zero_without_anything_to_measure():
    reference = inner(padded_texture((8, 16, 16)))
    empty_mask = np.zeros(reference.shape, np.uint8)
    np.testing.assert_array_equal(
        measure_shift(reference, reference, mask=empty_mask), [0, 0, 0]
    )
    flat = np.full(reference.shape, 3.0)
    np.testing.assert_array_equal(measure_shift(flat, reference), [0, 0, 0])


def test_interpolate_shifts_by_hand():
    grid = np.array([[0.0, 4.0]])  # one axis, cells centred at 0 and 1
    points = np.array([[0.0, 0.25, 0.5, 1.0, -1.0, 3.0]])
    result = interpolate_shifts(grid, points)
    np.testing.assert_allclose(result, [[0, 1, 2, 4, 0, 4]])


def test_ignored_shifts_are_filled_from_their_neighbours():
    grid = np.zeros((2, 3, 3))
    grid[0] = [[1, 2, 3], [4, 500, 6], [7, 8, np.nan]]
    ignored = ignored_shifts(grid, threshold=100)
    np.testing.assert_array_equal(
        ignored, [[False, False, False], [False, True, False], [False, False, True]]
    )
    filled = fill_ignored_shifts(grid, ignored)
    assert filled[0, 1, 1] == pytest.approx((1 + 2 + 3 + 4 + 6 + 7 + 8) / 7)
    assert filled[0, 2, 2] == pytest.approx((500 * 0 + 6 + 8) / 2)
    assert filled[0, 0, 0] == 1 and np.all(filled[1] == 0)
    alone = fill_ignored_shifts(np.full((1, 1, 1), 9.0), np.ones((1, 1), bool))
    np.testing.assert_array_equal(alone, [[[0.0]]])


def test_warp_by_hand():
    image = np.arange(10, dtype=np.uint8)[None, None].repeat(2, axis=1)
    shifts = np.zeros((3, 1, 2, 4))
    shifts[2] = [[1, 1, 0.5, -2], [1, 1, 0.5, -2]]
    result = warp(image, shifts, offset=(0, 0, 3))
    # aligned(x) = image(x - shift): x=3 -> 2, x=4 -> 3, x=5 -> 4.5, x=6 -> 8
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result[0, 0], [2, 3, 4, 8])
    outside = warp(image.astype(np.float32), shifts + 9, offset=(0, 0, 3))
    np.testing.assert_array_equal(outside, np.zeros((1, 2, 4)))


# ------------------------------------------------------------ ComputeShift


def test_compute_shift_round_trip(tmp_path):
    round_trips(
        compute_task(
            tmp_path,
            mask=Labels(store=tmp_path / "d.zarr/mask"),
            overlap_ratio=0.5,
            roi=Roi((0, 0, 0), (64, 64, 64)),
            num_workers=2,
        )
    )


def test_compute_shift_recovers_a_shift_per_region(tmp_path):
    shape = (32, 64, 64)
    displacements = {  # voxels, one per block region
        (0, 0, 0): (1, 2, -3),
        (0, 0, 1): (0, -2, 1),
        (0, 1, 0): (-1, 0, 2),
        (0, 1, 1): (2, 3, 0),
        (1, 0, 0): (0, 0, 0),
        (1, 0, 1): (-2, 1, 1),
        (1, 1, 0): (1, -3, -1),
        (1, 1, 1): (0, 1, -2),
    }
    padded = padded_texture(shape)
    offset = (8, -4, 6)
    write_array(tmp_path / "d.zarr/target", inner(padded), VOXEL_SIZE, offset)
    write_array(
        tmp_path / "d.zarr/moving",
        shifted_regions(padded, shape, displacements),
        VOXEL_SIZE,
        offset,
    )
    task = compute_task(tmp_path, context=(0, 0, 0))
    state = run(task, multiprocessing=False)
    assert state.total_block_count == 8

    shifts = task.shifts.array("r")
    assert shifts.voxel_size == Coordinate(64, 64, 64)  # one voxel per block
    assert shifts.roi == Roi(offset, (128, 128, 128))
    assert shifts.dtype == np.float32 and shifts.shape == (3, 2, 2, 2)
    measured = shifts[shifts.roi]
    for index, d in displacements.items():
        expected = -np.array(d) * VOXEL_SIZE  # world units
        found = measured[(slice(None), *index)]
        assert np.all(np.abs(found - expected) <= VOXEL_SIZE / 2), (index, found)


def test_compute_shift_per_channel_against_channel_zero(tmp_path):
    shape = (16, 56, 64)  # the second block overhangs the volume by 8 voxels
    padded = padded_texture(shape)
    reference = inner(padded)
    moved = padded[PAD - 1 : -PAD - 1, PAD + 2 : -PAD + 2, PAD:-PAD]  # d=(1,-2,0)
    write_array(tmp_path / "d.zarr/moving", np.stack([reference, moved]), VOXEL_SIZE)
    task = compute_task(tmp_path, target=None, block_size=(16, 32, 64))
    run(task, multiprocessing=False)
    measured = task.shifts.array("r")[task.shifts.array("r").roi]
    assert measured.shape == (2, 3, 1, 2, 1)
    np.testing.assert_allclose(measured[0], 0, atol=0.5)
    for block in range(2):
        found = measured[1, :, 0, block, 0]
        assert np.all(np.abs(found - [-4, 4, 0]) <= VOXEL_SIZE / 2), found


def test_compute_shift_with_a_mask(tmp_path):
    shape = (16, 32, 64)
    padded = padded_texture(shape)
    write_array(tmp_path / "d.zarr/target", inner(padded), VOXEL_SIZE)
    moved = padded[PAD:-PAD, PAD - 2 : -PAD - 2, PAD + 1 : -PAD + 1]  # d=(0,2,-1)
    write_array(tmp_path / "d.zarr/moving", moved, VOXEL_SIZE)
    mask = np.zeros(shape, np.uint8)
    mask[2:-2, 2:-2, 2:30] = 1  # only the first block has valid data
    write_array(tmp_path / "d.zarr/mask", mask, VOXEL_SIZE)
    task = compute_task(
        tmp_path,
        mask=Labels(store=tmp_path / "d.zarr/mask"),
        overlap_ratio=0.5,
        block_size=(16, 32, 32),
        context=(0, 0, 0),
    )
    run(task, multiprocessing=False)
    measured = task.shifts.array("r")[task.shifts.array("r").roi]
    np.testing.assert_array_equal(measured[:, 0, 0, 0], [0, -4, 2])
    np.testing.assert_array_equal(measured[:, 0, 0, 1], [0, 0, 0])  # empty mask


# -------------------------------------------------------------- ApplyShift


def test_apply_shift_round_trip(tmp_path):
    round_trips(
        apply_task(
            tmp_path,
            interp_shifts=Raw(store=tmp_path / "d.zarr/interp"),
            shift_threshold=20.0,
            num_workers=2,
        )
    )


def test_compute_then_apply_aligns_a_smoothly_displaced_volume(tmp_path):
    """Displacement that changes smoothly through the volume (a drift):
    every block measures its own vector, and the interpolated field warps
    the volume back onto the target."""
    shape = (32, 96, 96)
    padded = padded_texture(shape, seed=1)

    def drift(points):  # voxels; differs by up to ~1.3 voxels between blocks
        z, y, x = points / np.array(shape).reshape(3, 1, 1, 1)
        return np.stack([1.0 + 0 * z, 2.0 - 4.0 * x, -1.0 + 3.0 * y])

    write_array(tmp_path / "d.zarr/target", inner(padded), VOXEL_SIZE)
    write_array(tmp_path / "d.zarr/moving", displaced(padded, shape, drift), VOXEL_SIZE)
    compute = compute_task(tmp_path, num_workers=2)
    apply = apply_task(
        tmp_path, interp_shifts=Raw(store=tmp_path / "d.zarr/interp"), num_workers=2
    )
    states = (compute + apply).run_blockwise()
    for task in (compute, apply):
        state = states[task.task_name]
        assert state.failed_count == 0 and state.orphaned_count == 0
        assert state.completed_count == state.total_block_count == 2 * 3 * 3

    measured = compute.shifts.array("r")[compute.shifts.array("r").roi]
    centres = np.stack(
        np.meshgrid(
            *[
                (np.arange(n) + 0.5) * b - 0.5
                for n, b in zip((2, 3, 3), BLOCK, strict=True)
            ],
            indexing="ij",
        )
    )
    expected = -drift(centres) * VOXEL_SIZE.reshape(3, 1, 1, 1)
    error = np.abs(measured - expected)
    assert np.all(error <= VOXEL_SIZE.reshape(3, 1, 1, 1)), error.max(axis=(1, 2, 3))

    aligned = apply.aligned.array("r")
    assert aligned.roi == Roi((0, 0, 0), (128, 192, 192))
    assert aligned.dtype == np.float32
    # between the outermost block centres the interpolated field is the drift
    interior = (slice(8, 24), slice(16, 80), slice(16, 80))
    result = aligned[aligned.roi][interior]
    target = inner(padded)[interior]
    moving = displaced(padded, shape, drift)[interior]
    assert np.abs(moving - target).mean() > 0.4  # misaligned before
    assert np.abs(result - target).mean() < 0.1
    assert np.corrcoef(result.ravel(), target.ravel())[0, 1] > 0.99
    interp = apply.interp_shifts.array("r")
    assert interp.shape == (3, *shape)
    points = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    field = interp[interp.roi][(slice(None), *interior)]
    wanted = -drift(points)[(slice(None), *interior)] * VOXEL_SIZE.reshape(3, 1, 1, 1)
    assert np.abs(field - wanted).max() < 1.0  # world units


def uniform_shifts(vector, grid_shape) -> np.ndarray:
    """The same shift vector (world units) in every cell of a grid."""
    shifts = np.empty((3, *grid_shape), np.float32)
    shifts[:] = np.asarray(vector, np.float32).reshape(3, 1, 1, 1)
    return shifts


def test_apply_shift_ignores_shifts_above_the_threshold(tmp_path):
    shape = (40, 96, 88)  # blocks of (16, 32, 32) voxels overhang in z and x
    padded = padded_texture(shape)
    d = np.array([1, -2, 3])  # voxels
    moved = padded[
        PAD - 1 : -PAD - 1, PAD + 2 : -PAD + 2, PAD - 3 : -PAD - 3
    ]  # moved[x] = texture[x - d]
    write_array(tmp_path / "d.zarr/moving", moved, VOXEL_SIZE)
    shifts = uniform_shifts(-d * VOXEL_SIZE, (3, 3, 3))
    shifts[:, 1, 1, 1] = [0, 300, -300]  # a failed registration in the middle
    shifts[:, 0, 2, 0] = np.nan
    write_array(tmp_path / "d.zarr/shifts", shifts, voxel_size=(64, 64, 64))
    trusting = apply_task(tmp_path, aligned=Raw(store=tmp_path / "d.zarr/trusting"))
    careful = apply_task(
        tmp_path,
        shift_threshold=100.0,
        interp_shifts=Raw(store=tmp_path / "d.zarr/interp"),
    )
    run(trusting, multiprocessing=False)
    run(careful, multiprocessing=False)

    target = inner(padded)
    interior = (slice(2, -2), slice(4, -4), slice(4, -4))
    aligned = careful.aligned.array("r")
    np.testing.assert_allclose(
        aligned[aligned.roi][interior], target[interior], atol=1e-5
    )
    interp = careful.interp_shifts.array("r")
    np.testing.assert_allclose(
        interp[interp.roi],
        np.broadcast_to((-d * VOXEL_SIZE)[:, None, None, None], (3, *shape)),
    )
    bogus_block = (slice(16, 32), slice(32, 64), slice(32, 64))
    trusted = trusting.aligned.array("r")
    assert np.abs(trusted[trusted.roi][bogus_block] - target[bogus_block]).mean() > 0.5


def test_apply_shift_keeps_channels_and_integer_dtype(tmp_path):
    shape = (16, 32, 32)
    padded = padded_texture(shape)
    as_uint8 = np.clip(padded * 40 + 128, 0, 255).astype(np.uint8)
    first = inner(as_uint8)
    second = as_uint8[PAD:-PAD, PAD:-PAD, PAD - 2 : -PAD - 2]  # d = (0, 0, 2)
    write_array(tmp_path / "d.zarr/moving", np.stack([first, second]), VOXEL_SIZE)
    shifts = np.zeros((2, 3, 1, 2, 2), np.float32)
    shifts[1, 2] = -4.0  # world units: two voxels of size 2 along x
    write_array(tmp_path / "d.zarr/shifts", shifts, voxel_size=(64, 32, 32))
    task = apply_task(tmp_path)
    run(task, multiprocessing=False)
    aligned = task.aligned.array("r")
    assert aligned.dtype == np.uint8 and aligned.shape == (2, *shape)
    result = aligned[aligned.roi]
    np.testing.assert_array_equal(result[0], first)
    np.testing.assert_array_equal(result[1][..., :-2], first[..., :-2])


# -------------------------------------------------------------- bad input


@pytest.fixture
def small_volume(tmp_path):
    data = inner(padded_texture((16, 32, 32)))
    write_array(tmp_path / "d.zarr/moving", data, VOXEL_SIZE)
    return data


def test_missing_target_is_named(tmp_path, small_volume):
    task = compute_task(tmp_path, target=Raw(store=tmp_path / "d.zarr/nothing"))
    with pytest.raises(FileNotFoundError, match="ComputeShift.target: no zarr array"):
        task.run_blockwise()
    assert not task.shifts.exists()


def test_single_channel_without_target_is_refused(tmp_path, small_volume):
    task = compute_task(tmp_path, target=None)
    with pytest.raises(ValueError, match="ComputeShift.target: not given"):
        task.run_blockwise()
    assert not task.shifts.exists()


def test_target_and_mask_on_another_grid_are_named(tmp_path, small_volume):
    write_array(tmp_path / "d.zarr/target", small_volume, voxel_size=(2, 2, 2))
    with pytest.raises(
        ValueError, match=r"ComputeShift.target: voxel size \(2, 2, 2\)"
    ):
        compute_task(tmp_path).run_blockwise()
    write_array(tmp_path / "d.zarr/target", small_volume, VOXEL_SIZE)
    write_array(tmp_path / "d.zarr/mask", np.ones((8, 32, 32), np.uint8), (8, 2, 2))
    task = compute_task(tmp_path, mask=Labels(store=tmp_path / "d.zarr/mask"))
    with pytest.raises(ValueError, match="ComputeShift.mask: voxel size"):
        task.run_blockwise()
    assert not task.shifts.exists()


def test_target_with_several_channels_is_refused(tmp_path, small_volume):
    write_array(tmp_path / "d.zarr/target", np.stack([small_volume] * 2), VOXEL_SIZE)
    with pytest.raises(ValueError, match="ComputeShift.target: .* single channel"):
        compute_task(tmp_path).run_blockwise()


def test_shifts_with_the_wrong_number_of_components_are_refused(tmp_path, small_volume):
    write_array(
        tmp_path / "d.zarr/shifts", np.zeros((2, 1, 1, 1), np.float32), (64, 64, 64)
    )
    task = apply_task(tmp_path)
    with pytest.raises(ValueError, match=r"ApplyShift.shifts: .* expected \(3,\)"):
        task.run_blockwise()
    assert not task.aligned.exists()


def test_shifts_for_other_channels_are_refused(tmp_path, small_volume):
    write_array(
        tmp_path / "d.zarr/shifts", np.zeros((2, 3, 1, 1, 1), np.float32), (64, 64, 64)
    )
    with pytest.raises(ValueError, match=r"ApplyShift.shifts: .* expected \(3,\)"):
        apply_task(tmp_path).run_blockwise()


def test_shift_cells_off_the_voxel_grid_are_refused(tmp_path, small_volume):
    write_array(
        tmp_path / "d.zarr/shifts", np.zeros((3, 1, 1, 1), np.float32), (6, 64, 64)
    )
    with pytest.raises(ValueError, match="ApplyShift.shifts: its voxel size"):
        apply_task(tmp_path).run_blockwise()


def test_missing_shifts_are_named(tmp_path, small_volume):
    with pytest.raises(FileNotFoundError, match="ApplyShift.shifts: no zarr array"):
        apply_task(tmp_path).run_blockwise()


def test_bad_parameters_are_refused_at_construction(tmp_path):
    with pytest.raises(ValidationError, match="overlap_ratio"):
        compute_task(tmp_path, overlap_ratio=0.0)
    with pytest.raises(ValidationError, match="shift_threshold"):
        apply_task(tmp_path, shift_threshold=-1.0)
    with pytest.raises(ValidationError, match="fit"):
        apply_task(tmp_path, fit="shrink")

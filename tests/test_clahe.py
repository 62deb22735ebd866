"""CLAHE: the kernel against skimage, its read-region rule by hand, and the
task block by block against one block over the whole volume (no seams)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from funlib.geometry import Coordinate, Roi
from pydantic import ValidationError
from scipy.ndimage import gaussian_filter
from skimage.exposure import equalize_adapthist, rescale_intensity

from conftest import write_array
from volara.blockwise import CLAHE, LambdaTask, get_task
from volara.datasets import Raw
from volara.kernels.contrast import (
    GREY_LEVELS,
    equalize_grey_levels,
    exact_read_region,
    to_grey_levels,
)

KERNEL = (4, 8, 8)
SHAPE = (12, 40, 40)


def smooth_volume(shape=SHAPE, seed=0) -> np.ndarray:
    """EM-like float intensities: structures of a few voxels, varying
    brightness across the volume, so every tile has its own histogram."""
    rng = np.random.default_rng(seed)
    structure = gaussian_filter(rng.random(shape), 1.5)
    shading = np.linspace(0.5, 1.5, shape[-1])
    return (structure * shading * 200).astype(np.float32)


def clahe_task(tmp_path, name="out", **kwargs) -> CLAHE:
    options = dict(
        in_arr=Raw(store=tmp_path / "d.zarr/raw"),
        out_arr=Raw(store=tmp_path / f"d.zarr/{name}"),
        kernel=KERNEL,
        block_size=SHAPE,
    )
    options.update(kwargs)
    return CLAHE(**options)


def run(task, multiprocessing=True, blocks: int | None = None) -> np.ndarray:
    """Run ``task`` (expecting ``blocks`` blocks) and return its output."""
    state = task.run_blockwise(multiprocessing=multiprocessing)[task.task_name]
    assert state.failed_count == 0 and state.orphaned_count == 0
    assert state.completed_count == state.total_block_count
    if blocks is not None:
        assert state.total_block_count == blocks
    output = task.out_arr.array()
    return output.to_ndarray(output.roi)


# -------------------------------------------------------------------- kernel


def test_kernel_is_skimages_clahe():
    # uint16 data spanning 0..65535: equalize_adapthist's own normalization is
    # then exactly ours; its final stretch to 0..1 is the only difference
    volume = smooth_volume((8, 24, 32))
    volume = rescale_intensity(volume, out_range=(0, 65535)).astype(np.uint16)
    levels = equalize_grey_levels(to_grey_levels(volume, 0, 65535), KERNEL, 0.02)
    expected = equalize_adapthist(volume, kernel_size=KERNEL, clip_limit=0.02)
    np.testing.assert_array_equal(
        rescale_intensity(levels.astype(np.float64)), expected
    )


def test_grey_levels_by_hand():
    values = np.array([-5.0, 0.0, 5.0, 10.0, 20.0])
    top = GREY_LEVELS - 1
    # 5 of 0..10 is 8191.5, rounded to even
    np.testing.assert_array_equal(to_grey_levels(values, 0, 10), [0, 0, 8192, top, top])
    np.testing.assert_array_equal(to_grey_levels(values, 3, 3), [0] * 5)


def test_exact_read_region_by_hand():
    # tiles of 4 from 0: [0, 4), [4, 8), [8, 12), ...; one whole tile beyond
    # the tiles holding the first and the last voxel, clipped to the volume
    assert exact_read_region([5], [7], [4], [0], [20]) == ([0], [12])
    assert exact_read_region([8], [12], [4], [0], [20]) == ([4], [16])
    assert exact_read_region([16], [20], [4], [0], [20]) == ([12], [20])
    assert exact_read_region([2], [3], [4], [0], [20]) == ([0], [8])
    # the grid starts at the volume: tiles [3, 7), [7, 11), ...
    assert exact_read_region([7, 0], [9, 1], [4, 1], [3, 0], [23, 5]) == (
        [3, 0],
        [15, 2],
    )


def test_blocks_without_context_show_seams_and_tile_aligned_ones_do_not():
    """What the task test below guards against: equalizing each block on its
    own (no context) changes voxels by far more than the tolerance (0) of
    that test; reading the tile-aligned region around each block does not."""
    volume = smooth_volume()
    levels = to_grey_levels(volume, volume.min(), volume.max())
    whole = equalize_grey_levels(levels, KERNEL, 0.01)
    block = (6, 20, 20)
    alone, aligned = np.zeros_like(whole), np.zeros_like(whole)
    for corner in np.ndindex(*(s // b for s, b in zip(SHAPE, block, strict=True))):
        start = [c * b for c, b in zip(corner, block, strict=True)]
        stop = [s + b for s, b in zip(start, block, strict=True)]
        here = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
        alone[here] = equalize_grey_levels(levels[here], KERNEL, 0.01)
        starts, stops = exact_read_region(start, stop, KERNEL, [0] * 3, SHAPE)
        read = tuple(slice(a, b) for a, b in zip(starts, stops, strict=True))
        crop = tuple(
            slice(a - r, b - r) for a, b, r in zip(start, stop, starts, strict=True)
        )
        aligned[here] = equalize_grey_levels(levels[read], KERNEL, 0.01)[crop]
    seams = np.abs(alone.astype(int) - whole) * 255 / (GREY_LEVELS - 1)
    assert seams.max() > 10  # of 255
    np.testing.assert_array_equal(aligned, whole)


# ---------------------------------------------------------------------- task


def test_round_trip(tmp_path):
    for task in [
        clahe_task(tmp_path),
        clahe_task(
            tmp_path,
            mask_arr=Raw(store="d.zarr/mask"),
            in_range=[(0, 255), (10, 20.5)],
            clip_limit=0.05,
            roi=[[0, 0, 0], [8, 8, 8]],
            num_workers=3,
        ),
        clahe_task(tmp_path, in_range="uint12"),
    ]:
        loaded = get_task("clahe").model_validate_json(task.model_dump_json())
        assert type(loaded) is CLAHE and loaded == task
        from_yaml = yaml.safe_load(yaml.safe_dump(task.model_dump(mode="json")))
        assert get_task("clahe").model_validate(from_yaml) == task


@pytest.mark.parametrize(
    "block_size, blocks",
    [((4, 16, 24), 3 * 3 * 2), ((5, 12, 20), 3 * 4 * 2)],
    ids=["tile-multiple", "unaligned"],
)
def test_blockwise_result_equals_one_block(tmp_path, block_size, blocks):
    """Two workers over several blocks give, voxel for voxel, what one block
    over the whole volume gives. The tolerance is 0: each block reads the
    CLAHE tiles its voxels depend on, aligned to the volume's tile grid, and
    the intensity range is the whole input's, so every voxel goes through
    the same arithmetic. That holds at the volume border as well, because
    reads are clipped to the volume where the one-block call ends."""
    raw = smooth_volume()
    write_array(tmp_path / "d.zarr/raw", raw, voxel_size=(8, 4, 4), offset=(16, 8, 0))
    whole = run(clahe_task(tmp_path, "whole"), multiprocessing=False, blocks=1)
    blockwise_task = clahe_task(
        tmp_path, "blockwise", block_size=block_size, num_workers=2
    )
    blockwise = run(blockwise_task, blocks=blocks)
    assert whole.dtype == np.uint8 and whole.shape == SHAPE
    # a real equalization: the whole range used, and not a plain rescaling
    assert whole.min() < 20 and whole.max() > 235
    stretched = rescale_intensity(raw, out_range=(0, 255))
    assert np.abs(whole - stretched).mean() > 10
    np.testing.assert_array_equal(blockwise, whole)
    output = blockwise_task.out_arr.array()
    assert output.roi == Roi((16, 8, 0), Coordinate(SHAPE) * Coordinate(8, 4, 4))


def test_image_range_is_the_whole_inputs(tmp_path):
    raw = smooth_volume()
    write_array(tmp_path / "d.zarr/raw", raw)
    image = clahe_task(tmp_path, "image", block_size=(6, 20, 20))
    explicit = clahe_task(
        tmp_path,
        "explicit",
        in_range=(float(raw.min()), float(raw.max())),
        block_size=(6, 20, 20),
    )
    np.testing.assert_array_equal(run(image, False), run(explicit, False))
    stored = image.out_arr.array().attrs["clahe_in_range"]
    np.testing.assert_allclose(stored, [[raw.min(), raw.max()]])


def test_channels_are_equalized_one_by_one_with_their_ranges(tmp_path):
    raw = np.stack([smooth_volume(seed=1), smooth_volume(seed=2) / 4])
    write_array(tmp_path / "d.zarr/raw", raw)
    ranges = [(0.0, 300.0), (0.0, 60.0)]
    task = clahe_task(tmp_path, in_range=ranges, block_size=(6, 20, 40))
    equalized = run(task, multiprocessing=False)
    assert equalized.shape == (2, *SHAPE)
    for channel, (low, high) in enumerate(ranges):
        levels = equalize_grey_levels(
            to_grey_levels(raw[channel], low, high), KERNEL, 0.01
        )
        expected = np.round(levels * (255 / (GREY_LEVELS - 1))).astype(np.uint8)
        np.testing.assert_array_equal(equalized[channel], expected)


def test_masked_voxels_count_as_the_darkest_intensity(tmp_path):
    raw = smooth_volume() + 50
    mask = np.ones(SHAPE, np.uint8)
    mask[:, :, :15] = 0
    write_array(tmp_path / "d.zarr/raw", raw)
    write_array(tmp_path / "d.zarr/mask", mask)
    write_array(tmp_path / "d.zarr/darkened", np.where(mask > 0, raw, 0))
    masked = clahe_task(
        tmp_path,
        "masked",
        mask_arr=Raw(store=tmp_path / "d.zarr/mask"),
        in_range=(40, 300),
        block_size=(6, 20, 20),
    )
    darkened = clahe_task(
        tmp_path,
        "expected",
        in_arr=Raw(store=tmp_path / "d.zarr/darkened"),
        in_range=(40, 300),
        block_size=(6, 20, 20),
    )
    result = run(masked, False)
    np.testing.assert_array_equal(result, run(darkened, False))
    unmasked = run(clahe_task(tmp_path, "plain", in_range=(40, 300)), False)
    assert not np.array_equal(result, unmasked)


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("kernel", [4, 0, 8], "kernel must be at least 1"),
        ("clip_limit", -0.1, "clip_limit"),
        ("in_range", "bright", "in_range 'bright' is not one of image, dtype"),
        ("in_range", (10, 10), r"in_range \[10.0, 10.0\]: low must be below high"),
        ("in_range", [], "in_range is an empty list"),
    ],
)
def test_bad_parameters_are_refused_at_construction(tmp_path, field, value, message):
    with pytest.raises(ValidationError, match=message):
        clahe_task(tmp_path, **{field: value})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kernel": [8, 8]}, r"CLAHE.kernel \(8, 8\) has 2 values; .* has 3 spatial"),
        (
            {"in_range": [(0, 1), (0, 2)]},
            "CLAHE.in_range has 2 ranges; .* has 1 channels",
        ),
        (
            {"mask_arr": Raw(store="d.zarr/two_channel_mask")},
            "CLAHE.mask_arr: .* has channels",
        ),
        ({"in_range": "dtype"}, "CLAHE.in_range: 'dtype' has no range for complex64"),
    ],
)
def test_bad_inputs_are_refused_before_any_block_runs(tmp_path, kwargs, message):
    dtype = np.complex64 if kwargs.get("in_range") == "dtype" else np.float32
    write_array(tmp_path / "d.zarr/raw", np.ones(SHAPE, dtype))
    write_array(tmp_path / "d.zarr/two_channel_mask", np.ones((2, *SHAPE), np.uint8))
    with pytest.raises(ValueError, match=message):
        run(clahe_task(tmp_path, **kwargs))
    assert not (tmp_path / "d.zarr/out").exists()


def test_image_range_of_an_input_written_upstream_is_refused(tmp_path):
    write_array(tmp_path / "d.zarr/raw", smooth_volume())
    upstream = LambdaTask(
        in_data=Raw(store=tmp_path / "d.zarr/raw"),
        out_data=Raw(store=tmp_path / "d.zarr/smoothed"),
        lambda_func="numpy:sqrt",
        block_size=SHAPE,
    )
    clahe = clahe_task(tmp_path, in_arr=Raw(store=tmp_path / "d.zarr/smoothed"))
    with pytest.raises(ValueError, match="CLAHE.in_range: 'image' needs the whole"):
        (upstream + clahe).run_blockwise()
    assert not (tmp_path / "d.zarr/out").exists()

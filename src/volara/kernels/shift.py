"""Rigid shifts between image blocks: measuring, cleaning, interpolating and
applying them.

Sign convention, shared by every function here: a shift is the translation
that moves the moving image onto the reference. A feature at position ``p``
of the moving image sits at ``p + shift`` in the reference, so the aligned
image is ``aligned(x) = moving(x - shift(x))``. This is the convention of
`skimage.registration.phase_cross_correlation`.

Shift grids are channel-first per vector: ``(dims, *grid_shape)``, one vector
of ``dims`` components per grid cell.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from skimage.registration import phase_cross_correlation

DEFAULT_UPSAMPLE_FACTOR = 10
"""Unmasked shifts are measured to 1/10 of a voxel."""
DEFAULT_OVERLAP_RATIO = 0.3
"""skimage's default minimal overlap of the masks, as a fraction of the mask."""


def measure_shift(
    moving: np.ndarray,
    reference: np.ndarray,
    mask: np.ndarray | None = None,
    overlap_ratio: float | None = None,
    upsample_factor: int = DEFAULT_UPSAMPLE_FACTOR,
) -> np.ndarray:
    """The shift, in voxels (float, one value per axis), that moves
    ``moving`` onto ``reference``, by cross-correlation in Fourier space
    (`skimage.registration.phase_cross_correlation`), to
    ``1 / upsample_factor`` of a voxel.

    With a ``mask`` (nonzero where the images are valid, same for both
    images) the correlation is computed in real space on the masked voxels
    only, to whole voxels; ``overlap_ratio`` is then the least overlap of the
    masks a shift may leave. Returns zeros where nothing can be measured: an
    empty mask, or an image without texture.
    """
    no_shift = np.zeros(moving.ndim)
    if _is_flat(moving) or _is_flat(reference):
        return no_shift
    if mask is not None:
        valid = mask != 0
        if not valid.any():
            return no_shift
        shift, _, _ = phase_cross_correlation(
            reference,
            moving,
            reference_mask=valid,
            moving_mask=valid,
            overlap_ratio=(
                DEFAULT_OVERLAP_RATIO if overlap_ratio is None else overlap_ratio
            ),
        )
    else:
        shift = _windowed_shift(moving, reference, upsample_factor)
    shift = np.asarray(shift, dtype=np.float64)
    return np.where(np.isfinite(shift), shift, 0.0)


def _windowed_shift(
    moving: np.ndarray, reference: np.ndarray, upsample_factor: int
) -> np.ndarray:
    # Plain cross-correlation of mean-free, Hann-windowed blocks: the window
    # removes the false peak at zero that the blocks' cut edges cause, and
    # without phase normalization smooth images (little power at high
    # frequencies) still give sub-voxel shifts. The window also pulls the
    # peak towards zero, in proportion to the shift: so the whole-voxel part
    # found first is undone (by a roll, whose wrapped edges the window
    # hides) and only the small remainder is measured with that bias.
    windowed_reference = _windowed(reference)
    coarse, _, _ = phase_cross_correlation(
        windowed_reference, _windowed(moving), normalization=None
    )
    whole = np.rint(coarse).astype(int)
    undone = np.roll(moving, tuple(whole), axis=tuple(range(moving.ndim)))
    rest, _, _ = phase_cross_correlation(
        windowed_reference,
        _windowed(undone),
        upsample_factor=upsample_factor,
        normalization=None,
    )
    return whole + rest


def _windowed(image: np.ndarray) -> np.ndarray:
    values = image.astype(np.float64)
    return (values - values.mean()) * hann_window(values.shape)


def hann_window(shape: Sequence[int]) -> np.ndarray:
    """A separable Hann window, 1 in the centre, falling towards (but never
    reaching) 0 at the borders, so that thin axes keep their voxels."""
    window = np.ones(tuple(shape))
    for axis, size in enumerate(shape):
        profile = np.hanning(size + 2)[1:-1]
        window *= profile.reshape([-1 if a == axis else 1 for a in range(len(shape))])
    return window


def _is_flat(image: np.ndarray) -> bool:
    return image.size == 0 or bool(np.all(image == image.flat[0]))


def measure_channel_shifts(
    moving: np.ndarray,
    reference: np.ndarray,
    voxel_size: Sequence[int],
    mask: np.ndarray | None = None,
    overlap_ratio: float | None = None,
) -> np.ndarray:
    """The shift of every channel of ``moving`` (``(channels, *spatial)``)
    onto ``reference`` (``spatial``), in world units: ``(channels, dims)``."""
    scale = np.asarray(voxel_size, dtype=np.float64)
    return np.stack(
        [
            measure_shift(channel, reference, mask, overlap_ratio) * scale
            for channel in moving
        ]
    )


def ignored_shifts(shift_grid: np.ndarray, threshold: float | None) -> np.ndarray:
    """Cells whose shift cannot be trusted: not finite, or longer (Euclidean
    length) than ``threshold``. Boolean, shaped like the grid."""
    ignored = ~np.all(np.isfinite(shift_grid), axis=0)
    if threshold is not None:
        with np.errstate(invalid="ignore"):
            ignored |= np.linalg.norm(shift_grid, axis=0) > threshold
    return ignored


def fill_ignored_shifts(shift_grid: np.ndarray, ignored: np.ndarray) -> np.ndarray:
    """Replace each ignored cell's shift by the mean shift of its trusted
    direct neighbours (including diagonal ones); zero if it has none.

    Only direct neighbours are used, so a cell gets the same value from any
    window that contains it and its neighbours: blocks filling the same cell
    independently agree.
    """
    if not ignored.any():
        return shift_grid.copy()
    trusted = ~ignored
    footprint = np.ones((3,) * ignored.ndim)
    counts = ndimage.convolve(trusted.astype(np.float64), footprint, mode="constant")
    filled = shift_grid.astype(np.float64)
    for component in filled:
        sums = ndimage.convolve(
            np.where(trusted, component, 0.0), footprint, mode="constant"
        )
        means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
        component[ignored] = means[ignored]
    return filled


def interpolate_shifts(shift_grid: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Shifts at ``points`` (``(dims, *points_shape)``, in grid cell units:
    cell ``i``'s centre is at ``i``), linear between cell centres and equal to
    the nearest cell beyond the outer centres. Returns ``(dims,
    *points_shape)``."""
    return np.stack(
        [
            ndimage.map_coordinates(
                component.astype(np.float64), points, order=1, mode="nearest"
            )
            for component in shift_grid
        ]
    )


def grid_points(
    shape: Sequence[int],
    start: Sequence[float] | np.ndarray,
    step: Sequence[float] | np.ndarray,
) -> np.ndarray:
    """Coordinates ``start + index * step`` of every voxel of a block of
    ``shape``, per axis: ``(dims, *shape)``."""
    axes = [
        first + delta * np.arange(size, dtype=np.float64)
        for size, first, delta in zip(shape, start, step, strict=True)
    ]
    return np.stack(np.meshgrid(*axes, indexing="ij"))


def warp(
    image: np.ndarray, shifts_voxels: np.ndarray, offset: Sequence[int]
) -> np.ndarray:
    """``aligned(x) = image(x - shift(x))`` for the block of voxels starting
    at index ``offset`` of ``image`` (may lie outside it), with linear
    interpolation; sources outside ``image`` read as ``0``.

    ``shifts_voxels`` is ``(dims, *block_shape)`` in voxels. The result has
    ``image``'s dtype (integers are rounded and clipped to their range).
    """
    block_shape = shifts_voxels.shape[1:]
    points = grid_points(block_shape, offset, [1.0] * len(block_shape))
    values = ndimage.map_coordinates(
        image.astype(np.float64),
        points - shifts_voxels,
        order=1,
        # as if padded with zeros: samples next to the border mix with 0
        mode="grid-constant",
        cval=0.0,
    )
    return _as_dtype(values, image.dtype)


def _as_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        limits = np.iinfo(dtype)
        values = np.clip(np.rint(values), limits.min, limits.max)
    return values.astype(dtype)

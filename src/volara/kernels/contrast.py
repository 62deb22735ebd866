"""Contrast-limited adaptive histogram equalization (CLAHE) that gives the
same result block by block as on the whole volume.

skimage's CLAHE cuts the image into tiles of ``kernel_size`` voxels, starting
at the image's first voxel, equalizes each tile's clipped histogram, and
interpolates per voxel between the mappings of the nearest tile centres. Its
result at a voxel depends on

- the intensity scale. skimage's public `equalize_adapthist` stretches each
  call's own minimum..maximum to its grey levels, and its output again, so
  two blocks would get two different scales. Here both are fixed: input
  through `to_grey_levels` with one range for the whole volume, output in
  grey levels;
- the two nearest tiles along each axis. A call sees the same tiles as a call
  on the whole volume when it starts on the volume's tile grid and reaches one
  whole tile beyond the tiles holding the voxels wanted
  (`exact_read_region`).

With both, a block's result is the whole volume's result voxel for voxel:
the same arithmetic in the same order. That holds at the volume border too,
because reads are clipped to the volume exactly where the whole-volume call
ends.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The core of skimage.exposure.equalize_adapthist, without its per-call
# rescaling of input and output (see the module docstring).
from skimage.exposure._adapthist import _clahe

GREY_LEVELS = 2**14
"""The number of integer grey levels skimage's CLAHE works with."""


def to_grey_levels(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map intensities linearly from ``[low, high]`` to the grey levels
    ``0 .. GREY_LEVELS - 1`` (uint16), clipping values outside the range.

    An empty range (``high <= low``, e.g. a constant volume) maps every value
    to 0."""
    if high <= low:
        return np.zeros(values.shape, np.uint16)
    # the operations of skimage's rescale_intensity, in the same order
    scaled = (np.clip(values.astype(np.float64), low, high) - low) / (high - low)
    return np.round(scaled * (GREY_LEVELS - 1)).astype(np.uint16)


def equalize_grey_levels(
    levels: np.ndarray,
    kernel_size: Sequence[int],
    clip_limit: float,
    nbins: int = 256,
) -> np.ndarray:
    """CLAHE of grey levels from `to_grey_levels`, returned as grey levels of
    the same scale (uint16).

    ``kernel_size`` is the tile size in voxels, one value per axis;
    ``clip_limit`` caps each histogram bin at that fraction of a tile's
    voxels (0 or at least 1: no cap, plain adaptive equalization); ``nbins``
    histogram bins."""
    if levels.ndim != len(kernel_size):
        raise ValueError(
            f"kernel_size {tuple(kernel_size)} needs one value per axis of the "
            f"data, which has shape {levels.shape}"
        )
    return _clahe(levels, [int(k) for k in kernel_size], clip_limit, nbins)


def grey_levels_to_uint8(levels: np.ndarray) -> np.ndarray:
    """Grey levels ``0 .. GREY_LEVELS - 1`` as ``0 .. 255``, rounded."""
    return np.round(levels * (255 / (GREY_LEVELS - 1))).astype(np.uint8)


def exact_read_region(
    start: Sequence[int],
    stop: Sequence[int],
    kernel_size: Sequence[int],
    volume_start: Sequence[int],
    volume_stop: Sequence[int],
) -> tuple[list[int], list[int]]:
    """The region, ``(starts, stops)`` in voxels, that a CLAHE call must cover
    for its result on ``[start, stop)`` to equal the result of a call on the
    whole volume ``[volume_start, volume_stop)``.

    Per axis: from one whole tile before the tile holding ``start`` to one
    whole tile after the tile holding ``stop - 1``, on the tile grid that
    starts at ``volume_start``, clipped to the volume."""
    starts, stops = [], []
    for first, end, tile, lower, upper in zip(
        start, stop, kernel_size, volume_start, volume_stop, strict=True
    ):
        first_tile = (first - lower) // tile
        end_tile = -(-(end - lower) // tile)  # one past the tile holding end - 1
        starts.append(max(lower, lower + (first_tile - 1) * tile))
        stops.append(min(upper, lower + (end_tile + 1) * tile))
    return starts, stops

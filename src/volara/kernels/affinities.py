"""Affinities between voxels and their neighbors along fixed offsets.

Convention (the one `mwatershed` and `volara.datasets.Affs` use): channel
``c`` at voxel ``x`` is the affinity between ``x`` and ``x + offset[c]``.
Pairs whose second voxel falls outside the array have affinity 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def offset_slices(
    shape: Sequence[int], offset: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Index the voxel pairs ``(x, x + offset)`` that both lie in ``shape``.

    Returns ``(first, second)``: ``array[first]`` holds every ``x`` whose
    partner is inside, ``array[second]`` the partners, in the same order.
    Works for negative offsets and any number of dimensions. An offset at least
    as long as an axis leaves both empty.
    """
    if len(shape) != len(offset):
        raise ValueError(
            f"offset {tuple(offset)} has {len(offset)} values, the array has "
            f"{len(shape)} dimensions"
        )
    first, second = [], []
    for size, step in zip(shape, offset, strict=True):
        step = int(step)
        if abs(step) >= size:
            first.append(slice(0, 0))
            second.append(slice(0, 0))
        elif step >= 0:
            first.append(slice(0, size - step))
            second.append(slice(step, size))
        else:
            first.append(slice(-step, size))
            second.append(slice(0, size + step))
    return tuple(first), tuple(second)


def affinities_from_labels(
    labels: np.ndarray,
    neighborhood: Sequence[Sequence[int]],
    dtype: type | np.dtype = np.float32,
) -> np.ndarray:
    """Ground-truth affinities of a label volume, channels first.

    Channel ``c`` is 1 at voxel ``x`` when ``x`` and ``x + neighborhood[c]``
    carry the same non-zero label, else 0 (background 0 has no affinity to
    anything, not even to itself). Output shape: ``(len(neighborhood),
    *labels.shape)``.
    """
    labels = np.asarray(labels)
    affs = np.zeros((len(neighborhood), *labels.shape), dtype=dtype)
    for channel, offset in enumerate(neighborhood):
        first, second = offset_slices(labels.shape, offset)
        here, there = labels[first], labels[second]
        affs[channel][first] = (here == there) & (here != 0)
    return affs


def pair_mask(mask: np.ndarray, neighborhood: Sequence[Sequence[int]]) -> np.ndarray:
    """Per channel, whether both voxels of the pair ``(x, x + offset)`` lie in
    ``mask`` (a boolean array); shape ``(len(neighborhood), *mask.shape)``."""
    mask = np.asarray(mask, dtype=bool)
    both = np.zeros((len(neighborhood), *mask.shape), dtype=bool)
    for channel, offset in enumerate(neighborhood):
        first, second = offset_slices(mask.shape, offset)
        both[channel][first] = mask[first] & mask[second]
    return both

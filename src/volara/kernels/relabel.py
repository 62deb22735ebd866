"""Replace label values through a mapping (fragment id -> segment id)."""

from __future__ import annotations

import numpy as np


def sorted_mapping(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(src, dst)`` as uint64, sorted by ``src``, ready for `relabel`."""
    src = np.asarray(src, dtype=np.uint64).ravel()
    dst = np.asarray(dst, dtype=np.uint64).ravel()
    if src.shape != dst.shape:
        raise ValueError(
            f"mapping needs as many targets as sources, got {src.size} and {dst.size}"
        )
    order = np.argsort(src, kind="stable")
    return np.ascontiguousarray(src[order]), np.ascontiguousarray(dst[order])


def map_values(
    values: np.ndarray, src_sorted: np.ndarray, dst_sorted: np.ndarray
) -> np.ndarray:
    """Map each value found in ``src_sorted`` to its ``dst``; others stay as
    they are."""
    values = np.asarray(values, dtype=np.uint64)
    if src_sorted.size == 0:
        return values.copy()
    index = np.searchsorted(src_sorted, values)
    index[index == src_sorted.size] = 0
    found = src_sorted[index] == values
    return np.where(found, dst_sorted[index], values)


def relabel(
    labels: np.ndarray, src_sorted: np.ndarray, dst_sorted: np.ndarray
) -> np.ndarray:
    """``labels`` with every value in ``src_sorted`` replaced by its ``dst``.

    Values without an entry keep their value. Label volumes are made of long
    runs of one value along the last axis, so only the first value of each run
    is looked up; the cost is a few linear passes plus one binary search per
    run, not per voxel.
    """
    labels = np.asarray(labels)
    flat = labels.ravel()
    if flat.size == 0:
        return np.zeros(labels.shape, dtype=np.uint64)
    run_starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    run_starts = np.concatenate([[0], run_starts])
    run_lengths = np.diff(np.append(run_starts, flat.size))
    mapped = map_values(flat[run_starts], src_sorted, dst_sorted)
    return np.repeat(mapped, run_lengths).reshape(labels.shape)

"""Label helpers of volara 1.0.5's public API, kept for scripts that import
them: affinities from a segmentation, and replacing label values through a
mapping.

Each is a thin wrapper over the one implementation volara itself uses
(`volara.kernels.affinities`, `volara.kernels.relabel`), giving it volara
1.0.5's signature and result: same shapes, same dtypes, same values. The
only difference is that these never need compiling (volara 1.0.5 compiled
them with numba on first use), so `warmup_replace_values_sorted` has nothing
left to do.

For new code, call the kernels directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .kernels.affinities import affinities_from_labels
from .kernels.relabel import relabel, sorted_mapping

__all__ = [
    "filter_mapping_to_block",
    "prepare_mapping",
    "replace_values",
    "replace_values_sorted",
    "seg_to_affgraph",
    "warmup_replace_values_sorted",
]


def seg_to_affgraph(seg: np.ndarray, nhood: Sequence[Sequence[int]]) -> np.ndarray:
    """Ground-truth affinities of the label array ``seg``, as int32 of shape
    ``(len(nhood), *seg.shape)``.

    Channel ``e`` is 1 at voxel ``x`` when ``x`` and ``x + nhood[e]`` both
    carry the same label greater than 0, else 0 (also where ``x + nhood[e]``
    lies outside the array). Each offset in ``nhood`` has one value per axis
    of ``seg``, in voxels. volara 1.0.5 accepted 2D and 3D only; any number
    of axes works here.
    """
    seg = np.asarray(seg)
    offsets = [tuple(int(step) for step in offset) for offset in nhood]
    if not np.issubdtype(seg.dtype, np.unsignedinteger):
        # only labels above 0 are objects (negative ones are background too)
        seg = np.where(seg > 0, seg, 0)
    return affinities_from_labels(seg, offsets, dtype=np.int32)


def replace_values(arr: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``arr`` with every value found in ``src`` replaced by the value of
    ``dst`` at the same index; other values stay. Returns a new array of
    ``arr``'s shape and dtype. If a value occurs more than once in ``src``,
    its last entry counts."""
    src = np.asarray(src).ravel()
    dst = np.asarray(dst).ravel()
    # keep the last entry of each repeated source value
    reversed_src = src[::-1]
    _, first_in_reversed = np.unique(reversed_src, return_index=True)
    keep = np.sort(src.size - 1 - first_in_reversed)
    return replace_values_sorted(arr, *prepare_mapping(src[keep], dst[keep]))


def prepare_mapping(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(src, dst)`` as contiguous uint64 arrays sorted by ``src`` (pairs
    kept together), ready for `filter_mapping_to_block` and
    `replace_values_sorted`."""
    return sorted_mapping(src, dst)


def filter_mapping_to_block(
    in_frags: np.ndarray, src_sorted: np.ndarray, dst_sorted: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The entries of a sorted mapping whose source value occurs in
    ``in_frags``, still sorted, as contiguous arrays: a smaller table for
    relabelling that one block."""
    src_sorted = np.asarray(src_sorted)
    dst_sorted = np.asarray(dst_sorted)
    present = np.unique(np.asarray(in_frags))
    index = np.searchsorted(src_sorted, present)
    inside = index < src_sorted.size
    index, present = index[inside], present[inside]
    # one entry per present value: the first of its run in src_sorted
    index = index[src_sorted[index] == present]
    return (
        np.ascontiguousarray(src_sorted[index]),
        np.ascontiguousarray(dst_sorted[index]),
    )


def replace_values_sorted(
    arr: np.ndarray, src_sorted: np.ndarray, dst_sorted: np.ndarray
) -> np.ndarray:
    """``arr`` with every value found in ``src_sorted`` (sorted ascending, as
    `prepare_mapping` returns it) replaced by the ``dst_sorted`` value at the
    same index; other values stay. Returns a new array of ``arr``'s shape and
    dtype."""
    arr = np.asarray(arr)
    src = np.asarray(src_sorted, dtype=np.uint64)
    dst = np.asarray(dst_sorted, dtype=np.uint64)
    return relabel(arr, src, dst).astype(arr.dtype, copy=False)


def warmup_replace_values_sorted() -> None:
    """Kept for scripts that call it. volara 1.0.5 ran the relabel once on a
    tiny array so that numba compiled it before timed work; nothing here
    needs compiling, so this only checks that the relabel runs."""
    replace_values_sorted(
        np.zeros((4, 4, 4), dtype=np.uint64),
        np.zeros(1, dtype=np.uint64),
        np.zeros(1, dtype=np.uint64),
    )

"""The relabel kernel on cases checkable by hand, and on a large block."""

from __future__ import annotations

import numpy as np
import pytest

from volara.kernels.relabel import map_values, relabel, sorted_mapping


def test_sorted_mapping_sorts_by_source():
    src, dst = sorted_mapping([5, 1, 3], [50, 10, 30])
    assert src.dtype == dst.dtype == np.uint64
    np.testing.assert_array_equal(src, [1, 3, 5])
    np.testing.assert_array_equal(dst, [10, 30, 50])


def test_sorted_mapping_needs_equal_lengths():
    with pytest.raises(ValueError, match="as many targets as sources"):
        sorted_mapping([1, 2], [3])


def test_map_values_by_hand():
    src, dst = sorted_mapping([2, 4], [20, 40])
    np.testing.assert_array_equal(
        map_values(np.array([0, 2, 3, 4, 5]), src, dst), [0, 20, 3, 40, 5]
    )


def test_relabel_by_hand():
    labels = np.array([[[0, 1, 1], [2, 2, 7]], [[7, 7, 3], [0, 0, 9]]], dtype=np.uint32)
    src, dst = sorted_mapping([1, 2, 3, 9], [100, 100, 5, 0])
    expected = np.array([[[0, 100, 100], [100, 100, 7]], [[7, 7, 5], [0, 0, 0]]])
    result = relabel(labels, src, dst)
    assert result.dtype == np.uint64
    assert result.shape == labels.shape
    np.testing.assert_array_equal(result, expected)


def test_unmapped_values_are_kept():
    labels = np.array([4, 4, 8, 0, 15])
    src, dst = sorted_mapping([8], [80])
    np.testing.assert_array_equal(relabel(labels, src, dst), [4, 4, 80, 0, 15])


def test_values_above_every_source_are_kept():
    # searchsorted puts them past the end of the table
    src, dst = sorted_mapping([1, 2], [10, 20])
    np.testing.assert_array_equal(
        relabel(np.array([3, 2, 1000]), src, dst), [3, 20, 1000]
    )


def test_empty_inputs():
    src, dst = sorted_mapping([], [])
    np.testing.assert_array_equal(relabel(np.array([1, 2]), src, dst), [1, 2])
    assert relabel(np.zeros((0, 3), np.uint64), *sorted_mapping([1], [2])).shape == (
        0,
        3,
    )


def test_large_uint64_ids():
    big = np.uint64(2**63 + 5)
    src, dst = sorted_mapping(np.array([big]), np.array([1], np.uint64))
    np.testing.assert_array_equal(
        relabel(np.array([big, 3], np.uint64), src, dst), [1, 3]
    )


def test_relabel_of_a_large_block_with_a_large_table():
    # 10^7 voxels of runs of fragment ids, 10^6 table entries
    rng = np.random.default_rng(0)
    shape = (100, 200, 500)
    fragments = np.repeat(
        rng.integers(1, 2_000_000, size=shape[0] * shape[1] * 25, dtype=np.uint64), 20
    ).reshape(shape)
    table_src = rng.choice(
        np.arange(1, 2_000_000, dtype=np.uint64), 1_000_000, replace=False
    )
    table_dst = table_src * np.uint64(3) + np.uint64(1)
    result = relabel(fragments, *sorted_mapping(table_src, table_dst))
    assert result.shape == shape

    lookup = dict(zip(table_src.tolist(), table_dst.tolist(), strict=True))
    piece = fragments[50, 100:110].ravel().tolist()
    expected = [lookup.get(value, value) for value in piece]
    np.testing.assert_array_equal(result[50, 100:110].ravel(), expected)
    # both mapped and unmapped ids occur in the checked piece
    assert any(value in lookup for value in piece)
    assert any(value not in lookup for value in piece)

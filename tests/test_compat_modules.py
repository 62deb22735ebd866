"""Modules and names of volara 1.0.5's API that scripts import:
`volara.segment_utils` and its deprecated alias `volara.tmp`,
`volara.blockwise.register`, `volara.blockwise.intensity_correction`, and
the registry names `BLOCKWISE_TASKS`, `discover_tasks`,
`get_blockwise_tasks_type` and the ``lut`` entry point."""

from __future__ import annotations

import importlib
import subprocess
import sys
from importlib.metadata import entry_points
from typing import Literal

import numpy as np
import pytest
from pydantic import ValidationError

import volara.segment_utils as segment_utils
from volara.blockwise import (
    BLOCKWISE_TASKS,
    BUILTIN_TASKS,
    CLAHE,
    ApplyShift,
    ComputeShift,
    Relabel,
    Threshold,
    available_task_types,
    discover_tasks,
    get_blockwise_tasks_type,
    get_task,
    load_task,
)
from volara.blockwise import registry as registry_module
from volara.datasets import Labels, Raw
from volara.lut import LUT
from volara.segment_utils import (
    filter_mapping_to_block,
    prepare_mapping,
    replace_values,
    replace_values_sorted,
    seg_to_affgraph,
    warmup_replace_values_sorted,
)

PUBLIC = [
    "filter_mapping_to_block",
    "prepare_mapping",
    "replace_values",
    "replace_values_sorted",
    "seg_to_affgraph",
    "warmup_replace_values_sorted",
]

# ------------------------------------------------------------ seg_to_affgraph


def test_seg_to_affgraph_by_hand():
    seg = np.array([[1, 1, 2], [1, 0, 2]], dtype=np.uint64)
    affs = seg_to_affgraph(seg, [[1, 0], [0, 1], [0, -1]])
    assert affs.dtype == np.int32 and affs.shape == (3, 2, 3)
    # (1, 0): each voxel with the one below it
    np.testing.assert_array_equal(affs[0], [[1, 0, 1], [0, 0, 0]])
    # (0, 1): each voxel with the one to its right
    np.testing.assert_array_equal(affs[1], [[1, 0, 0], [0, 0, 0]])
    # (0, -1): each voxel with the one to its left
    np.testing.assert_array_equal(affs[2], [[0, 1, 0], [0, 0, 0]])


def test_seg_to_affgraph_in_3d_and_beyond():
    seg = np.ones((3, 2, 2), dtype=np.uint32)
    seg[2] = 5
    affs = seg_to_affgraph(seg, [[1, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(affs[0, :, 0, 0], [1, 0, 0])
    assert affs[1, :, :, 0].all() and not affs[1, :, :, 1].any()
    four = seg_to_affgraph(np.ones((2, 2, 2, 2), np.uint8), [[0, 0, 0, 1]])
    assert four.shape == (1, 2, 2, 2, 2) and four[0, ..., 0].all()
    with pytest.raises(ValueError, match="offset"):
        seg_to_affgraph(seg, [[1, 0]])


def test_seg_to_affgraph_background_and_negative_labels_connect_nothing():
    assert not seg_to_affgraph(np.zeros((3, 3), np.uint64), [[1, 0], [0, 1]]).any()
    seg = np.array([[-1, -1, 3, 3]], dtype=np.int64)
    np.testing.assert_array_equal(seg_to_affgraph(seg, [[0, 1]])[0], [[0, 0, 1, 0]])


# ------------------------------------------------------------- replace_values


def test_replace_values_maps_listed_values_and_keeps_the_rest():
    arr = np.array([[1, 2], [3, 99]], dtype=np.int64)
    result = replace_values(arr, np.array([1, 2]), np.array([10, 20]))
    np.testing.assert_array_equal(result, [[10, 20], [3, 99]])
    assert result.dtype == np.int64
    np.testing.assert_array_equal(arr, [[1, 2], [3, 99]])  # a new array


def test_replace_values_full_uint64_range_and_repeated_sources():
    top = 2**64 - 1
    arr = np.array([top, 0, 5], dtype=np.uint64)
    result = replace_values(
        arr, np.array([top, 0], np.uint64), np.array([1, top], np.uint64)
    )
    np.testing.assert_array_equal(result, [1, top, 5])
    assert result.dtype == np.uint64
    # a repeated source value: its last entry counts
    repeated = replace_values(
        arr, np.array([5, 5], np.uint64), np.array([6, 7], np.uint64)
    )
    np.testing.assert_array_equal(repeated, [top, 0, 7])
    empty = np.zeros(0, np.uint64)
    np.testing.assert_array_equal(replace_values(arr, empty, empty), arr)


@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 4), (2, 2, 3, 3)])
def test_sorted_relabel_chain_equals_replace_values(shape):
    rng = np.random.default_rng(sum(shape))
    arr = rng.integers(0, 9, shape).astype(np.uint64)
    src = np.array([8, 0, 3, 5, 11], dtype=np.uint64)
    dst = np.array([80, 7, 30, 50, 110], dtype=np.uint64)
    src_sorted, dst_sorted = prepare_mapping(src, dst)
    block_src, block_dst = filter_mapping_to_block(arr, src_sorted, dst_sorted)
    result = replace_values_sorted(arr, block_src, block_dst)
    assert result.shape == shape and result.dtype == np.uint64
    np.testing.assert_array_equal(result, replace_values(arr, src, dst))


def test_prepare_mapping_sorts_pairs_together():
    src, dst = prepare_mapping([9, 3, 7], [90, 30, 70])
    np.testing.assert_array_equal(src, [3, 7, 9])
    np.testing.assert_array_equal(dst, [30, 70, 90])
    assert src.dtype == dst.dtype == np.uint64
    assert src.flags["C_CONTIGUOUS"] and dst.flags["C_CONTIGUOUS"]


def test_filter_mapping_to_block_keeps_one_entry_per_present_value():
    src, dst = prepare_mapping([1, 2, 4, 4, 6], [10, 20, 40, 41, 60])
    block = np.array([[4, 4], [6, 99]], dtype=np.uint64)
    block_src, block_dst = filter_mapping_to_block(block, src, dst)
    np.testing.assert_array_equal(block_src, [4, 6])
    np.testing.assert_array_equal(block_dst, [40, 60])
    none_src, none_dst = filter_mapping_to_block(np.array([7, 8]), src, dst)
    assert none_src.size == none_dst.size == 0
    np.testing.assert_array_equal(
        replace_values_sorted(block, none_src, none_dst), block
    )


def test_replace_values_sorted_keeps_the_dtype():
    arr = np.array([1, 2, 3], dtype=np.int32)
    src, dst = prepare_mapping([2], [20])
    result = replace_values_sorted(arr, src, dst)
    assert result.dtype == np.int32
    np.testing.assert_array_equal(result, [1, 20, 3])
    assert warmup_replace_values_sorted() is None


# ----------------------------------------------------------------- volara.tmp


def import_tmp_afresh():
    sys.modules.pop("volara.tmp", None)
    return importlib.import_module("volara.tmp")


def test_tmp_warns_and_names_its_replacement():
    with pytest.warns(DeprecationWarning, match=r"volara\.segment_utils"):
        tmp = import_tmp_afresh()
    for name in PUBLIC:
        assert getattr(tmp, name) is getattr(segment_utils, name), name
    assert sorted(tmp.__all__) == sorted(segment_utils.__all__) == PUBLIC


# ------------------------------------------------- register, intensity_correction


def test_volara1_task_modules_re_export_the_tasks():
    from volara.blockwise.intensity_correction import CLAHE as clahe
    from volara.blockwise.register import ApplyShift as apply_shift
    from volara.blockwise.register import ComputeShift as compute_shift

    assert compute_shift is ComputeShift
    assert apply_shift is ApplyShift
    assert clahe is CLAHE
    # as attributes of the package, without importing them first
    check = (
        "import volara.blockwise as b; "
        "assert b.register.ComputeShift is b.ComputeShift; "
        "assert b.register.ApplyShift is b.ApplyShift; "
        "assert b.intensity_correction.CLAHE is b.CLAHE"
    )
    subprocess.run([sys.executable, "-c", check], check=True)


# ------------------------------------------------------------------- registry


def test_lut_entry_point_names_relabel_which_registers_once():
    names = {ep.name: ep for ep in entry_points(group="volara.blockwise_tasks")}
    assert names["lut"].load() is Relabel
    assert names["relabel"].load() is Relabel
    discover_tasks()
    discover_tasks()  # again: nothing duplicated, nothing refused
    types = available_task_types()
    assert len(types) == len(set(types))
    assert get_task("relabel") is Relabel
    assert BLOCKWISE_TASKS.count(Relabel) == 1
    assert len(BLOCKWISE_TASKS) == len(set(BLOCKWISE_TASKS))
    assert set(BUILTIN_TASKS) <= set(BLOCKWISE_TASKS)


def test_blockwise_tasks_type_validates_any_task_by_its_task_type(tmp_path):
    adapter = get_blockwise_tasks_type()
    config = Threshold(
        in_data=Raw(store=tmp_path / "d.zarr/raw"),
        mask=Labels(store=tmp_path / "d.zarr/mask"),
        threshold=0.5,
        block_size=[2, 2, 2],
    ).model_dump(mode="json")
    task = adapter.validate_python(config)
    assert type(task) is Threshold and task == load_task(config)
    relabel = Relabel(
        frags_data=Labels(store="f.zarr/frags"),
        seg_data=Labels(store="f.zarr/segs"),
        lut=LUT(path=tmp_path / "lut"),
        block_size=[2, 2, 2],
    )
    assert adapter.validate_json(relabel.model_dump_json()) == relabel
    plugin = get_task("test-invert")  # the test plugin's entry point
    invert = plugin(
        in_data=Raw(store="d.zarr/raw"), out_data=Labels(store="d.zarr/out"),
        block_size=[2, 2, 2],
    )  # fmt: skip
    assert type(adapter.validate_json(invert.model_dump_json())) is plugin
    with pytest.raises(ValidationError, match="no-such-task"):
        adapter.validate_python({"task_type": "no-such-task"})


def test_a_class_appended_to_blockwise_tasks_is_registered():
    class Listed(Threshold):
        task_type: Literal["compat-listed"] = "compat-listed"  # type: ignore[assignment]

    BLOCKWISE_TASKS.append(Listed)
    try:
        assert get_task("compat-listed") is Listed
        assert "compat-listed" in available_task_types()
        assert BLOCKWISE_TASKS.count(Listed) == 1
    finally:
        BLOCKWISE_TASKS.remove(Listed)
        registry_module._registry.pop("compat-listed", None)

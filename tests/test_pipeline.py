"""Pipelines: ``a + b`` runs b after a, ``a | b`` side by side, and both
round trip through config files."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import write_array
from tasks_for_tests import AddArrays, WriteLUT
from volara.blockwise import Pipeline, Relabel, Threshold
from volara.blockwise.registry import (
    dump_config,
    load_pipeline,
    pipeline_config,
    read_config_file,
    register_task,
)
from volara.datasets import Labels, Raw
from volara.lut import LUT

RNG = np.random.default_rng(7)


def thresholds(tmp_path):
    raws = []
    for name in ("one", "two"):
        raw = RNG.random((4, 8, 8)).astype(np.float32)
        write_array(tmp_path / f"d.zarr/{name}", raw, voxel_size=(2, 1, 1))
        raws.append(raw)
    tasks = [
        Threshold(
            in_data=Raw(store=tmp_path / f"d.zarr/{name}"),
            mask=Labels(store=tmp_path / f"d.zarr/{name}_mask"),
            threshold=0.4,
            block_size=[2, 4, 4],
        )
        for name in ("one", "two")
    ]
    return tasks, raws


def relabel_mask(tmp_path) -> Relabel:
    LUT(path=tmp_path / "lut").save(np.array([[1], [7]]))
    return Relabel(
        frags_data=Labels(store=tmp_path / "d.zarr/one_mask"),
        seg_data=Labels(store=tmp_path / "d.zarr/seg"),
        lut=LUT(path=tmp_path / "lut"),
        block_size=[2, 4, 4],
    )


def values(dataset: Labels) -> np.ndarray:
    array = dataset.array()
    return array.to_ndarray(array.roi)


def edge_names(pipeline: Pipeline) -> set[tuple[str, str]]:
    return {(u.task_name, v.task_name) for u, v in pipeline.task_graph.edges}


# one worker process per task: every worker process pays ~1.5 s of imports
@pytest.mark.parametrize("multiprocessing", [True, False], ids=["processes", "serial"])
def test_sequence_runs_the_second_task_on_the_first_ones_output(
    tmp_path, multiprocessing
):
    (threshold, _), (raw, _) = thresholds(tmp_path)
    relabel = relabel_mask(tmp_path)
    pipeline = threshold + relabel
    assert isinstance(pipeline, Pipeline)
    assert edge_names(pipeline) == {("one_mask-threshold", "seg-relabel")}
    states = pipeline.run_blockwise(multiprocessing=multiprocessing)
    assert set(states) == {"one_mask-threshold", "seg-relabel"}
    assert all(s.completed_count == s.total_block_count == 8 for s in states.values())
    np.testing.assert_array_equal(values(relabel.seg_data), np.where(raw > 0.4, 7, 0))


def test_sequence_can_use_a_lut_written_upstream(tmp_path):
    # the LUT does not exist when the pipeline is checked: Relabel accepts
    # it because an upstream task declares it as an output
    (threshold, _), (raw, _) = thresholds(tmp_path)
    relabel = relabel_mask(tmp_path)
    LUT(path=tmp_path / "lut").drop()
    with pytest.raises(FileNotFoundError, match="LUT.path: no look-up table"):
        (threshold + relabel).run_blockwise(multiprocessing=False)
    write_lut = WriteLUT(
        lut=LUT(path=tmp_path / "lut"), table=[[1], [9]], roi=threshold.write_roi
    )
    pipeline = (threshold | write_lut) + relabel
    states = pipeline.run_blockwise(multiprocessing=False)
    assert states["lut-write-lut"].completed_count == 1
    np.testing.assert_array_equal(values(relabel.seg_data), np.where(raw > 0.4, 9, 0))


def test_parallel_runs_both(tmp_path):
    (one, two), (raw_one, raw_two) = thresholds(tmp_path)
    pipeline = one | two
    assert len(pipeline.tasks) == 2 and not edge_names(pipeline)
    states = pipeline.run_blockwise(multiprocessing=False)
    assert {name: s.completed_count for name, s in states.items()} == {
        "one_mask-threshold": 8,
        "two_mask-threshold": 8,
    }
    np.testing.assert_array_equal(values(one.mask), raw_one > 0.4)
    np.testing.assert_array_equal(values(two.mask), raw_two > 0.4)


def test_join_gives_the_last_task_two_upstream_edges(tmp_path):
    (one, two), (raw_one, raw_two) = thresholds(tmp_path)
    add = AddArrays(
        a=one.mask,
        b=two.mask,
        out=Labels(store=tmp_path / "d.zarr/sum"),
        block_size=[2, 4, 4],
    )
    pipeline = (one | two) + add
    assert edge_names(pipeline) == {
        ("one_mask-threshold", "sum-add"),
        ("two_mask-threshold", "sum-add"),
    }
    assert pipeline.tasks[-1] is add
    states = pipeline.run_blockwise(multiprocessing=False)
    assert all(s.completed_count == s.total_block_count == 8 for s in states.values())
    expected = (raw_one > 0.4).astype(np.uint16) + (raw_two > 0.4)
    np.testing.assert_array_equal(values(add.out), expected)
    assert values(add.out).max() == 2


def test_chaining_shapes():
    # pure graph construction: no data needed
    a, b, c, d = (
        Threshold(
            in_data=Raw(store=f"{n}.zarr/raw"),
            mask=Labels(store=f"{n}.zarr/{n}"),
            threshold=0,
            block_size=[1, 1, 1],
        )
        for n in "abcd"
    )
    names = {
        "a-threshold": "a",
        "b-threshold": "b",
        "c-threshold": "c",
        "d-threshold": "d",
    }

    def edges(p):
        return {(names[u], names[v]) for u, v in edge_names(p)}

    assert edges(a + b + c) == {("a", "b"), ("b", "c")}
    assert edges(a + (b | c) + d) == {("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")}
    assert edges((a + b) | (c + d)) == {("a", "b"), ("c", "d")}
    assert edges(a + (b + c)) == {("a", "b"), ("b", "c")}
    with pytest.raises(TypeError, match="cannot chain"):
        Pipeline(a) + 3


def test_duplicate_task_names_are_refused(tmp_path):
    (one, _), _ = thresholds(tmp_path)
    twin = one.model_copy(update={"threshold": 0.9})
    with pytest.raises(ValueError, match="share the name"):
        (one | twin).run_blockwise(multiprocessing=False)


def test_pipeline_drop(tmp_path):
    (threshold, _), _ = thresholds(tmp_path)
    relabel = relabel_mask(tmp_path)
    pipeline = threshold + relabel
    pipeline.run_blockwise(multiprocessing=False)
    assert threshold.meta_dir.exists() and relabel.meta_dir.exists()
    pipeline.drop(drop_outputs=False)
    assert not threshold.meta_dir.exists() and not relabel.meta_dir.exists()
    assert threshold.mask.exists() and relabel.seg_data.exists()
    states = pipeline.run_blockwise(multiprocessing=False)
    assert all(s.skipped_count == 0 for s in states.values())
    pipeline.drop()  # deletes the outputs too, as in volara 1.0.5
    assert not threshold.mask.exists() and not relabel.seg_data.exists()


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_pipeline_round_trips_through_config_files(tmp_path, suffix):
    register_task(AddArrays)
    (one, two), _ = thresholds(tmp_path)
    add = AddArrays(
        a=one.mask,
        b=two.mask,
        out=Labels(store=tmp_path / "d.zarr/sum"),
        block_size=[2, 4, 4],
    )
    pipeline = (one | two) + add + relabel_mask(tmp_path)
    config = pipeline_config(pipeline)
    assert len(config["tasks"]) == 4 and len(config["edges"]) == 3
    dump_config(config, tmp_path / f"pipeline{suffix}")
    loaded = load_pipeline(read_config_file(tmp_path / f"pipeline{suffix}"))
    assert sorted(loaded.tasks, key=lambda t: t.task_name) == sorted(
        pipeline.tasks, key=lambda t: t.task_name
    )
    assert edge_names(loaded) == edge_names(pipeline)
    assert edge_names(load_pipeline(pipeline_config(loaded))) == edge_names(pipeline)
    # a single task is a pipeline too
    single = load_pipeline(pipeline_config(one))
    assert single.tasks == [one]
    assert load_pipeline(one.model_dump(mode="json")).tasks == [one]


def test_malformed_pipeline_configs(tmp_path):
    (one, _), _ = thresholds(tmp_path)
    with pytest.raises(ValueError, match="'tasks' list"):
        load_pipeline({"steps": []})
    with pytest.raises(ValueError, match=r"pipeline edge \[0, 5\]"):
        load_pipeline({"tasks": [one.model_dump(mode="json")], "edges": [[0, 5]]})
    cyclic = {"tasks": [one.model_dump(mode="json")] * 2, "edges": [[0, 1], [1, 0]]}
    with pytest.raises(ValueError, match="cycles"):
        load_pipeline(cyclic)

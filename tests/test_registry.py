"""The task registry: built-in and plugin tasks by ``task_type``, unique
tags, round trips of every built-in task, and a plugin task run blockwise."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution

import numpy as np
import pytest

from conftest import write_array
from volara.blockwise import (
    BUILTIN_TASKS,
    CLAHE,
    AffAgglom,
    ApplyShift,
    Argmax,
    AssembleLUT,
    ComputeShift,
    DistanceAgglom,
    ExtractFrags,
    FragSegEdgeAgglom,
    GraphMWS,
    GraphMWSBlocks,
    GraphMWSExtractFragments,
    IterativeGraphMWS,
    LambdaTask,
    Predict,
    Relabel,
    SeededExtractFrags,
    Threshold,
    available_task_types,
    get_task,
    load_task,
    register_task,
)
from volara.datasets import Affs, Labels, Raw
from volara.dbs import PostgreSQL, SQLite
from volara.lut import LUT
from volara.models import TorchModel
from volara.workers import LocalWorker, SlurmWorker

PLUGIN_HINT = (
    "the test plugin is not installed: run `pip install -e tests/plugin_pkg` "
    "(the CI script .ci/run does this)"
)


def plugin_task_class():
    try:
        distribution("volara-test-plugin")
    except PackageNotFoundError:
        pytest.fail(PLUGIN_HINT)
    task_class = get_task("test-invert")
    assert task_class.__module__ == "volara_test_plugin"
    return task_class


def example_tasks(tmp_path) -> dict[str, object]:
    """One configured instance per built-in task type."""
    raw = Raw(store=tmp_path / "d.zarr/raw", channels=[0], scale_shift=(2.0, 1.0))
    affs = Affs(
        store="d.zarr/affs", neighborhood=[[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 4]]
    )
    frags = Labels(store="d.zarr/frags")
    db = SQLite(
        path=tmp_path / "db.sqlite",
        node_attrs={"embedding": 3},
        edge_attrs={"adj_weight": "float", "lr_weight": "float"},
    )
    bias = [-0.4, -0.4, -0.4, -0.7]
    return {
        "compute_shift": ComputeShift(
            intensities=raw,
            target=Raw(store="d.zarr/target"),
            shifts=Raw(store="d.zarr/shifts"),
            block_size=[4, 4, 4],
            context=[1, 1, 1],
            mask=Labels(store="d.zarr/mask"),
            overlap_ratio=0.5,
        ),
        "apply_shifts": ApplyShift(
            intensities=raw,
            shifts=Raw(store="d.zarr/shifts"),
            aligned=Raw(store="d.zarr/aligned"),
            interp_shifts=Raw(store="d.zarr/interp"),
            shift_threshold=20.0,
        ),
        "clahe": CLAHE(
            in_arr=raw,
            out_arr=Raw(store="d.zarr/clahe"),
            mask_arr=Raw(store="d.zarr/mask"),
            kernel=[4, 8, 8],
            block_size=[4, 8, 8],
            in_range=(0, 255),
            clip_limit=0.02,
        ),
        "lambda": LambdaTask(
            in_data=raw,
            out_data=Raw(store="d.zarr/lambda"),
            lambda_func="numpy:negative",
            block_size=[4, 4, 4],
            context=[1, 1, 1],
            out_array_dtype="float32",
        ),
        "threshold": Threshold(
            in_data=raw,
            mask=Labels(store="d.zarr/mask"),
            threshold=0.2,
            block_size=[4, 4, 4],
            roi=[[0, 0, 0], [8, 8, 8]],
            num_workers=4,
            worker_config=SlurmWorker(queue="short"),
        ),
        "argmax": Argmax(
            probs_data=raw,
            sem_data=Labels(store="d.zarr/sem"),
            combine_classes=[[0, 1], [2]],
            block_size=[2, 2, 2],
            worker_config=LocalWorker(),
            num_cache_workers=2,
            timeout=30,
        ),
        "predict": Predict(
            checkpoint=TorchModel(
                save_path=tmp_path / "net.pt",
                checkpoint_file="weights.pt",
                in_channels=1,
                min_input_shape=[20, 20, 20],
                min_output_shape=[4, 4, 4],
                min_step_shape=[2, 2, 2],
                out_channels=[4, None],
                out_range=[-1, 1],
                pred_size_growth=[4, 8, 8],
                context_override=[[6, 8, 8], [10, 8, 8]],
            ),
            in_data=raw,
            out_data=[affs, None],
            num_cache_workers=3,
        ),
        "relabel": Relabel(
            frags_data=Labels(store="d.zarr/frags", voxel_size=[4, 4, 4]),
            seg_data=Labels(store="d.zarr/seg"),
            lut=LUT(path="lut"),
            block_size=[8, 8, 8],
            max_retries=0,
        ),
        "extract-frags": ExtractFrags(
            db=db,
            affs_data=affs,
            frags_data=frags,
            block_size=[4, 4, 4],
            context=[1, 1, 4],
            bias=bias,
            num_workers=2,
        ),
        "seeded-extract-frags": SeededExtractFrags(
            affs_data=affs,
            segs_data=Labels(store="d.zarr/segs"),
            graph_db=PostgreSQL(name="skeletons", host="db.example.org"),
            bias=bias,
            block_size=[4, 4, 4],
            context=[1, 1, 4],
        ),
        "aff-agglom": AffAgglom(
            db=db,
            affs_data=affs,
            frags_data=frags,
            block_size=[4, 4, 4],
            context=[1, 1, 4],
            scores={"adj_weight": [[1, 0, 0], [0, 1, 0]], "lr_weight": [[0, 0, 4]]},
        ),
        "distance-agglom": DistanceAgglom(
            storage=db,
            frags_data=frags,
            block_size=[4, 4, 4],
            context=[1, 1, 1],
            distance_keys=["embedding"],
            distance_metric="cosine",
        ),
        "graph-mws": GraphMWS(
            db=db,
            lut=LUT(path=tmp_path / "lut"),
            weights={"adj_weight": (1.0, -0.4), "lr_weight": (1.0, -0.7)},
            roi=[[0, 0, 0], [10, 10, 10]],
        ),
        **graph_level_examples(tmp_path, db),
    }


def graph_level_examples(tmp_path, db) -> dict[str, object]:
    """The tasks of blockwise graph agglomeration, on ``db``."""
    segments = db.sibling("segments")
    level = dict(
        fragments_db=db,
        segments_db=segments,
        lut=LUT(path=tmp_path / "level_lut"),
        roi=[[0, 0, 0], [10, 10, 10]],
        block_size=[5, 5, 5],
    )
    weights = {"adj_weight": (1.0, -0.4)}
    return {
        "graph-mws-blocks": GraphMWSBlocks(**level, weights=weights, context=[2, 2, 2]),
        "frag-seg-edge-agglom": FragSegEdgeAgglom(**level, edge_attrs=["adj_weight"]),
        "assemble-lut": AssembleLUT(
            lut=LUT(path=tmp_path / "level_lut"),
            roi=[[0, 0, 0], [10, 10, 10]],
            block_size=[5, 5, 5],
            below=[LUT(path=tmp_path / "lut")],
            composed=LUT(path=tmp_path / "composed"),
        ),
        "iterative-graph-mws": IterativeGraphMWS(**level, weights=weights),
        "graph-mws-extract-frags": GraphMWSExtractFragments(
            **level, weights=weights, edge_score="mean"
        ),
    }


def test_builtin_tasks_are_found_by_task_type():
    assert get_task("threshold") is Threshold
    assert get_task("argmax") is Argmax
    assert get_task("relabel") is Relabel
    assert {"threshold", "argmax", "relabel"} <= set(available_task_types())


def test_plugin_task_is_found_through_its_entry_point():
    task_class = plugin_task_class()
    assert task_class.__name__ == "Invert"
    assert "test-invert" in available_task_types()


def test_task_types_are_unique():
    classes = [*BUILTIN_TASKS, plugin_task_class()]
    tags = [cls.model_fields["task_type"].default for cls in classes]
    assert len(tags) == len(set(tags)), tags
    for tag, cls in zip(tags, classes, strict=True):
        assert get_task(tag) is cls


def test_every_builtin_task_round_trips_through_json(tmp_path):
    examples = example_tasks(tmp_path)
    missing = {cls.model_fields["task_type"].default for cls in BUILTIN_TASKS} - set(
        examples
    )
    assert not missing, f"add an example of {sorted(missing)} to example_tasks()"
    for task_type, task in examples.items():
        loaded = get_task(task_type).model_validate_json(task.model_dump_json())
        assert type(loaded) is type(task)
        assert loaded == task
        assert load_task(task.model_dump(mode="json")) == task


def test_unknown_task_type_lists_the_known_ones():
    with pytest.raises(
        ValueError, match=r"unknown task_type 'no-such-task'.*threshold"
    ):
        get_task("no-such-task")
    with pytest.raises(ValueError, match="'task_type' key"):
        load_task({"block_size": [1, 1, 1]})


def test_a_task_type_cannot_be_claimed_twice():
    class OtherThreshold(Threshold):
        pass

    with pytest.raises(ValueError, match="claimed by both"):
        register_task(OtherThreshold)
    register_task(Threshold)  # registering the same class again is fine


def test_plugin_task_runs_blockwise_with_two_workers(tmp_path):
    invert = plugin_task_class()
    data = np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8)
    write_array(tmp_path / "d.zarr/raw", data)
    task = invert(
        in_data=Raw(store=tmp_path / "d.zarr/raw"),
        out_data=Labels(store=tmp_path / "d.zarr/inverted"),
        block_size=[2, 4, 4],
        num_workers=2,
    )
    assert get_task("test-invert").model_validate_json(task.model_dump_json()) == task
    state = task.run_blockwise(multiprocessing=True)[task.task_name]
    assert state.completed_count == state.total_block_count == 8
    out = task.out_data.array()
    np.testing.assert_array_equal(out.to_ndarray(out.roi), 255 - data)

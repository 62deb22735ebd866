"""volara 1.0.5's benchmark on volara 2: `task.benchmark(...)` and
`pipeline.benchmark(..., out_dir=...)` run on spoofed outputs and databases,
never touching the real ones, and report per-stage times through
`volara.blockwise.benchmark.BenchmarkLogger`."""

from __future__ import annotations

import csv
import inspect
import pickle
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import networkx as nx
import numpy as np
import pytest
import zarr
from funlib.geometry import Roi

import volara.logging
from conftest import write_array
from tasks_for_tests import SlowCopy, WriteNodes
from volara.blockwise import Pipeline, Relabel, Threshold
from volara.blockwise.benchmark import BenchmarkLogger, partial_order
from volara.datasets import Dataset, Labels, Raw
from volara.dbs import DB, PostgreSQL, SQLite
from volara.lut import LUT

SENTINEL = 99
EVERYWHERE = Roi((-1000, -1000, -1000), (3000, 3000, 3000))
TIME_CELL = re.compile(r"^\d+\.\d{3}s ± \d+\.\d{3} \(idle: -?\d+\.\d{3}s\)$")


class TracedCopy(SlowCopy):
    """`SlowCopy` timing its own stage, as 1.0.5's tasks do."""

    task_type: Literal["test-compat-traced-copy"] = "test-compat-traced-copy"

    @contextmanager
    def process_block_func(self) -> Iterator:
        benchmark = self.get_benchmark_logger()
        with super().process_block_func() as copy_block:

            def process_block(block) -> None:
                with benchmark.trace("Copy"):
                    copy_block(block)

            yield process_block


class UndeclaredCopy(SlowCopy):
    """`SlowCopy` that does not declare the array it writes."""

    task_type: Literal["test-compat-undeclared"] = "test-compat-undeclared"

    @property
    def output_datasets(self) -> list[Dataset]:
        return []


def make_input(tmp_path: Path) -> Labels:
    data = (np.arange(8**3).reshape(8, 8, 8) % 7).astype(np.uint16)
    write_array(tmp_path / "in.zarr" / "labels", data, voxel_size=(2, 1, 1))
    return Labels(store=tmp_path / "in.zarr" / "labels")


def copy_task(tmp_path: Path, cls=SlowCopy, **kwargs) -> SlowCopy:
    return cls(
        in_data=make_input(tmp_path),
        out_data=Labels(store=tmp_path / "out.zarr" / "copy"),
        block_size=[4, 4, 4],
        **kwargs,
    )


def fill_with_sentinel(dataset: Labels) -> None:
    array = zarr.open_array(str(dataset.store), mode="r+")
    array[:] = SENTINEL


def untouched(dataset: Labels) -> bool:
    return bool((zarr.open_array(str(dataset.store), mode="r")[:] == SENTINEL).all())


def benchmark_dir(tmp_path: Path) -> Path:
    return tmp_path / "volara_benchmark_logs"


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as file:
        return list(csv.reader(file))


def graph_of(db: DB) -> tuple[dict, set]:
    reader = db.open("r")
    try:
        graph = reader.read_graph(EVERYWHERE)
    finally:
        reader.close()
    return dict(graph.nodes(data="size")), {frozenset(e) for e in graph.edges}


def test_task_benchmark_never_touches_real_outputs_and_reports_stages(tmp_path):
    task = copy_task(tmp_path, num_workers=2)
    task.run_blockwise(multiprocessing=False)
    fill_with_sentinel(task.out_data)
    out_dir = tmp_path / "report"

    summary = task.benchmark(out_dir=out_dir)  # real daisy workers

    # the real output and the real block tracking are as they were
    assert untouched(task.out_data)
    state = task.run_blockwise(multiprocessing=False)[task.task_name]
    assert state.skipped_count == 8
    assert volara.logging.get_log_basedir() == tmp_path / "volara_logs"
    assert not (benchmark_dir(tmp_path) / "spoof").exists()
    # per-stage times, under the real task's name
    assert list(summary) == [task.task_name]
    stages = summary[task.task_name]
    assert list(stages) == [
        "init",
        "Process Block Setup",
        "Acquire Block",
        "Process Block",
    ]
    assert stages["init"]["count"] == 1 and stages["Process Block"]["count"] == 8
    assert 1 <= stages["Process Block Setup"]["count"] <= 2
    assert all(s["wall_mean"] >= 0 and s["wall_std"] >= 0 for s in stages.values())
    # the table has 1.0.5's columns; the blocks were timed in the workers
    db = sqlite3.connect(benchmark_dir(tmp_path) / "benchmark.db")
    columns = [row[1] for row in db.execute("PRAGMA table_info(benchmark)")]
    assert columns == [
        "task",
        "worker_id",
        "operation",
        "duration",
        "cpu_usage",
        "mem_usage",
        "io_read",
        "io_write",
    ]
    workers = {
        row[0]
        for row in db.execute(
            "SELECT worker_id FROM benchmark WHERE operation = 'Process Block'"
        )
    }
    assert workers and -1 not in workers
    # 1.0.5's report files: one row per task, one column per stage
    for name in ("time.csv", "memory.csv", "io.csv"):
        rows = read_csv(out_dir / name)
        assert rows[0] == ["task", *stages] and rows[1][0] == task.task_name
    assert all(TIME_CELL.match(cell) for cell in read_csv(out_dir / "time.csv")[1][1:])
    assert read_csv(out_dir / "memory.csv")[1][1].endswith(" MB")
    assert read_csv(out_dir / "io.csv")[1][1].startswith("read/write: ")


def test_pipeline_benchmark_spoofs_every_output_and_database(tmp_path):
    raw = np.random.default_rng(3).random((4, 8, 8)).astype(np.float32)
    write_array(tmp_path / "d.zarr/raw", raw, voxel_size=(2, 1, 1))
    threshold = Threshold(
        in_data=Raw(store=tmp_path / "d.zarr/raw"),
        mask=Labels(store=tmp_path / "d.zarr/mask"),
        threshold=0.5,
        block_size=[2, 4, 4],
    )
    LUT(path=tmp_path / "lut").save(np.array([[1], [7]]))
    relabel = Relabel(
        frags_data=threshold.mask,
        seg_data=Labels(store=tmp_path / "d.zarr/seg"),
        lut=LUT(path=tmp_path / "lut"),
        block_size=[2, 4, 4],
    )
    db = SQLite(path=tmp_path / "graph.sqlite")
    db.init()
    writer = db.open("r+")
    writer.write_nodes(
        {100: {"position": (1.0, 1.0, 1.0), "size": 3, "filtered": False}}
    )
    writer.close()
    nodes = WriteNodes(labels=make_input(tmp_path), db=db, block_size=[4, 4, 4])
    pipeline = (threshold + relabel) | nodes
    before = graph_of(db)

    summary = pipeline.benchmark(multiprocessing=False, out_dir=tmp_path / "report")

    assert set(summary) == {threshold.task_name, relabel.task_name, nodes.task_name}
    # Relabel ran every block on the spoofed mask Threshold wrote
    assert summary[relabel.task_name]["Process Block"]["count"] == 8
    assert summary[nodes.task_name]["Process Block"]["count"] == 8
    # nothing real was written: outputs, database, progress
    assert not threshold.mask.exists() and not relabel.seg_data.exists()
    assert graph_of(db) == before
    assert not threshold.meta_dir.exists() and not nodes.meta_dir.exists()
    assert not (benchmark_dir(tmp_path) / "spoof").exists()
    rows = read_csv(tmp_path / "report" / "time.csv")
    assert sorted(row[0] for row in rows[1:]) == sorted(summary)


def test_stages_a_task_traces_itself_are_reported(tmp_path):
    task = copy_task(tmp_path, TracedCopy)
    assert not task.get_benchmark_logger().enabled  # normal runs record nothing
    summary = Pipeline(task).benchmark(multiprocessing=False)
    assert summary[task.task_name]["Copy"]["count"] == 8
    assert list(summary[task.task_name])[-2:] == ["Copy", "Process Block"]
    assert (tmp_path / "volara_benchmark_report" / "time.csv").exists()
    assert not task.out_data.exists()


def test_writing_an_undeclared_existing_array_is_refused(tmp_path):
    real = copy_task(tmp_path)
    real.run_blockwise(multiprocessing=False)
    fill_with_sentinel(real.out_data)
    task = copy_task(tmp_path, UndeclaredCopy)
    with pytest.raises(PermissionError, match="output_datasets"):
        task.benchmark(multiprocessing=False)
    assert untouched(real.out_data)
    assert volara.logging.get_log_basedir() == tmp_path / "volara_logs"


@pytest.mark.postgres
def test_postgres_is_benchmarked_on_a_spoofed_database(tmp_path, postgres):
    postgres.init()
    writer = postgres.open("r+")
    graph = nx.Graph()
    graph.add_node(100, position=(1.0, 1.0, 1.0), size=3, filtered=False)
    writer.write_graph(graph)
    writer.close()
    before = graph_of(postgres)
    task = WriteNodes(
        labels=make_input(tmp_path), db=postgres, block_size=[4, 4, 4], num_workers=2
    )
    summary = task.benchmark()
    assert summary[task.task_name]["Process Block"]["count"] == 8
    assert graph_of(postgres) == before
    spoofed = postgres.model_copy(update={"name": f"spoof_{postgres.name}"})
    assert isinstance(spoofed, PostgreSQL) and not spoofed.exists()


def test_benchmark_signatures_are_volara_1s():
    from volara.blockwise import BlockwiseTask

    for method in (BlockwiseTask.benchmark, Pipeline.benchmark):
        parameters = inspect.signature(method).parameters
        assert parameters["multiprocessing"].default is True
        assert parameters["out_dir"].default is None


def test_benchmark_logger_records_only_with_a_database(tmp_path):
    off = BenchmarkLogger(None, task="t")
    assert not off.enabled
    with off.trace("stage"):
        pass

    def process_block(block):
        return block

    assert off.traced(process_block, "x") is process_block
    assert off.print_report(tmp_path / "none") == {}
    assert not (tmp_path / "none").exists()

    on = BenchmarkLogger(tmp_path / "b" / "bench.db", task="t")
    on._init_db()
    on.log(3, "read", 2.0, cpu_usage=1.5)
    with on.trace("read"):
        pass
    traced = on.traced(process_block, "process")
    assert list(inspect.signature(traced).parameters) == ["block"]
    assert traced("b") == "b"
    # workers get the logger pickled and open their own connection
    again = pickle.loads(pickle.dumps(on))
    again.log(4, "process", 1.0)
    stats = BenchmarkLogger(tmp_path / "b" / "bench.db", task=None).summary()["t"]
    assert list(stats) == ["read", "process"]
    assert stats["read"]["count"] == 2 and stats["process"]["count"] == 2
    assert stats["read"]["cpu_mean"] >= 0.75
    report = on.print_report()  # default directory, as in 1.0.5
    assert report["t"]["read"]["count"] == 2
    assert (tmp_path / "volara_benchmark_report" / "io.csv").exists()


def test_partial_order_keeps_each_tasks_order():
    orders = {"a": ["init", "read", "write"], "b": ["init", "solve", "write"]}
    assert partial_order(orders) == ["init", "read", "solve", "write"]
    assert partial_order({"a": ["x", "y"], "b": ["y", "x"]}) == ["x", "y"]

"""Tasks for the reliability tests: the segmentation tasks and the stages of
hierarchical GraphMWS, slowed down or paused at a known point of a block so
a test can kill a worker (or the driver) there, and small tasks whose blocks
fail or hang on purpose.

daisy's worker processes import this module by name (the test's
``sys.path`` is handed to them), as they would import a plugin.

Pausing: the first block of a run to reach a pause point records its
worker's process id in the pause file and sleeps, so the test knows which
process to kill and that the kill lands exactly there. Later blocks (and the
retry of the killed one) see the file and go on.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
from funlib.geometry import Coordinate, Roi

from tasks_for_tests import SlowCopy
from volara.blockwise import (
    AffAgglom,
    ExtractFrags,
    GraphMWS,
    GridTask,
    Pipeline,
    Relabel,
)
from volara.blockwise.frag_seg_edge_agglom import FragSegEdgeAgglom
from volara.blockwise.graph_mws_blocks import GraphMWSBlocks
from volara.datasets import Dataset, Labels
from volara.dbs import DB, AnyDB, ThreadConnections
from volara.demo import demo_pipeline
from volara.graph_tables import read_node_columns, write_edge_rows
from volara.graph_writes import replace_nodes_in_roi
from volara.sample_data import generate_sample_data

SHAPE = (20, 96, 96)
"""The test volume, in voxels: 2 x 2 x 2 blocks of `BLOCK_SIZE`."""
BLOCK_SIZE = Coordinate(10, 48, 48)
CONTEXT = Coordinate(5, 24, 24)
PAUSE_SECONDS = 120.0
"""How long a paused block waits to be killed. The tasks' `timeout` is
shorter, so a test that fails to kill still ends."""


def write_sample_data(workdir: Path) -> None:
    """The same noisy sample volume in every test (seeded)."""
    generate_sample_data(
        workdir / "sample.zarr", shape=SHAPE, num_cells=20, noise=0.15, seed=1
    )


def pause_once(pause_file: Path | None) -> None:
    """If no block has paused at ``pause_file`` yet, write this process's id
    into it and sleep until killed."""
    if pause_file is None:
        return
    # written aside and hard-linked into place: the link is atomic and fails
    # if the file exists, so exactly one block pauses and the test never
    # reads a half-written id
    draft = pause_file.with_name(
        f"{pause_file.name}.{os.getpid()}.{threading.get_ident()}"
    )
    draft.write_text(str(os.getpid()))
    try:
        os.link(draft, pause_file)
    except FileExistsError:
        return
    finally:
        draft.unlink()
    time.sleep(PAUSE_SECONDS)


def paced(process_block: Callable, delay: float, pause_file: Path | None) -> Callable:
    """``process_block`` preceded by a sleep of ``delay`` seconds and
    followed by `pause_once`: a pause there comes after all of the block's
    writes but before daisy hears the block is done."""

    def process_paced_block(block) -> None:
        time.sleep(delay)
        process_block(block)
        pause_once(pause_file)

    return process_paced_block


class PausingExtractFrags(ExtractFrags):
    """`ExtractFrags` that can sleep per block and pause mid-block."""

    task_type: Literal["test-pausing-extract-frags"] = "test-pausing-extract-frags"
    delay: float = 0.0
    """Seconds each block sleeps before its work."""
    pause_between_writes: Path | None = None
    """Pause file for the first block that has written its fragments to the
    zarr but not yet its nodes to the database."""
    pause_after_writes: Path | None = None
    """Pause file for the first block that has written fragments and nodes
    but is not yet marked done."""

    def fragments_in_block(self, *args, **kwargs) -> dict[int, dict]:
        nodes = super().fragments_in_block(*args, **kwargs)
        pause_once(self.pause_between_writes)
        return nodes

    @contextmanager
    def process_block_func(self) -> Iterator:
        with super().process_block_func() as process_block:
            yield paced(process_block, self.delay, self.pause_after_writes)


class PausingAffAgglom(AffAgglom):
    """`AffAgglom` that can sleep per block and pause after its writes."""

    task_type: Literal["test-pausing-aff-agglom"] = "test-pausing-aff-agglom"
    delay: float = 0.0
    """Seconds each block sleeps before its work."""
    pause_after_writes: Path | None = None
    """Pause file for the first block that has written its edges but is
    not yet marked done."""

    @contextmanager
    def process_block_func(self) -> Iterator:
        with super().process_block_func() as process_block:
            yield paced(process_block, self.delay, self.pause_after_writes)


class PausingRelabel(Relabel):
    """`Relabel` that can pause after its writes."""

    task_type: Literal["test-pausing-relabel"] = "test-pausing-relabel"
    pause_after_writes: Path | None = None
    """Pause file for the first block that has written its segments but is
    not yet marked done."""

    @contextmanager
    def process_block_func(self) -> Iterator:
        with super().process_block_func() as process_block:
            yield paced(process_block, 0.0, self.pause_after_writes)


class PausingGraphMWSBlocks(GraphMWSBlocks):
    """`GraphMWSBlocks` that can pause after its writes."""

    task_type: Literal["test-pausing-graph-mws-blocks"] = (
        "test-pausing-graph-mws-blocks"
    )
    pause_after_writes: Path | None = None
    """Pause file for the first block that has written its segment nodes
    and its piece of the table but is not yet marked done."""

    @property
    def task_name(self) -> str:
        # the stage's own name: a run of the plain task resumes this one
        return f"{self.segments_db.id}-graph-mws-blocks"

    @contextmanager
    def process_block_func(self) -> Iterator:
        with super().process_block_func() as process_block:
            yield paced(process_block, 0.0, self.pause_after_writes)


class PausingFragSegEdgeAgglom(FragSegEdgeAgglom):
    """`FragSegEdgeAgglom` that can pause after its writes."""

    task_type: Literal["test-pausing-frag-seg-edge-agglom"] = (
        "test-pausing-frag-seg-edge-agglom"
    )
    pause_after_writes: Path | None = None
    """Pause file for the first block that has written its segment edges
    but is not yet marked done."""

    @property
    def task_name(self) -> str:
        return f"{self.segments_db.id}-frag-seg-edge-agglom"

    @contextmanager
    def process_block_func(self) -> Iterator:
        with super().process_block_func() as process_block:
            yield paced(process_block, 0.0, self.pause_after_writes)


def segmentation_pipeline(
    workdir: Path,
    db: DB | None = None,
    num_workers: int = 2,
    delay: float = 0.0,
    timeout: float | None = None,
    extract_frags_pauses: dict[str, Path] | None = None,
    aff_agglom_pause: Path | None = None,
) -> Pipeline:
    """The demo's ExtractFrags + AffAgglom + GraphMWS + Relabel over
    ``workdir/sample.zarr``, with pausing versions of the two blockwise
    graph tasks (which behave exactly like the originals unless told to
    sleep or pause)."""
    extract_frags, aff_agglom, graph_mws, relabel = demo_pipeline(
        workdir,
        db=db,
        num_workers=num_workers,
        block_size=tuple(BLOCK_SIZE),
        context=tuple(CONTEXT),
    ).tasks
    assert isinstance(extract_frags, ExtractFrags)
    assert isinstance(aff_agglom, AffAgglom)
    assert isinstance(graph_mws, GraphMWS) and isinstance(relabel, Relabel)
    common = {"delay": delay, "timeout": timeout}
    pausing_extract_frags = PausingExtractFrags(
        **{**extract_frags.model_dump(exclude={"task_type"}), **common},
        **(extract_frags_pauses or {}),
    )
    pausing_aff_agglom = PausingAffAgglom(
        **{**aff_agglom.model_dump(exclude={"task_type"}), **common},
        pause_after_writes=aff_agglom_pause,
    )
    return pausing_extract_frags + pausing_aff_agglom + graph_mws + relabel


# ------------------------------------------------------ failing and hanging


class Misbehaving(SlowCopy):
    """`SlowCopy` whose block at `bad_offset` fails (``"raise"``) or hangs
    (``"hang"``). Every attempt at that block leaves a file in `attempts`
    named after the attempt's number and process id. With `times` set, only
    that many attempts misbehave; later ones work."""

    task_type: Literal["test-misbehaving"] = "test-misbehaving"
    bad_offset: list[int]
    """Offset of the misbehaving block, in world units."""
    behaviour: Literal["raise", "hang"]
    attempts: Path
    """Directory receiving one file per attempt at the bad block."""
    times: int | None = None
    """How many attempts misbehave; ``None``: all."""
    hang_seconds: float = PAUSE_SECONDS

    @contextmanager
    def process_block_func(self) -> Iterator:
        with super().process_block_func() as process_block:

            def process_misbehaving_block(block) -> None:
                if list(block.write_roi.offset) == self.bad_offset:
                    attempt = self._record_attempt()
                    if self.times is None or attempt < self.times:
                        self._misbehave(block)
                process_block(block)

            yield process_misbehaving_block

    def _record_attempt(self) -> int:
        self.attempts.mkdir(parents=True, exist_ok=True)
        attempt = len(list(self.attempts.iterdir()))
        (self.attempts / f"attempt-{attempt}-pid-{os.getpid()}").touch()
        return attempt

    def _misbehave(self, block) -> None:
        if self.behaviour == "raise":
            raise_on_purpose(block)
        time.sleep(self.hang_seconds)


def raise_on_purpose(block) -> None:
    """A block function error with a recognisable message and frame."""
    raise RuntimeError(
        f"deliberate failure in block at {tuple(block.write_roi.offset)}"
    )


def misbehaving(workdir: Path, name: str, source: Labels, **options) -> Misbehaving:
    """A `Misbehaving` copy of ``source`` into ``out.zarr/<name>``, whose
    attempts at the bad block (by default the last, at offset 4, 4, 4) are
    recorded in ``<name>-attempts``."""
    defaults = dict(
        in_data=source,
        out_data=Labels(store=workdir / "out.zarr" / name),
        block_size=[4, 4, 4],
        bad_offset=[4, 4, 4],
        attempts=workdir / f"{name}-attempts",
    )
    return Misbehaving(**{**defaults, **options})


# ------------------------------------------------------------ concurrent writes


def block_graph(
    block_index: int, write_roi: Roi, nodes_per_block: int
) -> tuple[dict[int, dict], np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The nodes (by id) and edges (u, v, scores) block ``block_index``
    writes: a chain of nodes inside ``write_roi`` and an edge from its first
    node to the next block's first node."""
    first = 1 + block_index * nodes_per_block
    ids = np.arange(first, first + nodes_per_block, dtype=np.uint64)
    begin = np.array(write_roi.begin, dtype=np.float64)
    step = np.array(write_roi.shape, dtype=np.float64) / (nodes_per_block + 1)
    nodes = {
        int(node_id): {
            "position": tuple(float(p) for p in begin + step * (k + 1)),
            "size": k,
            "filtered": False,
        }
        for k, node_id in enumerate(ids)
    }
    u = np.append(ids[:-1], ids[0])
    v = np.append(ids[1:], ids[0] + nodes_per_block)
    scores = {
        "distance": (v - u).astype(np.float64),
        "score": (u % 7).astype(np.float64) / 8,
    }
    return nodes, u, v, scores


class GraphWriter(GridTask):
    """Writes `block_graph` of each block `rounds` times over, through the
    same functions the segmentation tasks write with, reading the block's
    nodes back in between (as `AffAgglom` does): many small transactions
    from every worker at once."""

    task_type: Literal["test-graph-writer"] = "test-graph-writer"
    labels: Labels
    """Only gives the block grid."""
    db: AnyDB
    nodes_per_block: int = 10
    rounds: int = 10
    fit: Literal["shrink"] = "shrink"
    read_write_conflict: Literal[False] = False

    @property
    def task_name(self) -> str:
        return f"{self.db.id}-graph-writer"

    @property
    def grid_dataset(self) -> Dataset:
        return self.labels

    def init(self) -> None:
        self.db.init()

    @contextmanager
    def process_block_func(self) -> Iterator:
        connections = ThreadConnections(self.db)
        write_roi, write_size = self.write_roi, self.write_size
        grid_shape = -(-write_roi.shape // write_size)

        def process_block(block) -> None:
            index = (block.write_roi.offset - write_roi.offset) / write_size
            block_index = int(np.ravel_multi_index(tuple(index), tuple(grid_shape)))
            nodes, u, v, scores = block_graph(
                block_index, block.write_roi, self.nodes_per_block
            )
            graph_db = connections.get()
            for _ in range(self.rounds):
                replace_nodes_in_roi(graph_db, nodes, block.write_roi)
                read_node_columns(graph_db, ["position"], ids=u)
                write_edge_rows(graph_db, u, v, scores)

        try:
            yield process_block
        finally:
            connections.close_all()

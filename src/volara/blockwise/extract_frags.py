"""ExtractFrags: over-segment affinities into fragments, one DB node each.

Each block runs the mutex watershed on its affinities plus `context`, keeps
the fragments inside its write region, renumbers them with volume-wide ids
(1 + the volume index of a fragment's first voxel, so ids never clash
between blocks and are the same on every rerun), writes them and stores one
node per fragment (center of mass, size) in the graph database.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
from funlib.geometry import Coordinate, Roi
from pydantic import Field, model_validator

from ..datasets import (
    Affs,
    ChunkCache,
    Dataset,
    Labels,
    Raw,
    read_region,
    write_region,
)
from ..dbs import AnyDB, SQLite, ThreadConnections
from ..graph_writes import replace_nodes_in_roi
from ..kernels import mutex_watershed as mws
from ..kernels import mws as mws_kernel
from ..kernels import seeding as seed_kernels
from ..kernels.seeding import Seeding
from ..utils import PydanticCoordinate
from .grid import GridTask

logger = logging.getLogger(__name__)

NAN_SCAN_MAX_BYTES = 512 * 2**20
"""Affinity arrays up to this size are scanned for NaN before any block runs;
larger ones are checked block by block (a NaN fails its block)."""


class ExtractFrags(GridTask):
    """Fragments from affinities by mutex watershed, with one graph node per
    fragment.

    Each block runs the mutex watershed on its affinities plus ``context``.
    Inside the block, every connected piece of a watershed cluster (voxels
    touching by a face, edge or corner) is one fragment: a cluster that
    only the context holds together becomes several fragments, as in
    volara 1.0.5. Voxels that no attractive edge touches (e.g. background
    with affinity 0) get no fragment, nor does a block whose affinities are
    all below 0.001. Affinities of exactly equal value (clipped or 8-bit
    predictions have many) are taken in an order fixed by their position
    in the whole volume, so a block takes them as the whole volume would.

    Writes ``frags_data`` (uint64, 0 = no fragment) and, per fragment, a node
    in ``db`` with ``position`` (center of mass, world units), ``size``
    (voxels) and ``filtered`` (False). Fragments removed by
    ``filter_fragments`` or ``remove_debris`` are 0 in ``frags_data`` and get
    no node, so every node has voxels and every non-zero id has a node.
    Fragments end at block boundaries; `AffAgglom` and `GraphMWS` join them.
    """

    task_type: Literal["extract-frags"] = "extract-frags"
    db: AnyDB
    """The graph database receiving one node per fragment."""
    affs_data: Affs
    """The affinities, channels first ``(offsets, z, y, x)``, float in [0, 1]
    or uint8 (0..255), with one channel per offset of its neighborhood."""
    frags_data: Labels
    """The output fragments, uint64, on the grid of ``affs_data``."""
    mask_data: Raw | None = None
    """Optional mask on the grid of ``affs_data``: voxels where it is 0 get
    no fragment, and affinities touching them are ignored."""
    bias: list[float]
    """Added to the affinities of each offset before the watershed, one value
    per offset of the neighborhood: edges with ``affinity + bias > 0`` merge,
    the others split. E.g. ``[-0.2, -0.2, -0.2, -0.8, ...]``: short-range
    offsets prefer merging, long-range ones splitting."""
    strides: list[PydanticCoordinate] | None = None
    """Per offset, use only every n-th edge along each axis (voxels), one
    stride per offset, e.g. ``[[1, 1, 1], ..., [2, 2, 2]]`` keeps one in
    eight long-range edges. ``None``: all edges."""
    sigma: PydanticCoordinate | None = None
    """Gaussian smoothing of the affinities before the watershed, in voxels,
    one value per spatial axis, so fragments grow from object centers out.
    ``None``: no smoothing."""
    noise_eps: float | None = Field(default=None, ge=0)
    """Standard deviation of gaussian noise added to the affinities before
    the watershed, to break ties of quantized (e.g. uint8) affinities that
    otherwise give streaky fragments. Seeded per block, so reruns agree.
    ``None``: no noise."""
    filter_fragments: float = Field(default=0.0, ge=0.0, le=1.0)
    """Remove fragments whose mean affinity (direct-neighbor offsets,
    averaged over the fragment's voxels) is below this value, measured over
    the block plus its context. ``0``: keep all."""
    remove_debris: int = Field(default=0, ge=0)
    """Remove fragments of fewer voxels than this, counted over the block
    plus its context (before the block is cut out), so a fragment that the
    block's face cuts small is kept if it is large. ``0``: keep all."""
    randomized_strides: bool = False
    """Turn each stride into a probability ``1/prod(stride)`` of keeping an
    edge, instead of a regular grid, to avoid grid artifacts."""
    min_extent: PydanticCoordinate | None = None
    """Remove fragments whose bounding box spans fewer voxels than this
    along some axis, one value per spatial axis, measured over the block
    plus its context. E.g. ``(2, 1, 1)`` on serial-section data removes
    fragments one section thick: uncertain regions come out of the mutex
    watershed as stacks of such plates, which ``filter_fragments`` misses
    because their in-plane affinities are high. ``None``: keep all."""
    min_seed_distance: int | None = Field(default=None, ge=1)
    """Place seeds before the watershed, one spacing everywhere: seeds go on
    the peaks of the distance to the nearest boundary (inside the boundary
    mask, see ``boundary_mask_offsets``), at most one per cube of this many
    voxels. Each seed ends up in a fragment of its own, so thick objects
    are not left as one fragment by a single weak spot. Set this or
    ``adaptive_seed_spacing``, or neither (no seeds)."""
    adaptive_seed_spacing: float | None = Field(default=None, gt=0)
    """Place seeds before the watershed at a spacing that follows the local
    object size: a seed on the medial axis keeps other seeds further away
    than this many times its distance to the boundary (its local radius),
    capped by the context. ``2.0`` is about one seed per local diameter;
    smaller gives more seeds. Distances in world units. Exclusive with
    ``min_seed_distance``."""
    boundary_mask_offsets: Literal["direct", "all"] | list[int] = "direct"
    """The offsets whose mean affinity (above 0.5) marks object interiors,
    where seeds may go: ``"direct"`` the one-voxel offsets, ``"all"`` the
    whole neighborhood, or a list of channel indices. Long offsets erode
    each object by about their length: objects thinner than that get no
    seed."""
    seed_eps: float | None = Field(default=None, ge=0)
    """With seeds: lower every affinity by this much per voxel of distance
    from the nearest seed, so fragments stay closer to their seeds (more,
    smaller fragments). ``None``: no decay."""
    max_seed_decay_distance: int | None = Field(default=None, ge=0)
    """With ``seed_eps``: the distance (voxels) beyond which the decay stops
    growing, so the interiors of large objects far from any seed are not
    left without fragments. ``None``: no limit."""
    voronoi: Literal["geodesic", "euclidean"] | None = None
    """With seeds: weaken the direct-neighbor affinities between the
    territories of two seeds, so fragment boundaries fall where the
    territories meet rather than wherever the affinities dip.
    ``"geodesic"``: a territory grows from its seed through the object
    (a seed claims only tissue connected to it; seams settle at necks);
    ``"euclidean"``: every voxel belongs to its nearest seed in space
    (cheaper, but can claim tissue across a boundary). Territories smaller
    than ``remove_debris`` join their largest neighbor first. ``None``: no
    seams."""
    bulk_write: bool = False
    """Accepted for volara 1.0.5 configs; has no effect: volara 2 always
    writes a block's nodes in one bulk statement, with the same result."""
    context: PydanticCoordinate
    """Extra affinities read around each block, in voxels, one value per
    spatial axis; at least the longest offset is a good choice. Fragments
    in the context are computed then discarded."""
    fit: Literal["shrink"] = "shrink"
    read_write_conflict: Literal[False] = False
    worker_imports: ClassVar[tuple[str, ...]] = ("volara.kernels.mws:warm_up",)

    @model_validator(mode="after")
    def _check_per_offset_fields(self) -> ExtractFrags:
        check_per_offset_fields(type(self).__name__, self)
        dims = self.spatial_dims
        if self.db.ndim != dims:
            raise ValueError(
                f"{type(self).__name__}.db: ndim is {self.db.ndim}, the affinities "
                f"have {dims} spatial axes; set db.ndim={dims}"
            )
        check_seeding_fields(type(self).__name__, self)
        if self.sigma is not None and (
            self.sigma.dims != dims or any(s < 0 for s in self.sigma)
        ):
            raise ValueError(
                f"{type(self).__name__}.sigma {tuple(self.sigma)}: give {dims} "
                "non-negative values (voxels), one per spatial axis"
            )
        return self

    @property
    def task_name(self) -> str:
        return f"{self.frags_data.name}-{self.task_type}"

    @property
    def neighborhood(self) -> list[Coordinate]:
        """The affinity offsets, in voxels."""
        return list(self.affs_data.neighborhood or [])

    @property
    def seeding(self) -> Seeding | None:
        """The seeding options as the kernel takes them (None: no seeds)."""
        if self.min_seed_distance is None and self.adaptive_seed_spacing is None:
            return None
        voxel_size = self.affs_data.array("r").voxel_size
        return Seeding(
            min_seed_distance=self.min_seed_distance,
            adaptive_seed_spacing=self.adaptive_seed_spacing,
            boundary_mask_channels=tuple(self.boundary_mask_channels),
            seed_eps=self.seed_eps,
            max_seed_decay_distance=self.max_seed_decay_distance,
            voronoi=self.voronoi,
            min_territory_size=self.remove_debris,
            largest_spacing=float(min(self.context * voxel_size)),
        )

    @property
    def boundary_mask_channels(self) -> list[int]:
        """``boundary_mask_offsets`` as channel indices."""
        if self.boundary_mask_offsets == "all":
            return list(range(len(self.neighborhood)))
        if self.boundary_mask_offsets == "direct":
            return mws.direct_neighbor_channels(self.neighborhood)
        return list(self.boundary_mask_offsets)

    @property
    def spatial_dims(self) -> int:
        return self.neighborhood[0].dims

    @property
    def grid_dataset(self) -> Dataset:
        return self.affs_data

    @property
    def context_voxels(self) -> Coordinate:
        return self.context

    @property
    def num_voxels_in_block(self) -> int:
        """Voxels a block writes (without context)."""
        return int(np.prod(self.block_size))

    @property
    def output_datasets(self) -> list[Dataset]:
        return [self.frags_data]

    @property
    def output_paths(self) -> list[Path | str]:
        paths = super().output_paths
        if isinstance(self.db, SQLite):
            paths.append(self.db.path)
        return paths

    def drop_artifacts(self) -> None:
        self.frags_data.drop()
        self.db.drop()

    def check_config(self) -> None:
        super().check_config()
        check_affinity_channels(type(self).__name__, self.affs_data)
        if self.mask_data is not None:
            self.check_same_grid("mask_data", self.mask_data)
        if not self.produced_upstream(self.affs_data.store):
            check_no_nan(type(self).__name__, self.affs_data)

    def init(self) -> None:
        self.init_out_array()
        self.db.init()
        # compiled here, once, and loaded by every worker from numba's cache
        mws_kernel.warm_up()

    def init_out_array(self) -> None:
        """Prepare the output array (volara 1.0.5's name; `init` does it
        before a run)."""
        self.prepare_output(self.frags_data, np.uint64)

    @contextmanager
    def process_block_func(self) -> Iterator:
        affs = self.affs_data.array("r")
        frags = self.frags_data.array("r+")
        mask = self.mask_data.array("r") if self.mask_data is not None else None
        # geometry looked up once: each property opens the input array
        grid = _Grid(affs.voxel_size, affs.roi, self.write_roi.offset, self.write_size)
        dbs = ThreadConnections(self.db)
        seeding = self.seeding
        chunks = _InputChunks(
            self.chunk_cache(self.affs_data),
            None if self.mask_data is None else self.chunk_cache(self.mask_data),
        )

        def process_block(block) -> None:
            nodes = self.fragments_in_block(
                block, affs, mask, frags, grid, seeding, chunks
            )
            replace_nodes_in_roi(dbs.get(), nodes, block.write_roi)

        try:
            with mws_kernel.buffers_kept():
                yield process_block
        finally:
            dbs.close_all()

    def fragments_in_block(
        self,
        block,
        affs,
        mask,
        frags,
        grid: _Grid,
        seeding: Seeding | None,
        chunks: _InputChunks | None = None,
    ) -> dict[int, dict]:
        """Compute, write and describe the fragments of one block; returns
        the nodes to store, by id."""
        voxel_size = grid.voxel_size
        chunks = chunks or _InputChunks(None, None)
        data = read_region(affs, block.read_roi, cache=chunks.affs)
        if np.issubdtype(data.dtype, np.floating) and np.isnan(data).any():
            raise ValueError(
                f"{type(self).__name__}.affs_data: {self.affs_data.store!s} has NaN "
                f"affinities in {block.read_roi}; fix or mask them"
            )
        inside = None
        if mask is not None:
            inside = read_region(mask, block.read_roi, cache=chunks.mask) > 0
        block_index = (block.write_roi.offset - grid.first_block) / grid.block_size
        crop = _crop(block.read_roi, block.write_roi, voxel_size)
        fragments = mws.extract_fragments(
            data,
            self.neighborhood,
            self.bias,
            crop=crop,
            min_mean_affinity=self.filter_fragments,
            min_size=self.remove_debris,
            min_extent=self.min_extent,
            seeding=seeding,
            voxel_size=voxel_size,
            outside=_outside_volume(block.read_roi, grid.volume, voxel_size),
            strides=self.strides,
            randomized_strides=self.randomized_strides,
            mask=inside,
            sigma=self.sigma,
            noise_eps=self.noise_eps,
            noise_seed=[int(i) for i in block_index],
            origin=block.read_roi.offset / voxel_size,
        )
        stats = mws.fragment_statistics(fragments)
        origin = (block.write_roi.offset - grid.volume.offset) / voxel_size
        ids = mws.global_ids(stats.first_voxels, origin, grid.volume.shape / voxel_size)
        # fragments are numbered 1..n: a table replaces them by their ids
        table = np.zeros(int(fragments.max(initial=0)) + 1, dtype=np.uint64)
        table[stats.ids.astype(np.intp)] = ids
        write_region(frags, block.write_roi, table[fragments])
        positions = np.asarray(block.write_roi.offset) + (
            stats.centers + 0.5
        ) * np.asarray(voxel_size)
        return {
            int(node_id): {
                "position": tuple(float(p) for p in position),
                "size": int(size),
                "filtered": False,
            }
            for node_id, position, size in zip(ids, positions, stats.sizes, strict=True)
        }

    # -- volara 1.0.5's methods, for scripts that call them on one region --

    def compute_fragments(
        self,
        affs_data: np.ndarray,
        rng: np.random.Generator | None = None,
        voxel_size: Coordinate | None = None,
        out_of_volume: tuple[Coordinate, Coordinate] | None = None,
    ) -> np.ndarray:
        """The mutex-watershed clusters of one read region (affinities
        channels first, float in [0, 1] or uint8), before any filter and
        before cutting into pieces: uint64 cluster ids, 0 where no attractive
        edge touches a voxel. ``rng`` draws the ``noise_eps`` noise;
        ``out_of_volume``: voxels of the region past the stored volume,
        (before, after) per axis, for the seeding."""
        return self._clusters(affs_data, rng, voxel_size, out_of_volume, filters=False)

    def get_fragments(
        self,
        affs_data: np.ndarray,
        voxel_size: Coordinate | None = None,
        out_of_volume: tuple[Coordinate, Coordinate] | None = None,
    ) -> np.ndarray:
        """`compute_fragments` with ``filter_fragments``, ``remove_debris``
        and ``min_extent`` applied (dropped clusters are 0), all measured on
        this region. A block keeps the connected pieces of these inside its
        write region."""
        return self._clusters(affs_data, None, voxel_size, out_of_volume, filters=True)

    def filter_avg_fragments(
        self, affs: np.ndarray, fragments_data: np.ndarray, filter_value: float
    ) -> np.ndarray:
        """``fragments_data`` with the fragments whose mean direct-neighbor
        affinity (in ``affs``, channels first) is below ``filter_value`` set
        to 0."""
        filtered, _ = mws.filter_fragments(
            fragments_data,
            affs,
            min_mean_affinity=filter_value,
            channels=mws.direct_neighbor_channels(self.neighborhood),
        )
        return filtered

    def fragment_centers(
        self, fragments_data: np.ndarray, offset: Coordinate, voxel_size: Coordinate
    ) -> dict[int, dict]:
        """Per non-zero fragment id: ``center`` (center of mass of its
        voxel centers, world units, for an array starting at ``offset``)
        and ``size`` (voxels). volara 1.0.5 rounds the center down to a
        voxel corner; volara 2 stores, and returns here, the exact one."""
        stats = mws.fragment_statistics(fragments_data)
        centers = np.asarray(offset) + (stats.centers + 0.5) * np.asarray(voxel_size)
        return {
            int(fragment): {
                "center": tuple(float(c) for c in center),
                "size": int(size),
            }
            for fragment, center, size in zip(
                stats.ids, centers, stats.sizes, strict=True
            )
        }

    def boundary_mask(self, affs_data: np.ndarray) -> np.ndarray:
        """The object interiors seeds may go in (see
        ``boundary_mask_offsets``), for affinities in [0, 1]."""
        return seed_kernels.boundary_mask(affs_data, self.boundary_mask_channels)

    def get_seeds(
        self, boundary_distances: np.ndarray, min_seed_distance: int = 10
    ) -> np.ndarray:
        """Seeds at the peaks of ``boundary_distances``, one per plateau of
        maxima within ``min_seed_distance`` voxels."""
        return seed_kernels.spaced_seeds(boundary_distances, min_seed_distance)

    def get_adaptive_seeds(
        self, boundary_distances: np.ndarray, voxel_size: Coordinate
    ) -> np.ndarray:
        """Seeds spaced by ``adaptive_seed_spacing`` times the local radius
        (``boundary_distances`` in world units), capped by the context."""
        return seed_kernels.adaptive_seeds(
            boundary_distances,
            voxel_size,
            self.adaptive_seed_spacing or 2.0,
            float(min(self.context * Coordinate(voxel_size))),
        )

    def seed_cells(
        self,
        seeds: np.ndarray,
        boundary_distances: np.ndarray,
        boundary_mask: np.ndarray,
        voxel_size: Coordinate | None = None,
    ) -> np.ndarray:
        """The territory of each seed (``voronoi``'s method; geodesic unless
        it is ``"euclidean"``)."""
        method: Literal["geodesic", "euclidean"] = (
            "euclidean" if self.voronoi == "euclidean" else "geodesic"
        )
        spacing = voxel_size or (1,) * seeds.ndim
        return seed_kernels.seed_territories(
            seeds, boundary_distances, boundary_mask, spacing, method
        )

    def absorb_small_cells(self, cells: np.ndarray) -> np.ndarray:
        """Territories below ``remove_debris`` voxels merged into their
        largest neighbor."""
        return seed_kernels.absorb_small_territories(cells, self.remove_debris)

    def filter_min_extent(self, fragments_data: np.ndarray) -> np.ndarray:
        """``fragments_data`` without the fragments narrower than
        ``min_extent``."""
        if self.min_extent is None:
            return fragments_data
        thin = seed_kernels.thin_clusters(fragments_data, self.min_extent)
        return mws.remove_fragments(fragments_data, thin)

    def _clusters(self, affs_data, rng, voxel_size, out_of_volume, filters: bool):
        voxel_size = voxel_size or self.affs_data.array("r").voxel_size
        seed = None if rng is None else int(rng.integers(2**63))
        return mws.filtered_clusters(
            np.asarray(affs_data),
            self.neighborhood,
            self.bias,
            min_mean_affinity=self.filter_fragments if filters else 0.0,
            min_size=self.remove_debris if filters else 0,
            min_extent=self.min_extent if filters else None,
            seeding=self.seeding,
            voxel_size=voxel_size,
            outside=out_of_volume,
            strides=self.strides,
            randomized_strides=self.randomized_strides,
            sigma=self.sigma,
            noise_eps=self.noise_eps,
            noise_seed=seed if seed is not None else 0,
        )


class _InputChunks(NamedTuple):
    """The decoded-chunk caches of a worker's inputs (None: read afresh)."""

    affs: ChunkCache | None
    mask: ChunkCache | None


class _Grid(NamedTuple):
    voxel_size: Coordinate
    volume: Roi
    """The whole affinity array: fragment ids are voxel indices in it."""
    first_block: Coordinate
    block_size: Coordinate
    """World units."""


def _outside_volume(
    read_roi: Roi, volume: Roi, voxel_size: Coordinate
) -> tuple[Coordinate, Coordinate]:
    """Voxels of ``read_roi`` past ``volume``, before and after it per axis."""
    inside = read_roi.intersect(volume)
    return (
        (inside.begin - read_roi.begin) / voxel_size,
        (read_roi.end - inside.end) / voxel_size,
    )


def _crop(read_roi: Roi, write_roi: Roi, voxel_size: Coordinate) -> tuple[slice, ...]:
    begin = (write_roi.offset - read_roi.offset) / voxel_size
    end = begin + write_roi.shape / voxel_size
    return tuple(slice(b, e) for b, e in zip(begin, end, strict=True))


def check_per_offset_fields(name: str, task: Any) -> None:
    """``bias`` and ``strides`` need one entry per offset of the affinities'
    neighborhood; strides need one positive value per spatial axis."""
    neighborhood = task.affs_data.neighborhood or []
    if len(task.bias) != len(neighborhood):
        raise ValueError(
            f"{name}.bias has {len(task.bias)} values but the neighborhood of "
            f"affs_data has {len(neighborhood)} offsets; give one bias per offset"
        )
    if task.strides is None:
        return
    if len(task.strides) != len(neighborhood):
        raise ValueError(
            f"{name}.strides has {len(task.strides)} entries but the neighborhood of "
            f"affs_data has {len(neighborhood)} offsets; give one stride per offset"
        )
    dims = neighborhood[0].dims
    for stride in task.strides:
        if stride.dims != dims or any(s < 1 for s in stride):
            raise ValueError(
                f"{name}.strides: {tuple(stride)} must have {dims} values >= 1 "
                "(voxels), one per spatial axis"
            )


def check_seeding_fields(name: str, task: Any) -> None:
    """The seeding fields of `ExtractFrags` agree with each other and with
    the neighborhood."""
    if task.min_seed_distance is not None and task.adaptive_seed_spacing is not None:
        raise ValueError(
            f"{name}: min_seed_distance and adaptive_seed_spacing both set the seed "
            "spacing; set one or the other (or neither, for no seeds)"
        )
    offsets = len(task.affs_data.neighborhood or [])
    if isinstance(task.boundary_mask_offsets, list) and (
        not task.boundary_mask_offsets
        or min(task.boundary_mask_offsets) < 0
        or max(task.boundary_mask_offsets) >= offsets
    ):
        raise ValueError(
            f"{name}.boundary_mask_offsets {task.boundary_mask_offsets}: select at "
            f"least one offset, by channel index in 0..{offsets - 1} (the "
            f"neighborhood has {offsets} offsets), or 'direct' / 'all'"
        )
    dims = task.affs_data.neighborhood[0].dims if offsets else None
    if task.min_extent is not None and task.min_extent.dims != dims:
        raise ValueError(
            f"{name}.min_extent {tuple(task.min_extent)}: give {dims} values "
            "(voxels), one value per axis"
        )
    seeded = (
        task.min_seed_distance is not None or task.adaptive_seed_spacing is not None
    )
    unused = [
        field
        for field in ("seed_eps", "max_seed_decay_distance", "voronoi")
        if getattr(task, field) is not None and not seeded
    ]
    if unused:
        # volara 1.0.5 ignored them silently: configs carrying them still run
        warnings.warn(
            f"{name}: {', '.join(unused)} only act on seeds; set min_seed_distance "
            "or adaptive_seed_spacing, or remove them",
            stacklevel=2,
        )


def check_affinity_channels(name: str, affs_data: Affs) -> None:
    """The affinities need one channel axis with one channel per offset."""
    array = affs_data.array("r")
    offsets = len(affs_data.neighborhood or [])
    if array.channel_dims != 1 or array.shape[0] != offsets:
        raise ValueError(
            f"{name}.affs_data: {affs_data.store!s} has shape {array.shape} "
            f"({array.channel_dims} channel axes) but its neighborhood has {offsets} "
            f"offsets; it needs exactly one channel per offset, channels first"
        )


def check_no_nan(name: str, affs_data: Affs) -> None:
    """Refuse float affinities with NaN values, scanning chunk by chunk
    (arrays above `NAN_SCAN_MAX_BYTES` are left to the per-block check)."""
    import dask.array as da

    array = affs_data.array("r")
    if not np.issubdtype(array.dtype, np.floating):
        return
    nbytes = int(np.prod(array.shape)) * array.dtype.itemsize
    if nbytes > NAN_SCAN_MAX_BYTES:
        logger.info(
            "%s: %s is too large to scan for NaN up front; blocks check their own",
            name,
            affs_data.store,
        )
        return
    count = int(da.isnan(array.data).sum().compute())
    if count:
        raise ValueError(
            f"{name}.affs_data: {affs_data.store!s} has {count} NaN affinities; "
            "fix or mask them (e.g. np.nan_to_num) before extracting fragments"
        )

"""Synthetic test volumes: ground-truth objects and their affinities in a zarr.

`generate_sample_data` writes, into one zarr container,

- ``labels``: uint64 object ids (0 is background), shape ``shape``: warped
  Voronoi cells, or densely packed neurite-like tubes;
- ``affinities``: float32 in [0, 1] (or uint8 in [0, 255]), channels first,
  one channel per offset of ``neighborhood`` (stored in the array's
  ``neighborhood`` attribute, so ``Affs(store=...)`` finds it), computed from
  ``labels`` and then degraded with gaussian noise (and optionally blurred)
  to look like a prediction;
- ``raw`` (optional): uint8 EM-like intensities.

All arrays share one offset (default 0) and voxel size (world units, e.g.
nm). Results depend only on the arguments: the same ``seed`` gives the same
bytes. It is meant for tests, examples and benchmarks (the default shape is
the performance yardstick and takes a few seconds). The defaults are easy:
any reasonable method segments them perfectly. To see errors, make the data
harder: ``objects="neurites"`` (thin objects), ``membrane_width`` (background
seams between objects, which make them thinner still), more ``noise`` and
``blur``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
from funlib.geometry import Coordinate

from .datasets import Affs, Dataset, Labels, Raw
from .kernels.affinities import affinities_from_labels
from .kernels.synthetic import (
    add_membranes,
    keep_largest_pieces,
    noisy_affinities,
    random_cells,
    random_neurites,
    raw_from_labels,
    relabel_pieces,
    seam_widths,
)

logger = logging.getLogger(__name__)

DEFAULT_NEIGHBORHOOD: list[tuple[int, int, int]] = [
    (1, 0, 0),
    (0, 1, 0),
    (0, 0, 1),
    (2, 0, 0),
    (0, 8, 0),
    (0, 0, 8),
    (4, 0, 0),
    (0, 16, 0),
    (0, 0, 16),
]
"""Offsets (voxels, z/y/x) of the yardstick's affinities: direct neighbors
plus long-range offsets that reach across typical membranes."""


class SampleData(NamedTuple):
    """The datasets `generate_sample_data` wrote, ready to use in task configs."""

    labels: Labels
    affinities: Affs
    raw: Raw | None


def generate_sample_data(
    path: Path | str,
    shape: Sequence[int] = (60, 240, 240),
    voxel_size: Sequence[int] = (40, 4, 4),
    num_cells: int = 150,
    neighborhood: Sequence[Sequence[int]] = DEFAULT_NEIGHBORHOOD,
    noise: float = 0.15,
    seed: int = 0,
    blur: float | Sequence[float] = 0.0,
    membranes: bool = False,
    raw: bool = False,
    chunk_shape: Sequence[int] | None = None,
    offset: Sequence[int] | None = None,
    objects: Literal["cells", "neurites"] = "cells",
    membrane_width: int = 0,
    affs_dtype: Literal["float32", "uint8", "float64"] = "float32",
) -> SampleData:
    """Write synthetic objects and their affinities into the zarr at ``path``.

    Args:
        path: The zarr container; ``labels``, ``affinities`` (and ``raw``)
            are written inside it.
        shape: Volume shape in voxels, one value per spatial axis (z, y, x).
        voxel_size: Voxel size in world units (e.g. nm), one value per
            spatial axis. Object sizes and shapes are drawn in world units,
            so anisotropic voxels (serial sections) give objects that span
            few sections but many pixels.
        num_cells: Number of cells; with ``objects="neurites"``, how many
            neurites a section holds (their density; see ``objects``).
        neighborhood: Affinity offsets in voxels, one per channel; any
            offsets, negative or positive.
        noise: Standard deviation of the gaussian noise added to the
            affinities (and, scaled to the grey range, to ``raw``). ``0``
            gives exact ground-truth affinities (with ``blur=0``). The
            README pipeline segments cells almost perfectly (VOI below 0.01
            at noise 0.15 and 0.2); on neurites 8 voxels across with
            ``membrane_width=1`` and ``blur=0.5`` it scored VOI about 0.2 at
            noise 0.25 and 1.3 at 0.35 (see tests/test_accuracy_ordering.py).
        seed: Seed of every random choice.
        blur: Sigma of a gaussian blur of the affinities before the noise,
            in voxels: one value for every spatial axis, or one per spatial
            axis (e.g. ``(0, 1, 1)`` blurs within sections only). Every
            channel is blurred on its own, long-range ones too, so a blur
            close to the objects' width leaves little of their long-range
            affinities: on neurites 8 voxels across, ``blur=1`` made the
            README pipeline split most of them into pieces (VOI 1.5 at
            noise 0.15).
            ``0`` (default): no blur.
        membranes: Clear a one-voxel background seam between touching
            objects, as membranes look in EM ground truth. The same as
            ``membrane_width=1``; kept for compatibility.
        raw: Also write ``raw``, uint8 EM-like intensities.
        chunk_shape: Zarr chunk shape in voxels (spatial axes); default up
            to 64 per axis.
        offset: World coordinate of the first voxel (a multiple of
            ``voxel_size``); default 0.
        objects: What the labels show.

            - ``"cells"`` (default): ``num_cells`` irregular, roughly
              isotropic cells (in world units; Voronoi regions of random
              points with smoothly bent boundaries), filling the volume.
            - ``"neurites"``: tube-like objects, densely packed, that run
              along the first axis (z, the sectioning axis) through the
              whole volume and bend gently (they move by about 2 nm, at
              most about 12 nm, from one 40 nm section to the next). They
              touch each other and fill the volume: there is no background
              other than the membranes. ``num_cells`` sets how many share
              a section, and so their thickness: about
              ``sqrt(area of a section / num_cells)`` across (world
              units), e.g. 20 voxels for the default shape and 150
              neurites, 8 voxels with ``num_cells=1000`` or in a
              (20, 96, 96) volume with 150. Neurites beside the volume
              reach in at its sides, and one that leaves the volume's side
              and comes back is one object per piece, so the labels hold
              more ids than ``num_cells`` (1.3x for the default shape,
              up to 2x in small volumes); every object is connected (face
              neighbors). Keep the first axis long in world units
              compared with the thickness, or the tubes are short stubs.
        membrane_width: Background (label 0) seam between touching objects,
            in voxels along the finest axes (within the section for the
            usual ``(z, y, x)`` voxel sizes): EM membranes are thin lines in
            each section. Along a coarser axis the seam has the same
            thickness in world units, rounded to whole voxels but at least
            one voxel: with ``voxel_size=(40, 4, 4)`` any width up to 14 is
            one section in z, so where a boundary moves from one section
            to the next, its seam is wider in the section, as oblique
            membranes look in EM. Along each axis the seam takes
            ``ceil(width / 2)`` voxels before the boundary and
            ``floor(width / 2)`` after it, so objects shrink: with width 1
            about 11% of the default-shape neurites becomes background,
            28% for neurites 8 voxels across. A seam can cut a crumb off a
            thin neurite; the crumb becomes background too, so every
            object stays connected. ``0`` (default): objects touch, with
            no seam. ``membranes=True`` is ``membrane_width=1``; giving
            both with another width is an error.
        affs_dtype: ``"float32"`` (default): affinities in [0, 1].
            ``"uint8"``: affinities stored as ``round(a * 255)``, a quarter
            of the size, as predictions are often stored (volara's tasks
            read them as ``a / 255``); the same seed gives the rounded
            values of the float32 run. ``"float64"``: affinities with no two
            edges of exactly equal value: the float32 run's values squeezed
            into [0.01, 0.99] plus a random jitter of at most 0.01 (from
            the seed). Clipped (noisy float32) and rounded (uint8)
            affinities have many equal values, and which of two equal edges
            a mutex watershed takes first is up to the implementation; on
            these, two correct implementations give the same fragments.

    Existing arrays of the same layout are overwritten; arrays of another
    shape, chunking, dtype or voxel size are an error (delete them first).
    Bad arguments raise ``ValueError`` naming the argument.
    """
    shape = tuple(int(s) for s in shape)
    voxel_size = Coordinate(voxel_size)
    neighborhood = [tuple(int(o) for o in offset) for offset in neighborhood]
    width = _check_arguments(
        shape,
        voxel_size,
        neighborhood,
        num_cells,
        noise,
        blur,
        objects,
        membranes,
        membrane_width,
        affs_dtype,
    )
    chunks = (
        tuple(chunk_shape)
        if chunk_shape is not None
        else tuple(min(s, 64) for s in shape)
    )
    rng = np.random.default_rng(seed)

    labels = _labels(objects, shape, voxel_size, num_cells, width, rng)
    affs = noisy_affinities(
        affinities_from_labels(labels, neighborhood), noise, rng, blur
    )
    if affs_dtype == "uint8":
        affs = np.rint(affs * np.float32(255)).astype(np.uint8)
    elif affs_dtype == "float64":
        affs = _without_ties(affs, rng)

    path = Path(path)
    layout = dict(
        offset=tuple(offset) if offset is not None else (0,) * len(shape),
        voxel_size=voxel_size,
        units=["nm"] * len(shape),
    )
    labels_ds = Labels(store=path / "labels")
    _write(labels_ds, labels, chunks, layout)
    affs_ds = Affs(
        store=path / "affinities", neighborhood=[Coordinate(o) for o in neighborhood]
    )
    _write(affs_ds, affs, chunks, layout)
    raw_ds = None
    if raw:
        raw_ds = Raw(store=path / "raw")
        _write(raw_ds, raw_from_labels(labels, noise, rng), chunks, layout)
    logger.info(
        "wrote sample data %s: %d %s, shape %s", path, num_cells, objects, shape
    )
    return SampleData(labels=labels_ds, affinities=affs_ds, raw=raw_ds)


def _labels(
    objects: str,
    shape: tuple[int, ...],
    voxel_size: Coordinate,
    num_cells: int,
    membrane_width: int,
    rng: np.random.Generator,
) -> np.ndarray:
    if objects == "cells":
        labels = random_cells(shape, voxel_size, num_cells, rng)
        if membrane_width > 0:
            labels = add_membranes(labels, seam_widths(membrane_width, voxel_size))
        return labels
    labels = relabel_pieces(random_neurites(shape, voxel_size, num_cells, rng))
    if membrane_width > 0:
        labels = add_membranes(labels, seam_widths(membrane_width, voxel_size))
        # a seam can cut a crumb off a thin neurite: it joins the membrane
        labels = keep_largest_pieces(labels)
    return labels


def _without_ties(affs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    squeezed = 0.01 + 0.98 * affs.astype(np.float64)
    return squeezed + rng.uniform(-0.01, 0.01, size=affs.shape)


def _check_arguments(
    shape,
    voxel_size,
    neighborhood,
    num_cells,
    noise,
    blur,
    objects,
    membranes,
    membrane_width,
    affs_dtype,
) -> int:
    """Raise ValueError for a bad argument; return the membrane width."""
    if voxel_size.dims != len(shape):
        raise ValueError(
            f"voxel_size {tuple(voxel_size)} needs one value per axis of shape {shape}"
        )
    if any(size <= 0 for size in voxel_size):
        raise ValueError(f"voxel_size {tuple(voxel_size)} must be positive")
    bad = [offset for offset in neighborhood if len(offset) != len(shape)]
    if bad or not neighborhood:
        raise ValueError(
            f"neighborhood needs at least one offset, each with {len(shape)} values "
            f"(one per axis of shape {shape}); got {neighborhood}"
        )
    if not _is_count(num_cells) or num_cells < 1:
        raise ValueError(f"num_cells must be a whole number >= 1, got {num_cells!r}")
    if not noise >= 0:
        raise ValueError(f"noise must be 0 or more (0: no noise), got {noise}")
    _check_blur(blur, len(shape))
    if objects not in ("cells", "neurites"):
        raise ValueError(f"objects must be 'cells' or 'neurites', got {objects!r}")
    if objects == "neurites" and len(shape) < 2:
        raise ValueError(
            f"objects='neurites' needs at least 2 axes in shape, got {shape}"
        )
    if affs_dtype not in ("float32", "uint8", "float64"):
        raise ValueError(
            f"affs_dtype must be 'float32', 'uint8' or 'float64', got {affs_dtype!r}"
        )
    if not _is_count(membrane_width) or membrane_width < 0:
        raise ValueError(
            "membrane_width must be a whole number of voxels, 0 or more "
            f"(0: objects touch), got {membrane_width!r}"
        )
    if membranes and membrane_width not in (0, 1):
        raise ValueError(
            f"membranes=True and membrane_width={membrane_width} disagree: "
            "membranes=True means membrane_width=1; give only "
            f"membrane_width={membrane_width}"
        )
    return 1 if membranes else int(membrane_width)


def _is_count(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_blur(blur, ndim: int) -> None:
    try:
        sigmas = np.atleast_1d(np.asarray(blur, dtype=np.float64))
    except (TypeError, ValueError):
        sigmas = np.zeros((0, 0))
    if sigmas.ndim != 1 or sigmas.size not in (1, ndim):
        raise ValueError(
            f"blur must be one sigma (voxels) or one per spatial axis ({ndim}), "
            f"got {blur!r}"
        )
    if not np.all(sigmas >= 0) or not np.all(np.isfinite(sigmas)):
        raise ValueError(
            f"blur sigmas must be finite and 0 or more (0: no blur), got {blur!r}"
        )


def _write(dataset: Dataset, data: np.ndarray, chunks: tuple, layout: dict) -> None:
    channels = data.shape[: data.ndim - len(chunks)]
    spatial = ["z", "y", "x"][-len(chunks) :] if len(chunks) <= 3 else None
    axis_names = None
    if spatial is not None:
        axis_names = [f"c{i}^" for i in range(len(channels))] + spatial
    dataset.prepare(
        shape=data.shape,
        chunk_shape=(*channels, *chunks),
        axis_names=axis_names,
        types=["channel"] * len(channels) + ["space"] * len(chunks),
        dtype=data.dtype,
        **layout,
    )
    array = dataset.array("r+")
    array[array.roi] = data

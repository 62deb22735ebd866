"""Synthetic EM-like volumes: cells, neurites, membranes, intensities, noisy
affinities.

Cells are the Voronoi regions of random seed points, measured in world units
(so anisotropic voxels give cells that span few sections but many pixels, as
in serial-section EM), at coordinates bent by a smooth random displacement
field so that boundaries curve instead of being flat planes. Neurites are the
same construction one dimension down: Voronoi regions of seed points in the
plane of the last axes, extended along the first axis, so every region is a
tube through the volume; the displacement field bends the tubes and their
walls. Everything is drawn from the given `numpy.random.Generator`, so a seed
fixes the result.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter, zoom
from scipy.spatial import cKDTree
from skimage.measure import label as connected_components

from .affinities import offset_slices


def smooth_displacement(
    shape: Sequence[int],
    voxel_size: Sequence[float],
    amplitude: float,
    wavelength: float | Sequence[float],
    rng: np.random.Generator,
    terms: int = 8,
    keep_wavelength: bool = False,
) -> np.ndarray:
    """A smooth random vector field, shape ``(ndim, *shape)``, in world units.

    Each component is a sum of ``terms`` separable products of smooth random
    1-D curves (values drawn every ``wavelength`` world units, cubic
    interpolation; one wavelength for all axes or one per axis), scaled to a
    standard deviation of about ``amplitude``. Separable products cost a few
    multiplications per voxel, where interpolating a dense 3-D grid of random
    values costs seconds. A curve has at least 4 values: along an axis
    shorter than about 3 wavelengths they are drawn closer together (the
    cells' behaviour), or, with ``keep_wavelength``, the curve is cut from a
    longer one, so the field is as smooth as in a large volume.
    """
    shape = tuple(int(s) for s in shape)
    wavelengths = np.broadcast_to(np.asarray(wavelength, dtype=np.float64), len(shape))
    fields = np.zeros((len(shape), *shape), dtype=np.float64)
    for component in fields:
        for _ in range(terms):
            term = np.ones((1,) * len(shape))
            for axis, (size, spacing) in enumerate(zip(shape, voxel_size, strict=True)):
                curve = _smooth_curve(
                    size, spacing, float(wavelengths[axis]), rng, keep_wavelength
                )
                view = [1] * len(shape)
                view[axis] = size
                term = term * curve.reshape(view)
            component += term
    fields *= amplitude / np.sqrt(terms)
    return fields


def _smooth_curve(
    size: int,
    spacing: float,
    wavelength: float,
    rng: np.random.Generator,
    keep_wavelength: bool = False,
) -> np.ndarray:
    if keep_wavelength:
        # knots `wavelength` apart, the first and last beyond the ends (where
        # the interpolation would flatten out)
        voxels_per_knot = wavelength / spacing
        knots = max(4, int(np.ceil(size / voxels_per_knot)) + 2)
        values = rng.standard_normal(knots)
        curve = zoom(values, voxels_per_knot, order=3, mode="nearest", grid_mode=True)
        start = int(voxels_per_knot)
        return curve[start : start + size]
    knots = max(4, int(np.ceil(size * spacing / wavelength)) + 1)
    values = rng.standard_normal(knots)
    return zoom(values, size / knots, order=3, mode="nearest", grid_mode=True)[:size]


def random_cells(
    shape: Sequence[int],
    voxel_size: Sequence[float],
    num_cells: int,
    rng: np.random.Generator,
    warp: float | None = None,
) -> np.ndarray:
    """A uint64 label volume of ``num_cells`` irregular cells, ids ``1..num_cells``.

    Each voxel gets the id of the nearest seed point (world-unit distance) to
    its displaced center; ``warp`` is the displacement amplitude in world
    units (default: a quarter of the typical cell radius). Cells whose seed
    is crowded out may end up empty, so fewer ids can be present.
    """
    if num_cells < 1:
        raise ValueError(f"num_cells must be at least 1, got {num_cells}")
    shape = tuple(int(s) for s in shape)
    spacing = np.asarray(voxel_size, dtype=np.float64)
    extent = np.asarray(shape) * spacing
    radius = float((np.prod(extent) / num_cells) ** (1 / len(shape)) / 2)
    amplitude = radius / 4 if warp is None else float(warp)
    seeds = rng.uniform(0, extent, size=(num_cells, len(shape)))

    displacement = smooth_displacement(shape, voxel_size, amplitude, 2 * radius, rng)
    points = np.empty((int(np.prod(shape)), len(shape)), dtype=np.float64)
    for axis in range(len(shape)):
        centers = (np.arange(shape[axis]) + 0.5) * spacing[axis]
        view = [1] * len(shape)
        view[axis] = shape[axis]
        points[:, axis] = (centers.reshape(view) + displacement[axis]).ravel()
    _, nearest = cKDTree(seeds).query(points, workers=-1)
    return (np.asarray(nearest, dtype=np.uint64) + 1).reshape(shape)


NEURITE_BENDS = ((0.7, 24.0, 20.0), (0.12, 12.0, 6.0))
"""The displacements that bend neurites: (amplitude, wavelength along the
tubes, wavelength across them), in tube radii. The coarse one bends the tubes
and lets neighbors run at different angles; the fine one curves their walls.
Measured: slopes about 0.05, at most about 0.3 (a tube moves by 2 nm, at most
12 nm, from one 40 nm section to the next), and a section squeezed or
stretched by at most about 1.4x, so no tube folds over itself or shrinks to
nothing."""


def random_neurites(
    shape: Sequence[int],
    voxel_size: Sequence[float],
    num_neurites: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """A uint64 label volume of about ``num_neurites`` tubes along the first
    axis, filling the volume; ids are the tubes' seed numbers, from 1.

    In the plane of the other axes (world units), seed points spread evenly
    (two steps of Lloyd relaxation) are the tube centers; each voxel gets the
    id of the seed nearest to its in-plane position after a smooth
    displacement (`NEURITE_BENDS`). Tube radius: half the seed spacing,
    ``sqrt(plane area / num_neurites) / 2``. Seeds at the same
    density continue beyond the volume's sides, so tubes there are not
    stretched; some of them reach into the volume. A tube pushed out of the
    volume's side and back may be in pieces (see `relabel_pieces`).
    """
    if num_neurites < 1:
        raise ValueError(f"num_neurites must be at least 1, got {num_neurites}")
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"neurites need at least 2 axes, got shape {shape}")
    spacing = np.asarray(voxel_size, dtype=np.float64)
    plane = np.asarray(shape[1:]) * spacing[1:]
    radius = float((np.prod(plane) / num_neurites) ** (1 / plane.size) / 2)
    margin = 3 * radius  # beyond the reach of the displacement
    count = int(round(num_neurites * np.prod(plane + 2 * margin) / np.prod(plane)))
    seeds = rng.uniform(-margin, plane + margin, size=(count, plane.size))
    seeds = _spread_evenly(seeds, -margin, plane + margin, rng)

    shift = np.zeros((plane.size, *shape), dtype=np.float64)
    for amplitude, along, across in NEURITE_BENDS:
        wavelengths = [along * radius] + [across * radius] * plane.size
        field = smooth_displacement(
            shape,
            voxel_size,
            amplitude * radius,
            wavelengths,
            rng,
            keep_wavelength=True,
        )
        shift += field[1:]
    points = np.empty((int(np.prod(shape)), plane.size), dtype=np.float64)
    for axis in range(1, len(shape)):
        centers = (np.arange(shape[axis]) + 0.5) * spacing[axis]
        view = [1] * len(shape)
        view[axis] = shape[axis]
        points[:, axis - 1] = (centers.reshape(view) + shift[axis - 1]).ravel()
    _, nearest = cKDTree(seeds).query(points, workers=-1)
    return (np.asarray(nearest, dtype=np.uint64) + 1).reshape(shape)


def _spread_evenly(
    seeds: np.ndarray,
    low: np.ndarray | float,
    high: np.ndarray,
    rng: np.random.Generator,
    steps: int = 2,
) -> np.ndarray:
    """Lloyd relaxation on random samples of the box ``[low, high)``: each
    step moves every seed to the mean of the samples nearest to it, so
    regions become similar in size."""
    seeds = seeds.copy()
    for _ in range(steps):
        samples = rng.uniform(low, high, size=(32 * len(seeds), seeds.shape[1]))
        _, owner = cKDTree(seeds).query(samples, workers=-1)
        counts = np.bincount(owner, minlength=len(seeds))
        owned = counts > 0
        for axis in range(seeds.shape[1]):
            sums = np.bincount(owner, weights=samples[:, axis], minlength=len(seeds))
            seeds[owned, axis] = sums[owned] / counts[owned]
    return seeds


def relabel_pieces(labels: np.ndarray) -> np.ndarray:
    """Give every connected piece of every object (face neighbors, the same
    id) its own id, ``1..n`` in scan order; background 0 stays 0."""
    pieces = connected_components(labels, background=0, connectivity=1)
    return np.asarray(pieces, dtype=np.uint64)


def keep_largest_pieces(labels: np.ndarray) -> np.ndarray:
    """A copy of ``labels`` in which every object keeps only its largest
    connected piece (face neighbors); the other pieces become background."""
    pieces = connected_components(labels, background=0, connectivity=1)
    sizes = np.bincount(pieces.ravel())
    owner = np.zeros(sizes.size, dtype=labels.dtype)
    owner[pieces.ravel()] = labels.ravel()
    # per owner, its pieces sorted by size: the last one is the largest
    order = np.lexsort((sizes[1:], owner[1:])) + 1
    largest = order[np.r_[owner[order][1:] != owner[order][:-1], True]]
    keep = np.zeros(sizes.size, dtype=bool)
    keep[largest] = True
    return np.where(keep[pieces], labels, 0).astype(labels.dtype)


def seam_widths(width: int, voxel_size: Sequence[float]) -> tuple[int, ...]:
    """Seam width in voxels per axis for a membrane ``width`` voxels thick
    along the finest axes: the same thickness in world units along coarser
    axes, rounded, and at least one voxel (so ``width=1`` gives one voxel
    along every axis)."""
    thickness = width * min(voxel_size)
    return tuple(max(1, int(round(thickness / size))) for size in voxel_size)


def add_membranes(labels: np.ndarray, width: int | Sequence[int] = 1) -> np.ndarray:
    """A copy of ``labels`` with a background (0) seam wherever two objects
    touch, ``width`` voxels wide (one value for all axes, or one per axis).

    A voxel is cleared when a voxel of another object lies within
    ``ceil(width / 2)`` voxels after it or ``floor(width / 2)`` voxels before
    it along an axis, so a seam of width 2 or more takes voxels from both
    sides and, across a boundary perpendicular to that axis, is exactly
    ``width`` voxels wide.
    With ``width=1`` a voxel is cleared when its successor along any axis has
    another label. Background voxels do not make seams.
    """
    widths = np.broadcast_to(np.asarray(width, dtype=np.int64), labels.ndim)
    boundary = np.zeros(labels.shape, dtype=bool)
    for axis, axis_width in enumerate(int(w) for w in widths):
        after = (axis_width + 1) // 2
        before = axis_width - after
        for step in [*range(1, after + 1), *range(-1, -before - 1, -1)]:
            offset = [0] * labels.ndim
            offset[axis] = step
            first, second = offset_slices(labels.shape, offset)
            here, there = labels[first], labels[second]
            boundary[first] |= (here != there) & (here != 0) & (there != 0)
    return np.where(boundary, np.uint64(0), labels).astype(np.uint64)


def boundaries(labels: np.ndarray) -> np.ndarray:
    """Where a voxel is background or touches another label along any axis."""
    edge = labels == 0
    for axis in range(labels.ndim):
        offset = [0] * labels.ndim
        offset[axis] = 1
        first, second = offset_slices(labels.shape, offset)
        differs = labels[first] != labels[second]
        edge[first] |= differs
        edge[second] |= differs
    return edge


def raw_from_labels(
    labels: np.ndarray,
    noise: float,
    rng: np.random.Generator,
    blur: Sequence[float] | float = 1.0,
) -> np.ndarray:
    """EM-like uint8 intensities: each cell a random grey level, dark cell
    boundaries, blurred by ``blur`` voxels (gaussian sigma) and with gaussian
    noise of standard deviation ``noise`` (as a fraction of the full range)."""
    ids = int(labels.max()) + 1
    grey = rng.uniform(0.55, 0.8, size=ids)
    image = grey[labels]
    image[boundaries(labels)] = 0.15
    image = gaussian_filter(image, blur)
    image += rng.standard_normal(image.shape) * noise
    return (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)


def noisy_affinities(
    affs: np.ndarray,
    noise: float,
    rng: np.random.Generator,
    blur: float | Sequence[float] = 0.0,
) -> np.ndarray:
    """Float32 affinities in [0, 1] that look predicted: ``affs`` blurred by a
    gaussian of ``blur`` voxels (sigma; one value for every spatial axis or
    one per spatial axis; channels are not mixed), plus gaussian noise of
    standard deviation ``noise``, clipped. With ``noise=0`` and ``blur=0`` the
    input comes back unchanged."""
    out = np.array(affs, dtype=np.float32)
    sigmas = np.broadcast_to(np.asarray(blur, dtype=np.float64), out.ndim - 1)
    if np.any(sigmas > 0):
        out = gaussian_filter(out, (0, *(float(sigma) for sigma in sigmas)))
    if noise > 0:
        # in place: these arrays are the largest of a sample volume
        jitter = rng.standard_normal(out.shape, dtype=np.float32)
        jitter *= np.float32(noise)
        out += jitter
    np.clip(out, 0.0, 1.0, out=out)
    return out

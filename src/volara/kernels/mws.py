"""Mutex watershed on voxel affinities, in numba: a drop-in for
`mwatershed.agglom` that orders tied edges the same way in every crop.

What mwatershed 0.5.4 (``agglom_rs``) does, read from its source and checked
against its output:

* Edges. Channel ``c`` with offset ``o`` joins voxel ``p`` to ``p + o`` with
  weight ``weights[c, p]``, for every ``p`` with both ends inside the array.
  An edge attracts if ``w > 0``; every other edge (``w <= 0``) repels. All
  edges are taken by decreasing ``|w|`` (an unstable sort: tied edges come
  in an order that depends on the whole array). NaN weights are an error.
* ``strides``: per offset, only ``p`` with ``(p - max(0, -o)) % stride == 0``
  on every axis (array slices starting at the first valid ``p``).
  ``randomized_strides``: every edge kept with probability ``1/prod(stride)``
  from an unseeded RNG (a different result on every call).
* Mutex watershed: an attractive edge merges the clusters of its voxels
  unless a repulsive edge taken earlier lies between them; a repulsive edge
  between two different clusters forbids their merging from then on.
* Seeds (non-zero values): voxels sharing a seed value start as one cluster
  (one node, named by the value's first voxel in C order); every two seed
  values get a repulsive edge taken before all others, so clusters with
  different seeds never merge.
* Output (uint64, spatial shape): a seeded cluster gets its seed value. An
  unseeded voxel that no kept attractive edge (``w > 0``) touches gets 0 (a
  voxel whose attractive edges were all refused is still a cluster of its
  own). Any other cluster gets the index (C order) of its union-find root
  in ``disjoint_sets::UnionFind``: union by rank, called as
  ``union(min(ra, rb), max(ra, rb))`` on the two roots, where a rank tie
  makes the larger index the root. So unseeded ids can equal seed values.
  ``w == 0`` edges are repulsive but come after every attractive edge, so
  they change nothing.

What `agglom` here matches: on weights without ties of ``|w|`` (and no
attractive and repulsive edge of equal ``|w|``), the identical output array,
ids included (the root mwatershed's union by rank would pick is tracked
alongside our own union-find), for 1 to 3 spatial axes, any offsets (also
negative, also longer than the array), seeds and strides. What differs:

* Ties: mwatershed sorts the edges with an unstable sort, so tied edges
  come out in an order that depends on the array's extent: a block cut from
  a volume takes them otherwise than the whole volume. Here an attractive
  edge comes before a repulsive edge of equal ``|w|``, and tied edges of
  one sign are taken by a rank computed from the edge's channel and global
  coordinates (``origin + p``) alone: the sum of one hashed term per
  channel, z, y and run of `_TIE_RUN` voxels along x; within a run, by x.
  A crop takes its tied edges in the order the whole volume does. Measured
  on generated data (benchmarks/README.md, "Ties"): a raster order
  (channel by channel) merged more on clipped affinities, and a rank per
  voxel scattered the growth over a plateau so finely that blocks agreed
  less with the whole volume.
* ``strides`` are counted from the global coordinate (``origin + p``);
  with ``origin`` at zeros (the default) that is mwatershed's rule.
* ``randomized_strides`` keeps an edge if a hash of its global
  position and channel falls below ``1/prod(stride)``: deterministic, and
  the same for an edge in every crop.

How: repulsive edges at voxels that no attractive edge touches are left
out (such a voxel stays alone, so its constraints are never asked: on a
block past the volume's edge, padded with zeros, that is most edges); one
uint64 sort key per remaining edge (the inverted bits of ``|w|``, the tie
rank, the attractive flag) sorted by an LSD radix sort; float64 weights sort
twice (the tie rank, then the full 64-bit ``|w|`` key), unless every weight
is exactly a float32. A flat union-find (path halving). Mutex constraints
are checked lazily: a repulsive edge only appends each cluster's voxel to
the other's partner list, and an attractive edge between two clusters that
both have partners scans the shorter list for a voxel of the other cluster.
A merge appends the shorter list to the longer one (whose root stays), so a
scan that finds nothing, which precedes a merge, costs no more than that
merge's copy, and all of them together stay within the small-to-large bound.
Pairs a scan found are kept in a small hash set of root pairs, so an edge
refused again is not scanned again while both roots stay roots. On the
yardstick's blocks only about one attractive edge in a thousand is refused:
keeping every constraint in a hash set of root pairs, re-keyed on each
merge (the previous design), cost a random access to a table of tens of MB
per edge: 1.3x the time in all (benchmarks/README.md).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numba
import numpy as np
from numba import njit
from numba.misc.appdirs import AppDirs


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError:
        return False
    return True


def _ensure_a_cache_directory() -> None:
    """numba keeps compiled kernels next to this file, else in the user's
    cache directory, and refuses to import a cached function where neither
    is writable (a read-only install, run by a user without a home). There,
    and unless ``NUMBA_CACHE_DIR`` chooses, they go to the system's
    temporary directory: still compiled once, not once per process."""
    config: Any = numba.config  # its settings are set at import, unknown to mypy
    if config.CACHE_DIR:
        return
    in_tree = Path(__file__).parent / "__pycache__"
    user_wide = Path(AppDirs(appname="numba", appauthor=False).user_cache_dir)
    if _writable(in_tree) or _writable(user_wide):
        return
    config.CACHE_DIR = str(Path(tempfile.gettempdir()) / f"volara-numba-{os.getuid()}")


_ensure_a_cache_directory()

_kept = threading.local()


@contextmanager
def buffers_kept() -> Iterator[None]:
    """Within: `agglom` keeps its working arrays (about 25 bytes per edge)
    from one call to the next in this thread, instead of allocating them
    anew. A worker runs block after block of one size, and each fresh array
    of hundreds of MB costs the operating system a zeroed page per 4 KiB on
    first touch. Released when the outermost ``with`` ends."""
    outer = getattr(_kept, "buffers", None)
    if outer is None:
        _kept.buffers = {}
    try:
        yield
    finally:
        if outer is None:
            del _kept.buffers


def _working_array(name: str, size: int, dtype: Any, zeroed: bool = False):
    """A 1-D array of ``size``: the one kept under ``name`` (see
    `buffers_kept`) if it is large enough, else a new one."""
    buffers = getattr(_kept, "buffers", None)
    if buffers is None:
        return np.zeros(size, dtype) if zeroed else np.empty(size, dtype)
    kept = buffers.get(name)
    if kept is None or kept.size < size or kept.dtype != dtype:
        buffers.pop(name, None)  # freed before its successor is allocated
        kept = buffers[name] = np.empty(size, dtype)
    array = kept[:size]
    if zeroed:
        array.fill(0)
    return array


_DIGIT_BITS = 11
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
# per-channel and per-axis multipliers of the randomized-strides and tie
# hashes (odd constants)
_AXIS_MULTIPLIERS = np.array(
    [0xD6E8FEB86659FD93, 0xA0761D6478BD642F, 0xE7037ED1A0B428DB, 0x8EBC6AF09C88C6E3],
    dtype=np.uint64,
)
_STRIDE_SALT = 0x13198A2E03707344
_TIE_TERM_BITS = 13
_TIE_BITS = _TIE_TERM_BITS + 2
"""Bits of an edge's tie rank: the sum of four terms (channel, z, y, x)."""
_TIE_RUN = 8
"""Voxels along x that share a tie rank, taken one after the other (in
ascending x): runs keep the growth of a cluster over a plateau of equal
edges local. Measured on generated data (benchmarks/README.md, "Ties"):
shorter runs (down to a rank per voxel) made blocks disagree more with the
whole volume and scored worse after agglomeration, longer ones made crops
merge more than the whole volume does."""


@njit(cache=True, inline="always")
def _mix(x):
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


@njit(cache=True, inline="always")
def _tie_hash(coordinate, axis):
    """The term of one coordinate (or channel: axis 0) in an edge's tie
    rank: `_TIE_TERM_BITS` bits, a function of the value alone."""
    x = np.uint64(coordinate) * _AXIS_MULTIPLIERS[axis] + np.uint64(axis)
    return _mix(x) >> np.uint64(64 - _TIE_TERM_BITS)


@njit(cache=True)
def _edge_keys(
    bits,
    shape,
    offsets,
    strides,
    origin,
    randomized,
    wide,
    marking,
    keys,
    order,
    touched,
):
    """With ``marking``: marks the voxels of kept attractive edges in
    ``touched``. Else: the sort keys and edge ids of every kept edge that
    counts, in (channel, voxel) order; their number, and how many repel.
    An edge counts if ``w != 0`` and it attracts or both its voxels are
    ``touched``: a voxel without attractive edges stays alone (nothing
    tries to merge it), so its mutex constraints are never asked.

    ``bits``: the weights viewed as unsigned integers, ``(channels, voxels)``.
    A key holds, from the top: the inverted ``|w|`` bits (narrow, float32,
    weights only; wide keys get them in `_wide_keys`), the repulsive flag
    (attractive edges before repulsive ones of equal ``|w|``), the tie rank
    (the sum of `_tie_hash` of the channel and of the global coordinates,
    x in runs of `_TIE_RUN`: equal in every crop, and scattered, so no axis
    or channel is taken first), and the attractive flag again (lowest bit,
    read by `_agglomerate`, not sorted on)."""
    sign_shift = np.uint64(bits.itemsize * 8 - 1)
    abs_mask = (np.uint64(1) << sign_shift) - np.uint64(1)
    repulsive_shift = np.uint64(_TIE_BITS + 1)
    magnitude_shift = np.uint64(_TIE_BITS + 2)
    nz, ny, nx = shape[0], shape[1], shape[2]
    nvox = nz * ny * nx
    m = _AXIS_MULTIPLIERS
    x_terms = np.empty(nx, dtype=np.uint64)
    for x in range(nx):
        x_terms[x] = _tie_hash((origin[2] + x) // _TIE_RUN, 3)
    n = 0
    repulsive = 0
    for c in range(offsets.shape[0]):
        oz, oy, ox = offsets[c, 0], offsets[c, 1], offsets[c, 2]
        sz, sy, sx = strides[c, 0], strides[c, 1], strides[c, 2]
        step = oz * ny * nx + oy * nx + ox
        threshold = np.uint64(0)
        if randomized:
            threshold = np.uint64((1 << 32) // (sz * sy * sx))
        salt = np.uint64(_STRIDE_SALT) + np.uint64(c) * m[0]
        c_term = _tie_hash(c, 0)
        for z in range(max(0, -oz), min(nz, nz - oz)):
            gz = origin[0] + z
            if not randomized and (gz - max(0, -oz)) % sz != 0:
                continue
            z_term = c_term + _tie_hash(gz, 1)
            hz = np.uint64(gz) * m[1]
            for y in range(max(0, -oy), min(ny, ny - oy)):
                gy = origin[1] + y
                if not randomized and (gy - max(0, -oy)) % sy != 0:
                    continue
                y_term = z_term + _tie_hash(gy, 2)
                hy = hz + np.uint64(gy) * m[2]
                row = (z * ny + y) * nx
                for x in range(max(0, -ox), min(nx, nx - ox)):
                    gx = origin[2] + x
                    if randomized:
                        position = hy + np.uint64(gx) * m[3]
                        if (_mix(salt + position) >> np.uint64(32)) >= threshold:
                            continue
                    elif (gx - max(0, -ox)) % sx != 0:
                        continue
                    p = row + x
                    b = np.uint64(bits[c, p])
                    magnitude = b & abs_mask
                    if magnitude == 0:
                        continue  # w == 0 changes nothing (see the docstring)
                    attractive = (b >> sign_shift) == 0
                    if marking:
                        if attractive:
                            touched[p] = True
                            touched[p + step] = True
                        continue
                    if not attractive and not (touched[p] and touched[p + step]):
                        continue
                    key = ((y_term + x_terms[x]) << np.uint64(1)) | np.uint64(
                        attractive
                    )
                    if not attractive:
                        key |= np.uint64(1) << repulsive_shift
                        repulsive += 1
                    if not wide:
                        key |= (abs_mask - magnitude) << magnitude_shift
                    keys[n] = key
                    order[n] = c * nvox + p
                    n += 1
    return n, repulsive


@njit(cache=True)
def _wide_keys(bits, order, keys, n):
    """The 64-bit key of float64 weights: inverted ``|w|`` bits above the
    attractive flag (lowest bit, not sorted on: the edges are in tie order
    already), for the edges in ``order``."""
    flat = bits.ravel()
    abs_mask = np.uint64(0x7FFFFFFFFFFFFFFF)
    for i in range(n):
        b = np.uint64(flat[order[i]])
        keys[i] = ((abs_mask - (b & abs_mask)) << np.uint64(1)) | np.uint64(
            (b >> np.uint64(63)) == 0
        )


@njit(cache=True)
def _radix_sort(keys, order, keys_tmp, order_tmp, n, low, high):
    """Stable LSD radix sort of ``keys[:n]`` by their bits ``low`` to
    ``high`` (exclusive), carrying ``order``; digits on which all keys agree
    are skipped. Returns whether the sorted result is in the ``_tmp``
    arrays."""
    radix = 1 << _DIGIT_BITS
    digit_mask = np.uint64(radix - 1)
    passes = (high - low + _DIGIT_BITS - 1) // _DIGIT_BITS
    counts = np.zeros((passes, radix), dtype=np.int64)
    for i in range(n):
        k = keys[i]
        for d in range(passes):
            counts[d, (k >> np.uint64(low + d * _DIGIT_BITS)) & digit_mask] += 1
    swapped = False
    starts = np.empty(radix, dtype=np.int64)
    for d in range(passes):
        if counts[d].max() == n:
            continue
        total = 0
        for r in range(radix):
            starts[r] = total
            total += counts[d, r]
        shift = np.uint64(low + d * _DIGIT_BITS)
        if swapped:
            _scatter(keys_tmp, order_tmp, keys, order, n, starts, shift, digit_mask)
        else:
            _scatter(keys, order, keys_tmp, order_tmp, n, starts, shift, digit_mask)
        swapped = not swapped
    return swapped


@njit(cache=True, inline="always")
def _scatter(src_keys, src_order, dst_keys, dst_order, n, starts, shift, mask):
    for i in range(n):
        k = src_keys[i]
        r = (k >> shift) & mask
        j = starts[r]
        starts[r] = j + 1
        dst_keys[j] = k
        dst_order[j] = src_order[i]


@njit(cache=True, inline="always")
def _find(parent, x):
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@njit(cache=True, inline="always")
def _slot(pair, mask):
    return np.int64(_mix(pair) >> np.uint64(1)) & mask


@njit(cache=True, inline="always")
def _pair(a, b):
    if a > b:
        a, b = b, a
    return (np.uint64(a) << np.uint64(32)) | np.uint64(b)


@njit(cache=True, inline="always")
def _probe(table, pair):
    """The slot of ``pair`` in ``table``, or the empty slot where it would
    go (linear probing)."""
    mask = table.size - 1
    i = _slot(pair, mask)
    while table[i] != pair and table[i] != 0:
        i = (i + 1) & mask
    return i


@njit(cache=True, inline="always")
def _contains(table, pair):
    return table[_probe(table, pair)] == pair


@njit(cache=True, inline="always")
def _insert(table, pair):
    """Add ``pair``; False if it was there already."""
    i = _probe(table, pair)
    if table[i] == pair:
        return False
    table[i] = pair
    return True


@njit(cache=True)
def _live_pairs(table, parent):
    """The pairs of ``table`` between two current roots (the others are
    left over from merges)."""
    live = np.empty(table.size, dtype=np.uint64)
    n = 0
    low = np.uint64(0xFFFFFFFF)
    for i in range(table.size):
        pair = table[i]
        if pair != 0:
            a = np.int64(pair >> np.uint64(32))
            b = np.int64(pair & low)
            if parent[a] == a and parent[b] == b:
                live[n] = pair
                n += 1
    return live[:n]


@njit(cache=True)
def _fill(table, pairs):
    for pair in pairs:
        _insert(table, pair)


# columns of the per-root record: the id mwatershed would give the cluster,
# its seed index and mwatershed's union-by-rank rank (one word), and where
# its partner list lies in the arena
_MW_ID, _SEED_RANK, _START, _LENGTH = 0, 1, 2, 3
_RECORD = 4  # four records per cache line
_RANK_BITS = 5  # ranks stay below log2(voxels) < 31
_RANK_MASK = (1 << _RANK_BITS) - 1
_MIN_TABLE = 1 << 12


@njit(cache=True)
def _agglomerate(keys, order, start, n, nvox, steps, parent, root, arena, known, state):
    """Mutex watershed over the sorted edges ``start..n``. Returns where it
    stopped: ``n``, or earlier when the ``known`` pairs or the partner
    arena need room first (``state[3]``, ``state[4]``: how much).

    ``root[r]``: the record of cluster root ``r``. A partner list holds,
    for each repulsive edge taken between the cluster and another, a voxel
    of the other (resolved by ``find``; duplicates allowed). ``known``:
    root pairs a scan found mutually exclusive (pairs with a root that has
    merged since are left behind; `_live_pairs` drops them). ``state``:
    arena used, (unused), pairs in ``known``, room needed in ``known`` and
    in the arena."""
    known_limit = known.size // 2
    one = np.uint64(1)
    for i in range(start, n):
        e = np.int64(order[i])
        c = e // nvox
        u = e - c * nvox
        ru = _find(parent, u)
        rv = _find(parent, u + steps[c])
        if ru == rv:
            continue
        a_rec = root[ru]
        b_rec = root[rv]
        la = a_rec[_LENGTH]
        lb = b_rec[_LENGTH]
        # room for either outcome: a list may move to a region twice its size
        room = 2 * (la + lb) + 16
        if state[2] + 1 > known_limit or state[0] + room > arena.size:
            state[3] = 1
            state[4] = room
            return i
        if not keys[i] & one:  # repulsive: each cluster notes the other
            _append(arena, state, a_rec, rv)
            _append(arena, state, b_rec, ru)
            continue
        su = a_rec[_SEED_RANK] >> _RANK_BITS
        sv = b_rec[_SEED_RANK] >> _RANK_BITS
        if su != 0 and sv != 0 and su != sv:
            continue
        if la > 0 and lb > 0:
            pair = _pair(ru, rv)
            if _contains(known, pair):
                continue
            if la <= lb:
                exclusive = _lists(parent, arena, a_rec[_START], la, rv)
            else:
                exclusive = _lists(parent, arena, b_rec[_START], lb, ru)
            if exclusive:
                _insert(known, pair)
                state[2] += 1
                continue
        new_id, new_rank = _mwatershed_union(a_rec, b_rec)
        # ours: the longer partner list (then the higher rank) stays root
        if la < lb or (
            la == lb
            and (a_rec[_SEED_RANK] & _RANK_MASK) < (b_rec[_SEED_RANK] & _RANK_MASK)
        ):
            ru, rv = rv, ru
            a_rec, b_rec = b_rec, a_rec
            la, lb = lb, la
        parent[rv] = ru
        a_rec[_MW_ID] = new_id
        a_rec[_SEED_RANK] = (max(su, sv) << _RANK_BITS) | new_rank
        if lb > 0:
            _reserve(arena, state, a_rec, lb)
            w = a_rec[_START] + la
            first = b_rec[_START]
            for k in range(lb):
                arena[w + k] = arena[first + k]
            a_rec[_LENGTH] = la + lb
            b_rec[_LENGTH] = 0
    return n


@njit(cache=True, inline="always")
def _lists(parent, arena, first, length, other):
    """Whether the partner list of ``length`` voxels from ``first`` holds a
    voxel of the cluster rooted at ``other``. Entries are replaced by their
    roots on the way: the next scan finds them in one step."""
    for k in range(first, first + length):
        r = _find(parent, arena[k])
        arena[k] = r
        if r == other:
            return True
    return False


@njit(cache=True, inline="always")
def _mwatershed_union(a_rec, b_rec):
    """The id and rank of the root mwatershed's union by rank picks when
    it joins these two clusters (a rank tie: the larger id)."""
    id_a, id_b = a_rec[_MW_ID], b_rec[_MW_ID]
    rank_a = a_rec[_SEED_RANK] & _RANK_MASK
    rank_b = b_rec[_SEED_RANK] & _RANK_MASK
    if id_a > id_b:
        id_a, id_b = id_b, id_a
        rank_a, rank_b = rank_b, rank_a
    if rank_a > rank_b:
        return id_a, rank_a
    if rank_b > rank_a:
        return id_b, rank_b
    return id_b, rank_b + 1


@njit(cache=True, inline="always")
def _append(arena, state, record, partner):
    _reserve(arena, state, record, 1)
    length = record[_LENGTH]
    arena[record[_START] + length] = partner
    record[_LENGTH] = length + 1


@njit(cache=True, inline="always")
def _capacity(length):
    """The room of a partner list of ``length``: lists lie in regions of a
    power of two (at least 4), so records need no capacity field."""
    if length == 0:
        return 0
    capacity = 4
    while capacity < length:
        capacity *= 2
    return capacity


@njit(cache=True, inline="always")
def _reserve(arena, state, record, extra):
    """Room for ``extra`` more partners in ``record``'s list: moved to the
    top of the arena, into the next larger region, if it is full."""
    length = record[_LENGTH]
    if length + extra <= _capacity(length):
        return
    top = state[0]
    first = record[_START]
    for k in range(length):
        arena[top + k] = arena[first + k]
    record[_START] = top
    state[0] = top + _capacity(length + extra)


@njit(cache=True)
def _regions(root):
    """Arena entries that the partner lists of the current roots occupy."""
    total = 0
    for r in range(root.shape[0]):
        total += _capacity(root[r, _LENGTH])
    return total


@njit(cache=True)
def _compact(parent, root, arena, new_arena):
    """Copy the partner lists of the current roots to ``new_arena`` (left
    behind: lists of merged clusters and their spare room). Returns the
    arena used."""
    top = 0
    for r in range(parent.size):
        record = root[r]
        length = record[_LENGTH]
        if parent[r] != r or length == 0:
            continue
        first = record[_START]
        for k in range(length):
            new_arena[top + k] = arena[first + k]
        record[_START] = top
        top += _capacity(length)
    return top


@njit(cache=True)
def _labels(parent, root, seed_values, touched, out):
    for p in range(out.size):
        r = _find(parent, p)
        s = root[r, _SEED_RANK] >> _RANK_BITS
        if s != 0:
            out[p] = seed_values[s]
        elif touched[p]:
            out[p] = np.uint64(root[r, _MW_ID])
        else:
            out[p] = 0


def agglom(
    weights: np.ndarray,
    offsets: Sequence[Sequence[int]],
    seeds: np.ndarray | None = None,
    strides: Sequence[Sequence[int]] | None = None,
    randomized_strides: bool = False,
    origin: Sequence[int] | None = None,
) -> np.ndarray:
    """Mutex watershed of edge ``weights``, as `mwatershed.agglom`.

    Args:
        weights: float32 or float64, channels first ``(len(offsets),
            *spatial)`` with 1 to 3 spatial axes; ``weights[c, p]`` is the
            edge from voxel ``p`` to ``p + offsets[c]``: ``> 0`` attracts,
            ``< 0`` repels, ``|w|`` orders.
        offsets: One offset per channel, in voxels (negative allowed).
        seeds: Integer labels, spatial shape; voxels sharing a non-zero
            value start merged, different values never merge, and seeded
            clusters come out with their value.
        strides: Per offset, keep only edges whose global coordinate
            (``origin + p``, counted from the first voxel the offset allows)
            is a multiple of the stride on every axis.
        randomized_strides: Instead keep each edge with probability
            ``1/prod(stride)``, decided by a hash of its global position.
        origin: Global voxel coordinate of the array's first voxel, so that
            tied edges (and strides) are taken as in the whole volume.
            Default zeros (the array is the whole volume).

    Returns uint64 cluster ids of the spatial shape (see the module
    docstring): seeds keep their values, voxels that no kept attractive
    edge touches are 0, other clusters are named by a voxel index.
    """
    weights = np.asarray(weights)
    if weights.dtype == np.float64:
        narrow = weights.astype(np.float32)
        if np.array_equal(narrow, weights):
            # exactly float32 values: |w| orders alike, one key suffices
            weights = narrow
    return _run(weights, offsets, seeds, strides, randomized_strides, origin)


def warm_up() -> None:
    """Compile the kernel for float32 and float64 weights, or load it from
    numba's on-disk cache (seconds to compile, 0.2 s to load). A task calls
    this in the driver before its workers start, so that a run compiles
    once and every worker loads the result."""
    # random weights on 16^3 voxels: enough partners that the arena is
    # compacted, so that function compiles too
    offsets = [(1, 0, 0), (0, 1, 0), (0, 0, 1)]
    weights = np.random.default_rng(0).uniform(-1, 1, size=(3, 16, 16, 16))
    seeds = np.zeros(weights.shape[1:], dtype=np.uint64)
    seeds[0, 0, :2] = 1
    agglom(weights.astype(np.float32), offsets, seeds=seeds)
    _run(weights, offsets, seeds=seeds)
    # known pairs grow only on large blocks with many refused merges
    known = np.zeros(_MIN_TABLE, dtype=np.uint64)
    _fill(known, _live_pairs(known, np.arange(4, dtype=np.int32)))


def _run(
    weights: np.ndarray,
    offsets: Sequence[Sequence[int]],
    seeds: np.ndarray | None = None,
    strides: Sequence[Sequence[int]] | None = None,
    randomized_strides: bool = False,
    origin: Sequence[int] | None = None,
) -> np.ndarray:
    """`agglom` without the float64-to-float32 shortcut."""
    weights = np.ascontiguousarray(weights)
    if weights.dtype not in (np.float32, np.float64):
        raise TypeError(f"weights must be float32 or float64, not {weights.dtype}")
    spatial = weights.shape[1:]
    ndim = len(spatial)
    if not 1 <= ndim <= 3:
        raise ValueError(f"1 to 3 spatial axes supported, not {ndim}")
    channels = weights.shape[0]
    offset_array = _per_channel(offsets, channels, ndim, "offsets", 0)
    stride_array = (
        np.ones((channels, 3), dtype=np.int64)
        if strides is None
        else _per_channel(strides, channels, ndim, "strides", 1)
    )
    if np.any(stride_array < 1):
        raise ValueError("strides must be positive")
    origin_array = np.zeros(3, dtype=np.int64)
    if origin is not None:
        if len(origin) != ndim:
            raise ValueError(f"origin has {len(origin)} values, need {ndim}")
        origin_array[3 - ndim :] = [int(o) for o in origin]
    if np.isnan(weights).any():
        raise ValueError("NaN weights")
    shape = np.array((1,) * (3 - ndim) + spatial, dtype=np.int64)
    nvox = int(np.prod(shape))
    if channels * nvox >= 2**31:
        raise ValueError("too many edges (channels x voxels must be < 2**31)")
    wide = weights.dtype == np.float64
    bits = weights.reshape(channels, nvox).view(np.uint64 if wide else np.uint32)

    capacity = channels * nvox
    keys = _working_array("keys", capacity, np.uint64)
    order = _working_array("order", capacity, np.uint32)
    touched = _working_array("touched", nvox, np.bool_, zeroed=True)
    if seeds is not None:
        seeds = np.asarray(seeds)
        if seeds.shape != spatial:
            raise ValueError(f"seeds have shape {seeds.shape}, weights {spatial}")
        # a seeded voxel belongs to its seed's cluster, which may merge
        touched |= seeds.ravel() != 0
    n = repulsive = 0
    for marking in (True, False):
        n, repulsive = _edge_keys(
            bits,
            shape,
            offset_array,
            stride_array,
            origin_array,
            bool(randomized_strides),
            wide,
            marking,
            keys,
            order,
            touched,
        )
    keys_tmp = _working_array("keys_tmp", n, np.uint64)
    order_tmp = _working_array("order_tmp", n, np.uint32)
    if wide:
        # the tie rank and the repulsive flag first, then |w| (bits 1 to 64)
        if _radix_sort(keys, order, keys_tmp, order_tmp, n, 1, 2 + _TIE_BITS):
            keys, keys_tmp, order, order_tmp = keys_tmp, keys, order_tmp, order
        _wide_keys(bits, order, keys, n)
        low, high = 1, 64
    else:
        low, high = 1, 33 + _TIE_BITS
    if _radix_sort(keys, order, keys_tmp, order_tmp, n, low, high):
        keys, order = keys_tmp, order_tmp
    del keys_tmp, order_tmp

    parent = _working_array("parent", nvox, np.int32)
    parent[:] = np.arange(nvox, dtype=np.int32)
    root = _working_array("root", nvox * _RECORD, np.int32, zeroed=True)
    root = root.reshape(nvox, _RECORD)
    root[:, _MW_ID] = parent
    seed_values = np.zeros(1, dtype=np.uint64)
    if seeds is not None:
        seed_values = _start_seeded(seeds, parent, root)
    # each repulsive edge appends to two lists, and lists move as they grow
    arena_names = ["arena", "spare_arena"]
    arena = _working_array(arena_names[0], max(1024, 4 * nvox, 6 * repulsive), np.int32)
    known = _working_array("known", _MIN_TABLE, np.uint64, zeroed=True)
    state = np.zeros(5, dtype=np.int64)
    steps = offset_array[:, 0] * shape[1] * shape[2]
    steps += offset_array[:, 1] * shape[2] + offset_array[:, 2]

    start = 0
    while True:
        start = _agglomerate(
            keys,
            order,
            start,
            n,
            nvox,
            steps,
            parent,
            root,
            arena,
            known,
            state,
        )
        if start == n:
            break
        if state[2] + state[3] > known.size // 2:
            # drop the pairs merges left behind; grow or shrink to a load
            # of at most a quarter
            live = _live_pairs(known, parent)
            size = _MIN_TABLE
            while 4 * (live.size + state[3]) > size:
                size *= 2
            known = _working_array("known", size, np.uint64, zeroed=True)
            _fill(known, live)
            state[2] = live.size
            del live
        if state[0] + state[4] > arena.size:
            # keep the lists of the current roots only; at most a quarter full
            used = _regions(root)
            size = arena.size
            while 4 * (used + state[4]) > size:
                size *= 2
            arena_names.reverse()
            compacted = _working_array(arena_names[0], size, np.int32)
            state[0] = _compact(parent, root, arena, compacted)
            arena = compacted
    del keys, order, known, arena

    out = np.empty(nvox, dtype=np.uint64)
    _labels(parent, root, seed_values, touched, out)
    return out.reshape(spatial)


def _per_channel(
    values: Sequence[Sequence[int]], channels: int, ndim: int, what: str, pad: int
) -> np.ndarray:
    rows = [[int(v) for v in row] for row in values]
    if len(rows) != channels or any(len(row) != ndim for row in rows):
        raise ValueError(
            f"{what}: need {channels} rows of {ndim} values (one per channel)"
        )
    out = np.full((channels, 3), pad, dtype=np.int64)
    if channels:
        out[:, 3 - ndim :] = rows
    return out


def _start_seeded(
    seeds: np.ndarray, parent: np.ndarray, root: np.ndarray
) -> np.ndarray:
    """Voxels sharing a non-zero seed start as one cluster, rooted (and, as
    in mwatershed, named) at the value's first voxel. Returns the seed
    values by seed index (index 0: no seed)."""
    flat = seeds.ravel().astype(np.uint64)
    seeded = np.flatnonzero(flat)
    values, first, inverse = np.unique(
        flat[seeded], return_index=True, return_inverse=True
    )
    roots = seeded[first]
    parent[seeded] = roots[inverse.ravel()]
    root[roots, _SEED_RANK] = np.arange(1, values.size + 1) << _RANK_BITS
    return np.concatenate([np.zeros(1, dtype=np.uint64), values])

"""Exact and near-duplicate groups across the feature table, found without comparing all pairs.

Both groupings run when the table is assembled, from columns every row already carries:

* exact duplicates share ``pixels_sha256``, the digest of the decoded RGB pixels and their size,
  so the same picture re-encoded losslessly, or served twice, is found however the files differ;
* near duplicates are the connected components of the graph linking two images whose 64-bit pHashes
  differ in at most ``max_distance`` bits (default 6): a resized or recompressed copy lands with its
  original, and a chain of small edits keeps a group together.

Finding every pair within distance d among n hashes naively takes n²/2 comparisons (5·10⁹ for
100,000 images). Instead, multi-index hashing: split the 64 bits into m bands; if two hashes differ
in at most d bits, some band differs in at most r = d // m bits (otherwise the distance would be at
least m (r + 1) > d). Each hash is looked up, band by band, in a table of all hashes' band values,
under its own band value and every value within r flips of it; only those candidates are checked
with a full popcount. m is chosen by a cost model (lookups versus expected candidates for uniformly
spread hashes), which for d = 6 and 100,000 hashes picks 4 bands of 16 bits and radius 1; two keys
that differ are paired once, from the smaller one, so each candidate is checked once. Identical
hashes are merged first, so a catalog full of the same blank image cannot fill one bucket with
quadratically many pairs. Components come from a vectorised union-find (hook roots to the smaller
root, then compress paths until every node points at a root).

When a catalog only grew since its last grouping, extend_near_duplicate_groups looks up the new
hashes alone against all of them and joins the earlier groups through the edges found, so adding
1% of images costs about 1% of a full grouping.

A group is labelled by its smallest ``image_id`` (in code-point order), which does not depend on
the catalog's row order; images in no group of two or more get null.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from itertools import combinations

import numpy as np
from numpy.typing import NDArray

HASH_BITS = 64
DEFAULT_MAX_DISTANCE = 6
_DIRECT_TABLE_MAX_BITS = 22
"""Bands up to this width are looked up in a dense table indexed by band value (O(1) per lookup,
two int32 arrays of 2**width entries: at most 32 MiB); wider bands use a binary search over the
sorted band values."""
_PAIR_CHUNK = 1 << 21
"""Candidate pairs expanded and checked at a time, which bounds memory whatever the data."""


def hex_to_uint64(hex_hashes: Sequence[str | None]) -> tuple[NDArray[np.uint64], NDArray[np.bool_]]:
    """Parse 16-hex-digit hashes; returns the values and which entries were present."""
    present = np.array([h is not None for h in hex_hashes], dtype=bool)
    values = np.array([int(h, 16) if h is not None else 0 for h in hex_hashes], dtype=np.uint64)
    return values, present


def popcount(values: NDArray[np.uint64]) -> NDArray[np.uint8]:
    """Number of set bits of each value."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    return table[values.view(np.uint8).reshape(-1, 8)].sum(axis=1, dtype=np.uint8)


def _ball_size(width: int, radius: int) -> int:
    return sum(math.comb(width, k) for k in range(radius + 1))


def _band_widths(bands: int) -> list[int]:
    base, extra = divmod(HASH_BITS, bands)
    return [base + 1 if b < extra else base for b in range(bands)]


def choose_bands(count: int, max_distance: int, queries: int | None = None) -> int:
    """The number of bands with the least estimated work for ``count`` distinct hashes.

    ``queries`` is how many of them look for partners (all of them when None, each pair then
    examined once; fewer when only newly added hashes are matched against everything).
    """
    best, best_cost = 1, math.inf
    for bands in range(1, min(HASH_BITS, max_distance + 1) + 1):
        radius = max_distance // bands
        widths = _band_widths(bands)
        if queries is None:
            lookups = count * sum(_ball_size(w, radius) for w in widths)
            candidates = sum(count * count / 2 * _ball_size(w, radius) / 2.0**w for w in widths)
        else:
            lookups = queries * sum(_ball_size(w, radius) for w in widths)
            candidates = sum(queries * count * _ball_size(w, radius) / 2.0**w for w in widths)
        cost = 3 * lookups + candidates
        if cost < best_cost:
            best, best_cost = bands, cost
    return best


@lru_cache(maxsize=64)
def flip_masks(width: int, radius: int) -> NDArray[np.uint64]:
    """Every ``width``-bit mask with at most ``radius`` bits set (0 first)."""
    masks = [0]
    for k in range(1, radius + 1):
        for bits in combinations(range(width), k):
            masks.append(sum(1 << b for b in bits))
    return np.array(masks, dtype=np.uint64)


def _expand(queries: NDArray[np.int64], lo: NDArray[np.int64], counts: NDArray[np.int64],
            order: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Pairs (query, candidate) for each query's bucket range ``[lo, lo + count)``."""
    total = int(counts.sum())
    run_starts = np.cumsum(counts) - counts
    positions = np.repeat(lo - run_starts, counts) + np.arange(total, dtype=np.int64)
    return np.repeat(queries, counts), order[positions]


def candidate_edges(values: NDArray[np.uint64], max_distance: int,
                    queries: NDArray[np.int64] | None = None,
                    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Every pair of distinct ``values`` within ``max_distance`` bits (some pairs repeated).

    With ``queries`` (positions in ``values``), only the pairs with at least one end among them:
    the new edges when those values were added to a set already grouped.
    """
    count = values.size
    found_i: list[NDArray[np.int64]] = [np.zeros(0, dtype=np.int64)]
    found_j: list[NDArray[np.int64]] = [np.zeros(0, dtype=np.int64)]
    if count < 2 or (queries is not None and queries.size == 0):
        return found_i[0], found_j[0]
    bands = choose_bands(count, max_distance, None if queries is None else queries.size)
    radius = max_distance // bands
    start = 0
    for width in _band_widths(bands):
        keys = ((values >> np.uint64(start)) & np.uint64((1 << width) - 1)).astype(np.int64)
        start += width
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        if width <= _DIRECT_TABLE_MAX_BITS:
            bucket_sizes = np.bincount(keys, minlength=1 << width).astype(np.int32)
            ends = np.cumsum(bucket_sizes, dtype=np.int64)
            bucket_starts = (ends - bucket_sizes).astype(np.int32)
        for mask in flip_masks(width, radius).tolist():
            if queries is not None:
                asking = queries
            elif mask:
                # Two keys differing by ``mask`` are paired once, from the one whose highest
                # flipped bit is clear (the smaller key): half the lookups and candidates.
                asking = np.flatnonzero((keys & (1 << (mask.bit_length() - 1))) == 0)
            else:
                asking = np.arange(count, dtype=np.int64)
            probes = keys[asking] ^ mask
            if width <= _DIRECT_TABLE_MAX_BITS:
                lo = bucket_starts[probes]
                sizes = bucket_sizes[probes]
            else:
                lo = np.searchsorted(sorted_keys, probes, side="left")
                sizes = np.searchsorted(sorted_keys, probes, side="right") - lo
            # Expand in chunks of queries so at most about _PAIR_CHUNK pairs exist at once.
            cumulative = np.cumsum(sizes)
            first = 0
            while first < asking.size:
                done_before = int(cumulative[first - 1]) if first else 0
                last = int(np.searchsorted(cumulative, done_before + _PAIR_CHUNK, side="right"))
                last = min(asking.size, max(last, first + 1))
                left, right = _expand(asking[first:last], lo[first:last], sizes[first:last],
                                      order)
                if not mask:  # same bucket: each pair appears both ways, and with itself
                    keep = left < right if queries is None else left != right
                    left, right = left[keep], right[keep]
                close = popcount(values[left] ^ values[right]) <= max_distance
                found_i.append(left[close])
                found_j.append(right[close])
                first = last
    return np.concatenate(found_i), np.concatenate(found_j)


def connected_components(count: int, left: NDArray[np.int64],
                         right: NDArray[np.int64]) -> NDArray[np.int64]:
    """Component of each node 0..count-1 given edges, labelled by its smallest node."""
    parent = np.arange(count, dtype=np.int64)
    while left.size:
        root_left, root_right = parent[left], parent[right]
        open_edges = root_left != root_right
        if not open_edges.any():
            break
        left, right = left[open_edges], right[open_edges]
        low = np.minimum(root_left[open_edges], root_right[open_edges])
        high = np.maximum(root_left[open_edges], root_right[open_edges])
        np.minimum.at(parent, high, low)
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    return parent


def _labels(image_ids: Sequence[str], component: NDArray[np.int64],
            member: NDArray[np.bool_]) -> list[str | None]:
    """Smallest image id per component for members of components with 2+ members, else None."""
    labels = np.full(len(image_ids), None, dtype=object)
    rows = np.flatnonzero(member)
    if rows.size == 0:
        return labels.tolist()
    ids = np.array(image_ids, dtype=object)
    # Rank the members' ids in code-point order, then take each component's lowest rank.
    rank = np.empty(rows.size, dtype=np.int64)
    rank[np.argsort(ids[rows].astype(str), kind="stable")] = np.arange(rows.size)
    _, group, sizes = np.unique(component[rows], return_inverse=True, return_counts=True)
    group = group.reshape(-1)
    lowest = np.full(sizes.size, rows.size, dtype=np.int64)
    np.minimum.at(lowest, group, rank)
    row_of_rank = np.empty(rows.size, dtype=np.int64)
    row_of_rank[rank] = rows
    grouped = sizes[group] >= 2
    labels[rows[grouped]] = ids[row_of_rank[lowest[group[grouped]]]]
    return labels.tolist()


def exact_duplicate_groups(image_ids: Sequence[str],
                           pixel_digests: Sequence[str | None]) -> list[str | None]:
    """Group images with the same decoded pixels; label = the group's smallest image id."""
    first_seen: dict[str, int] = {}
    component = np.zeros(len(image_ids), dtype=np.int64)
    member = np.zeros(len(image_ids), dtype=bool)
    for position, digest in enumerate(pixel_digests):
        if digest is None:
            continue
        component[position] = first_seen.setdefault(digest, position)
        member[position] = True
    return _labels(image_ids, component, member)


def _check_distance(max_distance: int) -> None:
    if not 0 <= max_distance <= HASH_BITS:
        raise ValueError(f"max_distance must be within 0..{HASH_BITS}, got {max_distance}")


def near_duplicate_groups(image_ids: Sequence[str], phashes: Sequence[str | None],
                          max_distance: int = DEFAULT_MAX_DISTANCE) -> list[str | None]:
    """Group images whose pHashes are linked by steps of at most ``max_distance`` bits."""
    _check_distance(max_distance)
    values, present = hex_to_uint64(phashes)
    distinct, inverse = np.unique(values[present], return_inverse=True)
    left, right = candidate_edges(distinct, max_distance)
    distinct_component = connected_components(distinct.size, left, right)
    component = np.zeros(len(image_ids), dtype=np.int64)
    component[present] = distinct_component[inverse.reshape(-1)]
    return _labels(image_ids, component, present)


def extend_near_duplicate_groups(image_ids: Sequence[str], phashes: Sequence[str | None],
                                 max_distance: int, earlier: Sequence[str | None],
                                 is_new: Sequence[bool]) -> list[str | None]:
    """The groups of near_duplicate_groups, when only ``is_new`` rows joined an earlier grouping.

    ``earlier[i]`` is row i's group label from that grouping (read for rows that are not new).
    Adding images only adds edges, and every added edge touches a new image, so the new
    components are the earlier groups joined by the new images' edges: only the new hashes are
    looked up (against all of them), which turns a regrouping of a whole catalog into work in
    proportion to what was added. Valid only if no earlier image was removed or changed its hash
    and ``max_distance`` is the one the earlier groups were made with; the caller checks that.
    """
    _check_distance(max_distance)
    values, present = hex_to_uint64(phashes)
    new = np.asarray(is_new, dtype=bool)
    rows = np.flatnonzero(present)
    distinct, first_index, inverse = np.unique(values[present], return_index=True,
                                               return_inverse=True)
    inverse = inverse.reshape(-1)
    representative = rows[first_index]
    left = [rows]  # every row joins the first row with its hash
    right = [representative[inverse]]
    labels = {label for label, added in zip(earlier, new.tolist(), strict=True)
              if label is not None and not added}
    row_of_label = {image_id: row for row, image_id in enumerate(image_ids) if image_id in labels}
    missing = labels - row_of_label.keys()
    if missing:
        raise ValueError(f"earlier group labels no longer in the table, e.g. {min(missing)}")
    members = [(row, row_of_label[label]) for row, (label, added)
               in enumerate(zip(earlier, new.tolist(), strict=True))
               if label is not None and not added]
    if members:
        pairs = np.array(members, dtype=np.int64)
        left.append(pairs[:, 0])
        right.append(pairs[:, 1])
    asking = np.unique(inverse[new[present]]).astype(np.int64)
    near_left, near_right = candidate_edges(distinct, max_distance, queries=asking)
    left.append(representative[near_left])
    right.append(representative[near_right])
    component = connected_components(len(image_ids), np.concatenate(left),
                                     np.concatenate(right))
    return _labels(image_ids, component, present)

"""Exact duplicates (same decoded pixels) and near duplicates (perceptual hash) of smear fields."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image
from scipy.fft import dctn
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

NEAR_DUPLICATE_MAX_DISTANCE = 10
"""Two fields whose 64-bit DCT perceptual hashes differ in at most this many bits are near duplicates.

On the Taleqani images the nearest-neighbour distance is bimodal: re-photographed fields sit at 0-10 bits,
distinct fields at 12 and above (visually checked at 10 and 12)."""


def pixel_digest(rgb: np.ndarray) -> str:
    """Identity of the decoded pixels (shape included): equal digests mean exact duplicates."""
    h = hashlib.sha1(str(rgb.shape).encode())
    h.update(np.ascontiguousarray(rgb).tobytes())
    return h.hexdigest()


def perceptual_hash(rgb: np.ndarray) -> int:
    """64-bit pHash: DCT of a 32x32 greyscale thumbnail, low 8x8 frequencies against their median."""
    grey = Image.fromarray(rgb).convert("L").resize((32, 32), Image.Resampling.BILINEAR)
    coeffs = dctn(np.asarray(grey, dtype=np.float64), norm="ortho")[:8, :8].flatten()
    bits = coeffs[1:] > np.median(coeffs[1:])
    value = 0
    for b in bits:
        value = (value << 1) | int(b)
    return value


def hamming_matrix(hashes: list[int]) -> np.ndarray:
    arr = np.array(hashes, dtype=np.uint64)
    return np.bitwise_count(arr[:, None] ^ arr[None, :])


def _components(n: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    """Connected components of the graph on 0..n-1 with edges `pairs`, each sorted, ordered by smallest member."""
    a, b = np.array(pairs, dtype=np.int64).reshape(-1, 2).T
    _, label = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(label.tolist()):
        groups.setdefault(c, []).append(i)
    return list(groups.values())


def find_duplicate_groups(
    digests: list[str], hashes: list[int]
) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """Indices grouped three ways, (exact_groups, near_groups, all_groups): exact groups share decoded pixels;
    near groups are connected by pHash distance <= NEAR_DUPLICATE_MAX_DISTANCE and hold at least two different
    pixel contents; all_groups partitions every index (singletons included) by exact-or-near links, what a
    split must respect."""
    n = len(digests)
    by_digest: dict[str, list[int]] = {}
    for i, d in enumerate(digests):
        by_digest.setdefault(d, []).append(i)
    exact = [g for g in by_digest.values() if len(g) > 1]
    exact_pairs = [(g[0], j) for g in exact for j in g[1:]]
    near_pairs: list[tuple[int, int]] = []
    if n > 1:
        dist = hamming_matrix(hashes)
        ii, jj = np.nonzero(np.triu(dist <= NEAR_DUPLICATE_MAX_DISTANCE, k=1))
        near_pairs = list(zip(ii.tolist(), jj.tolist(), strict=True))
    all_groups = _components(n, exact_pairs + near_pairs)
    near = [g for g in all_groups if len(g) > 1 and len({digests[i] for i in g}) > 1]
    return exact, near, all_groups

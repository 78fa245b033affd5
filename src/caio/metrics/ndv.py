"""Non-diffeomorphic volume (NDV) and the tetrahedral Jacobian determinants it is built from.

NumPy, float64, channel-first ``(3, D0, D1, D2)`` displacements in voxels (the
:mod:`caio.spatial` convention), mirroring the LUMIR 2025 evaluator's definition.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from caio.spatial import identity_grid_np


def _shift(a: np.ndarray, offsets: Sequence[int]) -> np.ndarray:
    """``a[..., p + offsets]`` with edge replication (scipy 'nearest') on the last 3 axes."""
    pad = [(0, 0)] * (a.ndim - 3) + [(1, 1)] * 3
    padded = np.pad(a, pad, mode="edge")
    sl = tuple(slice(1 + o, 1 + o + n) for o, n in zip(offsets, a.shape[-3:]))
    return padded[(Ellipsis,) + sl]


def _det3(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Determinant of the 3x3 matrix with columns a, b, c (each ``(3, ...)``)."""
    return a[0] * (b[1] * c[2] - b[2] * c[1]) - b[0] * (a[1] * c[2] - a[2] * c[1]) + c[0] * (a[1] * b[2] - a[2] * b[1])


def tetrahedral_jacobians(disp: np.ndarray) -> list[np.ndarray]:
    """The 10 finite-difference Jacobian determinants of Liu et al. (IJCV 2024).

    Eight one-sided schemes (forward or backward difference chosen per axis) and the two
    central tetrahedra of the two 5-tetrahedra cube decompositions (each 2 for the
    identity). Boundaries replicate the edge voxel.

    Args:
        disp: ``(3, D0, D1, D2)`` float displacement in voxels.
    Returns:
        list of 10 arrays ``(D0, D1, D2)``.
    """
    t = identity_grid_np(disp.shape[1:]) + disp.astype(np.float64)
    e = np.eye(3, dtype=int)
    dets = []
    for signs in np.ndindex(2, 2, 2):
        cols = []
        for k, s in enumerate(signs):
            if s == 0:  # forward difference
                cols.append(_shift(t, e[k]) - t)
            else:  # backward difference
                cols.append(t - _shift(t, -e[k]))
        dets.append(_det3(*cols))
    dets.append(_det3(_shift(t, -e[0] - e[1]) - t, _shift(t, -e[0] - e[2]) - t, _shift(t, -e[1] - e[2]) - t))
    dets.append(_det3(_shift(t, e[0] + e[1]) - t, _shift(t, e[1] + e[2]) - t, _shift(t, e[0] + e[2]) - t))
    return dets


def _interior_difference(disp: np.ndarray, rows: slice, offset: Sequence[int]) -> np.ndarray:
    """``T(p + offset) - T(p)`` with ``T = identity + disp`` for the interior voxels ``p``.

    ``p`` runs over the 1-voxel-cropped grid, rows ``rows`` of axis 0 (crop coordinates);
    ``offset`` has entries in {-1, 0, 1}, so every neighbour lies inside the volume.
    """
    n1, n2 = disp.shape[2], disp.shape[3]
    here = (slice(None), slice(rows.start + 1, rows.stop + 1), slice(1, n1 - 1), slice(1, n2 - 1))
    there = (
        slice(None),
        slice(rows.start + 1 + offset[0], rows.stop + 1 + offset[0]),
        slice(1 + offset[1], n1 - 1 + offset[1]),
        slice(1 + offset[2], n2 - 1 + offset[2]),
    )
    return disp[there] - disp[here] + np.asarray(offset, dtype=np.float64).reshape(3, 1, 1, 1)


def _interior_jacobians(disp: np.ndarray, rows: slice) -> list[np.ndarray]:
    """The 10 schemes of :func:`tetrahedral_jacobians`, on interior rows only (no boundary cases)."""
    e = np.eye(3, dtype=int)
    forward = [_interior_difference(disp, rows, e[k]) for k in range(3)]
    backward = [-_interior_difference(disp, rows, -e[k]) for k in range(3)]
    dets = [_det3(*[(forward, backward)[s][k] for k, s in enumerate(signs)]) for signs in np.ndindex(2, 2, 2)]
    dets.append(_det3(*[_interior_difference(disp, rows, -o) for o in (e[0] + e[1], e[0] + e[2], e[1] + e[2])]))
    dets.append(_det3(*[_interior_difference(disp, rows, o) for o in (e[0] + e[1], e[1] + e[2], e[0] + e[2])]))
    return dets


def ndv_percent(disp: np.ndarray, mask: np.ndarray | None = None, rows_per_chunk: int = 16) -> float:
    """Non-diffeomorphic volume in percent, as the LUMIR 2025 evaluator defines it.

    ``100 * sum_{10 schemes} sum_{mask} max(-J, 0) / 12 / |mask|`` with all maps and the
    mask cropped by one voxel per side (equal to summing :func:`tetrahedral_jacobians` over
    the cropped mask; computed in slabs of ``rows_per_chunk`` rows to bound memory).

    Args:
        disp: ``(3, D0, D1, D2)`` displacement in voxels.
        mask: ``(D0, D1, D2)`` boolean brain mask (the evaluator uses ``fixed > 0``);
            ``None`` means the whole volume.
    Returns:
        NDV in percent (0 for a diffeomorphic field).
    """
    disp = np.asarray(disp, dtype=np.float64)
    crop = (slice(1, -1),) * 3
    m = np.ones(disp.shape[1:], bool)[crop] if mask is None else np.asarray(mask, bool)[crop]
    n = int(m.sum())
    if n == 0:
        return 0.0
    total = 0.0
    for start in range(0, m.shape[0], rows_per_chunk):
        rows = slice(start, min(start + rows_per_chunk, m.shape[0]))
        slab = m[rows]
        if slab.any():
            total += sum(float(np.maximum(-j, 0.0)[slab].sum()) for j in _interior_jacobians(disp, rows))
    return 100.0 * total / 12.0 / n

"""Quality-control pictures of one registration (headless, matplotlib Agg).

:func:`write_qc` writes two PNGs per pair:

* ``<name>_images.png``: rows fixed / moving / warped moving / checkerboard of fixed and warped /
  fixed edges (or fixed label boundaries) over the warped image; columns axial, coronal, sagittal.
* ``<name>_deformation.png``: the deformed grid (in-plane components of ``x + disp(x)``) over the
  fixed image, and ``log J`` (Jacobian determinant from :func:`caio.spatial.jacobian_determinant`)
  inside the fixed brain with folding voxels (J <= 0) marked.

Display orientation assumes LUMIR's RAS array order (axis 0 left->right, axis 1
posterior->anterior, axis 2 inferior->superior) and shows neurological views: axial with anterior
up and the subject's right on the right, coronal and sagittal with superior up (sagittal: anterior
on the right). Letters at the image edges name the directions.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from caio import spatial
from caio.io.atomic import replace_atomically

log = logging.getLogger(__name__)

PLANES: tuple[tuple[str, int], ...] = (("axial", 2), ("coronal", 1), ("sagittal", 0))
"""View name and the array axis held fixed for it."""
_EDGE_LETTERS = {0: ("L", "R"), 1: ("P", "A"), 2: ("I", "S")}


def _as_volume(x: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    """``(D0, D1, D2)`` float32 from a numpy volume or a ``[1, 1, D0, D1, D2]`` tensor."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    arr = arr.reshape(arr.shape[-3:]) if arr.ndim > 3 and int(np.prod(arr.shape[:-3])) == 1 else arr
    if arr.ndim != 3:
        raise ValueError(f"{what} must be a 3-D volume, got shape {arr.shape}")
    return arr.astype(np.float32, copy=False)


def _as_disp(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``[1, 3, D0, D1, D2]`` float32 tensor from ``(3, D0, D1, D2)`` or ``[1, 3, ...]``."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float32)
    t = t[None] if t.dim() == 4 else t
    if t.dim() != 5 or t.shape[:2] != (1, 3):
        raise ValueError(f"disp must be (3, D0, D1, D2) or [1, 3, D0, D1, D2], got {tuple(t.shape)}")
    return t.detach().cpu()


def _slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """2-D view with the lower remaining axis horizontal; transpose it for ``imshow(origin='lower')``."""
    return np.take(volume, index, axis=axis).T


def _display_range(volume: np.ndarray) -> tuple[float, float]:
    values = volume[volume > 0]
    return (0.0, float(np.percentile(values, 99.5)) if values.size else 1.0)


def _centre_slices(mask: np.ndarray) -> list[int]:
    """Slice index per array axis through the centre of ``mask``'s bounding box (grid centre if empty).

    The sagittal index (axis 0) is moved by a tenth of the grid towards the subject's right so
    that it cuts through a hemisphere (deep structures, ventricles) instead of the midline fissure.
    """
    if not mask.any():
        centre = [n // 2 for n in mask.shape]
    else:
        centre = []
        for k in range(3):
            present = np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != k)))[0]
            centre.append(int(present[0] + present[-1]) // 2)
    centre[0] = min(centre[0] + mask.shape[0] // 10, mask.shape[0] - 1)
    return centre


def _checkerboard(a: np.ndarray, b: np.ndarray, tile: int) -> np.ndarray:
    """Tiles of ``a`` and ``b`` (both 2-D, already scaled to [0, 1])."""
    rows, cols = np.indices(a.shape)
    return np.where(((rows // tile) + (cols // tile)) % 2 == 0, a, b)


def _edges(image: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """Boolean 2-D edge map: label boundaries when given, else strong gradients of ``image``."""
    if labels is not None:
        lab = labels.astype(np.int64)
        edge = np.zeros(lab.shape, bool)
        edge[:-1] |= lab[:-1] != lab[1:]
        edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
        return edge
    gy, gx = np.gradient(image.astype(np.float64))
    mag = np.hypot(gx, gy)
    inside = mag[image > 0]
    return mag > (np.percentile(inside, 85) if inside.size else np.inf)


def _ensure_mpl_config_dir() -> None:
    """Point MPLCONFIGDIR to a temporary folder when the default one is not writable."""
    if os.environ.get("MPLCONFIGDIR"):
        return
    home = Path(os.path.expanduser("~"))
    config = home / ".config" / "matplotlib"
    writable = os.access(config, os.W_OK) if config.exists() else os.access(home, os.W_OK)
    if not writable:
        os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="caio-mpl-")


def _new_figure(n_rows: int, widths: Sequence[int], height_px: int, title: str):
    from matplotlib.figure import Figure

    scale = 1.0 / 72.0  # inches per voxel (1 pixel per voxel at 72 dpi)
    fig = Figure(figsize=(sum(widths) * scale + 0.6, n_rows * height_px * scale + 0.8), dpi=72)
    grid = fig.add_gridspec(
        n_rows,
        len(widths),
        width_ratios=widths,
        wspace=0.04,
        hspace=0.12,
        left=0.01,
        right=0.99,
        top=1 - 0.6 / fig.get_figheight(),
        bottom=0.01,
    )
    fig.suptitle(title, fontsize=10)
    return fig, grid


def _show(ax, image: np.ndarray, axis: int, label: str, **kwargs) -> None:
    """Draw one slice with orientation letters; ``axis`` is the array axis held fixed."""
    ax.imshow(image, origin="lower", interpolation="nearest", **kwargs)
    horizontal, vertical = [a for a in range(3) if a != axis]
    font = dict(color="yellow", fontsize=7, ha="center", va="center")
    h, w = image.shape[:2]
    ax.text(2.5, h / 2, _EDGE_LETTERS[horizontal][0], **font)
    ax.text(w - 3.5, h / 2, _EDGE_LETTERS[horizontal][1], **font)
    ax.text(w / 2, h - 3.5, _EDGE_LETTERS[vertical][1], **font)
    ax.set_title(label, fontsize=8, pad=2)
    ax.set_xticks([])
    ax.set_yticks([])


def _save_atomic(fig, path: Path) -> Path:
    return replace_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))


def write_qc(
    fixed: np.ndarray | torch.Tensor,
    moving: np.ndarray | torch.Tensor,
    disp: np.ndarray | torch.Tensor,
    out_dir: str | os.PathLike,
    name: str,
    fixed_labels: np.ndarray | None = None,
    grid_spacing: int = 6,
) -> list[Path]:
    """Write the QC pictures of one pair.

    Args:
        fixed, moving: ``(D0, D1, D2)`` arrays or ``[1, 1, D0, D1, D2]`` tensors on the same grid
            (intensities as on disk, e.g. [0, 255]).
        disp: displacement in voxels, ``(3, D0, D1, D2)`` or ``[1, 3, D0, D1, D2]``, pull-back
            convention of :mod:`caio.spatial` (``warped(x) = moving(x + disp(x))``).
        out_dir: folder for the PNGs (created if missing).
        name: file name prefix, e.g. ``"disp_3455_3454"``.
        fixed_labels: optional fixed label map; its boundaries are drawn over the warped image.
        grid_spacing: voxels between drawn grid lines.
    Returns:
        paths of ``<name>_images.png`` and ``<name>_deformation.png``.
    """
    _ensure_mpl_config_dir()
    fixed_np, moving_np = _as_volume(fixed, "fixed"), _as_volume(moving, "moving")
    disp_t = _as_disp(disp)
    shape = fixed_np.shape
    if moving_np.shape != shape or tuple(disp_t.shape[2:]) != shape:
        raise ValueError(
            f"fixed {shape}, moving {moving_np.shape} and disp {tuple(disp_t.shape[2:])} must share a grid"
        )
    labels_np = None if fixed_labels is None else np.asarray(fixed_labels).reshape(shape)
    warped = spatial.warp(torch.from_numpy(moving_np)[None, None], disp_t)[0, 0].numpy()
    jac = spatial.jacobian_determinant(disp_t)[0].numpy()
    disp_np = disp_t[0].numpy()
    brain = fixed_np > 0
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    centre = _centre_slices(brain)
    folds = (jac <= 0) & brain
    fold_pct = 100.0 * folds.sum() / max(int(brain.sum()), 1)

    views = _Views(fixed_np, moving_np, warped, labels_np, brain, centre, name)
    paths = [_save_atomic(_images_figure(views), out_dir / f"{name}_images.png")]
    fig = _deformation_figure(views, disp_np, jac, folds, fold_pct, grid_spacing)
    paths.append(_save_atomic(fig, out_dir / f"{name}_deformation.png"))
    log.info("QC pictures: %s", ", ".join(map(str, paths)))
    return paths


@dataclass(frozen=True)
class _Views:
    """What both QC figures show: the volumes ``(D0, D1, D2)``, the fixed brain mask, the centre slices, the name."""

    fixed: np.ndarray
    moving: np.ndarray
    warped: np.ndarray
    labels: np.ndarray | None
    brain: np.ndarray
    centre: tuple[int, int, int]
    name: str

    @property
    def widths(self) -> list[int]:
        """Width of each view's panel: its horizontal axis's length."""
        return [self.fixed.shape[min(a for a in range(3) if a != axis)] for _, axis in PLANES]


def _images_figure(views: _Views):
    """Rows fixed, moving, warped, checkerboard fixed | warped, and fixed edges (or label boundaries) on warped;
    one column per plane through the brain's centre."""
    fixed_np, moving_np, warped, labels_np = views.fixed, views.moving, views.warped, views.labels
    shape, centre, name = fixed_np.shape, views.centre, views.name
    widths = views.widths
    height = max(shape)
    f_rng, m_rng = _display_range(fixed_np), _display_range(moving_np)
    w_rng = _display_range(warped)
    fig, grid = _new_figure(5, widths, height, f"{name}: fixed / moving / warped (slices {centre})")
    for col, (plane, axis) in enumerate(PLANES):
        idx = centre[axis]
        f2, m2, w2 = (_slice(v, axis, idx) for v in (fixed_np, moving_np, warped))
        _show(
            fig.add_subplot(grid[0, col]), f2, axis, f"fixed, {plane} {idx}", cmap="gray", vmin=f_rng[0], vmax=f_rng[1]
        )
        _show(
            fig.add_subplot(grid[1, col]), m2, axis, f"moving, {plane} {idx}", cmap="gray", vmin=m_rng[0], vmax=m_rng[1]
        )
        _show(fig.add_subplot(grid[2, col]), w2, axis, "warped moving", cmap="gray", vmin=w_rng[0], vmax=w_rng[1])
        board = _checkerboard(np.clip(f2 / f_rng[1], 0, 1), np.clip(w2 / w_rng[1], 0, 1), tile=max(4, shape[0] // 10))
        _show(fig.add_subplot(grid[3, col]), board, axis, "checkerboard fixed | warped", cmap="gray", vmin=0, vmax=1)
        ax = fig.add_subplot(grid[4, col])
        edges = _edges(f2, None if labels_np is None else _slice(labels_np, axis, idx))
        overlay = np.dstack([np.clip(w2 / w_rng[1], 0, 1)] * 3)
        overlay[edges] = (1.0, 0.25, 0.1)
        _show(ax, overlay, axis, "fixed " + ("label boundaries" if labels_np is not None else "edges") + " on warped")
    return fig


def _deformation_figure(views: _Views, disp_np, jac, folds, fold_pct: float, grid_spacing: int):
    """The deformed grid over the fixed image at the centre slices, and log J in the brain at the worst fold."""
    fixed_np, brain, centre, name = views.fixed, views.brain, views.centre, views.name
    shape, widths, height = fixed_np.shape, views.widths, max(fixed_np.shape)
    f_rng = _display_range(fixed_np)
    worst = np.unravel_index(int(np.argmin(np.where(brain, jac, np.inf))), shape) if folds.any() else centre
    fig, grid = _new_figure(
        2,
        widths,
        height,
        f"{name}: deformation; J<=0 in {fold_pct:.3f}% of the fixed brain, "
        f"J in [{jac[brain].min():.2f}, {jac[brain].max():.2f}]\n"
        "log J: blue = shrinking, red = growing (range -1..1); "
        "lime x = folding voxel (J <= 0)"
        if brain.any()
        else f"{name}: deformation (empty fixed brain mask)",
    )
    log_jac = np.log(np.clip(jac, 1e-3, None))
    for col, (plane, axis) in enumerate(PLANES):
        idx = centre[axis]
        h_axis, v_axis = [a for a in range(3) if a != axis]
        ax = fig.add_subplot(grid[0, col])
        _show(
            ax,
            _slice(fixed_np, axis, idx),
            axis,
            f"deformed grid, {plane} {idx}",
            cmap="gray",
            vmin=f_rng[0],
            vmax=f_rng[1] * 1.6,
        )
        px = _slice(np.indices(shape)[h_axis] + disp_np[h_axis], axis, idx)
        py = _slice(np.indices(shape)[v_axis] + disp_np[v_axis], axis, idx)
        for r in range(0, px.shape[0], grid_spacing):
            ax.plot(px[r], py[r], color="cyan", lw=0.5)
        for c in range(0, px.shape[1], grid_spacing):
            ax.plot(px[:, c], py[:, c], color="cyan", lw=0.5)
        ax.set_xlim(-0.5, px.shape[1] - 0.5)
        ax.set_ylim(-0.5, px.shape[0] - 0.5)
        jdx = int(worst[axis])
        ax = fig.add_subplot(grid[1, col])
        shown = np.ma.masked_where(~_slice(brain, axis, jdx), _slice(log_jac, axis, jdx))
        ax.set_facecolor("black")
        _show(
            ax,
            shown,
            axis,
            f"log J, {plane} {jdx}" + (" (worst fold)" if folds.any() else ""),
            cmap="RdBu_r",
            vmin=-1.0,
            vmax=1.0,
        )
        fy, fx = np.nonzero(_slice(folds, axis, jdx))
        if fx.size:
            ax.scatter(fx, fy, s=4, c="lime", marker="x", linewidths=0.6)
    return fig

"""Contrast models of the synthetic generator (:mod:`caio.synth.generator`): tables and image synthesis.

:func:`synthesize_image` draws one image of a contrast from a label map; randomness only comes from
an explicit ``torch.Generator`` (:func:`generator_for`).

* :data:`TISSUE_OF_LABEL` maps FreeSurfer label values (aseg, SynthSeg training maps) to a
  tissue class. Labels not listed are treated as non-brain and removed by skull stripping,
  except cortical parcellations (1000-1999 / 11100-11199 left, 2000-2999 / 12100-12199
  right), which :func:`caio.synth.generator.canonical_labels` folds into cortex 3 / 42.
* :data:`CONTRAST_MODELS` gives, per contrast, the mean intensity of every tissue class on a
  0..255-like scale (before randomisation and rescaling). Orderings follow textbook
  appearance: T1 WM > GM > CSF; T2 CSF > GM > WM; FLAIR like T2 but dark CSF; PD flat-ish
  with GM slightly above WM.
* :data:`TEMPLATE_CENTROIDS`: centroids (voxel indices on the 160x224x192 LUMIR grid, RAS
  array order) of aseg structures of the voxelmorph test scan brought to LUMIR orientation
  (``test_scan.npz['seg']``: swap axes 1 and 2, reverse axes 0 and 2). Label maps are put on
  the LUMIR grid by an affine least-squares fit of their own centroids to these points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from caio import spatial
from caio.errors import CaioInputError

TISSUE_OF_LABEL: dict[int, str] = {
    # white matter and WM-like structures
    2: "wm",
    41: "wm",
    7: "cwm",
    46: "cwm",
    16: "brainstem",
    28: "ventraldc",
    60: "ventraldc",
    77: "wm_hypo",
    85: "wm",
    251: "wm",
    252: "wm",
    253: "wm",
    254: "wm",
    255: "wm",
    25: "wm_hypo",
    57: "wm_hypo",
    # cortical and cerebellar grey matter
    3: "cortex",
    42: "cortex",
    8: "ccortex",
    47: "ccortex",
    # deep grey matter
    10: "thalamus",
    49: "thalamus",
    11: "caudate",
    50: "caudate",
    12: "putamen",
    51: "putamen",
    13: "pallidum",
    52: "pallidum",
    17: "hippocampus",
    53: "hippocampus",
    18: "amygdala",
    54: "amygdala",
    26: "accumbens",
    58: "accumbens",
    136: "putamen",
    137: "putamen",
    163: "deepgm",
    164: "deepgm",
    80: "deepgm",
    # fluid and others
    4: "csf",
    5: "csf",
    43: "csf",
    44: "csf",
    14: "csf",
    15: "csf",
    24: "csf",
    72: "csf",
    30: "vessel",
    62: "vessel",
    31: "choroid",
    63: "choroid",
}
"""FreeSurfer label value -> tissue class (brain labels only)."""

TISSUES: tuple[str, ...] = (
    "wm",
    "cwm",
    "brainstem",
    "ventraldc",
    "wm_hypo",
    "cortex",
    "ccortex",
    "thalamus",
    "caudate",
    "putamen",
    "pallidum",
    "hippocampus",
    "amygdala",
    "accumbens",
    "deepgm",
    "csf",
    "vessel",
    "choroid",
)

# Mean intensity per tissue class and contrast (arbitrary 0..255-like units).
CONTRAST_MODELS: dict[str, dict[str, float]] = {
    "t1": {
        "wm": 200,
        "cwm": 190,
        "brainstem": 175,
        "ventraldc": 165,
        "wm_hypo": 150,
        "cortex": 120,
        "ccortex": 125,
        "thalamus": 160,
        "caudate": 130,
        "putamen": 140,
        "pallidum": 170,
        "hippocampus": 118,
        "amygdala": 122,
        "accumbens": 128,
        "deepgm": 135,
        "csf": 40,
        "vessel": 90,
        "choroid": 95,
    },
    "t2": {
        "wm": 70,
        "cwm": 80,
        "brainstem": 85,
        "ventraldc": 90,
        "wm_hypo": 130,
        "cortex": 125,
        "ccortex": 120,
        "thalamus": 95,
        "caudate": 120,
        "putamen": 105,
        "pallidum": 75,
        "hippocampus": 130,
        "amygdala": 125,
        "accumbens": 118,
        "deepgm": 110,
        "csf": 235,
        "vessel": 60,
        "choroid": 170,
    },
    "flair": {
        "wm": 90,
        "cwm": 95,
        "brainstem": 105,
        "ventraldc": 110,
        "wm_hypo": 190,
        "cortex": 145,
        "ccortex": 135,
        "thalamus": 120,
        "caudate": 140,
        "putamen": 130,
        "pallidum": 110,
        "hippocampus": 155,
        "amygdala": 150,
        "accumbens": 140,
        "deepgm": 135,
        "csf": 25,
        "vessel": 40,
        "choroid": 60,
    },
    "pd": {
        "wm": 150,
        "cwm": 152,
        "brainstem": 155,
        "ventraldc": 158,
        "wm_hypo": 175,
        "cortex": 185,
        "ccortex": 182,
        "thalamus": 168,
        "caudate": 180,
        "putamen": 176,
        "pallidum": 162,
        "hippocampus": 186,
        "amygdala": 184,
        "accumbens": 180,
        "deepgm": 175,
        "csf": 205,
        "vessel": 110,
        "choroid": 190,
    },
}
"""Tissue class -> mean intensity, per named contrast. ``"random"`` (SynthSeg-style uniform
means) is handled in :mod:`caio.synth.generator` and has no table."""

MODALITY_CODES: dict[str, str] = {"t1": "0000", "t2": "0001", "flair": "0002", "pd": "0003", "random": "0004"}
"""4-digit LUMIR modality code written in file names for each synthetic contrast."""

TEMPLATE_CENTROIDS: dict[int, tuple[float, float, float]] = {
    2: (51.2, 103.3, 111.8),
    3: (47.2, 107.7, 110.8),
    4: (65.0, 104.7, 108.5),
    7: (60.2, 71.0, 59.7),
    8: (54.8, 63.4, 57.2),
    10: (68.4, 107.0, 99.0),
    11: (65.0, 132.0, 104.8),
    12: (52.2, 124.1, 93.4),
    13: (58.5, 119.3, 92.8),
    14: (80.0, 113.9, 88.3),
    15: (79.0, 83.0, 61.6),
    16: (79.8, 94.9, 61.1),
    17: (53.6, 103.3, 78.2),
    18: (55.7, 119.2, 71.5),
    26: (70.9, 133.4, 86.9),
    28: (68.1, 109.4, 82.4),
    41: (107.6, 105.1, 113.0),
    42: (111.4, 109.6, 111.7),
    43: (95.2, 103.7, 108.4),
    46: (97.0, 70.1, 60.0),
    47: (101.6, 62.9, 56.5),
    49: (91.1, 108.7, 99.7),
    50: (94.3, 134.0, 104.7),
    51: (107.1, 125.6, 93.2),
    52: (100.9, 120.9, 92.9),
    53: (106.2, 104.6, 76.4),
    54: (102.8, 120.5, 71.7),
    58: (88.0, 133.7, 86.9),
    60: (91.4, 110.1, 82.6),
}
"""Label -> centroid (axis 0, 1, 2 voxel index) on the LUMIR grid; see the module docstring."""


@dataclass(frozen=True)
class SynthConfig:
    """Ranges of the random draws (intensities in 0..255-like units; blur and slices in mm,
    deformation in output voxels)."""

    mean_jitter: float = 12.0  # std of the per-tissue shift of a contrast model's means
    label_jitter: float = 4.0  # std of an extra per-label shift (left/right differ a bit)
    tissue_std: tuple[float, float] = (2.0, 8.0)  # range of within-tissue noise std
    pv_sigma: tuple[float, float] = (0.4, 1.0)  # partial-volume blur sigma (mm)
    thick_slice_prob: float = 0.5  # probability of a thick-slice acquisition along one axis
    slice_thickness: tuple[float, float] = (1.5, 4.0)  # mm
    bias_std: tuple[float, float] = (0.0, 0.25)  # std of the log bias field at control points
    noise_std: tuple[float, float] = (0.0, 5.0)
    gamma_log_std: float = 0.2  # gamma = exp(N(0, this))
    max_disp: float = 3.0  # max amplitude of the smooth deformation (voxels)
    max_rotation_deg: float = 3.0
    max_scale: float = 0.03
    max_translation: float = 3.0
    brain_dilation: int = 0  # grow the brain mask by this many voxels (label-0 voxels -> CSF)


def generator_for(seed: int, *stream: int) -> torch.Generator:
    """Independent, reproducible generator for ``(seed, *stream)`` (e.g. a subject index)."""
    state = np.random.SeedSequence([int(seed), *map(int, stream)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


def uniform(gen: torch.Generator, bounds: tuple[float, float] | float, size: Sequence[int] = ()) -> torch.Tensor:
    lo, hi = (float(-bounds), float(bounds)) if np.isscalar(bounds) else bounds
    return lo + (hi - lo) * torch.rand(tuple(size), generator=gen, dtype=torch.float64)


def tissue_means(contrast: str, gen: torch.Generator, config: SynthConfig) -> torch.Tensor:
    """Randomised mean intensity of every tissue class (order of :data:`TISSUES`), float64."""
    if contrast == "random":
        return uniform(gen, (10.0, 245.0), (len(TISSUES),))
    if contrast not in CONTRAST_MODELS:
        raise CaioInputError(f"--contrasts: unknown contrast '{contrast}' (choose from {', '.join(MODALITY_CODES)})")
    base = torch.tensor([CONTRAST_MODELS[contrast][t] for t in TISSUES], dtype=torch.float64)
    return base + config.mean_jitter * torch.randn(len(TISSUES), generator=gen, dtype=torch.float64)


def synthesize_image(
    labels: np.ndarray,
    contrast: str,
    gen: torch.Generator,
    config: SynthConfig = SynthConfig(),
    mask: np.ndarray | None = None,
    voxel_mm: Sequence[float] | float = 1.0,
) -> torch.Tensor:
    """Draw one image of ``contrast`` from a skull-stripped label map.

    Args:
        labels: ``(D0, D1, D2)`` canonical labels (:func:`canonical_labels`), 0 = background.
        contrast: a key of :data:`MODALITY_CODES` (t1, t2, flair, pd, random).
        gen: source of all randomness.
        mask: brain mask (default ``labels > 0``); label-0 voxels inside it are drawn as CSF.
        voxel_mm: voxel size (one value or per axis) that converts the mm ranges of ``config``.
    Returns:
        ``[1, 1, D0, D1, D2]`` float32 with integer values: 0 outside ``mask``, 1..255 inside.
    """
    labels = np.asarray(labels)
    mask = labels > 0 if mask is None else np.asarray(mask, bool)
    if not mask.any():
        raise CaioInputError(f"label map has no brain label; cannot synthesize a {contrast} image")
    tissue_index = {t: i for i, t in enumerate(TISSUES)}
    lut_size = int(labels.max()) + 1
    lut = np.full(lut_size, tissue_index["csf"], dtype=np.int64)  # label 0 inside the mask -> CSF
    for value, tissue in TISSUE_OF_LABEL.items():
        if value < lut_size:
            lut[value] = tissue_index[tissue]
    means = tissue_means(contrast, gen, config)
    stds = uniform(gen, config.tissue_std, (len(TISSUES),))
    label_shift = config.label_jitter * torch.randn(lut_size, generator=gen, dtype=torch.float64)
    lab = torch.from_numpy(labels.astype(np.int64))
    tis = torch.from_numpy(lut)[lab]
    shape = tuple(labels.shape)
    noise = torch.randn(shape, generator=gen, dtype=torch.float32)
    image = (means[tis] + label_shift[lab]).float() + stds[tis].float() * noise
    image = torch.where(torch.from_numpy(mask), image, torch.zeros(()))[None, None]

    voxel = np.broadcast_to(np.asarray(voxel_mm, dtype=np.float64), (3,))
    pv_sigma = float(uniform(gen, config.pv_sigma))
    image = spatial.gaussian_blur(image, [pv_sigma / v for v in voxel])
    if float(torch.rand((), generator=gen)) < config.thick_slice_prob:
        axis = int(torch.randint(3, (), generator=gen))
        thickness = max(float(uniform(gen, config.slice_thickness)) / voxel[axis], 1.0)  # in voxels
        sigmas = [0.0, 0.0, 0.0]
        sigmas[axis] = 0.42 * thickness
        image = spatial.gaussian_blur(image, sigmas)
        low = list(shape)
        low[axis] = max(2, round(shape[axis] / thickness))
        image = spatial.resize_image(spatial.resize_image(image, low, antialias=False), shape, antialias=False)
    bias_ctrl = float(uniform(gen, config.bias_std)) * torch.randn((1, 1, 4, 5, 4), generator=gen)
    image = image * torch.exp(spatial.resize_image(bias_ctrl, shape, antialias=False))
    image = image + float(uniform(gen, config.noise_std)) * torch.randn((1, 1, *shape), generator=gen)
    image = image.clamp_min(0.0)

    mask_t = torch.from_numpy(mask)[None, None]
    top = float(np.percentile(image[mask_t].numpy(), 99.5))
    gamma = math.exp(config.gamma_log_std * float(torch.randn((), generator=gen)))
    image = (image / max(top, 1e-6)).clamp(0.0, 1.0) ** gamma * 255.0
    image = image.round().clamp(1.0, 255.0)
    return torch.where(mask_t, image, torch.zeros(()))

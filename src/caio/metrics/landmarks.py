"""TRE as the LUMIR evaluator computes it: the distance between the centroids of each landmark id in the fixed
landmark image and in the moving one warped by nearest neighbour (voxels; mm on LUMIR's 1 mm grid). Without landmark
images, a label map's regions serve as landmarks (:func:`label_landmarks`: the TRE proxy of the benchmark tables).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _centroid(landmarks: np.ndarray, landmark_id: int) -> np.ndarray:
    points = np.argwhere(landmarks == landmark_id)
    return points.mean(axis=0) if len(points) else np.full(3, np.nan)


def landmark_tre(fixed_landmarks: np.ndarray, warped_landmarks: np.ndarray) -> tuple[list[int], list[float]]:
    """Centroid distance (voxels) per landmark id = each non-zero value of the fixed image."""
    ids = [int(i) for i in np.unique(fixed_landmarks) if i != 0]
    distances = [float(np.linalg.norm(_centroid(fixed_landmarks, i) - _centroid(warped_landmarks, i))) for i in ids]
    return ids, distances


def label_landmarks(label_map: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """A label map as landmarks (the TRE proxy of images without landmarks): the non-zero ``labels`` keep their
    value, everything else is 0; :func:`landmark_tre` then measures the distance between each region's centroids."""
    keep = [int(label) for label in labels if int(label) != 0]
    return np.where(np.isin(label_map, keep), label_map, 0)

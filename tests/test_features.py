"""MIND-SSC descriptors: shape, value range and contrast invariance."""

from __future__ import annotations

import torch

from caio.contrast.mind import MIND_CHANNELS, mind_ssc, six_neighbourhood, ssc_pairs


def _label_map(shape=(32, 32, 32), seed: int = 0) -> torch.Tensor:
    """Piecewise-constant 'anatomy': nested blobs with 4 labels (0 background)."""
    g = torch.Generator().manual_seed(seed)
    axes = [torch.linspace(-1, 1, n) for n in shape]
    x0, x1, x2 = torch.meshgrid(*axes, indexing="ij")
    r = torch.sqrt(x0**2 + (1.2 * x1) ** 2 + (0.9 * x2) ** 2)
    wobble = 0.08 * torch.sin(5 * x0 + 3 * x1) + 0.05 * torch.cos(4 * x2 + float(torch.rand(1, generator=g)))
    r = r + wobble
    labels = torch.zeros(shape, dtype=torch.long)
    labels[r < 0.9] = 1
    labels[r < 0.6] = 2
    labels[(r < 0.3) | ((x0 > 0.2) & (r < 0.5))] = 3
    return labels


def _render(labels: torch.Tensor, intensities: list[float]) -> torch.Tensor:
    return torch.tensor(intensities)[labels][None, None].float()


def _corr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Pearson correlation over the voxels of ``mask`` (all channels pooled)."""
    a, b = a[..., mask], b[..., mask]
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm() + 1e-12))


def test_mind_ssc_has_12_finite_channels_in_unit_range():
    image = _render(_label_map(), [0, 80, 160, 240])
    mind = mind_ssc(image, radius=2, dilation=2)
    assert mind.shape == (1, MIND_CHANNELS, 32, 32, 32)
    assert torch.isfinite(mind).all()
    assert float(mind.min()) > 0 and float(mind.max()) <= 1.0 + 1e-6
    assert torch.allclose(mind.amax(dim=1), torch.ones(1, 32, 32, 32))


def test_neighbour_pairs_are_the_12_octahedron_edges():
    offsets = six_neighbourhood(2)
    pairs = ssc_pairs()
    assert len(pairs) == 12 and len(set(pairs)) == 12
    for i, j in pairs:
        dist2 = sum((a - b) ** 2 for a, b in zip(offsets[i], offsets[j]))
        assert dist2 == 8  # sqrt(2) * dilation apart


def test_mind_of_t1_like_and_t2_like_images_agree_far_more_than_intensities():
    labels = _label_map()
    t1 = _render(labels, [0, 90, 160, 230])  # background dark, "WM" bright
    t2 = _render(labels, [0, 230, 120, 40])  # contrast inverted inside the head
    inside = labels > 0
    raw_corr = _corr(t1, t2, inside)
    m1, m2 = mind_ssc(t1), mind_ssc(t2)
    mind_corr = _corr(m1, m2, inside)
    assert raw_corr < 0.0
    assert mind_corr > 0.8
    assert mind_corr > raw_corr + 0.4


def test_mind_is_invariant_to_a_global_intensity_scale():
    image = _render(_label_map(), [0, 50, 100, 200])
    assert torch.allclose(mind_ssc(image), mind_ssc(0.3 * image), atol=1e-4)


def test_mind_distinguishes_different_anatomy():
    a = _render(_label_map(seed=0), [0, 90, 160, 230])
    b = torch.roll(a, shifts=4, dims=2)
    ma, mb = mind_ssc(a), mind_ssc(b)
    same = ((mind_ssc(1.7 * a) - ma) ** 2).mean()
    shifted = ((mb - ma) ** 2).mean()
    assert float(shifted) > 10 * float(same) + 1e-4


def test_separable_box_mean_equals_the_3d_box_filter():
    import torch.nn.functional as F

    from caio.contrast.mind import box_mean

    x = torch.rand(1, 2, 9, 10, 11, generator=torch.Generator().manual_seed(0))
    reference = F.avg_pool3d(F.pad(x, [2] * 6, mode="replicate"), 5, stride=1)
    assert torch.allclose(box_mean(x, 2), reference, atol=1e-5)

"""MIND-SSC descriptors: shape, value range and contrast invariance."""

from __future__ import annotations

import pytest
import torch

from caio.similarity.mind import (
    MIND_CHANNELS,
    mind_ssc,
    mind_ssc_torch,
    normalize_intensity,
    six_neighbourhood,
    ssc_pairs,
)


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

    from caio.similarity.windows import box_mean

    x = torch.rand(1, 2, 9, 10, 11, generator=torch.Generator().manual_seed(0))
    reference = F.avg_pool3d(F.pad(x, [2] * 6, mode="replicate"), 5, stride=1)
    assert torch.allclose(box_mean(x, 2), reference, atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "radius", "dilation", "batch"),
    [((20, 23, 17), 2, 2, 1), ((9, 30, 11), 1, 1, 2), ((6, 5, 7), 2, 3, 1), ((12, 12, 12), 0, 1, 1)],
)
def test_fused_cpu_mind_ssc_equals_the_pytorch_operations(shape, radius, dilation, batch):
    """The CPU's fused Numba passes (caio.kernels.mind) and the PyTorch code a GPU runs agree to rounding,
    also where the patch and the neighbours reach past the border (replicate padding), and per batch element."""
    image = torch.rand(batch, 1, *shape, generator=torch.Generator().manual_seed(3)) * 200
    normalised = torch.cat([normalize_intensity(image[b : b + 1]) for b in range(batch)])
    fused = mind_ssc(image, radius, dilation)
    assert fused.shape == (batch, MIND_CHANNELS, *shape)
    torch.testing.assert_close(fused, mind_ssc_torch(normalised, radius, dilation), rtol=0, atol=2e-6)


def test_mind_ssc_at_one_voxel_follows_the_definition():
    """Channel c at voxel x: exp(-D_c / V) / max_c, D_c the mean over the 5^3 patch of the squared difference
    of the image at the pair's two neighbours (distance 2), V the channel mean of D (not clamped here)."""
    image = torch.rand(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(5)) * 100
    img = normalize_intensity(image)[0, 0].double()
    offsets, x = six_neighbourhood(2), (8, 7, 9)
    patch = [torch.arange(x[a] - 2, x[a] + 3) for a in range(3)]

    def at(offset):
        i, j, k = (patch[a] + offset[a] for a in range(3))
        return img[i[:, None, None], j[None, :, None], k[None, None, :]]

    distances = torch.stack([((at(offsets[a]) - at(offsets[b])) ** 2).mean() for a, b in ssc_pairs()])
    expected = torch.exp(-distances / distances.mean())
    expected = expected / expected.max()
    got = mind_ssc(image)[0, :, x[0], x[1], x[2]].double()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)

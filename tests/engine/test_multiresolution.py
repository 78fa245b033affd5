"""The registration engine (caio.register): recovery of known warps, cross-contrast routes, inputs and outputs."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers.engine_cases import TEST_DATA, brain_rms, real_slab, smooth_random

from caio import spatial
from caio.engine import EngineConfig, register
from caio.engine.optimizer import LevelSettings

# ------------------------------------------------------------------ recovery of known warps


def test_recovers_a_known_smooth_deformation_of_a_real_image():
    moving = real_slab()
    truth = smooth_random(moving.shape[2:], 3, 4.0, 3.0, 12)
    fixed = spatial.warp(moving, truth)  # fixed(x) = moving(x + truth(x)): the answer is truth itself
    disp, trace = register(fixed, moving, similarity="lncc", config=EngineConfig(factors=(2, 1), iterations=(60, 30)))
    mask = fixed[0, 0] > 0.1 * float(fixed.max())
    before, after = brain_rms(truth, mask), brain_rms(disp - truth, mask)
    assert after < 0.4 * before, (before, after)
    assert trace.similarity_after > trace.similarity_before
    assert float(spatial.jacobian_determinant(disp).min()) > 0


def test_a_small_grid_gets_a_1mm_brains_work_at_its_finest_level_and_recovers_the_warp_better():
    moving = real_slab(2)  # 2 mm: 80 x 112 x 96
    truth = smooth_random(moving.shape[2:], 3, 4.0, 3.0, 12)
    fixed = spatial.warp(moving, truth)
    mask = fixed[0, 0] > 0.1 * float(fixed.max())
    errors, finest = [], []
    for cfg in (EngineConfig(finest_work=None), EngineConfig()):
        disp, trace = register(fixed, moving, similarity="lncc", config=cfg)
        errors.append(brain_rms(disp - truth, mask))
        finest.append(trace.levels[-1].done)
    assert finest[0] == 20 and finest[1] > 50  # cropped grid under 1.2 million voxels: 1.2e8 / voxels iterations
    assert errors[1] < errors[0], errors


class _WarpedT1T2:
    """A T1-like image warped by a known field and a T2-like moving image, drawn from the test_data T1's
    label map at 3 mm voxels; :meth:`gain` scores a field by the label Dice it adds."""

    def __init__(self) -> None:
        from caio.synth.contrast_models import SynthConfig, generator_for, synthesize_image
        from caio.synth.generator import canonical_labels

        raw = np.asarray(nib.load(TEST_DATA / "labelsVal" / "LUMIRMRI_3455_0000.nii.gz").dataobj)[::3, ::3, ::3]
        self.labels = canonical_labels(raw.astype(np.int64))
        t1 = synthesize_image(self.labels, "t1", generator_for(0, 1), SynthConfig())
        self.moving = synthesize_image(self.labels, "t2", generator_for(0, 2), SynthConfig())
        truth = smooth_random(t1.shape[2:], 3, 5.0, 2.0, 13)
        self.fixed = spatial.warp(t1, truth)
        self.label_map = torch.from_numpy(self.labels.astype(np.float32))[None, None]
        self.fixed_labels = spatial.warp(self.label_map, truth, mode="nearest")

    def dice(self, warped_labels: torch.Tensor) -> float:
        pairs = [(self.fixed_labels == float(v), warped_labels == float(v)) for v in np.unique(self.labels)[1:]]
        return float(np.mean([2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0) for a, b in pairs]))

    def dice_before_and_after(self, disp: torch.Tensor) -> tuple[float, float]:
        return self.dice(self.label_map), self.dice(spatial.warp(self.label_map, disp, mode="nearest"))


# two levels for the 3 mm pair; the default 1.5-voxel step was measured on 1 mm grids, where a voxel is a third as long
_CONFIG_3MM = EngineConfig(
    factors=(2, 1),
    iterations=(60, 30),
    mind_factors=(2, 1),
    mind_iterations=(60, 30),
    mind_remapped_levels=(),
    remap_factors=(2, 1),
    remap_iterations=(60, 30),
    remap_from=1,
    level=LevelSettings(step=1.0),
)


@pytest.mark.parametrize("similarity", ["lncc2", "remap", "mind"])
def test_cross_contrast_recovers_a_known_warp_between_t1_and_t2_like_images(similarity):
    pair = _WarpedT1T2()
    disp, trace = register(pair.fixed, pair.moving, similarity=similarity, config=_CONFIG_3MM)
    before, after = pair.dice_before_and_after(disp)
    # a quarter of the gap closed at 3 mm voxels; a fifth by remapping: at 3 mm the two drawn contrasts are
    # far from a function of each other (mapped T2 correlates 0.46 with the T1 in the brain; 0.67 at 1 mm)
    share = 0.2 if similarity == "remap" else 0.25
    assert after > before + share * (1 - before), (before, after)
    assert trace.similarity == similarity and trace.similarity_after > trace.similarity_before
    if similarity == "remap":  # squared LNCC first, then LNCC against the remapped moving image
        assert [level.similarity for level in trace.levels] == ["lncc2", "lncc"]


@pytest.mark.parametrize("threshold, route", [(0.0, "remap"), (1.0, "mind")])
def test_cross_remaps_when_the_map_explains_enough_and_takes_mind_ssc_when_not(threshold, route):
    pair = _WarpedT1T2()
    config = EngineConfig(
        remap_factors=(2, 2, 1),
        remap_iterations=(60, 30, 30),
        remap_from=1,
        remap_min_explained=threshold,
        mind_factors=(2, 1),
        mind_iterations=(60, 30),
        mind_remapped_levels=(),
        level=LevelSettings(step=1.0),
        mind_level=LevelSettings(step=1.0, sigma_field=0.75),
    )
    disp, trace = register(pair.fixed, pair.moving, similarity="cross", config=config)
    assert trace.similarity == route and 0.0 < trace.explained <= 1.0
    kinds = [level.similarity for level in trace.levels]
    # the first level (squared LNCC) runs either way; MIND-SSC then starts its own pyramid from that field and
    # ends with LNCC against the moving image remapped on the MIND-SSC-aligned pair
    assert kinds == (["lncc2", "lncc", "lncc"] if route == "remap" else ["lncc2", "mind", "mind", "lncc"]), kinds
    before, after = pair.dice_before_and_after(disp)
    assert after > before + 0.2 * (1 - before), (before, after)  # as the cross-contrast test above


def _steps_scaled(config: EngineConfig, scale: float) -> EngineConfig:
    """``config`` with the step of its LNCC and MIND-SSC levels multiplied by ``scale``."""
    return dataclasses.replace(
        config,
        level=dataclasses.replace(config.level, step=config.level.step * scale),
        mind_level=dataclasses.replace(config.mind_level, step=config.mind_level.step * scale),
    )


def test_mind_ends_with_lncc_against_the_moving_image_remapped_on_the_mind_aligned_pair():
    pair = _WarpedT1T2()
    config = dataclasses.replace(_CONFIG_3MM, mind_remap_iterations=(15,))  # as without a remapped 1/2 level
    without_remap = dataclasses.replace(config, mind_remap_factors=(), mind_remap_iterations=())
    _, trace_alone = register(pair.fixed, pair.moving, similarity="mind", config=without_remap)
    assert [level.similarity for level in trace_alone.levels] == ["lncc2", "mind", "mind"]
    _, trace = register(pair.fixed, pair.moving, similarity="mind", config=config)
    last = trace.levels[-1]
    assert [level.similarity for level in trace.levels] == ["lncc2", "mind", "mind", "lncc"] and last.factor == 1
    assert last.done == config.mind_remap_iterations[-1] and last.similarity_end > last.similarity_start  # intensities
    # drawn from labels, the two contrasts are a function of each other: the remapped image sharpens the field
    # (1 mm LUMIR-like pairs with 10 remapped iterations: 0.598 -> 0.622, docs/measurements.md, "Remapped refinement
    # after MIND-SSC"). On this small pair one run's Dice
    # moves by up to 0.03 when the step changes by 1e-6 (the step is scaled by the longest update vector, whose voxel
    # can switch), so the comparison is of the mean over three steps: with 15 remapped iterations 0.769 -> 0.790
    alone_dice, refined_dice = [], []
    for scale in (1.0, 0.99, 1.01):
        alone, _ = register(pair.fixed, pair.moving, similarity="mind", config=_steps_scaled(without_remap, scale))
        refined, _ = register(pair.fixed, pair.moving, similarity="mind", config=_steps_scaled(config, scale))
        alone_dice.append(pair.dice_before_and_after(alone)[1])
        refined_dice.append(pair.dice_before_and_after(refined)[1])
    assert np.mean(refined_dice) > np.mean(alone_dice) + 0.01, (alone_dice, refined_dice)


def test_a_remapped_level_between_descriptor_levels_hands_its_field_back_to_mind_ssc():
    pair = _WarpedT1T2()
    config = dataclasses.replace(
        _CONFIG_3MM, mind_factors=(2, 1, 1), mind_iterations=(60, 20, 10), mind_remapped_levels=(1,)
    )
    disp, trace = register(pair.fixed, pair.moving, similarity="mind", config=config)
    assert [level.similarity for level in trace.levels] == ["lncc2", "mind", "lncc", "mind", "lncc"]
    remapped, descriptors_again = trace.levels[2], trace.levels[3]
    # LNCC of the remapped image is positive; the descriptors' similarity is minus their mean squared difference:
    # the level after the remapped one went back to the descriptors' kernels and kept them (they are not dropped)
    assert remapped.similarity_start > 0 and remapped.similarity_end > remapped.similarity_start
    assert descriptors_again.similarity_start < 0 and descriptors_again.done == 10
    before, after = pair.dice_before_and_after(disp)
    assert after > before + 0.25 * (1 - before), (before, after)  # as the cross-contrast test above
    with pytest.raises(ValueError, match="mind_remapped_levels"):
        EngineConfig(mind_factors=(4, 2, 1), mind_iterations=(100, 30, 5), mind_remapped_levels=(3,))


def test_mind_starts_with_squared_lncc_and_keeps_to_it_when_the_descriptors_would_miss_the_deadline():
    pair = _WarpedT1T2()
    config = EngineConfig(remap_factors=(2, 1), remap_iterations=(60, 30), remap_from=1, level=LevelSettings(step=1.0))
    disp, trace = register(pair.fixed, pair.moving, similarity="mind", config=config)
    assert [level.similarity for level in trace.levels] == ["lncc2", "mind", "mind", "lncc", "mind", "lncc"]
    # descriptors priced at 1 s per voxel never fit a 20 s deadline: squared LNCC goes on to the finer levels
    slow = dataclasses.replace(config, mind_seconds_per_voxel=1.0)
    start = time.monotonic()
    disp, trace = register(pair.fixed, pair.moving, similarity="mind", deadline=start + 20.0, config=slow)
    assert time.monotonic() - start < 20.0
    assert trace.similarity == "lncc2" and [level.similarity for level in trace.levels] == ["lncc2", "lncc2"]
    before, after = pair.dice_before_and_after(disp)
    assert after > before and float(disp.abs().max()) > 0.5, (before, after)  # a field, not the zero field


def test_auto_takes_the_cross_contrast_similarity_for_a_cross_contrast_or_ambiguous_pair():
    from helpers.data import textured_pair

    from caio.engine.multiresolution import CROSS_CONTRAST_SIMILARITY, SAME_CONTRAST_SIMILARITY, resolve_similarity

    a, related = textured_pair(0.9)
    _, weakly_related = textured_pair(0.3)  # gate score in the ambiguous band (tests/contrast/test_gate.py)
    inverted = torch.where(a > 0, 256 - a, torch.zeros(()))
    assert resolve_similarity("auto", a, related) == SAME_CONTRAST_SIMILARITY
    assert resolve_similarity("auto", a, weakly_related) == CROSS_CONTRAST_SIMILARITY
    assert resolve_similarity("auto", a, inverted) == CROSS_CONTRAST_SIMILARITY
    assert resolve_similarity("lncc", a, inverted) == "lncc"


# ------------------------------------------------------------------ settings, inputs and outputs


def test_lncc_window_can_change_per_level():
    fixed, moving = real_slab(4), torch.roll(real_slab(4), 1, dims=3)
    config = EngineConfig(factors=(2, 1), iterations=(5, 5), radius=(1, 3))
    assert [config.level_radius("lncc", i) for i in (0, 1)] == [1, 3]
    assert config.level_radius("lncc2", 1) == config.squared_radius
    disp, trace = register(fixed, moving, similarity="lncc", config=config)
    same = dict(factors=(2, 1), iterations=(5, 5))
    # the finest level's similarity is that of its own window: 7^3 here, not 3^3
    _, wide = register(fixed, moving, similarity="lncc", config=EngineConfig(**same, radius=3))
    _, narrow = register(fixed, moving, similarity="lncc", config=EngineConfig(**same, radius=1))
    assert trace.levels[0].similarity_start == pytest.approx(narrow.levels[0].similarity_start)
    assert trace.levels[1].similarity_start != pytest.approx(narrow.levels[1].similarity_start)
    assert abs(trace.levels[1].similarity_end - wide.levels[1].similarity_end) < abs(
        trace.levels[1].similarity_end - narrow.levels[1].similarity_end
    )
    with pytest.raises(ValueError, match="one value per level"):
        EngineConfig(factors=(2, 1), iterations=(5, 5), radius=(1, 2, 3))
    with pytest.raises(ValueError, match="remap_factors has 4"):  # per-level values but another pyramid
        register(fixed, moving, similarity="remap", config=config)


def test_the_remapped_level_fits_the_configured_statistic_of_the_intensity_map():
    """``mind_remap_statistic`` reaches the remapped level: the median and the mean map of a noisy inverted contrast
    give different fields; an unknown statistic is refused when the configuration is made."""
    fixed = real_slab(3)
    noise = torch.rand(fixed.shape, generator=torch.Generator().manual_seed(3)) * 40
    moving = spatial.warp(
        torch.where(fixed > 0, 300.0 - fixed + noise, 0.0), smooth_random(fixed.shape[2:], 3, 4, 2, 5)
    )
    short = dict(mind_factors=(2,), mind_iterations=(3,), mind_remap_iterations=(3,), mind_remapped_levels=())
    fields = [
        register(fixed, moving, similarity="mind", config=EngineConfig(**short, mind_remap_statistic=statistic))[0]
        for statistic in ("median", "mean")
    ]
    assert float((fields[0] - fields[1]).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="mind_remap_statistic"):
        EngineConfig(mind_remap_statistic="mode")


_AFTER_WARM_UP = """
import dataclasses, json, time
import torch
from numba.core.dispatcher import Dispatcher
from helpers.engine_cases import real_slab, smooth_random
from caio import spatial
from caio.engine import EngineConfig, register, warm_up
from caio.kernels import fields, filters, mind
from caio.kernels import similarity as fused  # every numba kernel of caio lives in caio.kernels


def loaded():  # compiled or cache-loaded signatures of every numba kernel of caio
    kernels = [(m.__name__, a, o) for m in (fields, filters, mind, fused) for a, o in vars(m).items()
               if isinstance(o, Dispatcher)]
    return {f"{n}.{a}": len(o.signatures) for n, a, o in kernels}


base = EngineConfig()
short = dataclasses.replace(base, **{f.name: (2,) * len(getattr(base, f.name)) for f in dataclasses.fields(base)
                                   if f.name.endswith("iterations") and isinstance(getattr(base, f.name), tuple)})
moving = real_slab(6)
fixed = spatial.warp(moving, smooth_random(moving.shape[2:], 3, 4.0, 3.0, 5))
inverted = torch.where(fixed > 0, 255 - fixed, fixed)
before = loaded()
start = time.monotonic()
reported = warm_up()
elapsed = time.monotonic() - start
warm = loaded()
for similarity, image in (("lncc", fixed), ("cross", inverted), ("mind", inverted), ("remap", inverted)):
    register(image, moving, similarity=similarity, config=short)
print(json.dumps({"before": before, "warm": warm, "after": loaded(), "reported": reported, "elapsed": elapsed}))
"""


def test_after_warm_up_a_pair_on_every_route_loads_no_kernel_and_warm_up_reports_its_seconds():
    """warm_up's promise: the kernels are loaded (compiled on a machine's first run) before a pair's clock starts.

    In a fresh interpreter no kernel is loaded before warm_up; after it, registering a real pair by LNCC, the
    cross-contrast choice, MIND-SSC and the remapped route adds no signature to any numba kernel of caio."""
    tests = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", _AFTER_WARM_UP], cwd=tests, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    counts = json.loads(done.stdout.splitlines()[-1])
    assert sum(counts["before"].values()) == 0, counts["before"]  # nothing loaded at import
    assert sum(counts["warm"].values()) > 0
    added = {k: (counts["warm"].get(k, 0), n) for k, n in counts["after"].items() if n != counts["warm"].get(k, 0)}
    assert added == {}, added  # kernel: (signatures after warm_up, after the pairs)
    assert 0 < counts["reported"] <= counts["elapsed"]


def test_init_field_is_the_starting_point():
    moving = real_slab()
    truth = smooth_random(moving.shape[2:], 3, 4.0, 3.0, 16)
    fixed = spatial.warp(moving, truth)
    disp, trace = register(
        fixed, moving, similarity="lncc", init=truth, config=EngineConfig(factors=(1,), iterations=(0,))
    )
    assert torch.allclose(disp, truth, atol=1e-5)


def test_output_is_on_the_full_grid_with_the_crop_undone():
    fixed = torch.zeros(1, 1, 40, 44, 36)
    fixed[..., 10:30, 12:34, 8:28] = smooth_random((20, 22, 20), 1, 1.0, 100.0, 17).abs() + 10
    moving = torch.roll(fixed, 2, dims=2)
    disp, _ = register(fixed, moving, similarity="lncc", config=EngineConfig(factors=(2, 1), iterations=(30, 10)))
    assert disp.shape == (1, 3, 40, 44, 36)
    centre = disp[0, 0, 15:25, 17:29, 13:23]
    assert float(centre.mean()) == pytest.approx(2.0, abs=0.6)


def test_bad_inputs_are_rejected_with_a_message():
    with pytest.raises(ValueError, match="share a grid"):
        register(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 9))
    with pytest.raises(ValueError, match="NaN"):
        register(torch.full((1, 1, 8, 8, 8), float("nan")), torch.rand(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="similarity"):
        register(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8), similarity="ncc")
    # a window per level of factors cannot serve the longer MIND-SSC pyramid (its remapped level would index past it)
    per_level = EngineConfig(radius=(3, 3, 3), remap_factors=(4, 2, 1), remap_iterations=(20, 10, 5), remap_from=1)
    with pytest.raises(ValueError, match=r"mind_factors \+ mind_remap_factors have 5"):
        register(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8), similarity="mind", config=per_level)

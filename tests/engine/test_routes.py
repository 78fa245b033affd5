"""Routes of the engine (caio.engine.routes): which similarity each pyramid level optimises, and where the
cross-contrast similarities go after their lead level."""

from __future__ import annotations

import pytest

from caio.engine import EngineConfig
from caio.engine.routes import first_route, route_after_lead, route_for, with_grid_work


def test_remap_route_uses_squared_lncc_before_remap_from_and_remapped_lncc_after():
    cfg = EngineConfig(remap_factors=(4, 2, 2, 1), remap_iterations=(5, 5, 5, 5), remap_from=2)
    route = route_for("remap", cfg)
    assert route.factors == (4, 2, 2, 1)
    assert [route.similarity(i) for i in range(4)] == ["lncc2", "lncc2", "lncc", "lncc"]
    assert [route.remapped(i) for i in range(4)] == [False, False, True, True]


def test_mind_route_remaps_its_configured_levels_and_the_levels_after_the_descriptors():
    cfg = EngineConfig(
        mind_factors=(4, 2, 2, 1),
        mind_iterations=(1, 1, 1, 1),
        mind_remapped_levels=(2,),
        mind_remap_factors=(1,),
        mind_remap_iterations=(1,),
    )
    route = route_for("mind", cfg)
    assert route.factors == (4, 2, 2, 1, 1)
    assert [route.similarity(i) for i in range(5)] == ["mind", "mind", "lncc", "mind", "lncc"]
    assert route.remapped_from(3) and not route.remapped_from(2)


@pytest.mark.parametrize("similarity", ["lncc", "lncc2"])
def test_same_contrast_routes_use_one_similarity_on_the_default_pyramid(similarity):
    cfg = EngineConfig()
    route = first_route(similarity, cfg)
    assert route.factors == cfg.factors and route.iterations == cfg.iterations
    assert {route.similarity(i) for i in range(len(route.factors))} == {similarity}


@pytest.mark.parametrize("similarity", ["cross", "mind"])
def test_cross_contrast_similarities_start_on_the_remap_route(similarity):
    assert first_route(similarity, EngineConfig()).name == "remap"


def test_cross_keeps_remapping_when_the_map_explains_enough_of_the_fixed_image():
    cfg = EngineConfig(remap_min_explained=0.34)
    lead = first_route("cross", cfg)

    def unasked() -> bool:
        raise AssertionError("the descriptors' time is asked only when MIND-SSC is the choice")

    assert route_after_lead("cross", cfg, 0.5, mind_fits=unasked, lead=lead) is lead
    assert route_after_lead("cross", cfg, 0.2, mind_fits=lambda: True, lead=lead).name == "mind"


def test_mind_is_chosen_whatever_the_map_explains_and_squared_lncc_goes_on_when_it_does_not_fit():
    cfg = EngineConfig()
    lead = first_route("mind", cfg)
    assert route_after_lead("mind", cfg, 0.9, mind_fits=lambda: True, lead=lead).name == "mind"
    fallback = route_after_lead("mind", cfg, None, mind_fits=lambda: False, lead=lead)
    assert fallback.name == "lncc2" and fallback.factors == lead.factors
    assert {fallback.similarity(i) for i in range(len(fallback.factors))} == {"lncc2"}


def test_per_level_windows_must_fit_every_pyramid_the_similarity_runs():
    cfg = EngineConfig(radius=(3, 3, 2))  # one per level of factors (3); the remap pyramid has 4 levels
    cfg.check_windows("lncc")
    with pytest.raises(ValueError, match="radius has one value per level of factors"):
        cfg.check_windows("cross")


def test_the_finest_lncc_level_does_a_1mm_brains_work_on_a_smaller_grid():
    cfg = EngineConfig()
    lncc = route_for("lncc", cfg)
    assert with_grid_work(lncc, [92_000, 740_000, 5_900_000], cfg) == lncc  # a 1 mm brain: as configured (20)
    two_mm = with_grid_work(lncc, [20_000, 162_000, 1_296_000], cfg)  # a 2 mm head
    assert two_mm.iterations == (*lncc.iterations[:-1], round(cfg.finest_work / 1_296_000)) == (200, 100, 93)
    assert with_grid_work(lncc, [10_000, 80_000, 600_000], cfg).iterations[-1] == cfg.finest_max_iterations
    assert with_grid_work(lncc, [500, 4_000, 32_000], cfg) == lncc  # below finest_work_min_voxels: as configured
    for unchanged in (route_for("mind", cfg), route_for("lncc2", cfg)):
        assert with_grid_work(unchanged, [20_000, 162_000, 1_296_000], cfg) == unchanged
    assert with_grid_work(lncc, [20_000, 162_000, 1_296_000], EngineConfig(finest_work=None)) == lncc
    disabled = route_for("lncc", EngineConfig(factors=(1,), iterations=(0,)))
    assert with_grid_work(disabled, [1_296_000], cfg) == disabled


def test_outlier_ratio_applies_to_the_same_contrast_route_only():
    """Measured: it helped same-contrast pairs and cost every real-lesion cross-contrast case endpoint error."""
    from caio.engine.levels import level_settings

    cfg = EngineConfig()
    lncc = route_for("lncc", cfg)
    assert all(level_settings(lncc, i, cfg).outlier_ratio == 2.0 for i in range(len(lncc.factors)))
    for name in ("lncc2", "remap", "mind"):
        route = route_for(name, cfg)
        assert all(level_settings(route, i, cfg).outlier_ratio is None for i in range(len(route.factors)))
    assert level_settings(lncc, 0, EngineConfig(outlier_ratio=None)).outlier_ratio is None

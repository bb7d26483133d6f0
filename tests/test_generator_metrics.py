import pytest
import torch

from dsco.generator_metrics import (compare, density_coverage, frechet_distance, generator_metrics, pixel_stats,
                                    precision_recall)
from dsco.models.classifiers import create_classifier


def test_identical_sets_have_zero_distance_and_full_precision_recall_and_coverage():
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(0))
    m = compare(x, x.clone())
    assert m.fd == pytest.approx(0, abs=1e-8)
    assert m.precision == m.recall == m.coverage == 1.0


def test_a_fresh_sample_of_the_same_distribution_has_density_near_one():
    g = torch.Generator().manual_seed(4)
    m = compare(torch.randn(2000, 3, generator=g), torch.randn(2000, 3, generator=g))
    assert m.density == pytest.approx(1.0, abs=0.1) and m.coverage > 0.9


def test_frechet_distance_of_two_gaussians_matches_the_closed_form():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(20000, 2, generator=g)
    b = torch.randn(20000, 2, generator=g) * 2 + torch.tensor([3.0, 0.0])
    # N(0, I) vs N((3, 0), 4I): 9 + tr(I + 4I - 2 * 2I) = 9 + 2
    assert frechet_distance(a, b) == pytest.approx(11.0, rel=0.03)


def test_a_set_collapsed_to_one_point_has_low_recall_and_coverage_but_is_precise():
    real = torch.randn(300, 4, generator=torch.Generator().manual_seed(2))
    collapsed = real[:1].repeat(300, 1)
    p, r = precision_recall(real, collapsed)
    density, coverage = density_coverage(real, collapsed)
    assert p == 1.0 and r < 0.05 and coverage < 0.05
    assert frechet_distance(real, collapsed) > 3


def test_a_shifted_set_loses_precision_and_density():
    g = torch.Generator().manual_seed(3)
    real, fake = torch.randn(300, 4, generator=g), torch.randn(300, 4, generator=g) + 3
    near = compare(real, torch.randn(300, 4, generator=g))
    far = compare(real, fake)
    assert far.precision < near.precision and far.density < near.density and far.fd > near.fd


def test_generator_metrics_of_a_tiny_model_name_their_feature_net_and_cover_every_class(tiny_backend, tiny_set):
    torch.manual_seed(0)
    net = create_classifier("convnet3", 1, 3, 8, 8)
    r = generator_metrics(tiny_backend, tiny_set, net, "random convnet3", per_class=8)
    assert r["feature_net"] == "random convnet3" and set(r["per_class"]) == set(tiny_set.class_names)
    assert 0 <= r["overall"]["coverage"] <= 1 and r["overall"]["n_fake"] == 24 and r["overall"]["fd"] >= 0


def test_pixel_stats_see_a_grey_background_that_real_digits_do_not_have():
    digits = torch.zeros(4, 1, 8, 8)
    digits[:, :, 2:6, 3:5] = 1.0
    st = pixel_stats(digits)
    assert st["exact_zero"] == 0.875 and st["background_mean"] == 0 and st["stroke_mean"] == 1.0
    grey = pixel_stats(digits * 0.9 + 0.02)
    assert grey["exact_zero"] == 0 and grey["background_mean"] == pytest.approx(0.02, abs=0.002)

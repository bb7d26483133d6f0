import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dsco.errors import DscoError
from dsco.features import RandomFeatureNet
from dsco.mmd import mmd2
from dsco.nopt import (NOptConfig, latin_hypercube_normal, nopt_class, norm_loss, optimise_noise, pivots,
                       quantile_loss)


def test_latin_hypercube_has_one_value_per_stratum_per_dimension():
    n = 7
    x = latin_hypercube_normal(n, (3, 4), torch.Generator().manual_seed(0))
    u = torch.special.ndtr(x.flatten(1).double())  # back to (0, 1)
    strata = torch.floor(u * n).long()
    for d in range(strata.shape[1]):
        assert sorted(strata[:, d].tolist()) == list(range(n))


def test_pivots_of_a_known_sample_are_its_block_means():
    f = torch.tensor([[6.0], [1.0], [5.0], [2.0], [4.0], [3.0]])
    assert torch.allclose(pivots(f, 3), torch.tensor([[1.5, 3.5, 5.5]]))
    assert torch.allclose(pivots(f, 1), torch.tensor([[3.5]]))


def test_quantile_loss_is_zero_on_the_pivots_and_its_gradient_reaches_the_noise():
    torch.manual_seed(0)
    phi = RandomFeatureNet(1, 16, seed=0)
    eps = torch.randn(4, 1, 8, 8, requires_grad=True)
    v = phi(eps)
    assert quantile_loss(v.detach(), pivots(v.detach(), 4), 5e-4) == 0  # n points are their own n-point quantisation
    piv = pivots(torch.randn(40, v.shape[1]), 4)
    quantile_loss(phi(eps), piv, 5e-4).backward()
    assert eps.grad is not None and eps.grad.abs().sum() > 0


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_iterations_lower_the_loss_on_a_toy_problem(optimizer):
    target = torch.randn(50, 2) + 3
    piv = pivots(target, 5)
    cfg = NOptConfig(iterations=60, lr=0.05, optimizer=optimizer)
    eps0 = torch.zeros(5, 2)
    loss_fn = lambda x, eps: quantile_loss(x, piv, 1.0)
    _, rec = optimise_noise(loss_fn, torch.zeros(5, 2), torch.tensor(1.0), eps0, cfg, 0, "toy")
    assert rec.loss_last < 0.2 * rec.loss_first


def test_norm_term_pulls_the_noise_to_the_gaussian_shell():
    cfg = NOptConfig(iterations=100, lr=0.01)
    eps0 = torch.full((3, 64), 3.0)
    eps, _ = optimise_noise(lambda x, e: norm_loss(e), eps0, torch.tensor(0.0), eps0, cfg, 0, "toy")
    assert torch.allclose(eps.norm(dim=1), torch.full((3,), math.sqrt(64)), atol=0.2)


def test_unknown_optimizer_is_refused():
    with pytest.raises(DscoError, match="unknown NOpt optimizer 'lbfgs'"):
        NOptConfig(optimizer="lbfgs").validate()


def test_mmd_is_zero_for_identical_sets_and_positive_for_shifted_ones():
    x = torch.randn(30, 8)
    assert mmd2(x, x) < 1e-6
    assert mmd2(x, x + 2) > 0.05


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 6), st.floats(-5, 5))
def test_mmd_is_finite_and_non_negative(n, m, d, shift):
    g = torch.Generator().manual_seed(n * 100 + m)
    x, y = torch.randn(n, d, generator=g), torch.randn(m, d, generator=g) + shift
    v = mmd2(x, y)
    assert torch.isfinite(v) and v >= 0


def test_nan_is_retried_with_smaller_steps_then_named():
    calls = []

    def explode(x, eps):
        calls.append(1)
        return (x * float("nan")).sum()

    with pytest.raises(DscoError, match="class seven at step t=42 after 2 retries"):
        optimise_noise(explode, torch.zeros(2, 3), torch.tensor(1.0), torch.zeros(2, 3), NOptConfig(iterations=5, max_retries=2), 42, "seven")
    assert len(calls) == 3


def test_nopt_class_lowers_the_loss_within_each_step(tiny_backend, tiny_set):
    real = tiny_backend.encode(tiny_set.class_images(0))
    cfg = NOptConfig(iterations=8, feature_width=16, k_noises=2, lr=0.05)
    z, records = nopt_class(tiny_backend, 0, real, 4, cfg, torch.Generator().manual_seed(0), 1)
    assert z.shape == (4, 1, 8, 8) and torch.isfinite(z).all()
    assert len(records) == len(tiny_backend.timesteps) - 1  # the last step adds no noise
    assert sum(r.loss_last < r.loss_first for r in records) >= len(records) - 1


def test_mmd_loss_option_runs(tiny_backend, tiny_set):
    real = tiny_backend.encode(tiny_set.class_images(1))
    cfg = NOptConfig(loss="mmd", iterations=4, feature_width=16, k_noises=1, lr=0.05)
    z, records = nopt_class(tiny_backend, 1, real, 3, cfg, torch.Generator().manual_seed(0), 1)
    assert torch.isfinite(z).all() and records[0].loss_last <= records[0].loss_first


def test_unknown_loss_lists_valid_names():
    with pytest.raises(DscoError, match="valid names are quantile, mmd"):
        NOptConfig(loss="l2").validate()


def test_steps_fraction_and_start_choose_which_steps_are_optimised(tiny_backend, tiny_set):
    assert NOptConfig(steps_fraction=0.6).optimised_range(50) == range(0, 30)
    assert NOptConfig(steps_fraction=0.6, steps_start=0.4).optimised_range(50) == range(20, 50)
    assert NOptConfig(steps_fraction=0.8, steps_start=0.5).optimised_range(50) == range(25, 50)
    real = tiny_backend.encode(tiny_set.class_images(0))
    ts = tiny_backend.timesteps
    cfg = NOptConfig(iterations=2, feature_width=16, k_noises=1, steps_fraction=0.5, steps_start=0.25)
    _, records = nopt_class(tiny_backend, 0, real, 2, cfg, torch.Generator().manual_seed(0), 1)
    assert records and [r.t for r in records] == [ts[i] for i in cfg.optimised_range(len(ts)) if i < len(ts) - 1]
    with pytest.raises(DscoError, match="steps_start"):
        NOptConfig(steps_start=1.0).validate()

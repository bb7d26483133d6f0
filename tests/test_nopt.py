import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dsco.errors import DscoError
from dsco.features import RandomFeatureNet, StackedFeatureNets
from dsco.mmd import mmd2
from dsco.nopt import (ClassLoss, GraphedIterations, NOptConfig, _iterate, class_target_loss, latin_hypercube_normal,
                       nopt_class, nopt_classes, norm_loss, optimise_classes, optimise_noise, pivots, quantile_loss)


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


# ---- several classes at once (--class-batch) ------------------------------------------------

def _reals(backend, classes=3, m=20):
    return [torch.randn((m, *backend.sample_shape), generator=torch.Generator().manual_seed(100 + c)) for c in range(classes)]


@pytest.mark.parametrize("cfg", [
    NOptConfig(iterations=6, feature_width=16),  # the reference's loss and optimiser
    NOptConfig(iterations=4, feature_width=16, optimizer="adam", lr=0.05, k_noises=1, target_offset=0, steps_fraction=0.5),
    NOptConfig(iterations=4, feature_width=16, loss="mmd"),
    NOptConfig(iterations=30, feature_width=16, early_stop=2, early_stop_tol=0.05),
], ids=["reference", "short", "mmd", "early-stop"])
def test_classes_optimised_together_get_the_samples_each_gets_alone(tiny_backend, cfg):
    """Each class's draws come from its own generator and its loss depends on its own samples, so batching classes
    changes nothing but float rounding (the model's batch is larger): same samples, same iteration counts."""
    reals = _reals(tiny_backend)
    alone = [nopt_class(tiny_backend, c, reals[c], 4, cfg, torch.Generator().manual_seed(c), c + 1) for c in range(3)]
    together = nopt_classes(tiny_backend, [0, 1, 2], reals, 4, cfg, [torch.Generator().manual_seed(c) for c in range(3)], [1, 2, 3])
    for (za, ra), (zb, rb) in zip(alone, together):
        assert torch.allclose(za, zb, atol=2e-3)
        assert [r.iterations for r in ra] == [r.iterations for r in rb]
        assert [r.t for r in ra] == [r.t for r in rb]
    if cfg.early_stop:
        assert any(r.iterations < cfg.iterations for _, rs in together for r in rs)  # the per-class stop was exercised


def test_one_class_through_the_batched_path_is_bit_for_bit_the_per_class_path(tiny_backend):
    """The stacked feature net of one class is that class's net, layer for layer: a set made before batching
    existed is made again exactly."""
    cfg = NOptConfig(iterations=5, feature_width=16)
    real = _reals(tiny_backend, 1)[0]
    z, _ = nopt_class(tiny_backend, 0, real, 3, cfg, torch.Generator().manual_seed(0), 1)
    (zb, _), = nopt_classes(tiny_backend, [0], [real], 3, cfg, [torch.Generator().manual_seed(0)], [1])
    assert torch.equal(z, zb)


def test_stacked_feature_nets_compute_what_each_class_net_computes():
    nets = [RandomFeatureNet(2, 16, seed=s) for s in (3, 4, 5)]
    x = torch.randn(3 * 4, 2, 8, 8)
    stacked = StackedFeatureNets(nets)(x)
    assert stacked.shape == (3, 4, nets[0].num_features)
    for c, net in enumerate(nets):
        assert torch.allclose(stacked[c], net(x[c * 4 : (c + 1) * 4]), atol=1e-5)


def test_a_class_whose_loss_turns_non_finite_is_redone_alone_and_the_others_keep_their_steps():
    """As one class alone: the failing class is retried with half the lr; the other classes' noise is what it
    would be without the failing class in the batch."""
    target = torch.randn(30, 2)
    piv = pivots(target, 3)

    class Toy(ClassLoss):
        def __init__(self, poisoned: list[bool]):
            self.poisoned, self.classes = poisoned, len(poisoned)

        def __call__(self, x, eps):
            parts = x.view(self.classes, 3, 2)
            return torch.stack([quantile_loss(p, piv, 1.0) * (float("nan") if bad else 1.0) for p, bad in zip(parts, self.poisoned)])

        def subset(self, classes):
            return Toy([False for _ in classes])  # the retry succeeds

    cfg = NOptConfig(iterations=5, lr=0.1)
    eps0 = torch.randn(9, 2, generator=torch.Generator().manual_seed(0))
    eps, recs = optimise_classes(Toy([False, True, False]), torch.zeros(9, 2), torch.tensor(1.0), eps0, cfg, 7, ["a", "b", "c"])
    clean, clean_recs = optimise_classes(Toy([False, False]), torch.zeros(6, 2), torch.tensor(1.0), torch.cat([eps0[:3], eps0[6:]]), cfg, 7, ["a", "c"])
    assert [r.retries for r in recs] == [0, 1, 0]
    assert torch.allclose(torch.cat([eps[:3], eps[6:]]), clean)
    alone_half_lr, _ = optimise_classes(Toy([False]), torch.zeros(3, 2), torch.tensor(1.0), eps0[3:6], NOptConfig(iterations=5, lr=0.05), 7, ["b"])
    assert torch.allclose(eps[3:6], alone_half_lr)


def test_the_graphed_iteration_is_torch_sgd_with_momentum(tiny_backend):
    """The CUDA-graph runner writes SGD out by hand (buffer from zero, then momentum x buffer + grad); run eagerly
    (no GPU here) it takes torch.optim.SGD's steps."""
    cfg = NOptConfig(iterations=12, feature_width=16, lr=0.1, momentum=0.9)
    nets = [RandomFeatureNet(1, 16, seed=s) for s in (1, 2)]
    feats = [net.batched(torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(s))) for s, net in enumerate(nets)]
    loss = class_target_loss(nets, feats, 4, cfg)
    mu, eps0 = torch.randn(8, 1, 8, 8), torch.randn(8, 1, 8, 8)
    sigma = torch.tensor(0.3)
    runner = GraphedIterations(loss, mu, sigma, eps0, cfg.momentum, capture=False)
    graphed, history = runner.run(loss, mu, sigma, eps0, cfg.lr, cfg.iterations)
    eager, eager_history, _ = _iterate(loss, mu, sigma, eps0, cfg, cfg.lr)
    assert torch.allclose(graphed, eager, atol=1e-5)
    assert torch.allclose(history, eager_history, rtol=1e-5)
    assert (history[-1] < history[0]).all()  # and it optimises: each class's loss falls
    again, _ = runner.run(loss, mu, sigma, eps0, cfg.lr, cfg.iterations)  # reused for the next step: state reset
    assert torch.equal(again, graphed)


@pytest.mark.slow
def test_the_compiled_iteration_takes_the_eager_iteration_steps():
    """GraphedIterations(compile=True) runs the loss through torch.compile (fused kernels for a GPU): the same
    SGD steps as the eager loss, up to float rounding (slow: compiling takes a minute on a CPU)."""
    cfg = NOptConfig(iterations=6, feature_width=16, lr=0.1, momentum=0.9)
    nets = [RandomFeatureNet(1, 16, seed=s) for s in (1, 2)]
    feats = [net.batched(torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(s))) for s, net in enumerate(nets)]
    loss = class_target_loss(nets, feats, 4, cfg)
    mu, eps0, sigma = torch.randn(8, 1, 8, 8), torch.randn(8, 1, 8, 8), torch.tensor(0.3)
    eager, eager_history = GraphedIterations(loss, mu, sigma, eps0, cfg.momentum, capture=False).run(loss, mu, sigma, eps0, cfg.lr, cfg.iterations)
    compiled, history = GraphedIterations(loss, mu, sigma, eps0, cfg.momentum, capture=False, compile=True).run(loss, mu, sigma, eps0, cfg.lr, cfg.iterations)
    assert torch.allclose(compiled, eager, atol=1e-5)
    assert torch.allclose(history, eager_history, rtol=1e-4)
    assert not torch.equal(compiled, eps0)


def test_real_anchored_nopt_starts_from_the_class_real_images_at_the_anchor_level(tiny_backend, tiny_set):
    """--anchor real (ours): samples start from the class's real images noised to the level of DiT's anchor_t on
    the backend's schedule, and so end nearer the class's real images than samples started from pure noise."""
    from dsco.models.diffusion import reference_noise_level, step_at_noise_level

    real = tiny_backend.encode(tiny_set.class_images(2))
    anchored = NOptConfig(iterations=3, feature_width=16, k_noises=1, anchor="real", anchor_t=300)
    start = step_at_noise_level(tiny_backend.schedule, reference_noise_level("dit", 300))
    assert 0 < start < len(tiny_backend.timesteps) - 1
    z, records = nopt_class(tiny_backend, 2, real, 4, anchored, torch.Generator().manual_seed(0), 1)
    assert records[0].t == tiny_backend.timesteps[start]  # the steps before the anchor level are not run
    free, _ = nopt_class(tiny_backend, 2, real, 4, NOptConfig(iterations=3, feature_width=16, k_noises=1),
                         torch.Generator().manual_seed(0), 1)
    nearest = lambda x: torch.cdist(x.flatten(1), real.flatten(1)).min(1).values.mean()
    assert nearest(z) < nearest(free)
    with pytest.raises(DscoError, match="valid names are noise, real"):
        NOptConfig(anchor="prototypes").validate()

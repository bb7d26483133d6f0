"""Each peer computes what its original computes: definitions written here from the originals' published code and
equations (D4M: suduo94/D4M on Stable Diffusion v1.5; D3HR: lin-zhao-resoLve/D3HR; MGD3: ManifoldGD's
`p_sample_with_mode_guidance`; IGD: the guidance of DD_IGD as published in RAE-IGD; Minimax:
vimar-gu/MinimaxDiffusion `train_dit.py`), and directions checked against what each method is meant to achieve."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from dsco.methods import D3HRConfig, IGDConfig, MGD3Config, MinimaxConfig
from dsco.models.diffusion import RespacedSchedule, reference_noise_level, step_at_noise_level

from test_latent import tiny_dit


def pixel_schedule(steps: int = 50) -> RespacedSchedule:
    """The shipped pixel model's schedule (squaredcos_cap_v2, trailing spacing)."""
    return RespacedSchedule.from_scheduler(DDPMScheduler(beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing"), steps)


def dit_schedule(steps: int = 50) -> RespacedSchedule:
    from dsco.models.latent import dit_timesteps

    abar = DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02).alphas_cumprod.double()
    return RespacedSchedule(abar, dit_timesteps(1000, steps))


def first_training_step_at(schedule: RespacedSchedule, abar: float) -> int:
    """The training timestep at which the schedule's alpha_bar first falls to `abar`."""
    return int((schedule.alphas_cumprod < abar).nonzero()[0])


def within_one_step(schedule: RespacedSchedule, index: int, t_exact: int) -> bool:
    """The respaced step `index` is one of the two grid steps around training timestep t_exact."""
    ts = schedule.timesteps
    above = max(i for i, t in enumerate(ts) if t >= t_exact)
    return index in (above, min(above + 1, len(ts) - 1))


# --- the one rule for carrying a noise level -------------------------------------------------------------------

def test_a_noise_level_is_carried_to_the_step_nearest_in_log_snr():
    sched = pixel_schedule(10)
    for i, t in enumerate(sched.timesteps[:-1]):
        assert step_at_noise_level(sched, float(sched.alphas_cumprod[t])) == i  # a level on the grid maps to itself
    a, b = (float(sched.alphas_cumprod[t]) for t in sched.timesteps[3:5])
    snr = lambda x: math.log(x / (1 - x))  # noqa: E731
    mid = 1 / (1 + math.exp(-(0.3 * snr(a) + 0.7 * snr(b))))  # closer to b in log-SNR
    assert step_at_noise_level(sched, mid) == 4


def test_d4m_starts_at_stable_diffusions_img2img_level_on_every_schedule():
    from dsco.methods.d4m import original_start

    # SD v1.5's PNDM (leading spacing, offset 1) at 50 steps runs 981, 961, 961, 941, ...; strength 0.7 runs the
    # last int(50 x 0.7) = 35, so the input is noised to timesteps[15] = 701, alpha_bar 0.0819 on SD's schedule
    assert original_start(0.7) == 701
    level = reference_noise_level("sd-v1.5", 701)
    assert level == pytest.approx(0.08192, abs=1e-4)
    for sched, t_exact in ((pixel_schedule(), 813), (dit_schedule(), 495)):
        assert first_training_step_at(sched, level) in (t_exact, t_exact + 1)
        start = step_at_noise_level(sched, level)
        assert within_one_step(sched, start, t_exact)
    # the old rule (a share of the steps) started at t = 699 on the pixel schedule, alpha_bar 0.203: not this level
    assert step_at_noise_level(pixel_schedule(), level) != 15


def test_d3hr_starts_at_the_level_of_its_statistics_at_dits_timestep_600():
    level = reference_noise_level("dit", 600)
    assert level == pytest.approx(0.02557, abs=1e-4)
    for sched, t_exact in ((pixel_schedule(), 896), (dit_schedule(), 600)):
        assert within_one_step(sched, step_at_noise_level(sched, level), t_exact)


def test_the_peers_start_at_the_carried_level_on_the_pixel_backend(tiny_model_dir):
    from dsco.methods.d3hr import start_index
    from dsco.methods.d4m import start_step
    from dsco.models.pixel import PixelBackend

    backend = PixelBackend.load(tiny_model_dir, num_steps=50)
    assert within_one_step(backend.schedule, start_step(backend, 0.7), 813)
    assert within_one_step(backend.schedule, start_index(backend, 600), 896)


# --- D4M ---------------------------------------------------------------------------------------------------------

def test_d4m_one_prototype_is_the_running_mean_of_the_class():
    from dsco.methods.d4m import D4MConfig, prototypes

    z = torch.randn(37, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    proto = prototypes(z, 1, D4MConfig(), torch.Generator().manual_seed(1))
    assert torch.allclose(proto[0], z.mean(0), atol=1e-5)  # MiniBatchKMeans' count-weighted centre of every chunk


def test_d4m_default_sampler_is_deterministic_from_the_noised_prototype(tiny_backend):
    from dsco.models.diffusion import ddim_sample

    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ddim_sample(tiny_backend, x, 1, 2), ddim_sample(tiny_backend, x, 1, 2))


# --- D3HR --------------------------------------------------------------------------------------------------------

def test_d3hr_group_score_standardises_each_dimension_over_the_group():
    from dsco.methods.d3hr import group_scores

    g = torch.Generator().manual_seed(4)
    groups = torch.randn((7, 5, 40), generator=g).double() * 1.3 + 0.2
    mean, std = torch.randn(40).double(), torch.rand(40).double() + 0.5
    n, d = 5, 40
    expected = []
    for grp in groups:  # the original's skewness_batch, written member by member and dimension by dimension
        skew = torch.zeros(n, dtype=torch.float64)
        for j in range(d):
            col = grp[:, j]
            m, s = col.mean(), ((col - col.mean()) ** 2).sum().div(n - 1).sqrt()
            skew += ((col - m) / s) ** 3
        skew *= d / ((d - 1) * (d - 2))
        expected.append((grp.mean(0) - mean).norm() + (grp.std(0) - std).norm() + 0.1 * skew.norm())
    assert torch.allclose(group_scores(groups, mean, std, 0.1), torch.stack(expected))


def test_d3hr_scores_a_group_of_one_by_its_mean_alone():
    from dsco.methods.d3hr import best_group, group_scores

    mean, std = torch.zeros(16), torch.ones(16)
    groups = torch.randn(3, 1, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(group_scores(groups, mean, std, 0.1), (groups[:, 0] - mean).norm(dim=1))
    group, score = best_group(mean, std, 1, D3HRConfig(candidates=20, candidate_batch=8), torch.Generator().manual_seed(0))
    assert group.shape == (1, 16) and math.isfinite(score)


def test_d3hr_keeps_a_group_that_beats_random_groups_on_its_own_score():
    from dsco.methods.d3hr import best_group, group_scores

    mean, std = torch.randn(32), torch.rand(32) + 0.5
    cfg = D3HRConfig(candidates=500, candidate_batch=100)
    group, score = best_group(mean, std, 5, cfg, torch.Generator().manual_seed(0))
    others = group_scores(mean + std * torch.randn((200, 5, 32), generator=torch.Generator().manual_seed(1)), mean, std, cfg.skew_weight)
    assert score == pytest.approx(float(group_scores(group[None], mean, std, cfg.skew_weight)[0]), rel=1e-5)
    assert (others > score).float().mean() > 0.95


def test_d3hr_default_searches_the_originals_ten_to_the_eight_groups():
    assert D3HRConfig().candidates == 10_000 * 10_000


def test_d3hr_inversion_evaluates_eps_at_the_level_it_moves_to(tiny_backend, monkeypatch):
    from dsco.methods.d3hr import ddim_invert

    seen = []
    eps = tiny_backend.eps
    monkeypatch.setattr(tiny_backend, "eps", lambda x, t, y: seen.append(t) or eps(x, t, y))
    z0 = torch.rand(2, 1, 8, 8) * 2 - 1
    ddim_invert(tiny_backend, z0, 1, 2)
    up = list(reversed(tiny_backend.timesteps[2:]))
    assert seen == up[1:]  # the original's loop: the latent at level t_{i-1} goes through the model at t_i
    seen.clear()
    ddim_invert(tiny_backend, z0, 1, 2, eps_at="source")
    assert seen == up[:-1]


def test_d3hr_guides_every_latent_channel_on_a_dit():
    from dsco.methods.d3hr import guided_on_all_channels
    from dsco.models.latent import LatentBackend

    from test_latent import tiny_vae

    abar = torch.linspace(0.999, 0.01, 1000, dtype=torch.float64)
    backend = LatentBackend(tiny_dit(), tiny_vae(), abar, num_steps=4, device="cpu")
    assert backend.guidance_channels == 3
    full = guided_on_all_channels(backend)
    assert full.guidance_channels == backend.channels == 4 and backend.guidance_channels == 3
    x, y = torch.randn(1, 4, 8, 8), torch.tensor([1])
    cond = backend._forward(x, backend.timesteps[0], y)[:, :4]
    uncond = backend._forward(x, backend.timesteps[0], torch.tensor([backend.num_classes]))[:, :4]
    assert torch.allclose(full.eps(x, backend.timesteps[0], y), uncond + backend.guidance * (cond - uncond), atol=1e-5)


# --- MGD3 --------------------------------------------------------------------------------------------------------

def test_mgd3_guides_24_of_50_steps_noisiest_first():
    from dsco.methods.mgd3 import guided_steps

    # the original guides while its countdown index t (49 .. 0) is above T_SG = 25: t = 49 .. 26
    assert list(guided_steps(50, 0.5)) == list(range(24))
    assert [50 - 1 - i for i in guided_steps(50, 0.5)] == list(range(49, 25, -1))


def test_mgd3_moves_the_mean_by_lambda_sigma_times_mode_minus_x0(tiny_backend):
    from dsco.methods.mgd3 import pull_to_mode

    g = torch.Generator().manual_seed(0)
    x, modes, y = torch.randn(2, 1, 8, 8, generator=g), torch.rand(2, 1, 8, 8, generator=g), torch.tensor([1, 1])
    t = tiny_backend.timesteps[1]
    mu, sigma = tiny_backend.mean_sigma(x, t, y)
    x0 = tiny_backend.schedule.predict_x0(x, tiny_backend.eps(x, t, y), t).clamp(-1, 1)  # the pixel backend clips x0
    moved = pull_to_mode(mu, x, modes, tiny_backend.schedule.posterior_weights(t), sigma, 0.1)
    assert torch.allclose(moved - mu, 0.1 * sigma * (modes - x0), atol=1e-5)
    assert float(sigma) > tiny_backend.schedule.posterior_weights(t)[0]  # the old c0 scale was the weaker pull


def test_mgd3_without_a_pull_is_plain_ancestral_sampling(tiny_backend):
    from dsco.methods.mgd3 import mode_guided_sample
    from dsco.models.diffusion import ancestral_sample

    modes = torch.randn(2, 1, 8, 8)
    z, _ = mode_guided_sample(tiny_backend, 1, modes, MGD3Config(scale=0.0), torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    x_T, noise = torch.randn((2, 1, 8, 8), generator=g), torch.randn((5, 2, 1, 8, 8), generator=g)
    assert torch.allclose(z, ancestral_sample(tiny_backend, torch.tensor([1, 1]), x_T, noise))


def test_mgd3_pulls_the_samples_towards_their_modes(tiny_backend):
    from dsco.methods.mgd3 import mode_guided_sample

    modes = torch.rand((2, 1, 8, 8), generator=torch.Generator().manual_seed(3)) * 1.6 - 0.8
    free, _ = mode_guided_sample(tiny_backend, 1, modes, MGD3Config(scale=0.0), torch.Generator().manual_seed(0))
    pulled, _ = mode_guided_sample(tiny_backend, 1, modes, MGD3Config(scale=1.0, stop_fraction=0.0), torch.Generator().manual_seed(0))
    assert (pulled - modes).norm() < (free - modes).norm()


# --- IGD ---------------------------------------------------------------------------------------------------------

@pytest.fixture
def surrogate(tiny_set):
    from dsco.methods.igd import class_gradients, train_surrogate

    cfg = IGDConfig(checkpoint_epochs=(0, 2, 4))
    nets = train_surrogate(tiny_set, cfg, 0)
    return nets, class_gradients(nets, tiny_set.images[tiny_set.labels == 1], 1)


def class_loss_after_one_step(net: torch.nn.Module, images: torch.Tensor, label: int, real: torch.Tensor, lr: float = 0.5) -> float:
    """The class's real loss after one SGD step of the surrogate on `images` labelled `label`."""
    net = copy.deepcopy(net)
    y = torch.full((len(images),), label)
    grads = torch.autograd.grad(F.cross_entropy(net(images * 2 - 1), y), list(net.parameters()))
    with torch.no_grad():
        for p, g in zip(net.parameters(), grads):
            p -= lr * g
        return float(F.cross_entropy(net(real * 2 - 1), torch.full((len(real),), label)))


def test_igd_surrogate_checkpoints_are_one_training_from_its_untrained_start(tiny_set):
    from dsco.methods.igd import surrogate_network, train_surrogate

    nets = train_surrogate(tiny_set, IGDConfig(checkpoint_epochs=(0, 1, 3)), 7)
    torch.manual_seed(7)
    fresh = surrogate_network(IGDConfig(), 1, 3, 8)
    assert len(nets) == 3 and all(torch.equal(p, q) for p, q in zip(nets[0].parameters(), fresh.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(nets[1].parameters(), nets[2].parameters()))


def test_igd_guidance_direction_makes_a_training_step_lower_the_class_loss(surrogate, tiny_set):
    from dsco.methods.igd import gradient_mismatch

    nets, targets = surrogate
    real = tiny_set.images[tiny_set.labels == 1]
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    g = torch.autograd.grad(gradient_mismatch(x, 1, nets, targets), x)[0]
    guided = (x - 0.2 * g / g.pow(2).mean().sqrt()).detach()  # IGD's step: down the mismatch
    assert gradient_mismatch(guided, 1, nets, targets) < gradient_mismatch(x.detach(), 1, nets, targets)
    assert class_loss_after_one_step(nets[-1], guided, 1, real) < class_loss_after_one_step(nets[-1], x.detach(), 1, real)


def test_igd_guided_samples_train_the_class_better_than_plain_samples_from_the_same_noise(surrogate, tiny_backend, tiny_set):
    from dsco.methods.igd import influence_guided_sample

    nets, targets = surrogate
    real = tiny_set.images[tiny_set.labels == 1]
    wide = (0.0, 1.0)  # every step guided, strongly, so the tiny 5-step model shows the direction
    guided, applied = influence_guided_sample(tiny_backend, 1, 3, nets, targets, IGDConfig(scale=2000.0, deviation=0.0, window=wide),
                                              torch.Generator().manual_seed(0), 1)
    plain, none = influence_guided_sample(tiny_backend, 1, 3, nets, targets, IGDConfig(scale=0.0, deviation=0.0, window=wide),
                                          torch.Generator().manual_seed(0), 1)
    assert all(a > 0 for a in applied[:-1]) and not any(none)
    after = [class_loss_after_one_step(nets[-1], tiny_backend.decode(z), 1, real) for z in (guided, plain)]
    assert after[0] < after[1]


def test_igd_guides_dits_step_indices_30_to_45_of_50():
    from dsco.methods.igd import guided_range

    window = guided_range(50, IGDConfig().window)
    assert [50 - 1 - i for i in window] == list(range(45, 29, -1))  # 16 steps, the original's t in [30, 45]


def test_igd_deviation_pushes_a_sample_away_from_the_earlier_ones(surrogate, tiny_backend):
    from dsco.methods.igd import influence_guided_sample

    nets, targets = surrogate
    wide = (0.0, 1.0)

    def second_to_first(deviation: float) -> float:
        z, _ = influence_guided_sample(tiny_backend, 1, 2, nets, targets, IGDConfig(scale=0.0, deviation=deviation, window=wide),
                                       torch.Generator().manual_seed(0), 1)
        return float(F.cosine_similarity(z[1].flatten(), z[0].flatten(), dim=0))

    assert second_to_first(30.0) < second_to_first(0.0)


# --- Minimax -----------------------------------------------------------------------------------------------------

def test_minimax_trains_difffits_parameters_of_the_pixel_unet(tiny_backend, tiny_set):
    from dsco.methods.minimax import fine_tune

    base = tiny_backend.denoiser
    data, labels = tiny_backend.encode(tiny_set.images), tiny_set.labels
    net, losses = fine_tune(tiny_backend, data, labels, MinimaxConfig(epochs=1, batch_size=8, ema=0.0), torch.Generator().manual_seed(0))
    changed = {k for (k, p), q in zip(base.named_parameters(), net.parameters()) if not torch.equal(p, q)}
    difffit = {k for k, _ in base.named_parameters() if k.endswith("bias") or k == "class_embedding.weight"
               or (("norm" in k) and k.endswith("weight"))}
    assert changed and changed <= difffit and len(losses) == len(data) // 8


def test_minimax_on_a_dit_ties_the_class_table_and_adds_gammas_to_the_first_half():
    from dsco.methods.minimax import difffit_parameters, prepare_difffit

    base = tiny_dit()
    for block in base.transformer_blocks:  # as a converted DiT checkpoint: every block holds the same embedder
        block.norm1.emb.load_state_dict(base.transformer_blocks[0].norm1.emb.state_dict())
    net = prepare_difffit(copy.deepcopy(base))
    blocks = net.transformer_blocks
    assert all(b.norm1.emb is blocks[0].norm1.emb for b in blocks)
    width = blocks[0].attn1.to_q.inner.out_features
    gammas = [p for n, p in net.named_parameters() if n.endswith("gamma")]
    assert sum(p.numel() for p in gammas) == (len(blocks) // 2) * (3 * width + 3 * width)
    trainable = difffit_parameters(net)
    tables = [p for p in trainable if p.dim() == 2]
    assert len(tables) == 1 and tables[0] is blocks[0].norm1.emb.class_embedder.embedding_table.weight
    assert all(p.dim() == 1 or p is tables[0] for p in trainable)  # no weight matrix but the class table trains
    x = torch.randn(2, 4, 8, 8)
    t, y = torch.tensor([10, 500]), torch.tensor([0, 1])
    assert torch.allclose(net(x, timestep=t, class_labels=y).sample, base(x, timestep=t, class_labels=y).sample, atol=1e-5)  # gammas start at one


def test_minimax_terms_score_one_pair_per_class_once_the_class_has_generated_memory():
    from dsco.methods.minimax import minimax_terms

    g = torch.Generator().manual_seed(0)
    pred, y = torch.randn(6, 5, generator=g), torch.tensor([0, 0, 0, 1, 1, 2])
    real = {c: F.normalize(torch.randn(4, 5, generator=g), dim=1) for c in range(3)}
    gen = {0: F.normalize(torch.randn(3, 5, generator=g), dim=1), 1: F.normalize(torch.randn(2, 5, generator=g), dim=1)}
    cfg = MinimaxConfig()
    e = F.normalize(pred, dim=1)
    expected = 0.0
    for c in (0, 1):  # class 2 has no generated memory yet: both of its terms are off
        expected += cfg.representativeness * (1 - (e[y == c] @ real[c].T).min()) + cfg.diversity * (e[y == c] @ gen[c].T).max()
    assert torch.allclose(minimax_terms(pred, y, real, gen, cfg), expected / 3)
    assert float(minimax_terms(pred, y, real, {}, cfg)) == 0.0


def test_minimax_vb_term_vanishes_when_the_model_step_is_the_true_posterior():
    from dsco.methods.minimax import vb_term

    abar = DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02).alphas_cumprod.double()
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([5, 300, 999])
    a = abar.float()[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    v_post = -torch.ones_like(x0)  # the learned range's lower end: the (clipped) posterior variance
    assert torch.allclose(vb_term(abar, x0, x_t, t, noise, v_post), torch.zeros(3), atol=1e-5)
    wrong = vb_term(abar, x0, x_t, t, noise + 0.1, torch.zeros_like(x0))
    assert (wrong > 0).all()


def test_minimax_samples_from_the_ema_of_the_fine_tuned_weights(tiny_backend, tiny_set):
    from dsco.methods.minimax import fine_tune

    data, labels = tiny_backend.encode(tiny_set.images), tiny_set.labels
    raw, _ = fine_tune(tiny_backend, data, labels, MinimaxConfig(epochs=1, ema=0.0), torch.Generator().manual_seed(0))
    ema, _ = fine_tune(tiny_backend, data, labels, MinimaxConfig(epochs=1, ema=0.9), torch.Generator().manual_seed(0))
    base = dict(tiny_backend.denoiser.named_parameters())
    moved = {k: (p - base[k]).norm() for k, p in raw.named_parameters()}
    k = max(moved, key=moved.get)
    ema_moved = (dict(ema.named_parameters())[k] - base[k]).norm()
    assert 0 < ema_moved < moved[k]  # the EMA lags the raw weights

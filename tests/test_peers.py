"""The diffusion-based peers as methods: each writes a valid set on both backends, and its distinguishing
step does what it claims."""
import numpy as np
import pytest
import torch
from PIL import Image

from dsco.concentrate import ConcentrateConfig, concentrate
from dsco.kmeans import kmeans
from dsco.methods import D3HRConfig, IGDConfig, MGD3Config, MinimaxConfig
from dsco.methods.d3hr import best_group, group_scores
from dsco.methods.d4m import noised_prototypes, start_step
from dsco.methods.mgd3 import mode_guided_sample
from dsco.models.diffusion import ancestral_sample
from dsco.outputset import read_manifest, verify

from test_latent import IMAGE, tiny_dit, tiny_vae
from dsco.data.imagenet import IMAGEWOOF
from dsco.models.latent import save_dit

PEERS = ["d4m", "d3hr", "mgd3", "igd", "minimax"]
SMALL = {"d3hr": D3HRConfig(candidates=40, candidate_batch=16), "igd": IGDConfig(surrogate_steps=4, checkpoints=2),
         "minimax": MinimaxConfig(steps=3, batch_size=4)}


@pytest.fixture(autouse=True)
def minimax_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the fine-tuned weights' cache stays in the test's folder


def peer_config(method: str, **kw) -> ConcentrateConfig:
    return ConcentrateConfig(method=method, sampling_steps=4, **{k: v for k, v in SMALL.items() if k == method}, **kw)


@pytest.mark.parametrize("method", PEERS)
def test_each_peer_writes_a_valid_set_on_the_pixel_model(method, tmp_path, folder, tiny_model_dir):
    out = concentrate(peer_config(method, dataset=str(folder), out=str(tmp_path / "o"), ipc=2, model=str(tiny_model_dir)),
                      progress=False)
    m = read_manifest(out)
    assert verify(out) == [] and m["counts"] == [2, 2, 2] and m["method"] == method
    assert method in m["config"] and all(e["source"] == "synthetic" for e in m["images"])


@pytest.mark.parametrize("method", PEERS)
def test_each_peer_writes_a_valid_set_on_the_dit(method, tmp_path):
    save_dit(tiny_dit(), tiny_vae(), tmp_path / "dit")
    for label, wnid in enumerate(IMAGEWOOF[:2]):
        (tmp_path / "data" / wnid).mkdir(parents=True)
        for i in range(3):
            arr = np.random.default_rng(label * 10 + i).integers(0, 255, (IMAGE, IMAGE, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / "data" / wnid / f"{i}.png")
    cfg = peer_config(method, dataset=str(tmp_path / "data"), out=str(tmp_path / "o"), ipc=2, model=str(tmp_path / "dit"),
                      device="cpu", latent_cache=str(tmp_path / "cache"))
    out = concentrate(cfg, progress=False)
    assert verify(out) == [] and read_manifest(out)["counts"] == [2, 2]


def test_a_set_made_with_cached_work_counts_that_work_in_its_cost(tmp_path, folder, tiny_model_dir):
    runs = [concentrate(peer_config("d3hr", dataset=str(folder), out=str(tmp_path / f"o{i}"), ipc=2, seed=i,
                                    model=str(tiny_model_dir)), progress=False) for i in range(2)]
    first, second = (read_manifest(r) for r in runs)
    assert first["reused_seconds"] == 0 and not any(s["inversion_cached"] for s in first["class_stats"].values())
    inverted = sum(s["inversion_seconds"] for s in first["class_stats"].values())
    assert second["reused_seconds"] == pytest.approx(inverted, abs=1e-2)


def test_kmeans_finds_obvious_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(20, 2, generator=g) for c in centres])
    c, assign = kmeans(x, 3, torch.Generator().manual_seed(1))
    assert sorted(torch.cdist(centres, c).min(1).values.tolist())[-1] < 0.1
    assert len(set(assign[:20].tolist())) == 1 and len(set(assign.tolist())) == 3


def test_d4m_starts_from_the_noised_centroids(tiny_backend):
    protos = torch.randn(3, 1, 8, 8)
    start, x = noised_prototypes(tiny_backend, protos, 0.7, torch.Generator().manual_seed(5))
    noise = torch.randn(protos.shape, generator=torch.Generator().manual_seed(5))
    assert start == start_step(5, 0.7) == 2  # the last 3 of 5 steps run, as an img2img pipeline at strength 0.7
    assert torch.allclose(x, tiny_backend.q_sample(protos, tiny_backend.timesteps[start], noise))


def test_d4m_strength_that_runs_no_step_is_refused(tiny_backend):
    from dsco.errors import DscoError

    with pytest.raises(DscoError, match="runs none of the 5 steps"):
        noised_prototypes(tiny_backend, torch.zeros(1, 1, 8, 8), 0.0, torch.Generator())


def test_d3hr_keeps_a_group_that_beats_random_groups_on_its_own_score():
    mean, std = torch.randn(32), torch.rand(32) + 0.5
    cfg = D3HRConfig(candidates=500, candidate_batch=100)
    group, score = best_group(mean, std, 5, cfg, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    others = group_scores(mean + std * torch.randn((200, 5, 32), generator=g), mean, std, cfg.skew_weight)
    assert score == pytest.approx(float(group_scores(group[None], mean, std, cfg.skew_weight)[0]), rel=1e-5)
    assert score <= float(others.min()) or (others > score).float().mean() > 0.95


def test_d3hr_inverts_a_class_once_and_reads_its_statistics_back_for_other_sets(tiny_backend, tiny_model_dir, tmp_path, monkeypatch):
    import dsco.methods.d3hr as d3hr
    from dsco.models.pixel import PixelBackend

    z0 = torch.rand(6, 1, 8, 8) * 2 - 1
    calls = []
    invert = d3hr.ddim_invert
    monkeypatch.setattr(d3hr, "ddim_invert", lambda *a, **k: calls.append(1) or invert(*a, **k))
    mean, std, first = d3hr.inverted_statistics(tiny_backend, z0, 1, 2, str(tmp_path / "c"))
    again_mean, again_std, again = d3hr.inverted_statistics(tiny_backend, z0, 1, 2, str(tmp_path / "c"))
    assert len(calls) == 1 and not first["inversion_cached"] and again["inversion_cached"]
    assert torch.equal(mean, again_mean) and torch.equal(std, again_std)
    assert again["reused_seconds"] == pytest.approx(first["inversion_seconds"])
    direct = invert(tiny_backend, z0, 1, 2).flatten(1).double()
    assert torch.allclose(mean, direct.mean(0).float()) and torch.allclose(std, direct.std(0).float())
    # another class, start step, sample set or guidance scale is inverted anew
    other_guidance = PixelBackend.load(tiny_model_dir, num_steps=5, guidance=3.0)
    for args in ((tiny_backend, z0, 0, 2), (tiny_backend, z0, 1, 3), (tiny_backend, z0[:5], 1, 2), (other_guidance, z0, 1, 2)):
        d3hr.inverted_statistics(*args, str(tmp_path / "c"))
    assert len(calls) == 5


def test_mgd3_guidance_stops_at_the_named_step(tiny_backend, monkeypatch):
    import dsco.methods.mgd3 as mgd3

    calls = []
    pull = mgd3.pull_to_mode
    monkeypatch.setattr(mgd3, "pull_to_mode", lambda mu, x, m, w, s: calls.append(w) or pull(mu, x, m, w, s))
    modes = torch.randn(2, 1, 8, 8)
    _, guided = mode_guided_sample(tiny_backend, 1, modes, MGD3Config(stop_fraction=0.6), torch.Generator().manual_seed(0))
    weights = [tiny_backend.schedule.posterior_weights(t) for t in tiny_backend.timesteps[:3]]
    assert guided == [0, 1, 2] and calls == weights  # the mode is consulted on the first 3 of 5 steps only


def test_mgd3_without_a_pull_is_plain_ancestral_sampling(tiny_backend):
    modes = torch.randn(2, 1, 8, 8)
    z, _ = mode_guided_sample(tiny_backend, 1, modes, MGD3Config(scale=0.0), torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn((2, 1, 8, 8), generator=g)
    noise = torch.randn((5, 2, 1, 8, 8), generator=g)
    assert torch.allclose(z, ancestral_sample(tiny_backend, torch.tensor([1, 1]), x_T, noise))


def test_mgd3_pulls_the_samples_towards_their_modes(tiny_backend):
    modes = torch.rand((2, 1, 8, 8), generator=torch.Generator().manual_seed(3)) * 1.6 - 0.8
    free, _ = mode_guided_sample(tiny_backend, 1, modes, MGD3Config(scale=0.0), torch.Generator().manual_seed(0))
    pulled, _ = mode_guided_sample(tiny_backend, 1, modes, MGD3Config(scale=0.5, stop_fraction=1.0), torch.Generator().manual_seed(0))
    assert (pulled - modes).norm() < 0.5 * (free - modes).norm()


def test_igd_guides_only_inside_its_window_and_raises_its_objective(tiny_backend, tiny_set):
    from dsco.methods.igd import class_gradients, guidance_objective, influence_guided_sample, train_surrogate

    cfg = IGDConfig(surrogate_steps=6, checkpoints=2, window=(0.2, 0.6), scale=0.2)
    nets = train_surrogate(tiny_set, cfg, 0)
    targets = class_gradients(nets, tiny_set.images[tiny_set.labels == 1], 1)
    _, applied = influence_guided_sample(tiny_backend, 1, 3, nets, targets, cfg, torch.Generator().manual_seed(0), 1)
    assert [a > 0 for a in applied] == [False, True, True, False, False]  # steps 1-2 of 5: the window 0.2-0.6
    x = torch.rand(3, 1, 8, 8, requires_grad=True)
    obj = guidance_objective(x, 1, nets, targets, cfg.deviation)
    g = torch.autograd.grad(obj, x)[0]
    moved = (x + 0.01 * g / g.norm()).detach()
    assert guidance_objective(moved, 1, nets, targets, cfg.deviation) > obj.detach()


def test_minimax_fine_tuning_lowers_its_objective_and_is_cached(tiny_backend, tiny_set, tmp_path):
    import torch.nn.functional as F

    from dsco.methods.minimax import fine_tune, minimax_loss, tuned_backend

    data, labels = tiny_backend.encode(tiny_set.images), tiny_set.labels
    cfg = MinimaxConfig(steps=60, batch_size=16, lr=2e-3, cache=str(tmp_path / "c"))
    g = torch.Generator().manual_seed(9)
    noise, t = torch.randn(data.shape, generator=g), torch.randint(1000, (len(data),), generator=g)
    a = tiny_backend.schedule.alphas_cumprod.float()[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * data + (1 - a).sqrt() * noise
    real = {c: F.normalize(data[labels == c].flatten(1), dim=1) for c in range(3)}

    def objective(backend) -> float:
        with torch.no_grad():
            eps = backend.train_eps(x_t, t, labels)
            return float(minimax_loss(eps, noise, (x_t - (1 - a).sqrt() * eps) / a.sqrt(), labels, real, {}, cfg))

    net, losses = fine_tune(tiny_backend, data, labels, cfg, torch.Generator().manual_seed(0))
    assert objective(tiny_backend.with_denoiser(net)) < objective(tiny_backend)
    first, made = tuned_backend(tiny_backend, data, labels, cfg, 0)
    assert len(list((tmp_path / "c").glob("*.safetensors"))) == 1
    again, read = tuned_backend(tiny_backend, data, labels, cfg, 0)  # from the cache: the same weights
    assert not made["fine_tune_cached"] and read["fine_tune_cached"]
    assert read["reused_seconds"] == pytest.approx(made["fine_tune_seconds"], abs=1e-3)
    assert all(torch.equal(p, q) for p, q in zip(first.denoiser.parameters(), again.denoiser.parameters()))


def test_d3hr_group_score_is_mean_std_and_adjusted_skewness_distances():
    g = torch.Generator().manual_seed(4)
    groups, mean, std = torch.randn((7, 5, 40), generator=g).double() * 1.3 + 0.2, torch.randn(40).double(), torch.rand(40).double() + 0.5
    d = 40
    expected = []
    for grp in groups:
        skews = []
        for x in grp:  # the adjusted Fisher-Pearson skewness of one sample's values
            m = x.mean()
            s = ((x - m) ** 2).sum().div(d - 1).sqrt()
            skews.append(d / ((d - 1) * (d - 2)) * (((x - m) / s) ** 3).sum())
        expected.append((grp.mean(0) - mean).norm() + (grp.std(0) - std).norm() + 0.1 * torch.stack(skews).norm())
    assert torch.allclose(group_scores(groups, mean, std, 0.1), torch.stack(expected))


def test_d3hr_scores_a_group_of_one_without_its_undefined_std():
    mean, std = torch.zeros(16), torch.ones(16)
    group, score = best_group(mean, std, 1, D3HRConfig(candidates=20, candidate_batch=8), torch.Generator().manual_seed(0))
    assert group.shape == (1, 16) and score == score  # finite, not NaN

"""dsco's defaults compute what the originals compute (issue 13): facebookresearch/DiT's sampler and model
constants, and the authors' NOpt / data-free definitions. Each expectation is written here from the published
equations, independently of dsco's code."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dsco.datafree import DataFreeConfig, datafree_loss
from dsco.features import RandomFeatureNet
from dsco.models.diffusion import ancestral_sample
from dsco.models.latent import LatentBackend, alphas_cumprod_from, dit_timesteps
from dsco.models.loading import load_backend
from dsco.nopt import (NOptConfig, feature_std, latin_hypercube_normal, nopt_class, noised_targets,
                       stratified_target_noise, target_noising_plan)

from test_latent import DEPTH, LATENT, dit_style_checkpoint, tiny_dit, tiny_vae

# ---- DiT's definitions, from the DiT paper's code description ---------------------------------------------------


def space_timesteps(num_timesteps: int, count: int) -> list[int]:
    """DiT's respacing with one section: a fractional stride accumulated from 0, each position rounded."""
    stride = 1 if count <= 1 else (num_timesteps - 1) / (count - 1)
    position, steps = 0.0, []
    for _ in range(count):
        steps.append(start := round(position))
        position += stride
    assert start <= num_timesteps - 1
    return sorted(set(steps))


def dit_frequency_embedding(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """[cos(t f_i), sin(t f_i)] with f_i = 10000^(-i / half), i = 0..half-1."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


def pos_embed_2d(dim: int, grid: int) -> np.ndarray:
    """DiT's fixed 2-D sin-cos position table: half the channels from each grid coordinate."""
    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    return np.concatenate([one_d(dim // 2, gw), one_d(dim // 2, gh)], axis=1)


WIDTH, HEADS, PATCH = 384, 6, 2  # DiT-S's width, so no --num-heads is needed


def original_checkpoint() -> dict[str, torch.Tensor]:
    """A random DiT-S-width state dict in the original code's key names, with DiT's fixed position table;
    the variance biases push |v| past 1."""
    sd = dit_style_checkpoint(seed=3, hidden=WIDTH, scale=0.05)
    sd["pos_embed"] = torch.from_numpy(pos_embed_2d(WIDTH, LATENT // PATCH)).float().unsqueeze(0)
    sd["final_layer.linear.bias"].view(PATCH * PATCH, 8)[:, 4:] = torch.tensor([1.2, -1.3, 0.3, 1.1])
    return sd


def dit_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """DiT (adaLN-Zero blocks) written from the paper's equations on the original state dict."""
    h, p, n = WIDTH, PATCH, len(x)
    lin = lambda v, k: F.linear(v, sd[k + ".weight"], sd[k + ".bias"])  # noqa: E731
    ln = lambda v: F.layer_norm(v, (h,), eps=1e-6)  # noqa: E731
    modulate = lambda v, shift, scale: v * (1 + scale[:, None]) + shift[:, None]  # noqa: E731
    tokens = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=p).flatten(2).transpose(1, 2)
    tokens = tokens + sd["pos_embed"]
    c = lin(F.silu(lin(dit_frequency_embedding(t), "t_embedder.mlp.0")), "t_embedder.mlp.2")
    c = c + sd["y_embedder.embedding_table.weight"][y]
    hd = h // HEADS
    for i in range(DEPTH):
        b = f"blocks.{i}."
        s_msa, sc_msa, g_msa, s_mlp, sc_mlp, g_mlp = lin(F.silu(c), b + "adaLN_modulation.1").chunk(6, dim=1)
        a = modulate(ln(tokens), s_msa, sc_msa)
        q, k, v = lin(a, b + "attn.qkv").reshape(n, -1, 3, HEADS, hd).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hd), -1) @ v
        tokens = tokens + g_msa[:, None] * lin(att.transpose(1, 2).reshape(n, -1, h), b + "attn.proj")
        m = modulate(ln(tokens), s_mlp, sc_mlp)
        tokens = tokens + g_mlp[:, None] * lin(F.gelu(lin(m, b + "mlp.fc1"), approximate="tanh"), b + "mlp.fc2")
    shift, scale = lin(F.silu(c), "final_layer.adaLN_modulation.1").chunk(2, dim=1)
    out = lin(modulate(ln(tokens), shift, scale), "final_layer.linear")
    g = LATENT // p
    out = out.reshape(n, g, g, p, p, 8).permute(0, 5, 1, 3, 2, 4)
    return out.reshape(n, 8, LATENT, LATENT)


def dit_ddpm(sd, x_T: torch.Tensor, label: int, noise: torch.Tensor, steps: int = 50, scale: float = 4.0) -> torch.Tensor:
    """DiT's ancestral sampler: respaced linear-beta DDPM, learned-range variance, guidance on eps[:, :3]."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    abar_full = np.cumprod(1 - betas)
    kept = space_timesteps(1000, steps)
    new_betas, last = [], 1.0
    for i in kept:
        new_betas.append(1 - abar_full[i] / last)
        last = abar_full[i]
    b = np.array(new_betas)
    abar = np.cumprod(1 - b)
    abar_prev = np.append(1.0, abar[:-1])
    post_var = b * (1 - abar_prev) / (1 - abar)
    post_log_var = np.log(np.append(post_var[1], post_var[1:]))
    coef1, coef2 = b * np.sqrt(abar_prev) / (1 - abar), (1 - abar_prev) * np.sqrt(1 - b) / (1 - abar)
    x, n = x_T.clone(), len(x_T)
    y = torch.tensor([label] * n + [1000] * n)
    for k, i in enumerate(reversed(range(len(kept)))):
        out = dit_forward(sd, torch.cat([x, x]), torch.full((2 * n,), kept[i]), y)
        cond, uncond = out[:n], out[n:]
        eps = torch.cat([uncond[:, :3] + scale * (cond[:, :3] - uncond[:, :3]), cond[:, 3:4]], 1)
        frac = (cond[:, 4:] + 1) / 2
        log_var = frac * math.log(b[i]) + (1 - frac) * post_log_var[i]
        x0 = math.sqrt(1 / abar[i]) * x - math.sqrt(1 / abar[i] - 1) * eps
        mean = coef1[i] * x0 + coef2[i] * x
        x = mean + (torch.exp(0.5 * log_var) * noise[k] if i != 0 else 0)
    return x


def write_vae(path: Path) -> str:
    tiny_vae().save_pretrained(str(path))
    return str(path)


# ---- the DiT backend ------------------------------------------------------------------------------------------


def test_respacing_is_dits_space_timesteps_for_every_step_count():
    for s in range(1, 1001):
        assert list(dit_timesteps(1000, s)) == sorted(space_timesteps(1000, s), reverse=True), s
    assert dit_timesteps(1000, 1) == (0,)
    assert 499 in dit_timesteps(1000, 21) and 500 not in dit_timesteps(1000, 21)  # a tie at .5, rounded to even


def test_timestep_embedding_and_layer_norm_eps_are_dits_by_default():
    backend = LatentBackend(tiny_dit(), tiny_vae(), alphas_cumprod_from({}), num_steps=5, device="cpu")
    t = torch.tensor([0, 1, 17, 500, 999])
    for block in backend.transformer.transformer_blocks:
        assert torch.allclose(block.norm1.emb.time_proj(t), dit_frequency_embedding(t), atol=1e-6)
        assert block.norm3.eps == 1e-6 and block.norm1.norm.eps == 1e-6
    diffusers_like = LatentBackend(tiny_dit(), tiny_vae(), alphas_cumprod_from({}), num_steps=5, device="cpu",
                                   embedding="diffusers")
    emb = diffusers_like.transformer.transformer_blocks[0].norm1.emb.time_proj(t)
    assert not torch.allclose(emb, dit_frequency_embedding(t), atol=1e-3)


def test_guidance_defaults_to_dits_three_channels():
    backend = LatentBackend(tiny_dit(), tiny_vae(), alphas_cumprod_from({}), num_steps=5, device="cpu")
    assert backend.guidance_channels == 3


def test_learned_variance_is_used_unclamped(monkeypatch):
    backend = LatentBackend(tiny_dit(), tiny_vae(), alphas_cumprod_from({}), num_steps=5, device="cpu")
    x, t = torch.randn(2, 4, 8, 8), backend.timesteps[1]
    v = torch.full_like(x, 3.0)
    monkeypatch.setattr(backend, "model_output", lambda *_: (torch.zeros_like(x), v))
    _, sigma = backend.mean_sigma(x, t, torch.tensor([1, 2]))
    beta, post = backend.schedule.step_variances(t)
    expected = math.exp(0.5 * (2 * math.log(beta) - math.log(post)))  # frac = (3 + 1) / 2 = 2
    assert torch.allclose(sigma, torch.full_like(sigma, expected), rtol=1e-5)


def test_a_dit_checkpoint_samples_exactly_as_dits_own_sampler(tmp_path):
    sd = original_checkpoint()
    ckpt = tmp_path / "DiT-S-tiny.pt"
    torch.save(sd, ckpt)
    backend = load_backend(ckpt, vae=write_vae(tmp_path / "vae"), device="cpu")
    g = torch.Generator().manual_seed(0)
    x_T, noise = torch.randn(2, 4, LATENT, LATENT, generator=g), torch.randn(50, 2, 4, LATENT, LATENT, generator=g)
    with torch.no_grad():
        ours = ancestral_sample(backend, torch.tensor([7, 7]), x_T, noise)
        theirs = dit_ddpm(sd, x_T, 7, noise)
    # random weights make large latents; float32 rounding through 50 steps stays ~1e-6 of their scale, while
    # diffusers' embedding or 4-channel guidance moves them by ~0.2 of it
    assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max(), (ours - theirs).abs().max()


def test_an_unknown_dit_width_needs_num_heads(tmp_path):
    from dsco.errors import DscoError
    from dsco.models.latent import dit_config_from_checkpoint

    with pytest.raises(DscoError, match="width 16 is not a DiT-S/B/L/XL width .*--num-heads"):
        dit_config_from_checkpoint(dit_style_checkpoint())
    assert dit_config_from_checkpoint(dit_style_checkpoint(), num_heads=2)["num_attention_heads"] == 2


# ---- the authors' NOpt and data-free definitions -------------------------------------------------------------


def test_feature_net_uses_pytorchs_default_leaky_slope():
    phi = RandomFeatureNet(4, 16, seed=0)
    slopes = {m.negative_slope for m in phi.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.01}
    assert not isinstance(list(phi.body)[-1], torch.nn.LeakyReLU)  # no activation after the last convolution


def test_target_noise_is_standard_normal_with_five_strata():
    noise = stratified_target_noise(400, 5, (4, 8, 8), torch.Generator().manual_seed(0))
    assert abs(noise.pow(2).mean().item() - 1) < 0.01 and abs(noise.mean().item()) < 0.01
    u = torch.special.ndtr(noise[:, 7].flatten(1).double())  # target 7's five draws, per dimension
    assert all(sorted(torch.floor(u[:, d] * 5).long().tolist()) == [0, 1, 2, 3, 4] for d in range(u.shape[1]))


def test_target_noise_in_chunks_equals_one_hypercube_per_target():
    # the chunked form (sorting and ndtri batched, on the targets' device) draws the same stream in the same order
    for m, k, chunk in [(37, 5, 16), (3, 1, 16), (20, 2, 7)]:
        g = torch.Generator().manual_seed(m)
        per_target = torch.stack([latin_hypercube_normal(k, (2, 3, 3), g, midpoints=False) for _ in range(m)], 1)
        assert torch.equal(stratified_target_noise(m, k, (2, 3, 3), torch.Generator().manual_seed(m), chunk=chunk), per_target)


def test_x_T_stays_on_the_stratum_midpoints():
    x = latin_hypercube_normal(5, (3,), torch.Generator().manual_seed(0))
    expected = torch.special.ndtri((torch.arange(5, dtype=torch.float64) + 0.5) / 5).float()
    assert all(torch.allclose(x[:, d].sort().values, expected) for d in range(3))


def test_target_features_are_standardised_by_the_population_std():
    f = torch.randn(7, 5)
    assert torch.allclose(feature_std(f), f.std(0, unbiased=False))


@pytest.mark.parametrize("m,k,n", [(7, 5, 10), (3, 5, 50), (2, 1, 5), (13, 5, 10), (1, 5, 1)])
def test_noised_targets_fill_equal_pivot_blocks(m, k, n):
    draws, extra = target_noising_plan(m, k, n, torch.Generator().manual_seed(0))
    assert draws >= k and m * draws >= n and (m * draws + len(extra)) % n == 0
    assert (m * draws) // n * n == m * draws or len(extra) < n  # the fewest extras that even the blocks
    backend = LatentBackend(tiny_dit(), tiny_vae(), alphas_cumprod_from({}), num_steps=5, device="cpu")
    z = noised_targets(backend, torch.randn(m, 4, 8, 8), backend.timesteps[1], n, k, torch.Generator().manual_seed(1))
    assert len(z) == m * draws + len(extra) and len(z) % n == 0


def test_fewer_targets_than_the_ipc_get_more_noisings_not_an_error():
    backend = LatentBackend(tiny_dit(), tiny_vae(), alphas_cumprod_from({}), num_steps=3, device="cpu")
    cfg = NOptConfig(iterations=2, feature_width=16)
    z, _ = nopt_class(backend, 1, torch.randn(1, 4, 8, 8), 7, cfg, torch.Generator().manual_seed(0), 0)
    assert z.shape == (7, 4, 8, 8) and torch.isfinite(z).all()


def test_data_free_loss_masks_self_similarity_like_the_reference():
    cfg = DataFreeConfig()
    h1, eps1 = torch.randn(1, 8, 2, 2), torch.randn(1, 16)
    per_c = h1.transpose(0, 1).flatten(1)
    moments = (per_c.mean(1).abs() + per_c.mean(1) ** 2).sum()
    sd = per_c.std(1, unbiased=False) - 1
    moments = moments + (sd.abs() + sd ** 2).sum()
    norm = (eps1.norm(dim=1) - 4).abs() + (eps1.norm(dim=1) - 4) ** 2
    expected = norm.sum() + 10 * -100.0 + 1e-3 * 4 * moments  # a lone sample's diversity is the -100 mask
    assert torch.allclose(datafree_loss(h1, eps1, cfg), expected, rtol=1e-5)


def test_our_std_floor_is_an_option_recorded_in_the_manifest(tmp_path, folder, tiny_model_dir):
    from dsco.cli import main
    from dsco.outputset import read_manifest

    assert main(["concentrate", "--dataset", str(folder), "--model", str(tiny_model_dir), "--ipc", "2", "--sampling-steps", "3",
                 "--iterations", "1", "--feature-width", "16", "--std-floor", "0.1", "--out", str(tmp_path / "o")]) == 0
    assert read_manifest(tmp_path / "o")["config"]["nopt"]["std_floor"] == 0.1
    f = torch.randn(50, 8)
    f[:, 0] = 1.0
    assert feature_std(f, 0.1)[0] > 0 and feature_std(f)[0] == 0

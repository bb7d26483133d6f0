"""The DiT + VAE backend, its loaders and the ImageNet class index, with tiny random models of the same classes."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DiTPipeline, DiTTransformer2DModel
from PIL import Image

from dsco.orchestrate import ConcentrateConfig, concentrate, model_labels
from dsco.data import load_dataset
from dsco.data.imagenet import IMAGENETTE, IMAGEWOOF, wnid_to_label
from dsco.errors import DscoError
from dsco.features import RandomFeatureNet
from dsco.mmd import mmd2
from dsco.models.latent import (
    LatentBackend, alphas_cumprod_from, convert_dit_checkpoint, dit_config_from_checkpoint, dit_timesteps,
    save_dit, transformer_from_checkpoint,
)
from dsco.models.loading import load_backend
from dsco.nopt import NOptConfig, norm_loss, optimise_noise, pivots, quantile_loss, standardise
from dsco.outputset import read_manifest, verify

HIDDEN, DEPTH, LATENT, IMAGE = 16, 2, 8, 16


def tiny_dit() -> DiTTransformer2DModel:
    torch.manual_seed(0)
    return DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                 num_layers=DEPTH, sample_size=LATENT, patch_size=2, num_embeds_ada_norm=1000)


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(1)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                         norm_num_groups=8, sample_size=IMAGE)


@pytest.fixture
def dit_dir(tmp_path: Path) -> Path:
    save_dit(tiny_dit(), tiny_vae(), tmp_path / "dit")
    return tmp_path / "dit"


@pytest.fixture
def backend() -> LatentBackend:
    return LatentBackend(tiny_dit(), tiny_vae(), alphas_cumprod_from({}), num_steps=5, device="cpu")


def dit_style_checkpoint(seed: int = 0, hidden: int = HIDDEN, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """A random state dict with the original DiT code's key names, `hidden` wide, DEPTH blocks, LATENT x LATENT latents."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: scale * torch.randn(*s, generator=g)  # noqa: E731
    h, p = hidden, 2
    sd = {"x_embedder.proj.weight": r(h, 4, p, p), "x_embedder.proj.bias": r(h),
          "t_embedder.mlp.0.weight": r(h, 256), "t_embedder.mlp.0.bias": r(h),
          "t_embedder.mlp.2.weight": r(h, h), "t_embedder.mlp.2.bias": r(h),
          "y_embedder.embedding_table.weight": r(1001, h), "pos_embed": r(1, (LATENT // p) ** 2, h),
          "final_layer.linear.weight": r(p * p * 8, h), "final_layer.linear.bias": r(p * p * 8),
          "final_layer.adaLN_modulation.1.weight": r(2 * h, h), "final_layer.adaLN_modulation.1.bias": r(2 * h)}
    for i in range(DEPTH):
        b = f"blocks.{i}."
        sd.update({b + "attn.qkv.weight": r(3 * h, h), b + "attn.qkv.bias": r(3 * h),
                   b + "attn.proj.weight": r(h, h), b + "attn.proj.bias": r(h),
                   b + "mlp.fc1.weight": r(4 * h, h), b + "mlp.fc1.bias": r(4 * h),
                   b + "mlp.fc2.weight": r(h, 4 * h), b + "mlp.fc2.bias": r(h),
                   b + "adaLN_modulation.1.weight": r(6 * h, h), b + "adaLN_modulation.1.bias": r(6 * h)})
    return sd


def test_dit_respacing_keeps_both_ends_like_dit():
    ts = dit_timesteps(1000, 50)
    assert len(ts) == 50 and ts[0] == 999 and ts[-1] == 0 and list(ts) == sorted(ts, reverse=True)


def test_shapes_through_encode_denoise_decode(backend):
    images = torch.rand(2, 3, IMAGE, IMAGE)
    z = backend.encode(images)
    assert z.shape == (2, 4, LATENT, LATENT) and backend.sample_shape == (4, LATENT, LATENT)
    y = torch.tensor([3, 7])
    t = backend.timesteps[0]
    mu, sigma = backend.mean_sigma(backend.q_sample(z, t, torch.randn_like(z)), t, y)
    assert mu.shape == z.shape and sigma.shape == z.shape
    assert (sigma > 0).all()
    _, last_sigma = backend.mean_sigma(mu, backend.timesteps[-1], y)
    assert float(last_sigma.max()) == 0.0
    out = backend.decode(mu)
    assert out.shape == (2, 3, IMAGE, IMAGE) and 0 <= out.min() and out.max() <= 1


def test_guidance_on_some_channels_leaves_the_others_conditional(backend):
    x, y, t = torch.randn(2, 4, LATENT, LATENT), torch.tensor([1, 2]), backend.timesteps[1]
    backend.guidance_channels = 4
    eps_all, _ = backend.model_output(x, t, y)
    backend.guidance_channels = 3
    eps_three, _ = backend.model_output(x, t, y)
    backend.guidance = 1.0
    eps_cond, _ = backend.model_output(x, t, y)
    assert torch.allclose(eps_three[:, :3], eps_all[:, :3]) and torch.allclose(eps_three[:, 3], eps_cond[:, 3], atol=1e-6)


def test_one_nopt_step_lowers_mmd_to_the_real_latents(backend):
    g = torch.Generator().manual_seed(0)
    real = backend.encode(torch.rand(12, 3, IMAGE, IMAGE, generator=g))
    t = backend.timesteps[1]
    phi = RandomFeatureNet(4, 16, seed=0)
    target = phi(backend.q_sample(real, t, torch.randn(real.shape, generator=g)))
    m, s = target.mean(0), target.std(0) + 1e-3
    x_t = torch.randn(4, 4, LATENT, LATENT, generator=g)
    mu, sigma = backend.mean_sigma(x_t, t, torch.full((4,), 5))
    eps0 = torch.randn(x_t.shape, generator=g)
    piv = pivots(standardise(target, m, s), 4)
    loss = lambda x, eps: quantile_loss(standardise(phi(x), m, s), piv, 5e-4) + norm_loss(eps)  # noqa: E731
    eps, rec = optimise_noise(loss, mu, sigma, eps0, NOptConfig(iterations=20, lr=0.1), t, "5")
    wide = (64.0, 256.0, 1024.0)  # the random tiny DiT lands far from the data: wide kernels see the distance
    dist = lambda e: mmd2(standardise(phi(mu + sigma * e), m, s), standardise(target, m, s), wide).item()  # noqa: E731
    assert dist(eps) < dist(eps0) and rec.loss_last < rec.loss_first


def test_diffusers_directory_round_trip(dit_dir, backend):
    assert {"transformer", "vae", "scheduler"} <= {p.name for p in dit_dir.iterdir()}
    DiTPipeline.from_pretrained(dit_dir)  # what the users' own diffusers code reads
    loaded = load_backend(dit_dir, num_steps=5, device="cpu")
    assert isinstance(loaded, LatentBackend) and loaded.guidance == 4.0 and loaded.num_classes == 1000
    for a, b in ((loaded.transformer, backend.transformer), (loaded.vae, backend.vae)):
        assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    x, y, t = torch.randn(1, 4, LATENT, LATENT), torch.tensor([9]), backend.timesteps[0]
    assert torch.allclose(loaded.mean_sigma(x, t, y)[0], backend.mean_sigma(x, t, y)[0], atol=1e-5)


def test_original_checkpoint_converter_maps_every_key(tmp_path):
    sd = dit_style_checkpoint()
    cfg = dit_config_from_checkpoint(sd, num_heads=2)
    assert cfg["num_layers"] == DEPTH and cfg["sample_size"] == LATENT and cfg["out_channels"] == 8
    assert cfg["num_embeds_ada_norm"] == 1000
    model = DiTTransformer2DModel(**cfg)
    converted = convert_dit_checkpoint(sd)
    assert set(converted) == set(model.state_dict())  # every diffusers key filled, nothing extra
    model.load_state_dict(converted, strict=True)
    q, k, v = sd["blocks.1.attn.qkv.weight"].chunk(3)
    assert torch.equal(converted["transformer_blocks.1.attn1.to_k.weight"], k)
    assert torch.equal(converted["transformer_blocks.1.norm1.emb.timestep_embedder.linear_2.weight"], sd["t_embedder.mlp.2.weight"])
    torch.save({"model": sd, "ema": sd}, tmp_path / "DiT-tiny.pt")  # DiT training checkpoints hold model + ema
    assert transformer_from_checkpoint(tmp_path / "DiT-tiny.pt", num_heads=2).config.num_layers == DEPTH


def test_checkpoint_with_an_unknown_or_missing_key_is_refused():
    sd = dit_style_checkpoint()
    with pytest.raises(DscoError, match="does not know"):
        convert_dit_checkpoint({**sd, "blocks.0.extra.weight": torch.zeros(1)})
    del sd["blocks.1.mlp.fc2.bias"]
    with pytest.raises(DscoError, match="missing key 'blocks.1.mlp.fc2.bias'"):
        convert_dit_checkpoint(sd)


def test_imagenette_and_imagewoof_map_to_their_imagenet_labels(tmp_path, backend):
    assert [wnid_to_label(w) for w in IMAGENETTE] == [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]
    assert [wnid_to_label(w) for w in IMAGEWOOF] == [155, 159, 162, 167, 182, 193, 207, 229, 258, 273]
    for wnid in IMAGENETTE:
        (tmp_path / "train" / wnid).mkdir(parents=True)
        Image.fromarray(np.full((20, 24, 3), 99, np.uint8)).save(tmp_path / "train" / wnid / "a.JPEG")
    ds = load_dataset("imagenette", "train", data_root=str(tmp_path), image_size=IMAGE)
    assert ds.class_names == list(IMAGENETTE) and ds.image_shape == (3, IMAGE, IMAGE) and len(ds) == 10
    assert model_labels(ds.class_names, backend, None)[-1] == 701
    with pytest.raises(DscoError, match="n02086240 is missing"):
        load_dataset("imagewoof", "train", data_root=str(tmp_path))


def test_folders_that_are_not_wnids_need_a_class_map(tmp_path, backend):
    with pytest.raises(DscoError, match="--class-map"):
        model_labels(["cat", "dog"], backend, None)
    (tmp_path / "map.json").write_text(json.dumps({"cat": 281, "dog": 207}))
    assert model_labels(["cat", "dog"], backend, str(tmp_path / "map.json")) == [281, 207]
    (tmp_path / "bad.json").write_text(json.dumps({"cat": 281}))
    with pytest.raises(DscoError, match="no label for class 'dog'"):
        model_labels(["cat", "dog"], backend, str(tmp_path / "bad.json"))


def test_dsco_on_a_dit_caches_real_latents_and_never_reencodes(tmp_path, dit_dir, monkeypatch):
    for label, wnid in enumerate(IMAGEWOOF[:2]):
        (tmp_path / "data" / wnid).mkdir(parents=True)
        for i in range(4):
            arr = np.random.default_rng(label * 10 + i).integers(0, 255, (IMAGE, IMAGE, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / "data" / wnid / f"{i}.png")
    nopt = NOptConfig(iterations=2, feature_width=16, k_noises=1)
    cfg = lambda out: ConcentrateConfig(dataset=str(tmp_path / "data"), out=str(tmp_path / out), ipc=2, model=str(dit_dir),  # noqa: E731
                                        sampling_steps=3, nopt=nopt, latent_cache=str(tmp_path / "cache"), device="cpu")
    out = concentrate(cfg("a"), progress=False)
    assert verify(out) == [] and read_manifest(out)["counts"] == [2, 2]
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 2
    monkeypatch.setattr(LatentBackend, "encode", lambda *a: pytest.fail("real images were encoded again"))
    again = concentrate(cfg("b"), progress=False)
    assert [e["sha256"] for e in read_manifest(again)["images"]] == [e["sha256"] for e in read_manifest(out)["images"]]


def load_benchmark(name: str):
    """A script from benchmarks/ as a module (benchmarks/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_throughput_benchmark_runs_on_a_tiny_model(tmp_path):
    load_benchmark("gpu_throughput").main(["--tiny", "--device", "cpu", "--ipc", "2", "--methods", "plain,ddim,nopt-short",
              "--dtypes", "fp32", "--class-batch", "2", "--targets", "8", "--out", str(tmp_path / "r.json")])
    r = json.loads((tmp_path / "r.json").read_text())
    assert [c["variant"] for c in r["results"]] == ["plain", "ddim", "nopt-short"] and all(c["images_per_second"] > 0 for c in r["results"])
    plain, _, nopt = r["results"]
    assert plain["class_batch"] == plain["classes"] == 2
    assert nopt["ratio_to_plain"] == round(plain["images_per_second"] / nopt["images_per_second"], 2)
    flops = r["flops"]  # counted on the model: a guided call is two forward passes
    assert flops["sampling_per_image"] == flops["guided_call_per_image"] * flops["steps"] > 0


def test_gpu_throughput_runs_registry_methods_batching_the_classes_of_those_that_batch(tmp_path):
    load_benchmark("gpu_throughput").main(["--tiny", "--device", "cpu", "--ipc", "2", "--methods", "d4m,minimax,igd", "--dtypes", "fp32",
              "--classes", "2", "--targets", "8", "--out", str(tmp_path / "r.json")])
    d4m, minimax, igd = json.loads((tmp_path / "r.json").read_text())["results"]
    assert d4m["variant"] == "d4m" and len(d4m["batch_seconds"]) == 2 and d4m["images_per_second"] > 0
    assert minimax["batch_seconds"][0] > minimax["batch_seconds"][1]  # the fine-tuning is paid by the first class only
    load_benchmark("gpu_throughput").main(["--tiny", "--device", "cpu", "--ipc", "2", "--methods", "d4m,igd", "--dtypes", "fp32",
              "--classes", "2", "--class-batch", "2:2", "--targets", "8", "--out", str(tmp_path / "b.json")])
    d4m, igd = json.loads((tmp_path / "b.json").read_text())["results"]
    assert d4m["class_batch"] == 2 and len(d4m["batch_seconds"]) == 1  # D4M batches its classes
    assert igd["class_batch"] == 1 and len(igd["batch_seconds"]) == 2  # IGD runs one class at a time


def test_step_cost_benchmark_charges_the_reference_schedule_more_than_budget(tmp_path):
    load_benchmark("step_cost").main(["--tiny", "--device", "cpu", "--presets", "short,reference", "--ipc", "2", "--targets", "8",
                                      "--repeats", "1", "--out", str(tmp_path / "r.json")])
    budget, reference = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert 1 < budget["cost_vs_plain_one_class"] < reference["cost_vs_plain_one_class"]
    assert reference["targets_per_step"] == 8 * 5 and budget["targets_per_step"] == 8


def test_convert_dit_command_writes_a_loadable_diffusers_directory(tmp_path, capsys):
    from dsco.cli import main

    torch.save(dit_style_checkpoint(), tmp_path / "DiT-tiny.pt")
    tiny_vae().save_pretrained(tmp_path / "vae")
    main(["convert-dit", str(tmp_path / "DiT-tiny.pt"), "--vae", str(tmp_path / "vae"), "--num-heads", "2",
          "--out", str(tmp_path / "dit")])
    backend = load_backend(tmp_path / "dit", num_steps=3, device="cpu")
    converted = convert_dit_checkpoint(dit_style_checkpoint())
    assert torch.equal(backend.transformer.state_dict()["proj_out_2.weight"], converted["proj_out_2.weight"])
    assert main(["convert-dit", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x")]) == 2
    assert "missing.pt" in capsys.readouterr().err


def test_data_free_on_a_named_imagenet_subset_needs_no_data(tmp_path, backend):
    cfg = ConcentrateConfig(dataset="imagenette", out=str(tmp_path / "df"), method="dsco-datafree", ipc=1,
                            nopt=NOptConfig(iterations=1, feature_width=16), device="cpu")
    cfg.datafree.templates = 2
    m = read_manifest(concentrate(cfg, backend=backend, progress=False))
    assert m["class_names"] == list(IMAGENETTE) and m["counts"] == [1] * 10


def test_bf16_autocast_gives_finite_steps_close_to_fp32(backend):
    x, y, t = torch.randn(2, 4, LATENT, LATENT), torch.tensor([1, 2]), backend.timesteps[1]
    mu32, _ = backend.mean_sigma(x, t, y)
    backend.bf16 = True
    mu16, s16 = backend.mean_sigma(x, t, y)
    assert torch.isfinite(mu16).all() and torch.isfinite(s16).all()
    assert (mu16 - mu32).abs().max() < 0.1 * mu32.abs().max()


def test_checkpoint_with_a_wrongly_shaped_tensor_is_named(tmp_path):
    sd = dit_style_checkpoint()
    sd["blocks.0.mlp.fc1.weight"] = torch.zeros(3 * HIDDEN, HIDDEN)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(DscoError, match="bad.pt does not fit"):
        transformer_from_checkpoint(tmp_path / "bad.pt", num_heads=2)


def test_an_unreachable_hub_id_is_one_clear_error(monkeypatch):
    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(DiTTransformer2DModel, "from_pretrained", offline)
    with pytest.raises(DscoError, match="hub id .*needs internet.* facebook/DiT-XL-2-256"):
        load_backend("facebook/DiT-XL-2-256")


def test_nopt_cost_variants_are_presets_with_typed_knob_overrides():
    nopt_cost = load_benchmark("nopt_cost")
    cfg = nopt_cost.variant_config("short+max_targets=40+steps_fraction=0.6+steps_start=0.4")
    assert (cfg.max_targets, cfg.steps_fraction, cfg.steps_start, cfg.iterations) == (40, 0.6, 0.4, 10)
    assert nopt_cost.variant_config("reference") == NOptConfig()
    with pytest.raises(SystemExit, match="unknown NOpt knob"):
        nopt_cost.variant_config("short+speed=9")


def test_a_dit_with_latents_too_small_for_the_feature_net_is_refused_up_front(tmp_path, capsys):
    from dsco.cli import main

    torch.manual_seed(0)
    small = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                  num_layers=1, sample_size=4, patch_size=2, num_embeds_ada_norm=1000)
    save_dit(small, tiny_vae(), tmp_path / "dit4")
    for wnid in IMAGEWOOF[:2]:
        (tmp_path / "data" / wnid).mkdir(parents=True)
        Image.fromarray(np.zeros((IMAGE, IMAGE, 3), dtype=np.uint8)).save(tmp_path / "data" / wnid / "0.png")
    rc = main(["concentrate", "--dataset", str(tmp_path / "data"), "--model", str(tmp_path / "dit4"), "--ipc", "1",
               "--out", str(tmp_path / "out"), "--device", "cpu", "--latent-cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert rc == 2 and "at least 8x8" in err and "4x4" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_dit_classes_batched_get_the_samples_each_gets_alone(backend):
    """On DiT (learned sigma: a per-sample std in each step) the batched NOpt and plain sampler give each class
    what it gets alone, up to float rounding."""
    from dsco.models.diffusion import plain_sample, plain_samples
    from dsco.nopt import nopt_class, nopt_classes

    cfg = NOptConfig(iterations=5, feature_width=16)
    reals = [torch.randn((12, *backend.sample_shape), generator=torch.Generator().manual_seed(c)) for c in range(2)]
    alone = [nopt_class(backend, c + 3, reals[c], 3, cfg, torch.Generator().manual_seed(c), c)[0] for c in range(2)]
    together = nopt_classes(backend, [3, 4], reals, 3, cfg, [torch.Generator().manual_seed(c) for c in range(2)], [0, 1])
    for a, (b, _) in zip(alone, together):
        assert torch.allclose(a, b, atol=2e-3)
    plain = plain_samples(backend, [3, 4], 2, [torch.Generator().manual_seed(c) for c in range(2)])
    for c in range(2):
        assert torch.allclose(plain[c], plain_sample(backend, c + 3, 2, torch.Generator().manual_seed(c)), atol=1e-4)


def test_compile_samples_through_the_compiled_module_and_fine_tunes_the_plain_one(monkeypatch):
    """--compile: sampling calls torch.compile's module (stubbed here: compiling takes a minute on a CPU); a
    fine-tuned copy gets its own compiled module, and training uses the plain one."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m: compiled.append(m) or (lambda *a, **k: m(*a, **k)))
    b = LatentBackend(tiny_dit(), tiny_vae(), alphas_cumprod_from({}), num_steps=3, device="cpu", compile=True)
    assert compiled == [b.transformer]
    b.eps(torch.randn(1, *b.sample_shape), b.timesteps[0], torch.tensor([1]))
    other = b.with_denoiser(tiny_dit())
    assert compiled[-1] is other.transformer and other.transformer is not b.transformer

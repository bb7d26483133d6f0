"""The diffusion-based peers as methods: each writes a valid set on both backends and reuses its cached work.
What each peer computes, pinned against its original's definition, is in test_peer_fidelity.py."""
import numpy as np
import pytest
import torch
from PIL import Image

from dsco.orchestrate import ConcentrateConfig, concentrate
from dsco.kmeans import kmeans
from dsco.methods import D3HRConfig, IGDConfig, MinimaxConfig
from dsco.outputset import read_manifest, verify

from test_latent import IMAGE, tiny_dit, tiny_vae
from dsco.data.imagenet import IMAGEWOOF
from dsco.models.latent import save_dit

PEERS = ["d4m", "d3hr", "mgd3", "igd", "minimax"]
SMALL = {"d3hr": D3HRConfig(candidates=40, candidate_batch=16), "igd": IGDConfig(checkpoint_epochs=(0, 1)),
         "minimax": MinimaxConfig(epochs=1, batch_size=4)}


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




@pytest.mark.parametrize("damage", ["truncate", "flip", "other-key"])
def test_a_damaged_cache_entry_is_reported_and_recomputed(damage, tiny_backend, tmp_path, caplog):
    import dsco.methods.d3hr as d3hr

    z0 = torch.rand(6, 1, 8, 8) * 2 - 1
    mean, std, _ = d3hr.inverted_statistics(tiny_backend, z0, 1, 2, str(tmp_path / "c"))
    (entry,) = (tmp_path / "c").glob("*.safetensors")
    data = bytearray(entry.read_bytes())
    if damage == "truncate":
        entry.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip":
        data[-3] ^= 0xFF  # a byte of the tensors: still a valid file, wrong content
        entry.write_bytes(bytes(data))
    else:  # a sound entry of another key copied over this one
        from dsco.cache import write_entry

        write_entry(tmp_path / "other.safetensors", {"mean": mean + 1, "std": std}, 1.0)
        (tmp_path / "other.safetensors").replace(entry)
    again_mean, again_std, info = d3hr.inverted_statistics(tiny_backend, z0, 1, 2, str(tmp_path / "c"))
    assert not info["inversion_cached"] and torch.equal(again_mean, mean) and torch.equal(again_std, std)
    assert "is damaged" in caplog.text
    _, _, info = d3hr.inverted_statistics(tiny_backend, z0, 1, 2, str(tmp_path / "c"))
    assert info["inversion_cached"]  # the recomputed entry is sound


def test_the_denoiser_is_hashed_once_per_run_not_once_per_class(tiny_backend, monkeypatch):
    from dsco.cache import content_key

    net = tiny_backend.denoiser
    reads = []
    state_dict = net.state_dict
    monkeypatch.setattr(net, "state_dict", lambda *a, **k: reads.append(1) or state_dict(*a, **k))
    keys = {content_key(net, [torch.zeros(2)], {"label": label}) for label in range(3)}
    assert len(keys) == 3 and len(reads) == 1  # a DiT-XL/2's 2.7 GB are read once, not once per class


def test_d3hr_records_where_its_candidates_were_drawn(tmp_path, folder, tiny_model_dir):
    out = concentrate(peer_config("d3hr", dataset=str(folder), out=str(tmp_path / "o"), ipc=2, model=str(tiny_model_dir)),
                      progress=False)
    assert {s["candidate_device"] for s in read_manifest(out)["class_stats"].values()} == {"cpu"}


def test_registering_a_method_name_twice_is_an_error():
    from dsco.methods.base import REGISTRY, Method, register

    class Another(Method):
        name = "d4m"

    with pytest.raises(ValueError, match="'d4m' is already registered"):
        register(Another)
    assert REGISTRY["d4m"].__name__ == "D4M"

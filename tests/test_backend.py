import pickle

import pytest
import torch

from dsco.errors import DscoError
from dsco.models.diffusion import DiffusionBackend, plain_sample
from dsco.models.pixel import PixelBackend, load_pixel_model, save_pixel_model

from conftest import tiny_model_config


def test_pixel_backend_satisfies_the_shape_contract(tiny_backend):
    b = tiny_backend
    assert isinstance(b, DiffusionBackend)
    assert b.num_classes == 3 and b.sample_shape == (1, 8, 8) and len(b.timesteps) == 5
    assert b.timesteps == sorted(b.timesteps, reverse=True) and b.timesteps[0] == 999
    x = torch.randn(4, 1, 8, 8)
    mu, sigma = b.mean_sigma(x, b.timesteps[0], torch.tensor([0, 1, 2, 0]))
    assert mu.shape == x.shape and sigma.ndim == 0 and sigma > 0
    _, last_sigma = b.mean_sigma(x, b.timesteps[-1], torch.zeros(4, dtype=torch.long))
    assert last_sigma == 0
    imgs = torch.rand(2, 1, 8, 8)
    assert torch.allclose(b.decode(b.encode(imgs)), imgs)
    assert b.q_sample(b.encode(imgs), b.timesteps[0], torch.randn(2, 1, 8, 8)).shape == imgs.shape


def test_plain_sampling_is_deterministic_for_a_seed(tiny_backend):
    a = plain_sample(tiny_backend, 1, 3, torch.Generator().manual_seed(0))
    b = plain_sample(tiny_backend, 1, 3, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (3, 1, 8, 8)


def test_checkpoint_of_the_wrong_shape_is_refused(tmp_path):
    cfg = tiny_model_config()
    save_pixel_model(cfg.build(), cfg, tmp_path / "m")
    other = tiny_model_config()
    other.block_out_channels = (16, 16)
    save_pixel_model(other.build(), cfg, tmp_path / "wrong")  # weights of one shape, config of another
    with pytest.raises(DscoError, match="does not match its config"):
        load_pixel_model(tmp_path / "wrong")


def test_model_directory_without_weights_is_named(tmp_path):
    with pytest.raises(DscoError, match="must contain config.json and model.safetensors"):
        PixelBackend.load(tmp_path)


class _RunsCode:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_checkpoint_that_would_run_code_is_refused(folder, tmp_path):
    from dsco.train_model import TrainModelConfig, train_model

    cfg = TrainModelConfig(dataset=str(folder), out=str(tmp_path / "run"), steps=2, batch_size=4, checkpoint_every=2,
                           model=tiny_model_config())
    train_model(cfg, progress=False)
    (tmp_path / "run" / "checkpoint" / "optimizer.pt").write_bytes(pickle.dumps(_RunsCode()))
    cfg.steps, cfg.resume = 4, True
    with pytest.raises(DscoError, match="refusing .*optimizer.pt"):
        train_model(cfg, progress=False)

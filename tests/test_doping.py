import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dsco.methods.selection import SELECTORS
from dsco.doping import DopingConfig, clarity, real_count, select
from dsco.errors import DscoError


def test_clarity_is_one_for_a_confident_model_and_zero_for_a_uniform_one():
    labels = torch.tensor([0, 2])
    assert torch.allclose(clarity(torch.eye(3)[labels], labels), torch.ones(2))
    assert torch.allclose(clarity(torch.full((2, 3), 1 / 3), labels), torch.zeros(2))
    assert clarity(torch.tensor([[0.1, 0.9]]), torch.tensor([0])).item() == pytest.approx(-0.8)


def test_doping_counts_are_exact():
    assert real_count(DopingConfig(doping_ipc=7), 1000, 10, 100) == 70
    assert real_count(DopingConfig(budget=0.3), 4000, 10, 100) == 1100
    with pytest.raises(DscoError, match="smaller than the 100 synthetic"):
        real_count(DopingConfig(budget=0.01), 4000, 10, 100)
    with pytest.raises(DscoError, match="must be > 0"):
        real_count(DopingConfig(doping_ipc=0), 4000, 10, 100)


def test_global_selection_takes_the_lowest_scores_and_classwise_balances():
    scores = torch.tensor([0.9, 0.1, 0.2, 0.8, 0.05, 0.7])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    assert select(scores, labels, 3, 2, classwise=False).tolist() == [1, 2, 4]
    assert select(scores, labels, 4, 2, classwise=True).tolist() == [1, 2, 4, 5]


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(SELECTORS)), st.integers(1, 30), st.integers(1, 5), st.data())
def test_selectors_return_the_right_count_without_duplicates(name, size, dim, data):
    n = data.draw(st.integers(1, size))
    g = torch.Generator().manual_seed(size * 7 + dim)
    feats = torch.randn(size, dim, generator=g)
    idx = SELECTORS[name](feats, n, g)
    assert len(idx) == n and len(set(idx.tolist())) == n and 0 <= idx.min() and idx.max() < size


def test_herding_and_kcenter_pick_the_obvious_points():
    feats = torch.tensor([[0.0], [10.0], [-10.0], [0.1], [5.0]])  # mean 1.02
    assert SELECTORS["herding"](feats, 1).tolist() == [3]  # nearest the mean
    assert SELECTORS["herding"](feats, 3).tolist() == [3, 0, 4]  # running means 0.1, 0.05, 1.7
    assert SELECTORS["kcenter"](feats, 3).tolist() == [3, 2, 1]  # then the two extremes


def test_doping_scores_a_lazy_split_one_class_at_a_time_without_loading_it_whole(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from dsco.data.lazy import LazyImageSet, scan_folder
    from dsco.evaluate import predict_by_class

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * i + (100 if c == "b" else 0), np.uint8)).save(tmp_path / c / f"{i}.png")
    lazy = scan_folder(tmp_path, ["a", "b"], "t", 8)
    eager = lazy.subset(torch.arange(len(lazy)))
    monkeypatch.setattr(LazyImageSet, "images", property(lambda self: pytest.fail("the whole split was loaded")))
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64, 2)) for _ in range(2)]
    got = predict_by_class(nets, lazy)
    want = [torch.softmax(n(eager.images * 2 - 1), 1) for n in nets]
    assert all(torch.allclose(g, w, atol=1e-6) for g, w in zip(got, want))


@pytest.mark.parametrize("doping, message", [
    (DopingConfig(budget=1.5), "--budget must be a fraction"),
    (DopingConfig(budget=0.5, doping_ipc=3), "either --doping-ipc or --budget"),
    (DopingConfig(doping_ipc=13, classwise=True), "the train split has 36"),
    (DopingConfig(budget=0.5, selector="best"), "unknown doping selector"),
])
def test_doping_settings_are_refused_before_any_synthesis(doping, message, tmp_path, folder, tiny_model_dir, monkeypatch):
    from dsco.orchestrate import ConcentrateConfig, concentrate
    from dsco.errors import DscoError
    from dsco.methods.base import REGISTRY

    monkeypatch.setattr(REGISTRY["diffusion"], "synthesise", lambda self, task: pytest.fail("synthesised before the check"))
    cfg = ConcentrateConfig(dataset=str(folder), out=str(tmp_path / "o"), method="diffusion", ipc=1, model=str(tiny_model_dir),
                            sampling_steps=2, doping=doping)
    with pytest.raises(DscoError, match=message):
        concentrate(cfg, progress=False)
    assert not (tmp_path / "o").exists()


def test_a_classwise_budget_rounds_down_to_an_equal_share_per_class_and_says_so(caplog):
    """Rounded down, the doped set stays within its budget: 100 synthetic + 180 real of a 288-image budget, the size of
    the random subset the budget buys (28 a class), which Doping's guard then falls back to image for image."""
    count = real_count(DopingConfig(budget=0.2, classwise=True), 1442, 10, 100)
    assert count == 180 and "180 real images (18 per class) instead of 188" in caplog.text
    assert 100 + count <= round(0.2 * 1442) and (100 + count) // 10 == round(0.2 * 1442) // 10


def test_doping_ranks_per_class_on_a_folder_and_over_the_whole_set_on_named_datasets():
    """On data of the user's (a folder) the generator may never have seen, the globally least clear images pile up
    in a few classes (the digits shift at 10 %: 26 of 44 from one class, none from four), so Doping takes
    an equal share per class unless told otherwise; the named datasets keep the authors' global ranking."""
    from dsco.orchestrate import ConcentrateConfig

    assert ConcentrateConfig(dataset="/data/my-folder", doping=DopingConfig(budget=0.2)).resolved().doping.classwise is True
    assert ConcentrateConfig(dataset="mnist5k", doping=DopingConfig(budget=0.2)).resolved().doping.classwise is False
    assert ConcentrateConfig(dataset="imagewoof", doping=DopingConfig(budget=0.2)).resolved().doping.classwise is False
    told = DopingConfig(budget=0.2, classwise=False)
    assert ConcentrateConfig(dataset="/data/my-folder", doping=told).resolved().doping.classwise is False

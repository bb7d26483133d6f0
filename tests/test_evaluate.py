import json
import math
from dataclasses import replace

import pytest
import torch

from dsco.bench import BenchConfig, bench, lossless_point, validate_results
from dsco.cli import main
from dsco.orchestrate import ConcentrateConfig, concentrate
from dsco.data import ImageSet, load_dataset
from dsco.errors import DscoError
from dsco.evaluate import EvalProtocol, evaluate_set, train_classifier
from dsco.outputset import load_output_set, read_manifest

QUICK = EvalProtocol(width=16, max_steps=20)


def test_protocol_is_deterministic_for_a_seed(tiny_set):
    a = train_classifier(tiny_set, QUICK, seed=1)
    b = train_classifier(tiny_set, QUICK, seed=1)
    c = train_classifier(tiny_set, QUICK, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_training_length_depends_on_the_set_size_only():
    p = EvalProtocol()
    assert p.steps_for(10) == p.steps_for(20) < p.steps_for(100) <= p.steps_for(4000)


def test_evaluate_command_runs_end_to_end_on_a_tiny_set(folder, test_folder, tmp_path, capsys):
    out = tmp_path / "set"
    assert main(["concentrate", "--method", "random", "--dataset", str(folder), "--ipc", "2", "--out", str(out)]) == 0
    res = tmp_path / "r.json"
    assert main(["evaluate", str(out), "--dataset", str(folder), "--test-dataset", str(test_folder), "--runs", "2",
                 "--width", "16", "--max-steps", "10", "--json", str(res)]) == 0
    r = json.loads(res.read_text())
    assert r["train_size"] == 6 and r["runs"] == 2 and len(r["accs"]) == 2 and 0 <= r["mean"] <= 1
    assert r["protocol"]["arch"] == "convnet3"


def test_full_uses_every_training_image(folder, test_folder, tmp_path):
    res = tmp_path / "r.json"
    assert main(["evaluate", "--full", "--dataset", str(folder), "--test-dataset", str(test_folder), "--runs", "1",
                 "--width", "16", "--max-steps", "5", "--json", str(res)]) == 0
    assert json.loads(res.read_text())["train_size"] == 36


def test_unknown_architecture_lists_the_valid_names(tiny_set):
    with pytest.raises(DscoError, match="valid names are convnet3, convnet6, convnet3-bn, resnet18, resnetap10"):
        evaluate_set(tiny_set, tiny_set, EvalProtocol(arch="vit"), runs=1, progress=False)


def _mnist_test_as_output_set(tmp_path, shuffle_labels: bool) -> tuple[ImageSet, ImageSet]:
    test = load_dataset("mnist5k", "test")
    idx = torch.cat([test.indices_of(c)[:60] for c in range(10)])
    seen = test.subset(idx)
    if shuffle_labels:
        seen.labels = seen.labels[torch.randperm(len(seen), generator=torch.Generator().manual_seed(0))]
    out = concentrate(ConcentrateConfig(out=str(tmp_path / "copy"), method="random", ipc=54), train=seen, progress=False)
    evaluated = load_output_set(out)
    return evaluated, seen


def test_copied_test_images_score_near_100_percent(tmp_path):
    """The harness can reach the ceiling: training on the very images it tests on."""
    copied, seen = _mnist_test_as_output_set(tmp_path, shuffle_labels=False)
    r = evaluate_set(copied, copied, EvalProtocol(max_steps=300), runs=1, progress=False)
    assert r["mean"] >= 0.95


def test_the_harness_can_fail_on_wrong_labels(tmp_path):
    copied, _ = _mnist_test_as_output_set(tmp_path, shuffle_labels=True)
    test = load_dataset("mnist5k", "test")
    r = evaluate_set(copied, test, EvalProtocol(max_steps=150), runs=1, progress=False)
    assert r["mean"] < 0.3


def test_lossless_point_is_the_smallest_budget_within_one_std():
    full = {"mean": 0.9, "std": 0.01}
    rows = [{"budget": b, "mean": m} for b, m in [(0.1, 0.8), (0.3, 0.895), (0.2, 0.87), (0.5, 0.91)]]
    assert lossless_point(rows, full) == 0.3
    assert lossless_point(rows[:1], full) is None
    # 983/1000 on the edge of 985 ± 2 (each stored as float32) is within the band
    edge = {"mean": 0.9849999944368998, "std": 0.0020000040531898593}
    assert lossless_point([{"budget": 0.4, "mean": 0.9829999804496765}], edge) == 0.4


def test_bench_writes_a_valid_results_file_table_and_plots(folder, test_folder, tiny_model_dir, tmp_path):
    cfg = BenchConfig(dataset=str(folder), test_dataset=str(test_folder), out=str(tmp_path / "b"), ipcs=[1, 2],
                      methods=["random", "diffusion"], runs=2, model=str(tiny_model_dir), protocol=QUICK, schedule="short",
                      curve=True, budgets=[0.2, 0.5], curve_synthetic_ipc=1, curve_synthetic_max_budget=0.2,
                      command="test", bn_protocol=replace(QUICK, arch="convnet3-bn"), generator_samples=6)
    out = bench(cfg)
    r = json.loads((out / "results.json").read_text())
    validate_results(r)
    assert {(c["method"], c["ipc"], c["arch"]) for c in r["bn"]["cells"]} == {(m, i, "convnet3-bn") for m in ("random", "diffusion") for i in (1, 2)}
    assert r["generator"]["overall"]["n_fake"] == 18 and 0 <= r["generator"]["overall"]["coverage"] <= 1
    assert "(BatchNorm)" in (out / "results.md").read_text() and "Fréchet distance" in (out / "results.md").read_text()
    assert {(c["method"], c["ipc"]) for c in r["lrs"]} == {(m, i) for m in ("random", "diffusion") for i in (1, 2)}
    assert all(c["ior"] == 0 for c in r["lrs"] if c["method"] == "random") and "label-robust score" in (out / "results.md").read_text()
    assert {(c["method"], c["ipc"]) for c in r["cells"]} == {(m, i) for m in ("random", "diffusion") for i in (1, 2)}
    assert {c["method"] for c in r["curve"]} == {"dsco-doping", "dsco", "random"}
    dsco_set = read_manifest(next((out / "sets").glob("dsco-*")))["config"]
    assert dsco_set["schedule"] == "short" and dsco_set["nopt"]["iterations"] == 10  # the bench's --schedule reaches its sets
    assert "full train split" in (out / "results.md").read_text()
    for png in ("accuracy_vs_ipc.png", "cost_vs_ipc.png", "lossless_curve.png", "samples_ipc1.png"):
        assert (out / png).stat().st_size > 1000
    cfg.cross_protocol, cfg.cross_ipc, cfg.cross_methods = replace(QUICK, arch="convnet6"), 2, ["random", "diffusion"]
    r = json.loads((bench(cfg) / "results.json").read_text())  # the sets are reused, evaluated with a second protocol
    assert [(c["method"], c["arch"]) for c in r["cross_arch"]["rows"]] == [("random", "convnet6"), ("diffusion", "convnet6")]
    assert "Cross-architecture check, IPC 2" in (out / "results.md").read_text()
    cfg.synthesis_seeds, cfg.lrs, cfg.bn_protocol = 2, False, None  # a second set per diffusion-based cell
    r = json.loads((bench(cfg) / "results.json").read_text())
    two = next(c for c in r["cells"] if c["method"] == "diffusion" and c["ipc"] == 2)
    assert len(two["set_means"]) == 2 and (out / "sets" / "diffusion-ipc2-s1").is_dir()
    assert "set_means" not in next(c for c in r["cells"] if c["method"] == "random")  # one set: nothing synthesised
    cfg.ipcs, cfg.cached_only = [1, 2, 3], True  # IPC 3 was never computed: left out, nothing computed
    r = json.loads((bench(cfg) / "results.json").read_text())
    assert {c["ipc"] for c in r["cells"]} == {1, 2} and not (out / "sets" / "random-ipc3").exists()
    cfg.synthesis_seeds = 3  # assembling before the third sets exist: the cells use the two, and say so
    r = json.loads((bench(cfg) / "results.json").read_text())
    assert next(c for c in r["cells"] if c["method"] == "diffusion")["sets"] == 2
    assert not (out / "sets" / "diffusion-ipc2-s2").exists() and "(2 sets)" in (out / "results.md").read_text()


def test_dsco_is_ahead_or_behind_a_method_only_beyond_the_combined_spread():
    from dsco.bench import render_versus, versus

    cell = lambda m, mean, std: {"method": m, "ipc": 10, "mean": mean, "std": std, "synthesis_seconds": 1.0}
    r = {"cells": [cell("dsco", 0.90, 0.01), cell("d4m", 0.85, 0.02), cell("mgd3", 0.91, 0.02), cell("random", 0.95, 0.03)]}
    rows = {x["method"]: x for x in versus(r)[10]}
    assert rows["d4m"]["verdict"] == "ahead" and rows["d4m"]["diff"] == pytest.approx(5.0)
    assert rows["d4m"]["spread"] == pytest.approx((0.01**2 + 0.02**2) ** 0.5 * 100)
    assert rows["mgd3"]["verdict"] == "level" and rows["random"]["verdict"] == "behind"
    assert "ahead of d4m (+5.00 ± 2.24)" in "\n".join(render_versus(r))
    r["synthesis_seeds"], r["cells"][0]["sets"], r["cells"][1]["sets"], r["cells"][2]["sets"] = 3, 3, 1, 3
    rows = {x["method"]: x for x in versus(r)[10]}  # d4m's cell is one set: only its verdict is flagged
    assert [m for m, x in rows.items() if x["fewer_sets"]] == ["d4m"] and "(+5.00 ± 2.24)*" in "\n".join(render_versus(r))


def test_results_schema_rejects_a_broken_file():
    good = {"dataset": "d", "arch": "convnet3", "runs": 3, "machine": "m", "command": "c",
            "full": {"mean": 0.9, "std": 0.01}, "cells": [{"method": "dsco", "ipc": 10, "mean": 0.5, "std": 0.1,
                                                          "synthesis_seconds": 1.0}], "curve": [], "lossless_point": {}}
    validate_results(good)
    with pytest.raises(DscoError, match="lacks"):
        validate_results({k: v for k, v in good.items() if k != "full"})
    bad = json.loads(json.dumps(good))
    bad["cells"][0]["mean"] = 7
    with pytest.raises(DscoError, match="out of range"):
        validate_results(bad)


def test_imagenet_subset_protocol_trains_by_epochs_per_ipc():
    from dsco.evaluate import protocol_named

    p = protocol_named("imagenet-subset")
    assert p.arch == "resnetap10" and p.image_size == 224 and p.cutmix_prob == 1.0
    assert p.steps_for(100, 10) == 2000 * 2 and p.steps_for(10, 10) == 3000 and p.steps_for(5000, 10) == 500 * 100


def test_crop_flip_protocol_trains_at_its_own_resolution():
    from dataclasses import replace

    from dsco.evaluate import accuracy, protocol_named, train_classifier

    data = ImageSet(torch.rand(8, 3, 16, 16), torch.arange(2).repeat(4), ["n01440764", "n02102040"])
    p = replace(protocol_named("imagenet-subset"), image_size=12, max_steps=2)
    net = train_classifier(data, p, seed=0)
    assert 0 <= accuracy(net, data, p.image_size) <= 1


def test_imagenet_teacher_is_resnet18_sliced_to_the_subset(tmp_path):
    from torchvision.models import resnet18

    from dsco.evaluate import load_teacher

    torch.manual_seed(0)
    full = resnet18().eval()
    torch.save(full.state_dict(), tmp_path / "resnet18.pth")
    subset = ImageSet(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), ["n01440764", "n02102040"])
    teacher = load_teacher(tmp_path / "resnet18.pth", subset)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(teacher(x), full(((x + 1) / 2 - mean) / std)[:, [0, 217]], atol=1e-5)
    cats = ImageSet(torch.rand(2, 3, 8, 8), torch.tensor([0, 1]), ["cat", "dog"])
    with pytest.raises(DscoError, match="not ImageNet wnids: pass --class-map"):
        load_teacher(tmp_path / "resnet18.pth", cats)
    (tmp_path / "map.json").write_text(json.dumps({"cat": 281, "dog": 207}))
    mapped = load_teacher(tmp_path / "resnet18.pth", cats, str(tmp_path / "map.json"))
    with torch.no_grad():
        assert torch.allclose(mapped(x), full(((x + 1) / 2 - mean) / std)[:, [281, 207]], atol=1e-5)


def test_a_cached_cell_made_before_an_option_existed_still_matches():
    from dataclasses import asdict

    from dsco.bench import with_later_defaults
    from dsco.nopt import NOptConfig

    now = {"nopt": asdict(NOptConfig(iterations=30)), "protocol": asdict(QUICK)}
    old = json.loads(json.dumps(now))
    del old["nopt"]["optimizer"], old["protocol"]["augment"]
    assert with_later_defaults(old) == json.loads(json.dumps(now))
    old["nopt"]["iterations"] = 10  # a real difference still shows
    assert with_later_defaults(old) != json.loads(json.dumps(now))


def test_first_seed_continues_the_same_runs(tiny_set):
    a = evaluate_set(tiny_set, tiny_set, QUICK, runs=3, progress=False)
    b = evaluate_set(tiny_set, tiny_set, QUICK, runs=2, progress=False, first_seed=1)
    assert b["seeds"] == [1, 2] and b["accs"] == a["accs"][1:]


def test_label_robust_score_follows_dd_rankings_definition():
    from dsco.bench import label_robust_score

    same = label_robust_score(0.9, 0.9, 0.8, 0.8)  # no gap to full data, no gain over random: alpha 0
    assert same["lrs"] == pytest.approx((1 - math.exp(-1)) / (math.e - math.exp(-1)))
    best = label_robust_score(0.9, 0.9, 1.0, 0.0)  # alpha = 0.5
    assert best["lrs"] == pytest.approx((math.exp(0.5) - math.exp(-1)) / (math.e - math.exp(-1)))
    worst = label_robust_score(1.0, 0.0, 0.0, 1.0)  # alpha = -1
    assert worst["lrs"] == pytest.approx(0.0) and worst["hlr"] == 1.0 and worst["ior"] == -1.0

"""The pre-flight check: a model whose plain samples are far from the real classes is reported before synthesis."""
import torch

from dsco.orchestrate import ConcentrateConfig, concentrate
from dsco.outputset import read_manifest
from dsco.generator_metrics import sample_set
from dsco.preflight import Thresholds, advice, check_generator


def test_a_random_model_is_far_from_the_data_and_the_run_says_so_and_records_it(tmp_path, folder, tiny_model_dir, caplog, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the check's teacher is cached under ~/.cache/dsco
    cfg = ConcentrateConfig(dataset=str(folder), out=str(tmp_path / "o"), method="diffusion", ipc=1, model=str(tiny_model_dir),
                            sampling_steps=3, preflight=6)
    out = concentrate(cfg, progress=False)
    report = read_manifest(out)["preflight"]
    assert report["far"] and report["per_class_samples"] == 6 and set(report["per_class"]) <= {"a", "b", "c"}
    assert "far from this data" in caplog.text and "Doping" in caplog.text


def test_no_check_without_samples_asked(tmp_path, folder, tiny_model_dir):
    cfg = ConcentrateConfig(dataset=str(folder), out=str(tmp_path / "o"), method="diffusion", ipc=1, model=str(tiny_model_dir),
                            sampling_steps=3)
    assert "preflight" not in read_manifest(concentrate(cfg, progress=False))


def test_the_verdict_follows_the_thresholds(tiny_backend, tiny_set):
    from dsco.evaluate import EvalProtocol, train_classifier

    teacher = train_classifier(tiny_set, EvalProtocol(width=8, max_steps=20), 0)
    lenient = check_generator(tiny_backend, tiny_set, teacher, "t", 6, 0, thresholds=Thresholds(0.0, 0.0))
    strict = check_generator(tiny_backend, tiny_set, teacher, "t", 6, 0, thresholds=Thresholds(1.01, 0.0))
    assert not lenient["far"] and advice(lenient) is None
    assert strict["far"] and advice(strict).startswith("the model's plain samples are far")


def test_samples_are_drawn_for_each_class_as_the_model_labels_it(tiny_backend):
    s = sample_set(tiny_backend, 2, 0, ["x", "y"], model_labels=[2, 0])
    direct = sample_set(tiny_backend, 2, 0, ["p", "q", "r"])
    assert s.labels.tolist() == [0, 0, 1, 1] and s.images.shape == (4, 1, 8, 8)
    assert not torch.equal(s.images[:2], direct.images[:2])  # dataset class 0 is model label 2

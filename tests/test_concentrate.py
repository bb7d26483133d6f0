import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import importlib
from dsco.cli import main
from dsco.orchestrate import SCHEDULES, ConcentrateConfig, concentrate
from dsco.methods import METHODS
from dsco.data import ImageSet
from dsco.doping import DopingConfig
from dsco.errors import DscoError
from dsco.evaluate import EvalProtocol, TeacherConfig, train_teacher
from dsco.nopt import NOptConfig
from dsco.outputset import read_images, read_manifest, verify
from conftest import kill_when

conc = importlib.import_module("dsco.orchestrate")  # the package re-exports a function of the same name

FAST = NOptConfig(iterations=3, feature_width=16, k_noises=1, lr=0.05)


def config(out: Path, method: str = "dsco", ipc: int = 3, **kw) -> ConcentrateConfig:
    cfg = ConcentrateConfig(dataset="tiny", out=str(out), method=method, ipc=ipc, nopt=FAST, **kw)
    cfg.datafree.templates = 4
    cfg.dm.iterations = 3
    cfg.d3hr.candidates, cfg.d3hr.candidate_batch = 40, 16
    cfg.igd.checkpoint_epochs = (0, 1)
    cfg.minimax.epochs = 1
    cfg.doping_protocol = EvalProtocol(max_steps=5, width=16)
    return cfg


@pytest.mark.parametrize("method", METHODS)
def test_every_method_writes_a_manifest_that_matches_its_files(method, tmp_path, tiny_set, tiny_backend):
    out = concentrate(config(tmp_path / method, method), train=tiny_set, backend=tiny_backend, progress=False)
    assert verify(out) == []
    m = read_manifest(out)
    assert m["method"] == method and m["counts"] == [3, 3, 3] and m["config"]["seed"] == 0
    real = method in ("random", "herding", "kcenter")
    assert all(e["source"] == ("real" if real else "synthetic") for e in m["images"])
    if real:
        assert all(tiny_set.labels[e["index"]] == e["label"] for e in m["images"])
    assert not list(tmp_path.glob(".*.work"))


def test_sample_command_writes_an_output_set(folder, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "plain"
    assert main(["sample", "--dataset", str(folder), "--model", str(tiny_model_dir), "--ipc", "2",
                 "--sampling-steps", "4", "--out", str(out)]) == 0
    m = read_manifest(out)
    assert m["method"] == "diffusion" and len(m["images"]) == 6 and verify(out) == []
    assert sorted(p.name for p in (out / "images").iterdir()) == ["a", "b", "c"]


def test_data_free_reads_no_real_image(tmp_path, tiny_backend, monkeypatch):
    def no_data(*a, **k):
        raise AssertionError("the data-free mode read the dataset")

    monkeypatch.setattr(conc, "load_dataset", no_data)
    out = concentrate(config(tmp_path / "df", "dsco-datafree"), backend=tiny_backend, progress=False)
    assert read_manifest(out)["class_names"] == ["a", "b", "c"] and verify(out) == []


def test_data_free_with_a_dataset_that_raises_on_access(tmp_path, tiny_backend):
    class Untouchable(ImageSet):
        armed = False

        def __getattribute__(self, name):
            if object.__getattribute__(self, "armed") and name != "armed":
                raise AssertionError(f"data-free touched the dataset's {name}")
            return object.__getattribute__(self, name)

    train = Untouchable(torch.zeros(3, 1, 8, 8), torch.arange(3), ["a", "b", "c"], "tiny")
    train.armed = True
    out = concentrate(config(tmp_path / "df", "dsco-datafree"), train=train, backend=tiny_backend, progress=False)
    assert verify(out) == []


def _hashes(out: Path) -> list[str]:
    return [e["sha256"] for e in read_manifest(out)["images"]]


def test_interrupted_run_resumes_to_the_same_set(tmp_path, tiny_set, tiny_backend, monkeypatch):
    whole = concentrate(config(tmp_path / "whole"), train=tiny_set, backend=tiny_backend, progress=False)
    real = conc._synthesise_classes

    def dies_on_class_2(run, labels):
        if 2 in labels:
            raise KeyboardInterrupt
        return real(run, labels)

    monkeypatch.setattr(conc, "_synthesise_classes", dies_on_class_2)
    with pytest.raises(KeyboardInterrupt):
        concentrate(config(tmp_path / "cut"), train=tiny_set, backend=tiny_backend, progress=False)
    assert not (tmp_path / "cut").exists()
    with pytest.raises(DscoError, match="pass --resume"):
        concentrate(config(tmp_path / "cut"), train=tiny_set, backend=tiny_backend, progress=False)
    calls = []
    monkeypatch.setattr(conc, "_synthesise_classes", lambda run, labels: calls.extend(labels) or real(run, labels))
    cut = concentrate(config(tmp_path / "cut"), train=tiny_set, backend=tiny_backend, progress=False, resume=True)
    assert calls == [2]  # finished classes are not redone
    assert _hashes(cut) == _hashes(whole)


def test_resume_with_another_config_is_refused(tmp_path, tiny_set, tiny_backend, monkeypatch):
    monkeypatch.setattr(conc, "_synthesise_classes", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        concentrate(config(tmp_path / "x"), train=tiny_set, backend=tiny_backend, progress=False)
    with pytest.raises(DscoError, match="different configuration"):
        concentrate(config(tmp_path / "x", ipc=2), train=tiny_set, backend=tiny_backend, progress=False, resume=True)


def test_killed_process_resumes_to_the_same_output(folder, tiny_model_dir, tmp_path):
    args = [sys.executable, "-m", "dsco", "concentrate", "--dataset", str(folder), "--model", str(tiny_model_dir),
            "--ipc", "2", "--sampling-steps", "60", "--iterations", "3", "--feature-width", "16", "--k-noises", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert subprocess.run(args + ["--out", str(tmp_path / "whole")], env=env, capture_output=True).returncode == 0
    proc = subprocess.Popen(args + ["--out", str(tmp_path / "cut")], env=env, stderr=subprocess.DEVNULL)
    record = tmp_path / ".cut.work" / "classes" / "a.json"
    kill_when(proc, record)
    assert not (tmp_path / "cut").exists()
    assert subprocess.run(args + ["--out", str(tmp_path / "cut"), "--resume"], env=env, capture_output=True).returncode == 0
    assert _hashes(tmp_path / "cut") == _hashes(tmp_path / "whole")


def test_doping_adds_exactly_the_asked_real_images_with_their_clarity(tmp_path, tiny_set, tiny_backend):
    cfg = config(tmp_path / "doped", "dsco", ipc=2)
    cfg.doping.doping_ipc, cfg.doping.teacher, cfg.doping.guard = 2, str(tmp_path / "teacher"), False
    train_teacher(tiny_set, tiny_set, TeacherConfig("tiny", 0, cfg.doping_protocol), tmp_path / "teacher", progress=False)
    out = concentrate(cfg, train=tiny_set, backend=tiny_backend, progress=False)
    m = read_manifest(out)
    real = [e for e in m["images"] if e["source"] == "real"]
    assert len(real) == 6 and len(m["images"]) == 12 and m["method"] == "dsco+doping" and "doping_guard" not in m
    assert all(-1 <= e["clarity"] <= 1 and tiny_set.labels[e["index"]] == e["label"] for e in real)
    assert len({e["index"] for e in real}) == 6 and verify(out) == []
    assert (tmp_path / "teacher" / "model.safetensors").is_file()


@pytest.mark.parametrize("ipc", [0, -3])
def test_impossible_ipc_is_an_error_and_writes_nothing(ipc, tmp_path, tiny_set, tiny_backend):
    with pytest.raises(DscoError, match="IPC must be a positive integer"):
        concentrate(config(tmp_path / "o", ipc=ipc), train=tiny_set, backend=tiny_backend, progress=False)
    assert not (tmp_path / "o").exists() and not (tmp_path / ".o.work").exists()


def test_more_real_images_than_a_class_has_is_an_error(tmp_path, tiny_set):
    with pytest.raises(DscoError, match="IPC 13 is more than the 12 real images of class 'a'"):
        concentrate(config(tmp_path / "o", "random", ipc=13), train=tiny_set, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unknown_method_lists_the_valid_names(tmp_path, folder, capsys):
    assert main(["concentrate", "--dataset", str(folder), "--method", "magic", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "valid names are dsco, dsco-datafree, random" in err


def test_model_with_another_class_count_is_refused(tmp_path, tiny_set, tiny_backend):
    two = ImageSet(tiny_set.images[:24], tiny_set.labels[:24], ["a", "b"], "two")
    with pytest.raises(DscoError, match="3 classes but the dataset has 2"):
        concentrate(config(tmp_path / "o"), train=two, backend=tiny_backend, progress=False)


def test_existing_output_is_never_overwritten(tmp_path, tiny_set):
    (tmp_path / "o").mkdir()
    with pytest.raises(DscoError, match="already exists"):
        concentrate(config(tmp_path / "o", "random"), train=tiny_set, progress=False)


def test_class_names_cannot_write_outside_the_output(tmp_path, tiny_set):
    evil = ImageSet(tiny_set.images, tiny_set.labels, ["..", "../../up", "/abs"], "evil")
    out = concentrate(config(tmp_path / "sub" / "o", "random", ipc=2), train=evil, progress=False)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(out in p.parents for p in files)
    assert verify(out) == [] and len(list((out / "images").iterdir())) == 3


def test_verify_lists_tampered_missing_and_extra_files(tmp_path, tiny_set, capsys):
    out = concentrate(config(tmp_path / "o", "random", ipc=2), train=tiny_set, progress=False)
    files = sorted((out / "images").rglob("*.png"))
    files[0].write_bytes(files[1].read_bytes() + b"x")
    files[2].unlink()
    (out / "images" / "a" / "extra.png").write_bytes(b"")
    problems = verify(out)
    assert any("sha256 mismatch" in p for p in problems) and any("missing file" in p for p in problems)
    assert any("not in manifest" in p for p in problems)
    assert main(["verify", str(out)]) == 2


def test_manifest_paths_leaving_the_directory_are_rejected(tmp_path, tiny_set):
    out = concentrate(config(tmp_path / "o", "random", ipc=1), train=tiny_set, progress=False)
    m = json.loads((out / "manifest.json").read_text())
    m["images"][0]["path"] = "../../etc/passwd"
    (out / "manifest.json").write_text(json.dumps(m))
    assert any("leaves the output directory" in p for p in verify(out))


def test_disk_full_is_reported_and_leaves_no_half_written_class(tmp_path, tiny_set, monkeypatch):
    import errno

    from PIL import Image

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    with pytest.raises(DscoError, match="cannot write .*No space left on device"):
        concentrate(config(tmp_path / "o", "random", ipc=1), train=tiny_set, progress=False)
    assert not (tmp_path / "o").exists()
    assert not any(tmp_path.rglob("*.png")) and not any(tmp_path.rglob("*.partial"))


def test_a_sets_fingerprint_ignores_the_knobs_of_other_methods():
    from dataclasses import replace

    from dsco.orchestrate import determining
    from dsco.datafree import DataFreeConfig

    rand = ConcentrateConfig(method="random").resolved()
    assert determining(rand) == determining(replace(rand, datafree=DataFreeConfig(templates=5), nopt=FAST))
    dsco_cfg = replace(rand, method="dsco")
    assert determining(dsco_cfg) != determining(replace(dsco_cfg, nopt=FAST))


def test_doping_an_existing_synthetic_set_equals_doping_from_scratch(tmp_path, tiny_set, tiny_backend):
    teacher = tmp_path / "teacher"
    train_teacher(tiny_set, tiny_set, TeacherConfig("tiny", 0, EvalProtocol(max_steps=5, width=16)), teacher, progress=False)
    doping = lambda: DopingConfig(doping_ipc=2, teacher=str(teacher))  # noqa: E731
    syn = concentrate(config(tmp_path / "syn"), train=tiny_set, backend=tiny_backend, progress=False)
    scratch = concentrate(config(tmp_path / "scratch", doping=doping()), train=tiny_set, backend=tiny_backend, progress=False)
    reused = concentrate(config(tmp_path / "reused", doping=doping(), synthetic_set=str(syn)), train=tiny_set, progress=False)
    assert _hashes(reused) == _hashes(scratch)
    with pytest.raises(DscoError, match="add --doping-ipc or --budget"):
        concentrate(config(tmp_path / "bad", synthetic_set=str(syn)), train=tiny_set, progress=False)


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_nopt_preset_is_valid_and_short_is_the_reference_with_cheaper_knobs(name):
    from dataclasses import replace

    from dsco.orchestrate import nopt_preset

    nopt_preset(name).validate()
    assert SCHEDULES == ("reference", "short")  # presets kept for history are retired; the knobs reach any setting
    if name == "short":
        assert nopt_preset("short") == replace(nopt_preset("reference"), iterations=10, feature_width=64, k_noises=1,
                                               max_targets=50, target_offset=0, optimizer="adam", lr=0.05,
                                               steps_fraction=0.5)
        assert nopt_preset("short").optimised_range(50) == range(0, 25)


def test_the_preset_once_called_budget_is_read_as_short():
    """"budget" now means only a Doping size; runs and bench cells recorded under the preset's old name resume and
    match as the renamed preset."""
    from dsco.orchestrate import nopt_preset, with_later_defaults

    assert nopt_preset("budget") == nopt_preset("short")
    assert ConcentrateConfig(schedule="budget").resolved().schedule == "short"
    assert with_later_defaults({"schedule": "budget", "ipc": 10}) == {"schedule": "short", "ipc": 10}


def test_the_default_schedule_is_the_reference_except_on_the_embedded_mnist5k():
    from dsco.orchestrate import MNIST5K_SCHEDULE, nopt_preset

    folder = ConcentrateConfig(dataset="/data/my-folder/train").resolved()
    assert folder.schedule == "reference" and folder.nopt == nopt_preset("reference") and folder.datafree.templates == 200
    embedded = ConcentrateConfig(dataset="mnist5k").resolved()
    assert embedded.schedule == MNIST5K_SCHEDULE and embedded.nopt == nopt_preset(MNIST5K_SCHEDULE)
    assert ConcentrateConfig(dataset="mnist5k", schedule="reference").resolved().nopt.iterations == 200


def test_a_run_interrupted_before_a_knob_existed_resumes_with_that_knob_at_its_default(tmp_path, tiny_set, tiny_backend, monkeypatch):
    whole = concentrate(config(tmp_path / "whole"), train=tiny_set, backend=tiny_backend, progress=False)
    real = conc._synthesise_classes
    with monkeypatch.context() as m:
        m.setattr(conc, "_synthesise_classes", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            concentrate(config(tmp_path / "cut"), train=tiny_set, backend=tiny_backend, progress=False)
    run = tmp_path / ".cut.work" / "run.json"
    record = json.loads(run.read_text())
    del record["config"]["nopt"]["steps_start"]  # as written before --steps-start was added
    run.write_text(json.dumps(record))
    assert conc._synthesise_classes is real
    cut = concentrate(config(tmp_path / "cut"), train=tiny_set, backend=tiny_backend, progress=False, resume=True)
    assert _hashes(cut) == _hashes(whole)


@pytest.mark.parametrize("method", ["dsco", "diffusion", "minimax", "d4m", "d4m-ancestral", "mgd3", "d3hr"])
def test_classes_batched_make_the_set_of_one_class_at_a_time(method, tmp_path, tiny_set, tiny_backend):
    """--class-batch shares the model's calls between classes; every draw still comes from each class's own
    generator, so the images are one class at a time's up to float rounding (one grey level in the saved PNGs)."""
    def cfg(out: Path, **kw) -> ConcentrateConfig:
        c = config(out, method.split("-")[0], **kw)
        c.d4m.sampler = "ancestral" if method == "d4m-ancestral" else c.d4m.sampler
        return c

    alone = concentrate(cfg(tmp_path / "alone"), train=tiny_set, backend=tiny_backend, progress=False)
    together = concentrate(cfg(tmp_path / "together", class_batch=2), train=tiny_set, backend=tiny_backend, progress=False)
    a, b = read_manifest(alone), read_manifest(together)
    assert [e["label"] for e in a["images"]] == [e["label"] for e in b["images"]]
    ia, ib = read_images(alone, a["images"]), read_images(together, b["images"])
    assert (ia - ib).abs().max() <= 1 / 255 + 1e-6
    assert [b["class_stats"][c].get("class_batch") for c in b["class_names"]] == [2, 2, None]  # 3 classes: 2, then 1
    assert b["device"] == "cpu"


def test_class_batch_below_one_is_refused_before_any_work(tmp_path, tiny_set):
    with pytest.raises(DscoError, match="--class-batch must be a positive integer"):
        concentrate(config(tmp_path / "o", class_batch=0), train=tiny_set, progress=False)


def test_dopings_guard_replaces_synthetic_images_that_train_worse_than_real_ones(tmp_path, tiny_set, tiny_backend, caplog, monkeypatch):
    """A random tiny model's samples teach nothing about the real classes: the guard (the default on a folder)
    finds a model trained on them below one trained on as many random real images, both with hard labels, and the
    set becomes that many class-balanced random real images plus the real share, said on one line and in the
    manifest."""
    cfg = config(tmp_path / "doped", "dsco", ipc=2)
    cfg.doping.doping_ipc, cfg.doping.teacher = 2, str(tmp_path / "teacher")
    cfg.doping_protocol = EvalProtocol(max_steps=60, width=16)  # long enough for 6 real images to teach the stripes
    train_teacher(tiny_set, tiny_set, TeacherConfig("tiny", 0, cfg.doping_protocol), tmp_path / "teacher", progress=False)
    taught = []  # the teacher each classifier Doping trains learns from
    real_train = conc.train_classifier
    monkeypatch.setattr(conc, "train_classifier", lambda s, p, seed, teacher, progress: taught.append(teacher) or real_train(s, p, seed, teacher, progress))
    with caplog.at_level("WARNING"):
        out = concentrate(cfg, train=tiny_set, backend=tiny_backend, progress=False)
    # the clarity ranking's doping model learns from the teacher; the guard's two networks from the hard labels alone
    assert len(taught) == 3 and taught[0] is not None and taught[1:] == [None, None]
    m = read_manifest(out)
    guard = m["doping_guard"]
    assert m["config"]["doping"]["guard"] is True and guard["kept_synthetic"] is False
    assert guard["synthetic_accuracy"] < guard["real_accuracy"]
    assert [e["source"] for e in m["images"]] == ["real"] * 12 and m["counts"] == [4, 4, 4]
    assert len({e["index"] for e in m["images"]}) == 12 and verify(out) == []
    random = read_manifest(concentrate(config(tmp_path / "random", "random", ipc=4), train=tiny_set, progress=False))
    assert [e["index"] for e in m["images"]] == [e["index"] for e in random["images"]]  # the random baseline's set
    assert _hashes(out) == _hashes(tmp_path / "random")  # image for image, in its order
    assert "class-balanced random real images" in caplog.text


def test_dopings_guard_keeps_synthetic_images_that_train_as_well_as_real_ones(tiny_set):
    """The rule's direction: synthetic images whose network classifies the real train split perfectly stay, even
    when real images do as well."""
    perfect = torch.nn.functional.one_hot(tiny_set.labels, 3).float()
    seen = torch.tensor([0, 1, 12, 13, 24, 25])  # what the real reference trained on, left out of its score
    keep, report = conc._synthetic_earns_its_place(perfect, perfect, seen, tiny_set.labels, 12)  # a tie keeps them
    assert keep and report["synthetic_accuracy"] == 1.0

import json

from safetensors.torch import load_file

from dsco.cli import main
from dsco.models.pixel import PixelBackend


def test_train_model_stops_resumes_and_continues_the_step_count(folder, tmp_path, capsys):
    out = tmp_path / "m"
    args = ["train-model", "--dataset", str(folder), "--out", str(out), "--image-size", "8",
            "--channels", "8", "16", "--batch-size", "4", "--checkpoint-every", "2"]
    assert main(args + ["--steps", "2"]) == 0
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 2
    first = load_file(str(out / "checkpoint" / "model.safetensors"))
    assert main(args + ["--steps", "4", "--resume"]) == 0
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4 and len(state["losses"]) == 4
    assert any((first[k] != v).any() for k, v in load_file(str(out / "checkpoint" / "model.safetensors")).items())
    meta = json.loads((out / "config.json").read_text())
    assert "resume" not in meta["train"] and "out" not in meta["train"] and meta["steps_done"] == 4
    assert meta["train_seconds"] >= state["train_seconds"] > 0  # cumulative over both sessions
    backend = PixelBackend.load(out, num_steps=3)
    assert backend.num_classes == 3 and backend.config.class_names == ["a", "b", "c"]


def test_resume_without_a_checkpoint_is_an_error(folder, tmp_path, capsys):
    rc = main(["train-model", "--dataset", str(folder), "--out", str(tmp_path / "m"), "--image-size", "8",
               "--channels", "8", "16", "--steps", "2", "--resume"])
    assert rc == 2 and "no checkpoint" in capsys.readouterr().err


def test_image_size_mismatch_is_named(folder, tmp_path, capsys):
    rc = main(["train-model", "--dataset", str(folder), "--out", str(tmp_path / "m"), "--steps", "1"])
    assert rc == 2 and "8px but the model is 28px" in capsys.readouterr().err
    assert not (tmp_path / "m" / "model.safetensors").exists()


def test_snapshot_steps_keep_loadable_models_along_the_training(folder, tmp_path):
    out = tmp_path / "m"
    assert main(["train-model", "--dataset", str(folder), "--out", str(out), "--image-size", "8", "--channels", "8", "16",
                 "--batch-size", "4", "--steps", "3", "--snapshot-steps", "1", "2", "--device", "cpu"]) == 0
    for step in (1, 2):
        meta = json.loads((out / "snapshots" / f"step-{step:06d}" / "config.json").read_text())
        assert meta["steps_done"] == step and "device" not in meta["train"]
        assert PixelBackend.load(out / "snapshots" / f"step-{step:06d}", num_steps=2).num_classes == 3
    snap = load_file(str(out / "snapshots" / "step-000001" / "model.safetensors"))
    final = load_file(str(out / "model.safetensors"))
    assert any((snap[k] != v).any() for k, v in final.items())


def test_layers_per_block_and_attention_reach_the_model(folder, tmp_path):
    out = tmp_path / "m"
    assert main(["train-model", "--dataset", str(folder), "--out", str(out), "--image-size", "8", "--channels", "8", "16",
                 "--layers-per-block", "2", "--attention", "--batch-size", "4", "--steps", "1"]) == 0
    cfg = PixelBackend.load(out, num_steps=2).config
    assert cfg.layers_per_block == 2 and cfg.attention

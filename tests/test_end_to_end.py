"""End-to-end runs on the embedded default with the shipped model (minutes: `pytest -m slow`)."""
import json

import pytest

from dsco.cli import main
from dsco.outputset import read_manifest, verify


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dsco", "diffusion", "d4m", "mgd3"])
def test_the_shipped_model_makes_a_verified_set_that_trains_a_classifier(method, tmp_path, capsys):
    out = tmp_path / method
    assert main(["concentrate", "--method", method, "--ipc", "1", "--out", str(out)]) == 0
    assert verify(out) == [] and read_manifest(out)["counts"] == [1] * 10
    assert main(["evaluate", str(out), "--runs", "1", "--max-steps", "100", "--json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["mean"] > 0.2  # ten digits, one each, beat chance

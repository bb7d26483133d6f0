"""Seeded sets are what they were: every method's IPC 2 set on mnist5k and on a tiny DiT has the fingerprint
recorded in benchmarks/results/set_hashes.json (about 10 minutes on one core: `pytest -m slow`). Run it before and
after a refactor that should change nothing; a change the refactor means to make re-records the file with
`python benchmarks/set_hashes.py --out benchmarks/results/set_hashes.json` and says why in the commit."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_methods_seeded_set_has_its_recorded_fingerprint():
    spec = importlib.util.spec_from_file_location("set_hashes", ROOT / "benchmarks" / "set_hashes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--check", str(ROOT / "benchmarks" / "results" / "set_hashes.json")]) == 0

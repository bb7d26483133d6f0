"""torchrun: classes sharded across ranks give exactly the set one process gives."""
import os
import subprocess
import sys

from dsco.outputset import read_manifest, verify
from conftest import kill_when


def test_two_process_torchrun_writes_the_same_set_as_one_process_and_resumes_a_killed_run(folder, tiny_model_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same kernels in both runs; torchrun sets 1 thread anyway
    args = ["concentrate", "--dataset", str(folder), "--model", str(tiny_model_dir), "--ipc", "2",
            "--sampling-steps", "30", "--iterations", "2", "--feature-width", "16"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dsco", *args]
    subprocess.run([sys.executable, "-m", "dsco", *args, "--out", str(tmp_path / "one")],
                   env=env, check=True, timeout=300, capture_output=True)
    two = subprocess.run([*torchrun, "--out", str(tmp_path / "two")], env=env, timeout=300, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-5000:]
    assert verify(tmp_path / "two") == []
    key = lambda m: [(e["path"], e["label"], e["sha256"]) for e in m["images"]]  # noqa: E731
    assert key(read_manifest(tmp_path / "two")) == key(read_manifest(tmp_path / "one"))
    assert not (tmp_path / ".two.work").exists()

    # a one-process run killed after its first class, resumed by two ranks
    proc = subprocess.Popen([sys.executable, "-m", "dsco", *args, "--out", str(tmp_path / "cut")], env=env, stderr=subprocess.DEVNULL)
    record = tmp_path / ".cut.work" / "classes" / "a.json"
    kill_when(proc, record)
    assert record.exists() and not (tmp_path / "cut").exists()
    resumed = subprocess.run([*torchrun, "--out", str(tmp_path / "cut"), "--resume"], env=env, timeout=300, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert key(read_manifest(tmp_path / "cut")) == key(read_manifest(tmp_path / "one"))


def test_evaluate_under_torchrun_trains_with_ddp_and_rank0_reports(folder, test_folder, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "dsco", "evaluate", "--full", "--dataset", str(folder), "--test-dataset", str(test_folder),
                          "--max-steps", "4", "--runs", "1", "--width", "8", "--json", str(tmp_path / "r.json")],
                         env=env, timeout=300, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-5000:]
    assert run.stdout.count("top-1") == 1  # one report, from rank 0
    assert (tmp_path / "r.json").is_file()


def test_a_command_leaves_the_process_group_it_joined_whether_it_succeeds_or_fails(tmp_path, monkeypatch):
    """An open gloo group torn down at interpreter exit aborts the process ("terminate called without an active
    exception"), so the CLI closes it itself, after a success and after a user error."""
    import torch.distributed as dist

    from dsco import cli

    ok = tmp_path / "ok"

    def verify(a):  # succeeds for `ok`, a user error otherwise
        if a.set != str(ok):
            raise cli.DscoError("no such set")

    monkeypatch.setattr(cli, "_verify", verify)
    for n, (argv, code) in enumerate(((["verify", str(ok)], 0), (["verify", str(tmp_path / "missing")], 2))):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / f'store{n}'}", rank=0, world_size=1)
        assert cli.main(argv) == code
        assert not dist.is_initialized()

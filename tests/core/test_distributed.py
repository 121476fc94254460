"""Training under ``torchrun --nproc_per_node=2`` on CPU (gloo): every process ends with the same weights,
the saved model loads in a single process, and a batch of files is split across the processes and resumable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_cryoden import distributed
from napari_cryoden.io.mrc import read_mrc, write_mrc

WORKER = Path(__file__).resolve().parents[1] / "data" / "ddp_worker.py"


def _torchrun(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def _losses(history):
    """The history without wall-clock fields (each process keeps its own clock)."""
    return [{k: v for k, v in h.items() if k != "seconds"} if isinstance(h, dict) else h for h in history]


def test_two_processes_end_with_identical_weights_and_the_model_loads_alone(tmp_path):
    from napari_cryoden.denoise.engine import TrainedDenoiser, iter_predict
    from napari_cryoden.progress import run

    _torchrun([str(WORKER), str(tmp_path)], cwd=tmp_path)
    for what in ("denoise", "siamese", "udl"):
        r0 = torch.load(tmp_path / f"{what}_rank0.pt", weights_only=False)
        r1 = torch.load(tmp_path / f"{what}_rank1.pt", weights_only=False)
        _same_state(r0["state"], r1["state"])
        assert _losses(r0["history"]) == _losses(r1["history"])  # losses are averaged over the processes
    hist = torch.load(tmp_path / "denoise_rank0.pt", weights_only=False)["history"]
    assert len(hist) == 10 and all(np.isfinite(hist))
    misc = [torch.load(tmp_path / f"misc_rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert misc[0]["share"] == [0, 2, 4] and misc[1]["share"] == [1, 3]
    assert not misc[0]["solo_active"] and not misc[1]["solo_active"]

    model = TrainedDenoiser.load(tmp_path / "denoiser.pt")  # in this single process
    _same_state(model.net.state_dict(), torch.load(tmp_path / "denoise_rank0.pt", weights_only=False)["state"])
    out = run(iter_predict(model, np.random.default_rng(1).normal(size=(16, 32, 32)).astype(np.float32)))
    assert out.shape == (16, 32, 32) and np.isfinite(out).all()


def test_cli_batch_under_torchrun_splits_the_files_and_resumes(tmp_path):
    rng = np.random.default_rng(0)
    inputs = []
    for i in range(3):
        path = tmp_path / f"tomo{i}.mrc"
        write_mrc(path, rng.normal(size=(16, 32, 32)).astype(np.float32), voxel_size=7.0)
        inputs.append(str(path))
    args = ["-m", "napari_cryoden.cli", "-q", "denoise", *inputs, "-o", str(tmp_path / "out"), "--method",
            "fourier-n2n", "--epochs", "1", "--device", "cpu", "--patch-size", "16",
            "--base-channels", "4", "--depth", "2", "--n-predictions", "1",
            "--save-model", str(tmp_path / "model.pt")]
    proc = _torchrun(args, cwd=tmp_path)
    outs = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in outs] == [f"tomo{i}_denoised.mrc" for i in range(3)]
    assert "(rank 0)" in proc.stdout and "(rank 1)" in proc.stdout  # both processes wrote outputs
    assert read_mrc(outs[0]).voxel_size == pytest.approx((7.0, 7.0, 7.0))
    assert (tmp_path / "model.pt").exists() and not list(tmp_path.rglob("*.part"))

    # A crash lost one output: the re-run (one process) reuses the saved model and redoes only that file.
    outs[1].unlink()
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    from napari_cryoden.cli import main

    assert main(args[2:]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    assert set(after) == {f"tomo{i}_denoised.mrc" for i in range(3)}
    assert all(after[name] == t for name, t in before.items())  # finished files were not touched


def test_single_process_context_changes_nothing():
    ctx = distributed.context()
    assert ctx.world_size == 1 and ctx.is_main and not ctx.active
    assert distributed.rank_seed(5, ctx) == 5
    assert distributed.agree(True, ctx) and not distributed.agree(False, ctx)
    assert distributed.mean(2.5, ctx) == 2.5
    assert distributed.shard([1, 2, 3], ctx) == [1, 2, 3]
    net = torch.nn.Linear(2, 2)
    assert distributed.wrap(net, ctx) is net and distributed.unwrap(net) is net

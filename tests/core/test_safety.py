"""No input is ever changed, and faults become messages, never partial files.

One test per way a real user lost data or got a traceback (issue "Safety and robustness"): outputs that are the
stack a STAR file points to (directly, through a symlink, a hard link or another letter case), an existing
unrelated file, a batch run into its own input folder, SIGTERM / SIGKILL mid-write, a full or read-only file
system (real tmpfs mounts when we may mount; skipped otherwise).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _cli import run

from napari_cryoden.errors import CryodenOutputError
from napari_cryoden.io.mrc import MrcWriter, read_mrc, write_mrc
from napari_cryoden.io.outputs import AtomicOutput, input_files, remove_stale_temporaries
from napari_cryoden.io.star import ParticleTable, make_optics_table, write_star


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones included) with its content hash."""
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def particles(tmp_path):
    """``raw/parts.star`` pointing at ``raw/stack.mrcs`` (24 noisy 32² images)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32] - 15.5
    blob = np.exp(-(xx**2 + (yy / 2) ** 2) / 20).astype(np.float32)
    images = np.stack([blob + 0.3 * rng.standard_normal(blob.shape).astype(np.float32) for _ in range(24)])
    write_mrc(raw / "stack.mrcs", images, voxel_size=2.0, is_stack=True)
    import pandas as pd

    rows = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@stack.mrcs" for i in range(24)], "rlnOpticsGroup": 1})
    write_star(raw / "parts.star", ParticleTable(rows, make_optics_table(pixel_size=2.0, image_size=32)))
    return raw


# --------------------------------------------------------------------------------- outputs onto inputs
@pytest.mark.parametrize("command, option", [
    ("align", "--aligned"), ("align", "--average"), ("cluster", "--averages"), ("cluster", "--embedding"),
])
def test_an_output_onto_the_stack_a_star_points_to_is_refused(particles, capsys, tmp_path, command, option):
    before = snapshot(tmp_path)
    extra = ["--classes", "2", "--method", "pca-kmeans"] if command == "cluster" else ["--max-shift", "2"]
    rc, _, err = run(capsys, command, particles / "parts.star", "-o", tmp_path / "out.star",
                     option, particles / "stack.mrcs", *extra, "--device", "cpu")
    assert rc == 2
    assert "stack.mrcs" in err and "parts.star" in err and "overwrite an input" in err
    assert snapshot(tmp_path) == before  # nothing written, nothing changed


@pytest.mark.parametrize("link", ["symlink", "hardlink", "case"])
def test_links_and_letter_case_of_an_input_are_refused(particles, capsys, tmp_path, link):
    target = particles / "other.mrcs"
    if link == "symlink":
        target.symlink_to(particles / "stack.mrcs")
    elif link == "hardlink":
        os.link(particles / "stack.mrcs", target)
    else:
        target = particles / "STACK.MRCS"
    before = snapshot(tmp_path)
    rc, _, err = run(capsys, "align", particles / "parts.star", "-o", tmp_path / "out.star", "--aligned", target,
                     "--max-shift", "2", "--device", "cpu")
    assert rc == 2 and "stack.mrcs" in err
    assert ("letter case" in err) if link == "case" else ("overwrite an input" in err)
    assert snapshot(tmp_path) == before


def test_input_files_lists_the_stacks_of_a_star_file(particles):
    found = input_files([particles / "parts.star"])
    assert particles / "stack.mrcs" in {Path(p) for p in found}
    assert "parts.star" in found[next(p for p in found if Path(p).name == "stack.mrcs")]


def test_an_existing_unrelated_output_is_kept_without_overwrite(tmp_path, capsys):
    vol = np.random.default_rng(1).standard_normal((8, 16, 16)).astype(np.float32)
    write_mrc(tmp_path / "in.mrc", vol, voxel_size=3.0)
    precious = tmp_path / "precious.mrc"
    precious.write_bytes(b"my only copy")
    rc, _, err = run(capsys, "denoise", tmp_path / "in.mrc", "-o", precious, "--method", "gaussian")
    assert rc == 2 and "precious.mrc" in err and "--overwrite" in err
    assert precious.read_bytes() == b"my only copy"
    rc, _, err = run(capsys, "denoise", tmp_path / "in.mrc", "-o", precious, "--method", "gaussian", "--overwrite")
    assert rc == 0, err
    assert read_mrc(precious).data.shape == vol.shape


def test_a_batch_into_its_own_input_folder_does_not_take_its_outputs_as_inputs(tmp_path, capsys):
    rng = np.random.default_rng(2)
    for name in ("a", "b"):
        write_mrc(tmp_path / f"{name}.mrc", rng.standard_normal((6, 12, 12)).astype(np.float32), voxel_size=2.0)
    for _ in range(2):  # the second run is the re-run that used to pick up a_denoised.mrc
        rc, _, err = run(capsys, "denoise", tmp_path, "-o", tmp_path, "--method", "gaussian")
        assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mrc", "a_denoised.mrc", "b.mrc", "b_denoised.mrc"]


def test_a_particle_batch_into_its_own_folder_skips_its_outputs(particles, capsys):
    import shutil

    shutil.copy(particles / "parts.star", particles / "more.star")
    for _ in range(2):
        rc, _, err = run(capsys, "-q", "align", particles, "-o", particles, "--max-shift", "2", "--device", "cpu")
        assert rc == 0, err
    stars = sorted(p.name for p in particles.glob("*.star"))
    assert stars == ["more.star", "more_aligned.star", "parts.star", "parts_aligned.star"]


# ------------------------------------------------------------------------------------------ stale files
def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    out = tmp_path / "vol.mrc"
    code = (f"import os, numpy as np; from napari_cryoden.io.mrc import MrcWriter\n"
            f"w = MrcWriter({str(out)!r}, (4, 8, 8), voxel_size=1.0)\n"
            f"a = w.__enter__(); a[:] = 1; print('ready', flush=True); os.kill(os.getpid(), 9)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL and "ready" in proc.stdout
    stale = [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    assert len(stale) == 1 and not out.exists()  # never a file under the final name
    write_mrc(out, np.zeros((4, 8, 8), np.float32), voxel_size=1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vol.mrc"]


def test_stale_temporaries_of_live_processes_are_kept(tmp_path):
    out = tmp_path / "x.mrc"
    with AtomicOutput(out) as tmp:
        tmp.write_bytes(b"in progress")
        assert remove_stale_temporaries(out) == []  # ours (this process is alive)
        assert tmp.exists()


def _wait_for(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_sigterm_during_prediction_cleans_up_and_exits_143(tmp_path):
    vol = np.random.default_rng(3).standard_normal((48, 96, 96)).astype(np.float32)
    write_mrc(tmp_path / "in.mrc", vol, voxel_size=2.0)
    out = tmp_path / "den.mrc"
    proc = subprocess.Popen([sys.executable, "-m", "napari_cryoden.cli", "-q", "denoise", str(tmp_path / "in.mrc"),
                             "-o", str(out), "--method", "self2self", "--time-budget", "1", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The memory-mapped output exists from the first predicted tile on: terminate mid-prediction.
        assert _wait_for(lambda: any(p.name.endswith(".part") for p in tmp_path.iterdir()), 240)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "terminated" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mrc"]


# ------------------------------------------------------------------------------- full / read-only disks
@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only); skipped where mounting is not allowed."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_memory_mapped_output_on_a_full_disk_is_an_error_not_sigbus(small_disk):
    out = small_disk / "big.mrc"
    # In a subprocess: before the fix this died of SIGBUS (exit -7) while filling the map.
    code = (f"import sys, numpy as np\nfrom napari_cryoden.io.mrc import MrcWriter\n"
            f"from napari_cryoden.errors import CryodenOutputError\n"
            f"try:\n    with MrcWriter({str(out)!r}, (16, 256, 256), voxel_size=1.0) as a:\n        a[:] = 1.0\n"
            f"except CryodenOutputError as e:\n    print(e); sys.exit(2)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "big.mrc" in proc.stdout and "MiB" in proc.stdout
    assert list(small_disk.iterdir()) == []


def test_writes_onto_a_full_disk_exit_2_and_leave_nothing(small_disk, tmp_path, capsys):
    vol = np.random.default_rng(4).standard_normal((16, 128, 128)).astype(np.float32)  # 1 MiB
    write_mrc(tmp_path / "in.mrc", vol, voxel_size=2.0)
    (small_disk / "filler").write_bytes(b"\0" * (1536 << 10))
    for out in ("den.mrc",):
        rc, _, err = run(capsys, "denoise", tmp_path / "in.mrc", "-o", small_disk / out, "--method", "gaussian")
        assert rc == 2 and out in err and "free" in err
    with pytest.raises(CryodenOutputError, match="no space left"):
        write_mrc(small_disk / "w.mrc", vol, voxel_size=2.0)  # mrcfile's own write path
    with pytest.raises(CryodenOutputError, match="no space left"):  # starfile's (pandas') write path
        import pandas as pd

        rows = pd.DataFrame({"rlnImageName": [f"{i:06d}@{'x' * 200}.mrcs" for i in range(1, 20_000)]})
        write_star(small_disk / "p.star", ParticleTable(rows, make_optics_table(pixel_size=1.0, image_size=8)))
    with pytest.raises(CryodenOutputError, match="no space left"):
        from napari_cryoden.models import ModelFile, save_model

        save_model(small_disk / "m.pt", ModelFile(kind="x", config={}, state_dict={"w": __import__("torch").zeros(
            300_000)}))
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_a_read_only_file_system_is_a_message(small_disk, tmp_path, capsys):
    write_mrc(tmp_path / "in.mrc", np.ones((4, 16, 16), np.float32), voxel_size=2.0)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    rc, _, err = run(capsys, "denoise", tmp_path / "in.mrc", "-o", small_disk / "den.mrc", "--method", "gaussian")
    assert rc == 2 and "den.mrc" in err
    with pytest.raises(CryodenOutputError, match="read-only"):
        with AtomicOutput(small_disk / "x.txt", inputs=()) as tmp:
            tmp.write_text("x")


def test_mrcwriter_reserves_the_blocks_it_maps(tmp_path):
    with MrcWriter(tmp_path / "v.mrc", (8, 64, 64), voxel_size=1.0) as arr:
        part = next(p for p in tmp_path.iterdir() if p.name.endswith(".part"))
        assert os.stat(part).st_blocks * 512 >= arr.nbytes  # allocated, not a sparse hole
        arr[:] = 2.0
    assert read_mrc(tmp_path / "v.mrc").data.mean() == 2.0


# ------------------------------------------------------------------------------------- resumed trainings
def _phantom(seed: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:16, :32, :32]
    clean = (np.sin(xx / 3.0) * np.cos(yy / 4.0) + 0.5 * np.sin(zz / 2.0)).astype(np.float32)
    return clean + 0.5 * rng.standard_normal(clean.shape).astype(np.float32)


def test_a_denoise_training_resumed_from_its_checkpoint_ends_as_the_uninterrupted_one(tmp_path):
    from napari_cryoden.checkpoint import Checkpointer
    from napari_cryoden.denoise.engine import default_params, iter_train
    from napari_cryoden.progress import run

    vol = _phantom()
    params = default_params("self2self", dims=3, epochs=2, time_budget=0, patch_size=16, batch_size=2,
                            smooth_sigmas="")
    whole = run(iter_train(vol, params, method="self2self", seed=1, device="cpu"))
    total = len(whole.history)
    assert total >= 20

    ckpt = Checkpointer(tmp_path / "den.mrc.ckpt", every=1e-9)  # a checkpoint after every step
    gen = iter_train(vol, params, method="self2self", seed=1, device="cpu", checkpoint=ckpt)
    for _ in range(7):  # "killed" after 7 steps: the generator is abandoned, its checkpoint stays
        next(gen)
    gen.close()
    assert ckpt.load()["step"] == 7

    events = []
    resumed = run(iter_train(vol, params, method="self2self", seed=1, device="cpu", checkpoint=ckpt, resume=True),
                  events.append)
    assert events[0].info["resumed_from"] == 7 and events[0].step == 7
    assert len(resumed.history) == total  # not started over, not trained longer
    np.testing.assert_allclose(resumed.history, whole.history, rtol=1e-4, atol=1e-6)  # same data, same states
    other = default_params("self2self", dims=3, epochs=3, time_budget=0, patch_size=16, batch_size=2,
                           smooth_sigmas="")
    with pytest.raises(Exception, match="other data or settings"):
        run(iter_train(vol, other, method="self2self", seed=1, device="cpu", checkpoint=ckpt, resume=True))


def test_cryoden_denoise_killed_mid_training_resumes_with_resume(tmp_path):
    write_mrc(tmp_path / "in.mrc", _phantom(), voxel_size=2.0)
    out, ckpt = tmp_path / "den.mrc", tmp_path / "den.mrc.ckpt"
    argv = [sys.executable, "-m", "napari_cryoden.cli", "-q", "denoise", str(tmp_path / "in.mrc"), "-o", str(out),
            "--method", "self2self", "--epochs", "20", "--time-budget", "0", "--patch-size", "16", "--batch-size",
            "2", "--device", "cpu", "--checkpoint-every", "0.3", "--save-model", str(tmp_path / "m.pt")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(ckpt.exists, 240)
        proc.kill()  # kill -9: no clean-up runs
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert not out.exists() and not (tmp_path / "m.pt").exists()
    import torch

    state = torch.load(ckpt, weights_only=True)["state"]  # complete (written atomically) and loadable
    assert state["step"] > 0
    done = subprocess.run(argv + ["--resume"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"resumed from {ckpt} at step" in done.stdout
    resumed_at = int(done.stdout.split(" at step ")[1].split()[0])
    assert resumed_at >= state["step"] > 0
    from napari_cryoden.denoise.engine import TrainedDenoiser

    model = TrainedDenoiser.load(tmp_path / "m.pt")
    steps_per_epoch = 10  # the minimum: this volume is smaller than one epoch of patches
    assert len(model.history) == 20 * steps_per_epoch
    assert out.exists() and not ckpt.exists()  # finished: the checkpoint is gone


def _particles_for_training(n: int = 48, box: int = 32, seed: int = 0):
    from napari_cryoden.sample_data import builtin_map
    from napari_cryoden.simulate import project_map, resample_map, simulate_alignment_stack

    m = builtin_map()
    vol = resample_map(np.asarray(m.data), voxel_size=m.pixel_size, pixel_size=m.pixel_size * 1.8, box=box)
    ref = project_map(vol, rot=0.0, tilt=0.0, psi=0.0)[0].astype(np.float32)
    return simulate_alignment_stack(ref, pixel_size=1.0, n_per_image=n, max_shift=2, integer_shifts=False,
                                    ctf_mode="none", snr=2.0, seed=seed)


@pytest.mark.parametrize("joint", [False, True], ids=["udl", "judl"])
def test_an_alignment_training_resumes_where_it_stopped(tmp_path, joint):
    from napari_cryoden.align.udl import DeepAlignParams, iter_train
    from napari_cryoden.checkpoint import Checkpointer
    from napari_cryoden.progress import run

    sim = _particles_for_training()
    params = DeepAlignParams(epochs=2, steps_per_epoch=3, batch_size=8, seed=3)
    reference = sim.references[0] if joint else None
    whole = run(iter_train(sim.images, reference, params, joint=joint))
    ckpt = Checkpointer(tmp_path / "a.star.ckpt", every=1e-9)
    gen = iter_train(sim.images, reference, params, joint=joint, checkpoint=ckpt)
    for _ in range(4):  # stopped inside the second epoch
        next(gen)
    gen.close()
    events = []
    resumed = run(iter_train(sim.images, reference, params, joint=joint, checkpoint=ckpt, resume=True), events.append)
    assert events[0].info["resumed_from"] == 4
    steps = [h["step"] for h in resumed.extra["history"]]
    assert steps == list(range(1, 7))  # each step once: none repeated, none skipped
    np.testing.assert_allclose([h["angle_loss"] for h in resumed.extra["history"]],
                               [h["angle_loss"] for h in whole.extra["history"]], rtol=1e-4, atol=1e-6)


def test_a_siamese_training_resumes_from_its_last_round(tmp_path):
    from napari_cryoden.checkpoint import Checkpointer
    from napari_cryoden.cluster.siamese import SiameseParams, iter_train_siamese
    from napari_cryoden.progress import run

    rng = np.random.default_rng(0)
    images = rng.standard_normal((40, 16, 16)).astype(np.float32)
    images[:20, 6:10, 6:10] += 2.0
    labels = (np.arange(40) >= 20).astype(np.int64)
    params = SiameseParams(rounds=3, min_steps=4, max_steps=4, batch_size=8, stop_ari=1.0, seed=1)
    ckpt = Checkpointer(tmp_path / "c.star.ckpt", every=1e-9)
    gen = iter_train_siamese(images, 2, labels, params, checkpoint=ckpt)
    while not ckpt.path.exists():  # run until the first round is saved, then "kill"
        next(gen)
    gen.close()
    assert ckpt.load()["round"] == 1
    events = []
    result = run(iter_train_siamese(images, 2, labels, params, checkpoint=ckpt, resume=True), events.append)
    assert events[0].info["resumed_from"] == 4 and events[0].info["round"] == 1
    assert [h["round"] for h in result.history] == [1, 2, 3]  # round 1 from the checkpoint, 2-3 trained now


# --------------------------------------------------------------------- bad inputs through the commands
def _star_text(optics: str, particles: str) -> str:
    return f"data_optics\n\nloop_\n{optics}\n\ndata_particles\n\nloop_\n{particles}\n"


@pytest.mark.parametrize("case", ["nan pixel", "inf pixel", "magnification 0", "empty table", "index past end"])
def test_bad_star_files_exit_2_naming_the_file_and_change_nothing(particles, capsys, tmp_path, case):
    star = particles / "bad.star"
    if case in ("nan pixel", "inf pixel"):
        value = "nan" if case == "nan pixel" else "inf"
        star.write_text(_star_text("_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n_rlnImageSize #3\n"
                                   f"_rlnImageDimensionality #4\n1 {value} 32 2",
                                   "_rlnImageName #1\n_rlnOpticsGroup #2\n" +
                                   "\n".join(f"{i:06d}@stack.mrcs 1" for i in range(1, 25))))
    elif case == "magnification 0":  # RELION 3.0: no optics table, pixel size from detector pixel / magnification
        star.write_text("data_\n\nloop_\n_rlnImageName #1\n_rlnDetectorPixelSize #2\n_rlnMagnification #3\n" +
                        "\n".join(f"{i:06d}@stack.mrcs 5.0 0" for i in range(1, 25)) + "\n")
    elif case == "empty table":
        star.write_text(_star_text("_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n1 2.0", "_rlnImageName #1\n"))
    else:
        star.write_text(_star_text("_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n1 2.0",
                                   "_rlnImageName #1\n000001@stack.mrcs\n000099@stack.mrcs"))
    before = snapshot(tmp_path)
    rc, out, err = run(capsys, "align", star, "-o", tmp_path / "out.star", "--max-shift", "2", "--device", "cpu")
    assert rc == 2, (out, err)
    assert "bad.star" in err and "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_compressed_maps_from_emdb_open_in_the_cli(tmp_path, capsys):
    import bz2
    import gzip

    vol = np.random.default_rng(6).standard_normal((8, 16, 16)).astype(np.float32)
    write_mrc(tmp_path / "emd_1.map", vol, voxel_size=1.7)
    raw = (tmp_path / "emd_1.map").read_bytes()
    (tmp_path / "emd_1.map").unlink()
    (tmp_path / "emd_1.map.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "emd_2.map.bz2").write_bytes(bz2.compress(raw))
    for name in ("emd_1.map.gz", "emd_2.map.bz2"):
        rc, out, err = run(capsys, "info", tmp_path / name)
        assert rc == 0, err
        assert "1.7" in out
    rc, _, err = run(capsys, "denoise", tmp_path / "emd_1.map.gz", "-o", tmp_path / "den.mrc", "--method", "gaussian")
    assert rc == 0, err
    den = read_mrc(tmp_path / "den.mrc")
    assert den.data.shape == vol.shape and den.voxel_size == pytest.approx((1.7, 1.7, 1.7))
    (tmp_path / "cut.map.gz").write_bytes(gzip.compress(raw)[:-200])  # a download cut short
    rc, _, err = run(capsys, "info", tmp_path / "cut.map.gz")
    assert rc == 2 and "cut.map.gz" in err and "truncated" in err


def test_a_batch_lists_compressed_maps_and_names_outputs_uncompressed(tmp_path, capsys):
    import gzip

    write_mrc(tmp_path / "emd_1.map", np.ones((4, 8, 8), np.float32), voxel_size=1.0)
    (tmp_path / "emd_1.map.gz").write_bytes(gzip.compress((tmp_path / "emd_1.map").read_bytes()))
    (tmp_path / "emd_1.map").rename(tmp_path / "emd_2.map")
    out = tmp_path / "out"
    rc, _, err = run(capsys, "denoise", tmp_path, "-o", out, "--method", "gaussian")
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["emd_1_denoised.map", "emd_2_denoised.map"]


def test_progress_follows_a_time_budget_and_reports_measured_rates():
    from napari_cryoden.progress import ProgressEvent

    # 3 of 1000 steps done, but the 60 s budget is 45 s spent: 75 %, not 0.3 %.
    ev = ProgressEvent("train", 3, 1000, elapsed=45.0, eta=15.0)
    assert ev.fraction == pytest.approx(0.75)
    assert ev.rate == pytest.approx(3 / 45)
    # Without a budget the ETA is linear in steps and the fraction is the steps' share.
    assert ProgressEvent("train", 250, 1000, elapsed=10.0, eta=30.0).fraction == pytest.approx(0.25)
    assert ProgressEvent("x", 0, 0).fraction is None and ProgressEvent("x", 0, 5).rate is None


def test_a_budget_too_short_for_a_meaningful_training_says_so(monkeypatch):
    import warnings as _warnings

    from napari_cryoden.denoise import engine
    from napari_cryoden.denoise.engine import default_params, iter_train
    from napari_cryoden.progress import run

    # "Too short" measured against an unreachable number of steps, so the test holds on any CPU's speed.
    monkeypatch.setattr(engine, "MEANINGFUL_STEPS", 10**9)
    vol = _phantom()
    # 2 s: the warning comes after three steps, or at the end when a loaded CPU fits fewer in the budget.
    short = default_params("self2self", dims=3, epochs=1000, time_budget=2.0, patch_size=16, batch_size=2)
    with pytest.warns(UserWarning, match="budget allow(s about|ed only)"):
        model = run(iter_train(vol, short, method="self2self", seed=0, device="cpu"))
    steps_only = default_params("self2self", dims=3, epochs=1, time_budget=0, patch_size=16, batch_size=2)
    with _warnings.catch_warnings():
        _warnings.simplefilter("error", UserWarning)  # no budget: nothing to warn about
        run(iter_train(vol, steps_only, method="self2self", seed=0, device="cpu"))
        # nor when a trained model goes on (fine-tuning the shipped model): it is more than a smoothing already
        run(iter_train(vol, short, method="self2self", model=model, seed=0, device="cpu"))

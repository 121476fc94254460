"""Supervised denoisers: cGAN and autoencoder train, save, load and predict; the trained generator beats the
per-image mean and the raw input on images it never saw."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cryoden.denoise import get_method
from napari_cryoden.denoise.supervised import SupervisedParams, iter_train_supervised, lowpass
from napari_cryoden.errors import CryodenInputError
from napari_cryoden.models import load_model, save_model
from napari_cryoden.progress import ProgressEvent, run

TRAIN = dict(n_pairs=64, box=32, channels=8, depth=2, residual_blocks=1, batch_size=16, snr=0.5, crop=32,
             target_resolution=10.0)
#: 10 epochs (40 steps): with 3 the generator was still worse than a flat image at the per-image mean (MSE 1.05x
#: that of the flat image on the test particles); at 10 it is 0.35-0.43x for training seeds 0-2, 1 and 2 threads.
EPOCHS = 10


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    out = {}
    for kind in ("autoencoder", "cgan"):
        events: list[ProgressEvent] = []
        model = run(iter_train_supervised(kind, epochs=EPOCHS, seed=0, **TRAIN), events.append)
        path = save_model(folder / f"{kind}.pt", model)
        out[kind] = (model, path, events)
    return out


@pytest.fixture(scope="module")
def test_particles():
    from napari_cryoden.sample_data import builtin_map
    from napari_cryoden.simulate import simulate_particles

    m = builtin_map()
    sim = simulate_particles(m.data, voxel_size=m.pixel_size, n_particles=6, box=32, snr=0.5, ctf_mode="full",
                             seed=99)
    return sim.images, sim.clean


@pytest.fixture(scope="module")
def held_out_pairs():
    """16 standardised (noisy, target) pairs simulated with another seed than the training pairs (seed 0)."""
    from napari_cryoden.denoise.supervised.train import simulate_training_pairs, standardise
    from napari_cryoden.sample_data import builtin_map

    m = builtin_map()
    noisy, target, _ = simulate_training_pairs([m.data], [m.pixel_size], n_pairs=16, box=32, snr=0.5,
                                               target_resolution=10.0, seed=7)
    x, y, _, _ = standardise(torch.as_tensor(noisy)[:, None], torch.as_tensor(target)[:, None])
    return x, y


@pytest.mark.parametrize("kind", ["autoencoder", "cgan"])
def test_training_reports_progress_and_beats_the_flat_image_on_held_out_pairs(kind, trained, held_out_pairs):
    from napari_cryoden.denoise.supervised.networks import build_generator

    model, _, events = trained[kind]
    hist = model.extra["history"]
    assert len(hist["train_loss"]) == EPOCHS and np.isfinite(hist["train_loss"] + hist["val_l1"]).all()
    train_events = [e for e in events if e.stage == "train"]
    assert train_events[-1].step == model.extra["training"]["steps"] and train_events[-1].loss is not None
    assert model.kind == f"denoise/{kind}"
    assert ("discriminator" in model.extra) == (kind == "cgan")
    # What the training achieved, on pairs it never saw (not the loss trajectory, which is a different float
    # path on every CPU): L1 to the target in standardised units. Baselines: the per-image mean (output 0:
    # 0.449), the noisy input itself (0.655) and an untrained generator (0.52-0.71 for seeds 0-2). Measured after
    # training: 0.27-0.31 for seeds 0-2 at 1 and 2 threads (0.279 with seed 0).
    x, y = held_out_pairs
    trained_gen = build_generator(model.config)
    trained_gen.load_state_dict(model.state_dict)
    torch.manual_seed(0)
    untrained_gen = build_generator(model.config)
    with torch.no_grad():
        l1 = {"trained": float((trained_gen.eval()(x) - y).abs().mean()),
              "untrained": float((untrained_gen.eval()(x) - y).abs().mean()),
              "per-image mean": float(y.abs().mean()), "identity": float((x - y).abs().mean())}
    assert l1["trained"] < 0.8 * min(l1["per-image mean"], l1["identity"], l1["untrained"]), l1


@pytest.mark.parametrize("kind", ["autoencoder", "cgan"])
def test_save_load_predict_beats_the_flat_image_and_the_raw_input(kind, trained, test_particles):
    model, path, _ = trained[kind]
    loaded = load_model(path, kind=f"denoise/{kind}")
    assert loaded.config == model.config and loaded.normalization["mode"] == "per-image"
    noisy, clean = test_particles
    method = get_method(kind)
    assert method.family == "supervised"
    out = run(method.denoise(noisy, SupervisedParams(model=str(path)), is_stack=True, voxel_size=(4.23, 4.23)))
    assert out.shape == noisy.shape and out.dtype == np.float32
    # Baselines on these particles (SNR 0.5): a flat image at each particle's mean has half the raw input's MSE,
    # so "lower than the raw MSE" alone is passed by it. Measured: 0.35-0.43 x flat and 0.18-0.22 x raw for
    # training seeds 0-2 (0.37 and 0.19 with seed 0), the same at 1 and 2 threads. Not claimed: beating a Gaussian
    # filter tuned on the truth (0.28 x flat at sigma 1); this budget does not.
    err = np.mean((out - clean) ** 2)
    flat = np.mean((np.broadcast_to(noisy.mean(axis=(1, 2), keepdims=True), noisy.shape) - clean) ** 2)
    raw = np.mean((noisy - clean) ** 2)
    assert err < 0.6 * flat and err < 0.3 * raw, (err / flat, err / raw)
    # image by image: a batch gives what images one at a time give; a 2D image works too
    one = run(method.denoise(noisy[2], SupervisedParams(model=str(path)), is_stack=False, voxel_size=None))
    np.testing.assert_allclose(one, out[2], atol=1e-4)


def test_read_only_memmap_and_odd_sizes(trained, tmp_path, test_particles):
    _, path, _ = trained["autoencoder"]
    data = test_particles[0][:2, :30, :27].copy()
    raw = tmp_path / "stack.raw"
    data.tofile(raw)
    mm = np.memmap(raw, dtype=np.float32, mode="r", shape=data.shape)
    out = run(get_method("autoencoder").denoise(mm, SupervisedParams(model=str(path)), is_stack=True,
                                                voxel_size=None))
    assert out.shape == data.shape and np.isfinite(out).all()
    np.testing.assert_array_equal(np.asarray(mm), data)


def test_user_pairs_and_time_budget(test_particles):
    noisy, clean = test_particles
    model = run(iter_train_supervised("autoencoder", noisy=noisy, clean=clean, epochs=None, time_budget=0.5,
                                      channels=4, depth=2, residual_blocks=0, batch_size=2))
    assert model.extra["training"]["source"] == "user pairs"
    assert model.extra["training"]["steps"] >= 1


def test_bad_input(trained, tmp_path, test_particles):
    noisy, clean = test_particles
    _, ae_path, _ = trained["autoencoder"]
    bad = noisy.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(CryodenInputError, match="NaN"):
        run(get_method("cgan").denoise(bad, SupervisedParams(model=str(ae_path)), is_stack=True, voxel_size=None,
                                       name="particles.mrcs"))
    with pytest.raises(CryodenInputError, match="not a denoise/cgan model"):
        run(get_method("cgan").denoise(noisy, SupervisedParams(model=str(ae_path)), is_stack=True, voxel_size=None))
    with pytest.raises(CryodenInputError, match="needs a trained model"):
        run(get_method("cgan").denoise(noisy, SupervisedParams(), is_stack=True, voxel_size=None))
    with pytest.raises(CryodenInputError, match="noisy pairs"):
        run(iter_train_supervised("cgan", noisy=bad, clean=clean, epochs=1))
    with pytest.raises(CryodenInputError, match="shape"):
        run(iter_train_supervised("cgan", noisy=noisy, clean=clean[:, :10], epochs=1))
    with pytest.raises(CryodenInputError, match="1D"):
        run(get_method("autoencoder").denoise(np.zeros(5, np.float32), SupervisedParams(model=str(ae_path)),
                                              is_stack=False, voxel_size=None))


def test_lowpass_removes_high_frequencies(rng):
    img = rng.normal(size=(1, 64, 64)).astype(np.float32)
    out = lowpass(img, resolution=20.0, pixel_size=4.0)              # cutoff 0.2 cycles/pixel
    spec = np.abs(np.fft.fftshift(np.fft.fft2(out[0])))
    f = np.hypot(*np.meshgrid(np.fft.fftshift(np.fft.fftfreq(64)), np.fft.fftshift(np.fft.fftfreq(64))))
    assert spec[f > 0.22].max() < 1e-3 * spec.max()
    np.testing.assert_array_equal(lowpass(img, resolution=5.0, pixel_size=4.0), img)


def test_cli_train_supervised_writes_a_model(tmp_path):
    from napari_cryoden.cli import main

    out = tmp_path / "ae.pt"
    rc = main(["-q", "train-supervised", "autoencoder", "-o", str(out), "-n", "32", "--box", "32", "--epochs", "1",
               "--channels", "4"])
    assert rc == 0 and out.is_file()
    assert load_model(out, kind="denoise/autoencoder").extra["training"]["source"] == "simulated"
    assert main(["train-supervised", "cgan", "-o", str(tmp_path / "x.pt"), "--pairs", str(tmp_path / "no.mrcs"),
                 str(tmp_path / "no2.mrcs")]) == 2
    # The model denoises a stack through `cryoden denoise --method autoencoder --model FILE`.
    from napari_cryoden.io.mrc import read_mrc, write_mrc

    stack = np.random.default_rng(0).normal(size=(3, 32, 32)).astype(np.float32)
    write_mrc(tmp_path / "s.mrcs", stack, voxel_size=4.23, is_stack=True)
    assert main(["-q", "denoise", str(tmp_path / "s.mrcs"), "-o", str(tmp_path / "d.mrcs"), "--method", "autoencoder",
                 "--model", str(out)]) == 0
    result = read_mrc(tmp_path / "d.mrcs")
    assert result.data.shape == stack.shape and result.is_stack and result.pixel_size == pytest.approx(4.23)
    assert main(["denoise", str(tmp_path / "s.mrcs"), "-o", str(tmp_path / "e.mrcs"), "--method", "cgan"]) == 2
    assert not (tmp_path / "e.mrcs").exists()

"""Classical denoisers: each beats a flat image at the particle mean on simulated particles, leaves clean images
almost unchanged, handles stacks image by image, read-only memory maps and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryoden.denoise import get_method
from napari_cryoden.denoise.classical import (
    BM3DParams,
    DDTFParams,
    GaussianParams,
    KSVDParams,
    MedianParams,
    ddtf_images,
    estimate_noise_sigma,
    oracle_filter,
)
from napari_cryoden.errors import CryodenInputError
from napari_cryoden.progress import ProgressEvent, run

# small and fast settings (the defaults are for real data)
FAST = {
    "gaussian": GaussianParams(sigma=1.5),
    "median": MedianParams(size=3),
    "bm3d": BM3DParams(search_window=15),
    "ksvd": KSVDParams(n_atoms=64, iterations=3, train_patches=800, sparsity=2),
    "ddtf": DDTFParams(iterations=8, train_patches=3000),
}


@pytest.fixture(scope="module")
def particles():
    from napari_cryoden.sample_data import builtin_map
    from napari_cryoden.simulate import simulate_particles

    m = builtin_map()
    sim = simulate_particles(m.data, voxel_size=m.pixel_size, n_particles=3, box=48, snr=0.3, ctf_mode="full",
                             seed=3)
    return sim.images, sim.clean


def denoise(method_name, data, *, is_stack, params=None, **kw):
    method = get_method(method_name)
    events = []
    out = run(method.denoise(data, params or FAST[method_name], is_stack=is_stack, voxel_size=(4.23, 4.23), **kw),
              events.append)
    assert events and all(isinstance(e, ProgressEvent) for e in events)
    return out


@pytest.mark.parametrize("name", list(FAST))
def test_beats_the_flat_image_and_the_raw_input(name, particles):
    noisy, clean = particles
    out = denoise(name, noisy, is_stack=True)
    assert out.shape == noisy.shape and out.dtype == np.float32
    err = np.mean((out - clean) ** 2)
    raw = np.mean((noisy - clean) ** 2)
    # At SNR 0.3 a flat image at each particle's mean has 0.30x the raw MSE, so "below half the raw MSE" alone
    # is passed by it; the method must beat that flat image by a margin. Measured (MSE / flat-image MSE, particle
    # seeds 3 and 4, the same at 1 and 2 threads): gaussian 0.31/0.27, median 0.66/0.63, bm3d 0.30/0.27, ksvd
    # 0.40/0.43, ddtf 0.36/0.36. A sigma = 0.5 Gaussian blur (1.44x) fails. Not claimed: beating the Gaussian
    # tuned on the truth (the oracle, test_gaussian_oracle_picks_best_sigma_on_grid); only BM3D matches it here.
    flat = np.mean((np.broadcast_to(noisy.mean(axis=(1, 2), keepdims=True), noisy.shape) - clean) ** 2)
    assert err < 0.8 * flat and err < 0.5 * raw, (err / flat, err / raw)


@pytest.mark.parametrize("name", ["bm3d", "ksvd", "ddtf"])
def test_clean_image_changes_little(name, particles):
    clean = particles[1][0]
    # K-SVD needs its default dictionary size and sparsity to represent fine detail
    params = KSVDParams(iterations=3, train_patches=1000) if name == "ksvd" else None
    out = denoise(name, clean, is_stack=False, params=params)
    assert np.linalg.norm(out - clean) / np.linalg.norm(clean) < 0.1


def test_noise_estimate_matches_white_noise(rng):
    img = rng.normal(0, 2.5, (128, 128))
    assert estimate_noise_sigma(img) == pytest.approx(2.5, rel=0.05)
    stack = rng.normal(0, 1, (3, 64, 64)) * np.array([1.0, 2.0, 3.0])[:, None, None]
    np.testing.assert_allclose(estimate_noise_sigma(stack, per_image=True), [1, 2, 3], rtol=0.1)


def test_ddtf_filter_bank_is_orthogonal(particles):
    import torch

    noisy = torch.as_tensor(particles[0][:2])
    _, filters = ddtf_images(noisy, torch.tensor([0.5, 0.5]), iterations=10, return_filters=True)
    eye = torch.eye(64, dtype=filters.dtype)
    for w in filters:
        assert torch.allclose(w.T @ w, eye, atol=1e-4)
        assert torch.allclose(w @ w.T, eye, atol=1e-4)


def test_gaussian_oracle_picks_best_sigma_on_grid(particles):
    noisy, clean = particles
    grid = (0.5, 1.0, 1.5, 2.0, 3.0)
    best, out, scores = oracle_filter(noisy, clean, kind="gaussian", is_stack=True, grid=grid)
    assert set(scores) == set(grid)
    assert best == min(scores, key=scores.get)
    assert np.mean((out - clean) ** 2) == pytest.approx(scores[best], rel=1e-5)


def test_gaussian_oracle_through_registry(particles, tmp_path):
    from napari_cryoden.io.mrc import write_mrc

    noisy, clean = particles
    ref = write_mrc(tmp_path / "clean.mrcs", clean, voxel_size=4.23, is_stack=True)
    out = denoise("gaussian", noisy, is_stack=True, params=GaussianParams(reference=str(ref)))
    _, expected, _ = oracle_filter(noisy, clean, kind="gaussian", is_stack=True)
    np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("name", list(FAST))
def test_stack_batched_equals_looped(name, particles):
    noisy = particles[0]
    batched = denoise(name, noisy, is_stack=True)
    looped = np.stack([denoise(name, noisy[i:i + 1], is_stack=True)[0] for i in range(len(noisy))])
    np.testing.assert_allclose(batched, looped, atol=1e-4 * float(np.abs(noisy).max()))


@pytest.mark.parametrize("name", ["gaussian", "bm3d", "ddtf"])
def test_volume_is_accepted(name, particles):
    vol = np.concatenate([particles[0], particles[0][:1]])[:, :40, :40].copy()
    out = denoise(name, vol, is_stack=False)
    assert out.shape == vol.shape and np.isfinite(out).all()


@pytest.mark.parametrize("name", list(FAST))
def test_read_only_memmap_input_is_unchanged(name, particles, tmp_path):
    path = tmp_path / "stack.raw"
    particles[0].astype(np.float32).tofile(path)
    data = np.memmap(path, dtype=np.float32, mode="r", shape=particles[0].shape)
    before = np.array(data)
    out = denoise(name, data, is_stack=True)
    np.testing.assert_array_equal(np.asarray(data), before)
    assert out.shape == before.shape


@pytest.mark.parametrize("name", list(FAST))
def test_bad_input_names_the_source(name, particles, tmp_path):
    bad = particles[0].copy()
    bad[1, 5, 5] = np.nan
    with pytest.raises(CryodenInputError, match="NaN"):
        denoise(name, bad, is_stack=True, name="bad.mrcs")
    with pytest.raises(CryodenInputError, match="bad.mrcs"):
        denoise(name, bad, is_stack=True, name="bad.mrcs")
    with pytest.raises(CryodenInputError, match="1D"):
        denoise(name, np.zeros(10, np.float32), is_stack=False)
    path = tmp_path / "nan.raw"
    bad.tofile(path)
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=bad.shape)
    with pytest.raises(CryodenInputError, match="nan.raw"):
        denoise(name, mm, is_stack=True)


def test_registered_with_shared_parameter_names():
    import dataclasses

    from napari_cryoden.denoise import methods

    all_methods = methods()
    for name in ("gaussian", "median", "bm3d", "ksvd", "ddtf"):
        assert all_methods[name].family == "classical"
    types: dict[str, object] = {}
    for name in ("bm3d", "ksvd", "ddtf"):
        for f in dataclasses.fields(all_methods[name].params):
            assert types.setdefault(f.name, f.type) == f.type


@pytest.mark.parametrize("name", ["bm3d"])  # ksvd and ddtf use the same tiling wrapper
def test_large_images_are_tiled_with_bounded_memory(name, particles, monkeypatch):
    import importlib

    module = importlib.import_module(f"napari_cryoden.denoise.classical.{name}")
    noisy, clean = particles
    big_noisy = np.block([[noisy[0], noisy[1]], [noisy[2], noisy[0]]])   # 96×96
    big_clean = np.block([[clean[0], clean[1]], [clean[2], clean[0]]])
    whole = denoise(name, big_noisy, is_stack=False)
    monkeypatch.setattr(module, "TILE", 32)
    tiles = denoise(name, big_noisy, is_stack=False)
    assert tiles.shape == big_noisy.shape and np.isfinite(tiles).all()
    err_whole, err_tiles = np.mean((whole - big_clean) ** 2), np.mean((tiles - big_clean) ** 2)
    assert err_tiles < 1.3 * err_whole
    assert np.mean((tiles - whole) ** 2) < 0.3 * err_whole

"""Every registered denoising method can write straight into a (memory-mapped) output, and the slab-by-slab
filters give exactly the whole-volume result."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryoden.denoise import methods
from napari_cryoden.denoise.classical import filters
from napari_cryoden.progress import run


@pytest.mark.parametrize("name", ["gaussian", "median"])
def test_slabwise_filters_equal_the_whole_volume(name, monkeypatch):
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(70, 24, 24)).astype(np.float32)
    m = methods()[name]
    params = m.params(sigma=1.7) if name == "gaussian" else m.params(size=5)
    whole = run(m.denoise(vol, params, is_stack=False))
    monkeypatch.setattr(filters, "SLAB_PLANES", 8)
    out = np.full(vol.shape, np.nan, np.float32)
    got = run(m.denoise(vol, params, is_stack=False, out=out))
    assert got is out
    np.testing.assert_allclose(out, whole, rtol=0, atol=1e-6)


def test_every_method_accepts_out():
    import inspect

    for name, m in methods().items():
        assert "out" in inspect.signature(m.denoise).parameters, name


def test_classical_patch_method_writes_into_out():
    rng = np.random.default_rng(1)
    stack = rng.normal(size=(3, 24, 24)).astype(np.float32)
    m = methods()["ddtf"]
    out = np.full(stack.shape, np.nan, np.float32)
    res = run(m.denoise(stack, m.params(), is_stack=True, out=out))
    assert np.isfinite(out).all() and np.shares_memory(res, out)

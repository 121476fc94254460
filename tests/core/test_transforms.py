"""The in-plane rotation / shift convention (RELION's), tested both ways."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from napari_cryoden.align.transforms import (
    align_images,
    fourier_shift,
    relion_euler_matrix,
    rotate_images,
    transform_images,
)


def _dot(box=33, x=6, y=0):
    img = np.zeros((box, box), np.float32)
    img[box // 2 + y, box // 2 + x] = 1.0
    return img


def _peak(img):
    r, c = np.unravel_index(np.argmax(img), img.shape)
    return c - img.shape[1] // 2, r - img.shape[0] // 2  # (x, y) from the centre


def test_euler_matrix_matches_scipy(rng):
    angles = rng.uniform(-180, 360, (20, 3))
    ours = relion_euler_matrix(angles[:, 0], angles[:, 1], angles[:, 2])
    ref = Rotation.from_euler("ZYZ", angles, degrees=True).as_matrix().transpose(0, 2, 1)
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    # psi alone is RELION's in-plane matrix [[c, s], [-s, c]].
    m = relion_euler_matrix(0, 0, 30)
    c, s = np.cos(np.deg2rad(30)), np.sin(np.deg2rad(30))
    np.testing.assert_allclose(m[:2, :2], [[c, s], [-s, c]], atol=1e-12)


@pytest.mark.parametrize("psi,expected", [(90, (0, -6)), (180, (-6, 0)), (270, (0, 6)), (-90, (0, 6))])
def test_rotation_direction(psi, expected):
    """out(p) = in(R(psi) p): a dot at +x goes to R(-psi)(6, 0); with rows pointing down on screen,
    psi = 90 moves it from the right to the top: counter-clockwise as displayed."""
    out = rotate_images(_dot()[None], [psi], mode="nearest")[0]
    assert _peak(out) == expected


def test_shift_direction_is_minus_origin():
    out = transform_images(_dot(x=0)[None], angles=[0], shifts=[[3, -2]], mode="nearest")[0]
    assert _peak(out) == (-3, 2)
    moved = fourier_shift(_dot(x=0), [3, -2])
    assert _peak(moved) == (3, -2)


def test_rotate_then_shift_order():
    # Forward: rotate by psi about the centre, then move by -origin.
    out = transform_images(_dot(x=6)[None], angles=[90], shifts=[[1, 1]], mode="nearest")[0]
    assert _peak(out) == (-1, -7)


def test_align_inverts_transform(rng):
    from scipy.ndimage import gaussian_filter

    imgs = np.stack([gaussian_filter(rng.normal(size=(48, 48)), 3) for _ in range(6)]).astype(np.float32)
    yy, xx = np.mgrid[:48, :48] - 24
    imgs *= (xx**2 + yy**2 < 15**2)
    psi, shifts = rng.uniform(0, 360, 6), rng.uniform(-3, 3, (6, 2))
    back = align_images(transform_images(imgs, angles=psi, shifts=shifts), angles=psi, shifts=shifts)
    inner = (xx**2 + yy**2) < 14**2
    for a, b in zip(imgs, back):
        assert np.corrcoef(a[inner], b[inner])[0, 1] > 0.995


def test_torch_in_torch_out_and_batched_equals_looped(rng):
    imgs = torch.as_tensor(rng.normal(size=(4, 16, 16)), dtype=torch.float32)
    psi = torch.tensor([10.0, 20.0, 30.0, 40.0])
    batched = transform_images(imgs, angles=psi, shifts=torch.ones(4, 2))
    assert isinstance(batched, torch.Tensor)
    looped = torch.stack([transform_images(imgs[i], angles=psi[i], shifts=torch.ones(2)) for i in range(4)])
    torch.testing.assert_close(batched, looped)


def test_fourier_shift_is_exact_for_integers(rng):
    img = rng.normal(size=(16, 16))
    np.testing.assert_allclose(fourier_shift(img, [2, 3]), np.roll(img, (3, 2), axis=(0, 1)), atol=1e-10)


def test_chunked_interpolation_equals_one_piece(monkeypatch):
    """A stack interpolated CHUNK images at a time (numpy and torch, memory map too) equals it in one piece."""
    from napari_cryoden.align import transforms

    rng = np.random.default_rng(3)
    x = rng.normal(size=(11, 16, 16)).astype(np.float32)
    angles, shifts = rng.uniform(0, 360, 11), rng.uniform(-2, 2, (11, 2))
    whole_a = transforms.align_images(x, angles=angles, shifts=shifts)
    whole_t = transforms.transform_images(torch.as_tensor(x), angles=angles, shifts=shifts)
    monkeypatch.setattr(transforms, "CHUNK", 4)
    read_only = x.copy()
    read_only.flags.writeable = False  # as a memory map is
    np.testing.assert_array_equal(transforms.align_images(read_only, angles=angles, shifts=shifts), whole_a)
    np.testing.assert_array_equal(transforms.transform_images(torch.as_tensor(x), angles=angles, shifts=shifts).numpy(),
                                  whole_t.numpy())
    assert transforms.align_images(x[0], angles=30.0).shape == (16, 16)


def test_rows_source_reads_only_its_rows():
    from napari_cryoden.align.sources import RowsSource

    x = np.arange(6 * 4 * 4, dtype=np.float32).reshape(6, 4, 4)
    src = RowsSource(x, [4, 1, 2])
    assert len(src) == 3 and src.box == 4
    np.testing.assert_array_equal(src.read(0, 2), x[[1, 2]])
    np.testing.assert_array_equal(src.read(2, 3), x[[4]])

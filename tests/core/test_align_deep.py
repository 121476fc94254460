"""UDL and JUDL: train a few steps on CPU, the loss falls, models round-trip, inference runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cryoden.align.networks import RelativeAngleNet, shift_angles
from napari_cryoden.align.udl import (
    DeepAlignParams,
    build_network,
    circular_distance_180,
    iter_align_with_model,
    iter_train,
    log_amplitudes,
)
from napari_cryoden.models import load_model, save_model
from napari_cryoden.progress import ProgressEvent, run
from napari_cryoden.sample_data import builtin_map
from napari_cryoden.simulate import project_map, resample_map, simulate_alignment_stack

BOX = 32


@pytest.fixture(scope="module")
def sim():
    m = builtin_map()
    vol = resample_map(np.asarray(m.data), voxel_size=m.pixel_size, pixel_size=m.pixel_size * 1.8, box=BOX)
    ref = project_map(vol, rot=0.0, tilt=0.0, psi=0.0)[0].astype(np.float32)
    return simulate_alignment_stack(ref, pixel_size=1.0, n_per_image=64, max_shift=3, integer_shifts=False,
                                    ctf_mode="none", snr=5.0, seed=0)


def test_circular_loss_is_a_true_distance():
    a, b = torch.tensor([179.0, 1.0, 90.0, 10.0]), torch.tensor([1.0, 179.0, 0.0, 370.0])
    np.testing.assert_allclose(circular_distance_180(a, b).numpy(), [2.0, 2.0, 90.0, 0.0], atol=1e-4)


def test_network_is_rotation_equivariant_by_design():
    torch.manual_seed(0)
    net = RelativeAngleNet(BOX).eval()
    amp = log_amplitudes(np.random.default_rng(0).normal(size=(1, BOX, BOX)).astype(np.float32))
    polar = net.polar(amp)
    turned = shift_angles(polar, torch.tensor([20.0]))
    fa = net.features(polar * net.mask(polar)).mean(2)
    fb = net.features(turned * net.mask(turned)).mean(2)
    c = torch.fft.irfft(torch.conj(torch.fft.rfft(fb)) * torch.fft.rfft(fa), n=net.n_angles).sum(1)
    assert abs(int(c.argmax()) * 180 / net.n_angles - (180 - 20)) % 180 <= 2 or int(c.argmax()) * 2 in (18, 20, 22)


@torch.no_grad()
def _fixed_loss(net, sim, joint: bool) -> float:
    from napari_cryoden.align.udl import _rotate

    g = torch.Generator().manual_seed(123)
    amps = log_amplitudes(sim.images)
    n = 48
    b = amps[torch.randint(len(amps), (n,), generator=g)]
    a = (log_amplitudes(sim.references[:1]).expand(n, -1, -1, -1) if joint
         else amps[torch.randint(len(amps), (n,), generator=g)])
    rot = torch.rand((4, n), generator=g) * 360
    p1 = net(_rotate(a, rot[0]), _rotate(b, rot[1]))
    p2 = net(_rotate(a, rot[2]), _rotate(b, rot[3]))
    return float(circular_distance_180(p1 - p2, (rot[1] - rot[0]) - (rot[3] - rot[2])).mean())


@pytest.mark.parametrize("joint", [False, True], ids=["udl", "judl"])
def test_training_lowers_the_loss_and_the_model_round_trips(sim, tmp_path, joint):
    # A small reconstruction weight: with few steps the default 20 x epoch swamps the angle term. 60 steps at a
    # learning rate of 1e-3: with 16 steps at 3e-3 the fixed-pair loss of UDL fell or rose with the seed and
    # even with the thread count; at these settings it fell for seeds 0-3 with 1 and with 2 threads.
    params = DeepAlignParams(epochs=3, steps_per_epoch=20, batch_size=8, learning_rate=1e-3, seed=0,
                             reconstruction_weight=0.5)
    torch.manual_seed(params.seed)  # the network iter_train starts from
    initial = RelativeAngleNet(BOX, base=params.base_channels, levels=params.levels).eval()
    gen = iter_train(sim.images, sim.references[0] if joint else None, params, joint=joint)
    events: list[ProgressEvent] = []
    model = run(gen, events.append)
    assert model.kind == ("align/judl" if joint else "align/udl")
    losses = [h["angle_loss"] for h in model.extra["history"]]
    assert len(events) == len(losses) == 60
    assert np.mean(losses[-10:]) < np.mean(losses[:10])  # the training loss falls
    # The difference loss on fixed pairs and fixed rotations falls.
    assert _fixed_loss(build_network(model), sim, joint) < _fixed_loss(initial, sim, joint)
    if joint:
        assert any(h["reconstruction"] > 0 for h in model.extra["history"])
    path = save_model(tmp_path / "m.pt", model)
    loaded = load_model(path, kind="align")
    a, b = build_network(model), build_network(loaded)
    x = log_amplitudes(sim.images[:4])
    with torch.no_grad():
        np.testing.assert_allclose(a(x[:1], x).numpy(), b(x[:1], x).numpy(), atol=1e-5)
    result = run(iter_align_with_model(sim.images[:16], loaded, sim.references[0]))
    assert result.angles.shape == (16,) and result.origins.shape == (16, 2)
    assert np.isfinite(result.scores).all()

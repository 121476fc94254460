"""UDL and JUDL: train a few steps on CPU (the network changes, losses stay finite, JUDL's reconstruction term
starts after the first epoch), models round-trip exactly, inference aligns held-out particles."""

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
from napari_cryoden.metrics import angular_error
from napari_cryoden.models import load_model, save_model
from napari_cryoden.progress import ProgressEvent, run
from napari_cryoden.sample_data import builtin_map
from napari_cryoden.simulate import project_map, resample_map, simulate_alignment_stack

BOX = 32


def _stack(n: int, seed: int):
    m = builtin_map()
    vol = resample_map(np.asarray(m.data), voxel_size=m.pixel_size, pixel_size=m.pixel_size * 1.8, box=BOX)
    ref = project_map(vol, rot=0.0, tilt=0.0, psi=0.0)[0].astype(np.float32)
    return simulate_alignment_stack(ref, pixel_size=1.0, n_per_image=n, max_shift=3, integer_shifts=False,
                                    ctf_mode="none", snr=5.0, seed=seed)


@pytest.fixture(scope="module")
def sim():
    return _stack(64, seed=0)


@pytest.fixture(scope="module")
def held_out():
    """Particles of the same view that training never sees (another noise, angle and shift draw)."""
    return _stack(16, seed=1)


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
def _fixed_pair_predictions(net, sim, held_out, joint: bool) -> torch.Tensor:
    """The network's relative angles on 48 fixed pairs of held-out particles (JUDL: reference, particle)."""
    g = torch.Generator().manual_seed(123)
    amps = log_amplitudes(held_out.images)
    n = 48
    b = amps[torch.randint(len(amps), (n,), generator=g)]
    a = (log_amplitudes(sim.references[:1]).expand(n, -1, -1, -1) if joint
         else amps[torch.randint(len(amps), (n,), generator=g)])
    return net(a, b)


@pytest.mark.parametrize("joint", [False, True], ids=["udl", "judl"])
def test_training_changes_the_network_and_the_model_round_trips(sim, held_out, tmp_path, joint):
    # No claim that this short training improves the network, on purpose: at CPU test budgets the training is
    # chaotic. Measured on this data with the fixed-pair difference loss on held-out particles (trained /
    # untrained): JUDL (batch 16, 60 steps) 0.07-0.37 for 17 of 20 seeds but 0.73, 0.82 and 2.08 for seeds
    # 10, 17 and 18 (also without the reconstruction term); UDL (batch 16) stuck at 0.90 for seed 0 at 2 threads,
    # and about 0.5 for seeds 3 and 5 at 1 thread even after 105 steps; with this test's batch of 8 and seed 0,
    # JUDL ended at 1.3x the untrained loss at 1 thread and 0.24x at 2. A loss that must fall would fail on some
    # CPUs (it did, on an AMD EPYC), so what is asserted holds for any float trajectory: finite losses, a network
    # that changed, JUDL's schedule, an exact round trip, and that the trained model runs (its accuracy depends on
    # the trajectory too: known-answer alignment is checked with a fixed network in
    # test_inference_aligns_held_out_particles).
    params = DeepAlignParams(epochs=3, steps_per_epoch=20, batch_size=8, learning_rate=1e-3, seed=0,
                             reconstruction_weight=0.5)
    torch.manual_seed(params.seed)  # the network iter_train starts from
    initial = RelativeAngleNet(BOX, base=params.base_channels, levels=params.levels).eval()
    gen = iter_train(sim.images, sim.references[0] if joint else None, params, joint=joint)
    events: list[ProgressEvent] = []
    model = run(gen, events.append)
    assert model.kind == ("align/judl" if joint else "align/udl")
    history = model.extra["history"]
    assert len(events) == len(history) == 60
    assert all(np.isfinite([h["angle_loss"], h["reconstruction"]]).all() for h in history)
    # A no-op training (the initial weights returned) fails here: the predictions on held-out pairs moved.
    trained = build_network(model)
    moved = circular_distance_180(_fixed_pair_predictions(trained, sim, held_out, joint),
                                  _fixed_pair_predictions(initial, sim, held_out, joint))
    # Measured median: 6-17 degrees with seed 0 at 1 and 2 threads, 1.9-12 for seeds 1-3; a no-op gives 0.
    assert float(moved.median()) > 0.5, float(moved.median())
    if joint:  # the reconstruction term is off in the first epoch (epochs count from 0), on after it
        assert all(h["reconstruction"] == 0 for h in history if h["epoch"] == 0)
        assert all(h["reconstruction"] > 0 for h in history if h["epoch"] > 0)
        assert "autoencoder" in model.state_dict
    path = save_model(tmp_path / "m.pt", model)
    loaded = load_model(path, kind="align")
    a, b = build_network(model), build_network(loaded)
    x = log_amplitudes(held_out.images[:4])
    with torch.no_grad():
        np.testing.assert_array_equal(a(x[:1], x).numpy(), b(x[:1], x).numpy())
    result = run(iter_align_with_model(held_out.images, loaded, sim.references[0]))
    assert result.angles.shape == (16,) and result.origins.shape == (16, 2)
    assert np.isfinite(result.scores).all()


def test_inference_aligns_held_out_particles(sim, held_out):
    """Known answers, the true angles and shifts of held-out particles, through the whole inference (network guess
    modulo 180, cross-correlation for the 180 degree choice, the shift and the refinement).

    The network is a fixed untrained one (seed 0): inference must not depend on how a short training went (a bad
    JUDL run at 1 thread gave a 7 degree median error). The untrained network is a usable guesser by design (it is
    rotation-equivariant); measured with seeds 0-3 at 1 and 2 threads: median angle error 0.41-0.74 deg, median
    shift error 0.03-0.05 px. Baseline that fails: angles not found (all 0) give a median error of about 90 deg.
    """
    from napari_cryoden.models import ModelFile

    torch.manual_seed(0)
    net = RelativeAngleNet(BOX, base=8, levels=2)
    model = ModelFile(kind="align/udl", config={"box": BOX, "base_channels": 8, "levels": 2, "joint": False},
                      state_dict={"net": net.state_dict()})
    result = run(iter_align_with_model(held_out.images, model, sim.references[0]))
    errors = angular_error(result.angles, held_out.angles)
    assert np.median(errors) < 2.0, np.median(errors)
    assert np.median(angular_error(np.zeros(16), held_out.angles)) > 45.0  # the baseline fails this test
    assert np.median(np.abs(result.origins - held_out.origins)) < 0.5

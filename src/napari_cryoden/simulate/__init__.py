"""Ground-truth factory: particle stacks and tomogram phantoms with known answers."""

from .ctf import CTFParams, apply_ctf, ctf_2d, electron_wavelength
from .noise import add_noise, measure_snr, noise_std_for_snr
from .particles import (
    SimulatedParticles,
    circular_mask,
    iter_simulate_particles,
    random_views,
    simulate_alignment_stack,
    simulate_particles,
)
from .projection import project_map, resample_map
from .tomogram import (
    TomogramPhantom,
    apply_missing_wedge,
    iter_simulate_tomogram,
    missing_wedge_mask,
    simulate_tomogram,
)

__all__ = [
    "CTFParams",
    "SimulatedParticles",
    "TomogramPhantom",
    "add_noise",
    "apply_missing_wedge",
    "apply_ctf",
    "circular_mask",
    "ctf_2d",
    "electron_wavelength",
    "iter_simulate_particles",
    "iter_simulate_tomogram",
    "measure_snr",
    "missing_wedge_mask",
    "noise_std_for_snr",
    "project_map",
    "random_views",
    "resample_map",
    "simulate_alignment_stack",
    "simulate_particles",
    "simulate_tomogram",
]

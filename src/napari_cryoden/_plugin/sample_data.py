"""npe2 sample data: a synthetic tomogram and a synthetic particle stack, both with ground truth."""

from __future__ import annotations

from .. import sample_data as core
from .layers import image_layer, particle_points_layer


def sample_tomogram() -> list:
    """Noisy tomogram phantom and its clean volume (scale = 10 Å voxels)."""
    ph = core.sample_tomogram()
    meta = {"snr": ph.snr, "source": "napari-cryoden phantom (EMD-5625 particles)"}
    return [
        image_layer(ph.clean, name="tomogram clean", voxel_size=ph.voxel_size, metadata=meta, visible=False),
        image_layer(ph.noisy, name="tomogram noisy", voxel_size=ph.voxel_size, metadata=meta),
    ]


def sample_particles() -> list:
    """Noisy particle stack of three classes, with true class/psi/origin in a points layer's ``features``."""
    sim = core.sample_particles()
    table = sim.table.particles
    meta = {"snr": sim.snr, "pixel_size": sim.pixel_size, "features": table,
            "source": "napari-cryoden simulation of EMD-5625 views"}
    return [
        image_layer(sim.images, name="particles", voxel_size=(1.0, sim.pixel_size, sim.pixel_size), is_stack=True,
                    metadata=meta),
        particle_points_layer(table, box=sim.images.shape[-2:], pixel_size=sim.pixel_size,
                              name="particles truth", visible=False),
        image_layer(sim.references, name="particle class references", voxel_size=(1.0, sim.pixel_size, sim.pixel_size),
                    is_stack=True, visible=False),
    ]

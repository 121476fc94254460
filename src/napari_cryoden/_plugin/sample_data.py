"""npe2 sample data: a synthetic tomogram and a synthetic particle stack, both with ground truth.

The layer builders are shared with the Simulate widget.
"""

from __future__ import annotations

from .. import sample_data as core
from .layers import image_layer, particle_points_layer


def tomogram_layers(ph, *, name: str = "tomogram") -> list:
    """Noisy and clean volumes (and even/odd halves when present) of a :class:`TomogramPhantom`."""
    meta = {"snr": ph.snr, "source": "napari-cryoden phantom", "particles": ph.particles}
    truth, half, raw = ({**meta, "role": role} for role in ("ground truth", "half", "raw"))
    layers = [image_layer(ph.clean, name=f"{name} clean", voxel_size=ph.voxel_size, metadata=truth, visible=False)]
    if ph.even is not None:
        layers += [image_layer(ph.even, name=f"{name} even", voxel_size=ph.voxel_size, metadata=half, visible=False),
                   image_layer(ph.odd, name=f"{name} odd", voxel_size=ph.voxel_size, metadata=half, visible=False)]
    layers.append(image_layer(ph.noisy, name=f"{name} noisy", voxel_size=ph.voxel_size, metadata=raw))
    return layers


def particle_layers(sim, *, name: str = "particles") -> list:
    """The noisy stack, a points layer with the truth as ``features``, and the class references."""
    table = sim.table.particles
    px = sim.pixel_size
    meta = {"snr": sim.snr, "pixel_size": px, "features": table, "source": "napari-cryoden simulation",
            "role": "raw"}
    return [
        image_layer(sim.images, name=name, voxel_size=(1.0, px, px), is_stack=True, metadata=meta),
        particle_points_layer(table, box=sim.images.shape[-2:], pixel_size=px, name=f"{name} truth", visible=False),
        image_layer(sim.references, name=f"{name} class references", voxel_size=(1.0, px, px), is_stack=True,
                    metadata={"role": "ground truth"}, visible=False),
    ]


def sample_tomogram() -> list:
    """Noisy tomogram phantom and its clean volume (scale = 10 Å voxels)."""
    return tomogram_layers(core.sample_tomogram())


def sample_particles() -> list:
    """Noisy particle stack of three classes, with true class/psi/origin in a points layer's ``features``."""
    return particle_layers(core.sample_particles())

"""Built-in sample data that needs no network and no files outside the package.

The particle map is EMD-5625 (CC0, see ``data/README.md``), shipped inside the package (0.7 MB).
"""

from __future__ import annotations

from importlib import resources

from .io.mrc import MrcData, read_mrc
from .simulate import SimulatedParticles, TomogramPhantom, simulate_particles, simulate_tomogram

#: Three clearly different views of the built-in map: the classes of the sample particle stack.
SAMPLE_CLASS_VIEWS = ((0.0, 0.0), (0.0, 90.0), (90.0, 90.0))


def builtin_map() -> MrcData:
    """EMD-5625 (56³ voxels, 4.23 Å), read into memory."""
    with resources.as_file(resources.files("napari_cryoden") / "data" / "emd_5625.map") as path:
        return read_mrc(path, mmap=False)


def sample_tomogram(*, shape=(64, 128, 128), voxel_size: float = 10.0, snr: float = 0.3,
                    halves: bool = False, seed: int = 0) -> TomogramPhantom:
    """A small tomogram phantom (3 vesicles, 2 filaments, 10 copies of the built-in map, ±60° missing wedge)
    with white noise at ``snr``."""
    m = builtin_map()
    return simulate_tomogram(shape=shape, voxel_size=voxel_size, particle_map=m.data,
                             particle_map_voxel_size=m.pixel_size, n_vesicles=3, n_filaments=2, n_particles=10,
                             snr=snr, halves=halves, seed=seed)


def sample_particles(*, n_particles: int = 150, box: int = 64, snr: float = 0.3, max_shift: float = 4.0,
                     ctf_mode: str = "none", seed: int = 0) -> SimulatedParticles:
    """A particle stack of three classes (three views of the built-in map), random psi and shifts."""
    m = builtin_map()
    return simulate_particles(m.data, voxel_size=m.pixel_size, n_particles=n_particles, box=box,
                              class_views=SAMPLE_CLASS_VIEWS, max_shift=max_shift, ctf_mode=ctf_mode,
                              snr=snr, mask_radius=box * 0.4, seed=seed)

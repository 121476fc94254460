"""File input and output: MRC-family images and volumes, RELION STAR particle tables."""

from .mrc import (
    MRC_SUFFIXES,
    AtomicOutput,
    MrcData,
    MrcWriter,
    ZeroVoxelSizeWarning,
    check_output_path,
    read_mrc,
    write_mrc,
)
from .star import ParticleTable, read_particle_images, read_star, write_star

__all__ = [
    "MRC_SUFFIXES",
    "AtomicOutput",
    "MrcData",
    "MrcWriter",
    "ParticleTable",
    "ZeroVoxelSizeWarning",
    "check_output_path",
    "read_mrc",
    "read_particle_images",
    "read_star",
    "write_mrc",
    "write_star",
]

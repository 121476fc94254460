"""File input and output: MRC-family images and volumes, RELION STAR particle tables."""

from .mrc import MRC_SUFFIXES, MrcData, MrcWriter, ZeroVoxelSizeWarning, read_mrc, write_mrc
from .outputs import AtomicOutput, check_output_path, check_outputs, input_files
from .star import ParticleTable, read_particle_images, read_star, write_star

__all__ = [
    "MRC_SUFFIXES",
    "AtomicOutput",
    "MrcData",
    "MrcWriter",
    "ParticleTable",
    "ZeroVoxelSizeWarning",
    "check_output_path",
    "check_outputs",
    "input_files",
    "read_mrc",
    "read_particle_images",
    "read_star",
    "write_mrc",
    "write_star",
]

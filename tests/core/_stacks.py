"""Helpers shared by the alignment tests."""

from __future__ import annotations

import numpy as np

from napari_cryoden.simulate.ctf import ctf_2d


def stack_ctf(sim, box: int, pixel_size: float) -> np.ndarray:
    """(n, box, box) CTFs of a simulated stack from its STAR defoci, with the simulator's amplitude contrast
    (0.07) and B-factor (50 Å²): what the aligners take as ``ctf=``."""
    p = sim.table.particles
    return ctf_2d((box, box), pixel_size=pixel_size, defocus_u=p["rlnDefocusU"].to_numpy(),
                  defocus_v=p["rlnDefocusV"].to_numpy(), defocus_angle=p["rlnDefocusAngle"].to_numpy(),
                  amplitude_contrast=0.07, b_factor=50.0).astype(np.float32)

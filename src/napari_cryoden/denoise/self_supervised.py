"""Registry entries for the self-supervised methods of :mod:`.engine`."""

from __future__ import annotations

from .engine import PARAMS, iter_denoise
from .registry import DenoiseMethod, register


def _denoise(method: str):
    def run(data, params, *, is_stack=False, voxel_size=None, seed=0, device="auto", half2=None, out=None):
        return iter_denoise(data, params, method=method, is_stack=is_stack, half2=half2, seed=seed, device=device,
                            voxel_size=voxel_size, out=out)

    run.__name__ = f"iter_denoise_{method.replace('-', '_')}"
    return run


DESCRIPTIONS = {
    "self2self": "Self2Self with dropout: Bernoulli-masked inputs, loss on the dropped voxels, predictions "
                 "averaged over fresh masks. Works from one noisy volume; the dropped blocks follow the noise "
                 "correlation measured from the data (--mask-block auto), so z-correlated noise is not learned.",
    "fourier-n2n": "Fourier-space Noise2Noise: the input keeps random blocks of frequencies (and the lowest ones), "
                   "the target is the frequencies it dropped, whose noise is independent of the input's. Works "
                   "from one noisy volume, with white or correlated noise.",
    "n2n-halves": "Noise2Noise on even/odd half volumes (cryoCARE's setting): give the second half with --half2.",
}
TITLES = {"self2self": "Self2Self (dropout)", "fourier-n2n": "Fourier N2N", "n2n-halves": "Noise2Noise (halves)"}

for _name, _params in PARAMS.items():
    register(DenoiseMethod(name=_name, title=TITLES[_name], family="self-supervised", params=_params,
                           denoise=_denoise(_name), description=DESCRIPTIONS[_name]))

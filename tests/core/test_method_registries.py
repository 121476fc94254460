"""Clustering and alignment methods are objects in one list each: a new one registered from outside the
package runs through the shared pipeline and appears in the CLI (method choice and its generated options)
with no other edit. The built-in ones are listed with what the CLI and the widgets ask of them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from _cli import run

from napari_cryoden.params import param


@dataclass(frozen=True)
class HalvesParams:
    work_box: int = param(32, "work box", min=16, unit="px")
    prealign_iterations: int = param(0, "no pre-alignment", min=0)
    flip: bool = param(False, "swap the two halves' labels")
    seed: int = param(0, "random seed")


@pytest.fixture
def toy_cluster_method():
    from napari_cryoden.cluster import methods as cluster_methods
    from napari_cryoden.cluster.methods import _REGISTRY, Classes, ClusterMethod, register

    class Halves(ClusterMethod):
        """First half of the stack in one class, second half in the other."""

        name = "toy-halves"
        params = HalvesParams
        description = "first half / second half (a test method)"

        def classify(self, masked, k, params, **_):
            n = len(masked)
            labels = (np.arange(n) >= n // 2).astype(np.int64)
            if params.flip:
                labels = 1 - labels
            yield from ()
            return Classes(labels, np.zeros(n), np.zeros((n, 2)), masked.reshape(n, -1)[:, :4].astype(np.float32))

    register(Halves())
    yield cluster_methods()["toy-halves"]
    _REGISTRY.pop("toy-halves")


def test_builtin_methods_say_what_the_cli_and_widgets_need():
    from napari_cryoden.align import methods as align_methods
    from napari_cryoden.cluster import DEFAULT_METHOD, methods

    assert list(methods()) == ["siamese", "mra", "pca-kmeans"] and DEFAULT_METHOD == "siamese"
    assert [m.trains for m in methods().values()] == [True, False, False]
    assert list(align_methods()) == ["fft", "udl", "judl"]
    assert [m.trains for m in align_methods().values()] == [False, True, True]
    assert align_methods()["fft"].params is None and align_methods()["judl"].joint


def test_a_registered_cluster_method_runs_through_the_pipeline_and_the_cli(toy_cluster_method, capsys, tmp_path):
    from napari_cryoden.cli import build_parser
    from napari_cryoden.cluster import cluster
    from napari_cryoden.io.mrc import write_mrc
    from napari_cryoden.io.star import read_star

    images = np.random.default_rng(0).standard_normal((12, 32, 32)).astype(np.float32)
    result = cluster(images, 2, method="toy-halves", params=HalvesParams(flip=True), averages=False)
    assert result.info["method"] == "toy-halves"
    # classes are numbered by size then (equal sizes) kept: the flip moved the first half to the other class
    assert len(set(result.labels[:6])) == 1 and result.labels[0] != result.labels[-1]

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    cluster_parser = sub.choices["cluster"]
    assert "toy-halves" in cluster_parser._option_string_actions["--method"].choices
    assert "--flip" in cluster_parser._option_string_actions  # generated from its parameter class
    write_mrc(tmp_path / "p.mrcs", images, voxel_size=2.0, is_stack=True)
    rc, out, err = run(capsys, "cluster", tmp_path / "p.mrcs", "-o", tmp_path / "c.star", "--classes", 2,
                       "--method", "toy-halves", "--flip")
    assert rc == 0, err
    classes = read_star(tmp_path / "c.star").particles["rlnClassNumber"].to_numpy()
    assert (classes[:6] == classes[0]).all() and (classes[6:] != classes[0]).all()
    rc, _, err = run(capsys, "cluster", tmp_path / "p.mrcs", "-o", tmp_path / "d.star", "--classes", 2,
                     "--method", "mra", "--flip")
    assert rc == 2 and "--flip does not apply to --method mra" in err


def test_a_registered_alignment_method_appears_in_the_cli(capsys, tmp_path):
    from napari_cryoden.align import AlignmentResult, register
    from napari_cryoden.align.methods import _REGISTRY, AlignMethod
    from napari_cryoden.io.mrc import write_mrc
    from napari_cryoden.io.star import read_star

    class Identity(AlignMethod):
        name = "identity"
        description = "no rotation, no shift (a test method)"

        def align(self, images, reference, classical, params=None, **_):
            x = np.asarray(images.read(0, len(images)) if hasattr(images, "read") else images)
            yield from ()
            n = len(x)
            return AlignmentResult(np.zeros(n), np.zeros((n, 2)), np.ones(n), x.mean(0), x.mean(0))

    register(Identity())
    try:
        images = np.random.default_rng(0).standard_normal((5, 32, 32)).astype(np.float32)
        write_mrc(tmp_path / "p.mrcs", images, voxel_size=2.0, is_stack=True)
        rc, out, err = run(capsys, "align", tmp_path / "p.mrcs", "-o", tmp_path / "a.star", "--method", "identity")
        assert rc == 0, err
        rows = read_star(tmp_path / "a.star").particles
        assert (rows["rlnAnglePsi"] == 0).all() and len(rows) == 5
        rc, _, err = run(capsys, "align", tmp_path / "p.mrcs", "-o", tmp_path / "b.star", "--method", "identity",
                         "--refine", "none")
        assert rc == 2 and "--refine applies to a method that trains a network" in err
    finally:
        _REGISTRY.pop("identity")

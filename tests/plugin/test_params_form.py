"""Parameter forms built from the method dataclasses read back exactly the defaults (None included)."""

from __future__ import annotations

import dataclasses

import pytest

from napari_cryoden.align.cross_correlation import ClassicalParams
from napari_cryoden.align.udl import DeepAlignParams
from napari_cryoden.cluster import PARAMS as CLUSTER_PARAMS
from napari_cryoden.denoise import methods


def _all_param_classes():
    classes = [ClassicalParams, DeepAlignParams, *CLUSTER_PARAMS.values()]
    classes += [m.params for m in methods().values()]
    return list(dict.fromkeys(classes))


@pytest.mark.parametrize("cls", _all_param_classes(), ids=lambda c: c.__name__)
def test_form_round_trips_the_defaults(cls, qapp):
    from napari_cryoden._plugin.widgets._params import params_form, params_from_form

    form = params_form(cls)
    assert params_from_form(cls, form) == cls()
    optional = [f.name for f in dataclasses.fields(cls) if f.default is None]
    for name in optional:  # None shows as 0 / empty, never as a value that changes the method
        assert form[name].value in (0, 0.0, "")

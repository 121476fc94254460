"""The job widgets' layout: a few basic settings shown, the rest under Advanced, units in labels, docks that
scroll instead of growing the window past the screen."""

from __future__ import annotations

import pytest
from magicgui.widgets import Container, Label, PushButton
from magicgui.widgets.bases import ValueWidget

from napari_cryoden._plugin.widgets._params import ParamsForm

PLUGIN = "napari-cryoden"
#: At most this many settings are visible before Advanced is opened (the issue's "about 8").
MAX_BASIC = 8


def visible_settings(widget) -> list[str]:
    """Labels of the settings a user sees without opening any Advanced section (buttons, text and the result
    views that are disabled before a run do not count)."""
    out = []

    def walk(w):
        if not w.visible and w.native.isHidden():
            return
        if isinstance(w, ParamsForm):
            for child in w.visible_settings():
                walk(child)
            if w.collapsible.isExpanded():
                for child in w.advanced:
                    walk(child)
            return
        if isinstance(w, Container):
            for child in w:
                walk(child)
            return
        if isinstance(w, ValueWidget) and not isinstance(w, PushButton | Label) and w.enabled:
            out.append(w.label)

    for child in widget:
        walk(child)
    return out


@pytest.mark.parametrize("name", ["Denoise", "Align", "Cluster"])
def test_job_widgets_show_the_basic_settings_and_open_advanced(make_particle_viewer, name):
    viewer, _ = make_particle_viewer(n_particles=40, box=32)
    viewer.open_sample(PLUGIN, "synthetic-tomogram")
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    forms = [f for f in _forms(w) if f.fields()]
    assert forms, f"{name} has no generated settings form"
    # the quality/time knob and the settings a scientist decides are among the visible ones
    expected = {"Denoise": {"image", "method", "time budget (s)"}, "Align": {"max shift (px)", "symmetry"},
                "Cluster": {"classes (K)", "time budget (s)"}}[name]
    assert expected <= set(visible_settings(w)), visible_settings(w)
    for method in w.method.choices:  # every method of the widget, not only the default one
        w.method.value = method
        shown = visible_settings(w)
        assert len(shown) <= MAX_BASIC, f"{name}/{method} shows {len(shown)} settings: {shown}"
        hidden = [f for f in forms if f.visible and f.fields() and f.advanced.visible]
        for form in hidden:
            assert not form.collapsible.isExpanded()
            form.expand()
            assert form.collapsible.isExpanded()
            more = visible_settings(w)
            assert len(more) > len(shown) or not len(form.advanced)
            form.expand(False)


def _forms(widget):
    out = []

    def walk(w):
        if isinstance(w, ParamsForm):
            out.append(w)
        elif isinstance(w, Container):
            for child in w:
                walk(child)

    walk(widget)
    return out


def test_labels_carry_units_and_every_setting_has_a_tooltip(make_particle_viewer):
    viewer, _ = make_particle_viewer(n_particles=40, box=32)
    widgets = {}
    for name in ("Denoise", "Align", "Cluster"):
        _, widgets[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        for form in _forms(widgets[name]):
            for field in form.fields():
                assert field.tooltip, f"{name}: {field.name} has no tooltip"
    labels = {f.name: f.label for form in _forms(widgets["Align"]) for f in form.fields()}
    assert labels["max_shift"] == "max shift (px)"
    assert labels["angular_step"] == "angular step (°)"


def test_docked_widgets_scroll_instead_of_growing_the_window(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QApplication, QScrollArea

    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1200, 800)
    for name in ("Denoise", "Align", "Cluster"):
        dock, w = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        assert isinstance(dock.widget(), QScrollArea)  # napari docks the scroll area, not the inner widget
        assert dock.inner_widget() is w  # and finds our widget back from it
    QApplication.processEvents()
    qtbot.wait(50)
    assert window.height() <= 820, f"three docked widgets grew the window to {window.height()} px"


def test_denoise_presets_set_the_time_budget_and_hide_for_filters(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic-tomogram")
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Denoise")
    w.method.value = "self2self"
    assert not w.preset.native.isHidden() and w.preset.value == "custom"
    w.preset.value = "fast preview"
    assert w.form["time_budget"].value == 30.0 and w.form["n_predictions"].value == 2
    assert w.params().time_budget == 30.0
    w.preset.value = "best quality"
    assert w.params().time_budget == 600.0 and w.params().n_predictions == 8
    w.method.value = "gaussian"
    assert w.preset.native.isHidden()

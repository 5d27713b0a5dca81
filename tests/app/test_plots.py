"""app.plots: axis growth and the labels of parameter changes."""

import pytest

from app.plots import change_label, grown


def test_a_range_that_holds_the_data_does_not_change():
    assert grown((0.0, 10.0), 1.0, 9.0) is None
    assert grown((0.01, 10.0), 0.02, 10.0, log=True) is None


def test_only_the_ends_that_move_get_a_margin():
    # linear: a time axis doubles its span at its end, its start stays
    assert grown((0.0, 1.0), 0.0, 1.5, margin=1.0) == pytest.approx((0.0, 3.0))
    assert grown((0.0, 1.0), -0.5, 0.5, margin=0.25) == pytest.approx((-0.875, 1.0))
    # log: one decade beyond the new end, the start stays (it used to pad both ends by
    # the whole span: data from t = 0.02 to 14 sat in the middle third of 1e-5..2e4)
    assert grown((0.01, 10.0), 0.02, 14.0, log=True, margin=1.0) == pytest.approx((0.01, 140.0))
    lo, hi = grown((0.5, 3.0), 0.4, 2.0, log=True, margin=0.25)
    assert lo == pytest.approx(0.4 / 10**0.25) and hi == pytest.approx(3.0)


def test_a_change_is_labelled_by_its_new_values():
    change = {"t": 4.5, "step": 224, "temperature": [0.001, 0.3], "alpha": [1.0, 0.2]}
    assert change_label(change) == "kT 0.3, alpha 0.2"
    assert change_label({"t": 1.0, "step": 50, "engine": ["ed", "ml"]}) == "ML"
    assert change_label({"t": 1.0, "step": 50, "model": "replaced"}) == "new model"
    assert change_label({"t": 1.0, "step": 5, "integrator": ["sib", "heun"]}) == "integrator heun"


def test_the_font_scale_is_napari_font_size_over_its_theme_default(monkeypatch):
    from types import SimpleNamespace

    import napari.settings
    import napari.utils.theme

    from app.plots import font_scale

    def with_(font_size: int, theme_size: str) -> float:
        appearance = SimpleNamespace(theme="dark", font_size=font_size)
        monkeypatch.setattr(
            napari.settings, "get_settings", lambda: SimpleNamespace(appearance=appearance)
        )
        monkeypatch.setattr(
            napari.utils.theme, "get_theme", lambda name: SimpleNamespace(font_size=theme_size)
        )
        return font_scale()

    assert with_(9, "9pt") == 1.0 and with_(18, "9pt") == 2.0 and with_(12, "8pt") == 1.5
    assert with_(18, "large") == 1.0 and with_(18, "0pt") == 1.0  # an odd theme: no scaling

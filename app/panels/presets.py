"""Named parameter sets of a panel: a "Preset" menu that fills in the panel's widgets and
names the set they hold ("Custom" when they hold none, e.g. after an edit by hand)."""

from __future__ import annotations

from magicgui.widgets import ComboBox

#: The menu's entry when the widgets hold no preset's values.
CUSTOM = "Custom"


class Presets:
    """`menu` (a ComboBox) over `presets`, name -> {widget attribute: value}."""

    def __init__(self, presets: dict[str, dict[str, object]], tooltip: str) -> None:
        self.presets = presets
        self.menu = ComboBox(label="Preset", choices=[*presets, CUSTOM], tooltip=tooltip)
        self._widgets: dict = {}
        self._applying = False

    def bind(self, panel) -> None:
        """Connect to the panel's widgets named in the presets; show the matching preset."""
        keys = set().union(*self.presets.values())
        self._widgets = {key: getattr(panel, key) for key in keys}
        self._show()
        self.menu.changed.connect(self._apply)
        for widget in self._widgets.values():
            widget.changed.connect(self._show)

    def matching(self) -> str:
        """The preset whose values the widgets hold, else CUSTOM."""
        for name, values in self.presets.items():
            if all(self._widgets[key].value == value for key, value in values.items()):
                return name
        return CUSTOM

    def _apply(self, name: str) -> None:
        if name in self.presets and not self._applying:
            self._applying = True
            try:
                for key, value in self.presets[name].items():
                    self._widgets[key].value = value
            finally:
                self._applying = False

    def _show(self, *_) -> None:
        if not self._applying:
            self._applying = True  # showing the matching name applies nothing
            try:
                self.menu.value = self.matching()
            finally:
                self._applying = False

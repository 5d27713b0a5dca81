"""The 3D scene: atoms coloured by a quantity, spin arrows, field arrows and the periodic box.

Pure functions from numpy arrays to layer data; `SceneLayers` owns the napari
layers and is touched only from the main thread.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
from matplotlib import colormaps
from napari.layers.base import ActionType
from napari.utils.notifications import show_info
from qtpy.QtCore import QTimer

#: Colour quantities: label -> (colormap, symmetric around 0).
QUANTITIES = {
    "S_z": ("coolwarm", True),
    "S.n": ("coolwarm", True),
    "|H_perp|": ("magma", False),
    "local energy (ML)": ("viridis", False),
    "ML-ED field error": ("inferno", False),
}

#: Above this many atoms only a subsample of spin arrows is drawn.
MAX_ARROWS = 2000
#: Font size (pt) of the legend on the canvas at napari's default interface font size.
LEGEND_PT = 10
#: Width of the ring round the atom under the mouse pointer (a share of its diameter).
HOVER_RING = 0.15
#: The atom under the pointer is looked up when the pointer has rested this long (ms).
HOVER_REST_MS = 150
#: Least seconds between two thumbnails of the Spins layer (napari redraws a vectors
#: thumbnail in ~20 ms, as long as the rest of a live frame's layer update).
THUMBNAIL_S = 1.0


def box_edges(side: float) -> np.ndarray:
    """The 12 edges of the cube [0, L]^3 as napari vectors (12, 2, 3): start and displacement."""
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], float)
    edges = []
    for a in range(8):
        for b in range(a + 1, 8):
            if np.abs(corners[a] - corners[b]).sum() == 1:
                edges.append([corners[a] * side, (corners[b] - corners[a]) * side])
    return np.array(edges)


def h_perp(spins: np.ndarray, fields: np.ndarray) -> np.ndarray:
    """Transverse field H_perp = S x H (PHYSICS.md "Scales"), the part that drives the dynamics."""
    return np.cross(spins, fields)


def colours(values: np.ndarray, quantity: str) -> tuple[np.ndarray, tuple[float, float]]:
    """RGBA colours (N, 4) of values and the colour range used."""
    cmap_name, symmetric = QUANTITIES.get(quantity, ("viridis", False))
    v = np.nan_to_num(np.asarray(values, float))
    if symmetric:
        hi = max(float(np.abs(v).max()), 1e-12)
        lo = -hi
        if quantity in ("S_z", "S.n"):
            lo, hi = -1.0, 1.0
    else:
        lo, hi = float(v.min()), float(v.max())
        if hi - lo < 1e-12:
            hi = lo + 1e-12
    return colormaps[cmap_name]((v - lo) / (hi - lo)), (lo, hi)


def arrow_subset(n: int, max_arrows: int = MAX_ARROWS) -> np.ndarray:
    """Indices of the atoms that carry an arrow: all, or an evenly spread subsample."""
    if n <= max_arrows:
        return np.arange(n)
    return np.linspace(0, n - 1, max_arrows).round().astype(int)


def spin_vectors(positions: np.ndarray, spins: np.ndarray, length: float) -> np.ndarray:
    """Arrows centred on each atom: (N, 2, 3) of start point and displacement."""
    return np.stack([positions - 0.5 * length * spins, length * spins], axis=1)


class SceneLayers:
    """Atoms, Spins, Fields and Box layers of one viewer (main thread only)."""

    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self.quantity = "S_z"
        self.axis = np.array([0.0, 0.0, 1.0])
        self.arrow_length = 0.45
        self.arrow_width = 0.06
        self.atom_size = 0.32
        self.error: np.ndarray | None = None  # per-atom ML-ED |dH_perp|
        self.local_energy: np.ndarray | None = None
        self.error_step = 0  # the step of the spins the ML-ED error was computed for
        self.positions = np.zeros((0, 3))
        self.spins = np.zeros((0, 3))
        self.fields: np.ndarray | None = None
        self.atoms = None
        self.spin_layer = None
        self.field_layer = None
        self.box_layer = None
        self.legend = ""
        self.hovered: int | None = None  # the atom under the mouse pointer
        self.replica_note = ""  # which replica is shown, where a run has several
        self.font_scale = 1.0  # napari's interface font size over its default
        self._pointer = None  # where the pointer last moved: (position, view direction, dims)
        self._rest = QTimer()
        self._rest.setSingleShot(True)
        self._rest.setInterval(HOVER_REST_MS)
        self._rest.timeout.connect(self._rested)
        self._thumbnail_time = 0.0

    # -------------------------------------------------------------- building

    def set_system(self, positions: np.ndarray, side: float, spins: np.ndarray) -> None:
        """Show a new atomic configuration: the layers are made once and then given new data
        (removing a napari layer runs a full garbage collection, ~0.25 s per layer at N = 10000)."""
        self.positions = np.asarray(positions, float)
        self.spins = np.asarray(spins, float)
        self.fields, self.error, self.local_energy = None, None, None
        self.hovered = None
        rgba, _ = self._colours()
        idx = arrow_subset(len(self.positions))
        arrows = spin_vectors(self.positions[idx], self.spins[idx], self.arrow_length)
        v = self.viewer
        if self.atoms is None or any(
            layer not in v.layers
            for layer in (self.atoms, self.spin_layer, self.field_layer, self.box_layer)
        ):
            self._add_layers(side, rgba, arrows, idx)
        else:
            self.box_layer.data = box_edges(side)
            self.atoms.data = self.positions
            self.atoms.face_color = rgba
            self.spin_layer.data = arrows
            self.spin_layer.edge_color = rgba[idx]
            self.field_layer.data = np.zeros((1, 2, 3))
        self._ring()
        v.dims.ndisplay = 3
        v.reset_view()
        self._update_legend()

    def _add_layers(self, side: float, rgba: np.ndarray, arrows: np.ndarray, idx) -> None:
        v = self.viewer
        for layer in (self.atoms, self.spin_layer, self.field_layer, self.box_layer):
            if layer is not None and layer in v.layers:
                v.layers.remove(layer)
        self.box_layer = v.add_vectors(
            box_edges(side), name="Box", edge_width=0.03, edge_color="#9aa3ad",
            vector_style="line", opacity=0.8,
        )  # fmt: skip
        self.atoms = v.add_points(
            self.positions, name="Atoms", size=self.atom_size, shading="spherical",
            face_color=rgba, border_width=0, border_color="white", ndim=3,
        )  # fmt: skip
        self.spin_layer = v.add_vectors(
            arrows, name="Spins", edge_width=self.arrow_width, edge_color=rgba[idx],
            vector_style="arrow",
        )  # fmt: skip
        self.field_layer = v.add_vectors(
            np.zeros((1, 2, 3)), name="Fields (H_perp)", edge_width=0.04,
            edge_color="#7fff7f", vector_style="arrow", visible=False,
        )  # fmt: skip
        # hidden field arrows are not updated; showing them (panel or layer list) catches up
        self.field_layer.events.visible.connect(lambda event: self._update_field_arrows())
        for layer in (self.box_layer, self.atoms, self.spin_layer, self.field_layer):
            layer.locked = True  # the layer list's delete button and Ctrl+Delete pass them by
        self._fix_atoms()
        # napari makes a Points layer editable again when the view turns 2D or 3D
        self.atoms.events.editable.connect(lambda event: self._fix_atoms())
        self.atoms.events.data.connect(self._keep_positions)
        self.viewer.mouse_move_callbacks.append(self._on_mouse_move)

    def _fix_atoms(self) -> None:
        """No add, select or move mode for the atoms: their positions are the system's."""
        self.atoms.editable = False

    def _keep_positions(self, event) -> None:
        """Undo an edit of the Atoms layer (points deleted with Delete, added or moved): atoms
        sit at fixed positions during the dynamics, and every atom carries a spin."""
        if event.action not in (ActionType.ADDED, ActionType.REMOVED, ActionType.CHANGED):
            return
        if np.array_equal(self.atoms.data, self.positions):
            return
        self.atoms.selected_data = set()
        self.atoms.data = self.positions
        self.refresh()
        show_info(
            "Atoms sit at fixed positions: the edit of the Atoms layer was undone "
            "(the System panel generates or opens another system)"
        )

    # -------------------------------------------------------------- updates

    def quantity_values(self) -> np.ndarray:
        """Per-atom values of the selected colour quantity."""
        s = self.spins
        q = self.quantity
        if q == "S_z":
            return s[:, 2]
        if q == "S.n":
            n = self.axis / max(np.linalg.norm(self.axis), 1e-12)
            return s @ n
        if q == "|H_perp|" and self.fields is not None:
            return np.linalg.norm(h_perp(s, self.fields), axis=-1)
        if q == "local energy (ML)" and self.local_energy is not None:
            return self.local_energy
        if q == "ML-ED field error" and self.error is not None:
            return self.error
        return np.zeros(len(s))

    def _colours(self):
        return colours(self.quantity_values(), self.quantity)

    def update_spins(
        self,
        spins: np.ndarray,
        fields: np.ndarray | None = None,
        local_energy: np.ndarray | None = None,
    ) -> None:
        """New spin state (replica 0), optionally with the fields of the last evaluation and
        the local energies of these spins."""
        self.spins = np.asarray(spins, float)
        if fields is not None:
            self.fields = np.asarray(fields, float)
        if local_energy is not None:
            self.local_energy = np.asarray(local_energy, float)
        self.refresh()

    def refresh(self) -> None:
        """Recolour atoms, redraw arrows and field vectors from the stored state."""
        if self.atoms is None:
            return
        now = time.monotonic()
        thumbnail = now - self._thumbnail_time >= THUMBNAIL_S
        if thumbnail:
            self._thumbnail_time = now
        # napari's layer list redraws a row for every event of its layer, in a window
        # composition of its own (~20 ms with software OpenGL): it hears only the updates
        # that carry a new thumbnail; the canvas listens to the layers directly
        quiet = contextlib.nullcontext() if thumbnail else self.viewer.layers.events.blocker()
        with quiet:
            rgba, _ = self._colours()
            self.atoms.face_color = rgba
            if not np.all(self.atoms.size == self.atom_size):  # each assignment costs a refresh
                self.atoms.size = self.atom_size
            idx = arrow_subset(len(self.positions))
            if self.spin_layer.edge_width != self.arrow_width:
                self.spin_layer.edge_width = self.arrow_width
            # colours and arrows in one layer refresh, its thumbnail at most every THUMBNAIL_S
            with self.spin_layer._block_refresh(), self._keep_range():
                self.spin_layer.edge_color = rgba[idx]
                self.spin_layer.data = spin_vectors(
                    self.positions[idx], self.spins[idx], self.arrow_length
                )
            self.spin_layer.refresh(thumbnail=thumbnail)
            self._update_field_arrows()
        self._update_legend()

    def _keep_range(self):
        """Context in which new arrows do not make the viewer re-range its dims (~3 ms a frame
        at N = 500): arrows turn about fixed atoms inside the box, which sets the range."""
        rerange = getattr(self.viewer, "_on_layers_change", None)  # napari's handler
        if rerange is None:
            return contextlib.nullcontext()
        return self.spin_layer.events.data.blocker(rerange)

    def _update_field_arrows(self) -> None:
        """H_perp arrows from the stored fields, scaled to 0.8 ell at the largest (when shown)."""
        if self.fields is None or self.field_layer is None or not self.field_layer.visible:
            return
        idx = arrow_subset(len(self.positions))
        hp = h_perp(self.spins, self.fields)[idx]
        scale = 0.8 / max(float(np.linalg.norm(hp, axis=-1).max()), 1e-12)
        self.field_layer.data = np.stack([self.positions[idx], scale * hp], axis=1)
        self.field_layer.name = f"Fields (H_perp x {scale:.3g})"

    def _on_mouse_move(self, viewer, event) -> None:
        """The pointer moved: which atom it is on is looked up once it rests (HOVER_REST_MS),
        like a tooltip. Each change of atom redraws the canvas, ~75 ms at N = 10000 with
        software OpenGL: following every move would take the whole main thread."""
        self._pointer = (event.position, event.view_direction, list(event.dims_displayed))
        self._rest.start()

    def _rested(self) -> None:
        if self._pointer is not None:
            self.hover(self.atom_at(*self._pointer))

    def atom_at(self, position, view_direction, dims_displayed) -> int | None:
        """The atom under the mouse pointer: the first sphere along the view ray (3D), or
        the one under the cursor (2D); None where there is none."""
        if self.atoms is None or self.atoms not in self.viewer.layers:
            return None
        index = self.atoms.get_value(
            position, view_direction=view_direction, dims_displayed=dims_displayed, world=True
        )
        return None if index is None else int(index)

    def hover(self, index: int | None) -> None:
        """Say the spin of atom `index` (and the coloured quantity there) under the legend,
        updated with every frame; None: the pointer is on no atom."""
        if index != self.hovered:
            self.hovered = index
            self._update_legend()
            self._ring()

    def _ring(self) -> None:
        """A white ring round the atom under the pointer (none elsewhere)."""
        widths = np.zeros(len(self.positions))
        if self.hovered is not None and self.hovered < len(widths):
            widths[self.hovered] = HOVER_RING
        self.atoms.border_width = widths

    def atom_text(self, index: int) -> str:
        """One line on one atom: its spin and the value of the colour quantity."""
        sx, sy, sz = self.spins[index]
        text = f"Atom {index}: S = ({sx:+.2f}, {sy:+.2f}, {sz:+.2f})"
        values = self.quantity_values()
        if self.quantity != "S_z" and (self.quantity == "S.n" or np.any(values)):
            text += f", {self.quantity} = {values[index]:.3g}"
        return text

    def _update_legend(self) -> None:
        values = self.quantity_values()
        _, (lo, hi) = self._colours()
        cmap = QUANTITIES.get(self.quantity, ("viridis", False))[0]
        if self.quantity not in ("S_z", "S.n") and not np.any(values):
            self.legend = f"Colour: {self.quantity} (not computed yet)"  # no range to state
        else:
            # the error belongs to the compared spins, not to those shown later
            when = f" at step {self.error_step}" if self.quantity == "ML-ED field error" else ""
            self.legend = f"Colour: {self.quantity}{when} from {lo:.3g} to {hi:.3g} ({cmap})"
        lines = [self.legend + (f", {self.replica_note}" if self.replica_note else "")]
        if self.hovered is not None and self.hovered < len(self.spins):
            lines.append(self.atom_text(self.hovered))
        text = "\n".join(lines)
        overlay = self.viewer.canvas.overlays.text
        overlay.text = text
        overlay.visible = True
        overlay.font_size = LEGEND_PT * self.font_scale

"""The latent explorer's session (no Qt): what the user is looking at in a run's latent space and
every change to it, each announced by a psygnal event.

State: the run (an :class:`~cryospire_core.analysis.explorer.Explorer`), its 2D
:class:`~cryospire_core.analysis.explorer.Embedding`, the colouring of the particles, the cursor
(a :class:`Point`: where it is drawn and its latent, whose map is shown), the map box (samples
per side of the maps shown, whatever box the model was trained at), the traversal ends A and
B, the :class:`~cryospire_core.analysis.explorer.Traversal` and the step of it last shown,
whether it plays, and the selected particles. The napari dock
(:mod:`cryospire_napari._explorer_widget`) calls the methods below and redraws on the events; a
script or a test can drive a session the same way. What is computed from the run (traversals,
k-means states, which particles of the run's particle file are selected) is the Explorer's, the
same methods the services (:mod:`cryospire_core.services`) call.

Slow work stays out of the session so a GUI can run it in a worker thread: the caller computes
(``Explorer.from_run``, ``Explorer.embedding``, ``Explorer.colour_values``, the function returned
by :meth:`ExplorerSession.traversal_request`) and hands the result to the session
(:meth:`~ExplorerSession.load`, :meth:`~ExplorerSession.set_embedding`,
:meth:`~ExplorerSession.set_traversal`), which changes state and emits on the calling thread.

Methods that need a run do nothing before one is loaded; a request the state does not allow
yet (a traversal between ends not set, playing without a traversal, colouring by something the
run lacks) raises :class:`ActionRefused` with a sentence for the user, and changes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from psygnal import Signal, SignalGroup

from cryospire_core.analysis.explorer import (
    MIN_MAP_BOX,
    ColourMode,
    Embedding,
    Explorer,
    Traversal,
    TraversalKind,
    points_in_polygon,
)
from cryospire_core.imaging.lattice import Lattice
from cryospire_core.ranges import BOX


class ActionRefused(Exception):
    """A change the session's state does not allow yet; the message says what to do first."""


@dataclass(frozen=True, eq=False)  # holds arrays: equal only to itself
class Point:
    """A place in latent space and where the current embedding draws it: xy (2,) float64
    embedding coordinates, z (zdim,) float32 latent."""

    xy: np.ndarray
    z: np.ndarray


@dataclass(frozen=True)
class Colouring:
    """What the particles are coloured by: mode; part (0-based) for a part's presence or
    displacement; k, the number of k-means states (also used to select a state)."""

    mode: ColourMode = ColourMode.STATE
    part: int = 0
    k: int = 8


class SessionEvents(SignalGroup):
    """What :class:`ExplorerSession` emits, each after its state has changed."""

    #: A run was loaded (Explorer); the events of its whole new state follow (see ``load``).
    loaded = Signal(object)
    #: The 2D layout changed (Embedding); the cursor and ends were re-projected onto it.
    embedding_changed = Signal(object)
    #: The colouring changed (Colouring).
    colouring_changed = Signal(object)
    #: The cursor moved to a new latent (Point).
    cursor_moved = Signal(object)
    #: The map box changed (int, or None for the model's own); the map is to be drawn again.
    map_box_changed = Signal(object)
    #: End A or B was set (Point or None, Point or None).
    ends_changed = Signal(object, object)
    #: A new traversal (Traversal), or None when a new run dropped the old one.
    traversal_changed = Signal(object)
    #: The traversal step shown (int, 0-based); the cursor moved there (cursor_moved follows).
    step_changed = Signal(int)
    #: Playing the traversal started (True) or stopped (False).
    playing_changed = Signal(bool)
    #: The selection changed ((N,) bool over the run's explored particles).
    selection_changed = Signal(object)


class ExplorerSession:
    """One user's view of a run's latent space (see the module docstring); ``events`` is its
    :class:`SessionEvents`."""

    def __init__(self) -> None:
        self.events = SessionEvents()
        self.explorer: Explorer | None = None
        self.embedding: Embedding | None = None
        self.colouring = Colouring()
        self.cursor: Point | None = None
        self.map_box: int | None = None
        self.ends: tuple[Point | None, Point | None] = (None, None)
        self.traversal: Traversal | None = None
        self.step = 0
        self.playing = False
        self.selected = np.zeros(0, bool)

    # -- the run and its layout -------------------------------------------------------------------

    def load(self, explorer: Explorer, embedding: Embedding) -> None:
        """Explore ``explorer`` laid out as ``embedding`` (computed from it): nothing selected,
        no ends, no traversal, the cursor at the mean latent, coloured by ground truth when the
        run has it (else as before, where the run allows that; else by state). Emits loaded,
        then embedding_changed, colouring_changed, selection_changed, ends_changed,
        traversal_changed (None) and cursor_moved; playing_changed (False) first if it played."""
        self.stop()
        self.explorer, self.embedding = explorer, embedding
        self.selected = np.zeros(explorer.n_particles, bool)
        self.ends, self.traversal, self.step = (None, None), None, 0
        c = dataclasses.replace(self.colouring, part=min(self.colouring.part, max(0, explorer.n_parts - 1)))
        if explorer.gt_labels is not None:
            c = dataclasses.replace(c, mode=ColourMode.GROUND_TRUTH)
        elif self._refusal(c) is not None:
            c = dataclasses.replace(c, mode=ColourMode.STATE)
        self.colouring = c
        self.cursor = self._point(embedding.from_latent(explorer.latents.mean(0))[0])
        ev = self.events
        ev.loaded.emit(explorer)
        ev.embedding_changed.emit(embedding)
        ev.colouring_changed.emit(self.colouring)
        ev.selection_changed.emit(self.selected)
        ev.ends_changed.emit(*self.ends)
        ev.traversal_changed.emit(None)
        ev.cursor_moved.emit(self.cursor)

    def set_embedding(self, embedding: Embedding) -> None:
        """Lay the particles out as ``embedding`` (of the loaded run's latents); the cursor and
        the ends keep their latents and move to where the new layout draws them."""
        if self.explorer is None:
            return
        self.embedding = embedding

        def moved(p: Point | None) -> Point | None:
            return None if p is None else Point(embedding.from_latent(p.z)[0].astype(np.float64), p.z)

        self.cursor = moved(self.cursor)
        self.ends = (moved(self.ends[0]), moved(self.ends[1]))
        self.events.embedding_changed.emit(embedding)

    # -- colours ------------------------------------------------------------------------------------

    def set_colouring(self, mode: ColourMode | None = None, part: int | None = None, k: int | None = None) -> None:
        """Colour by ``mode`` / of ``part`` (0-based) / with ``k`` states (None: unchanged).
        ActionRefused when the loaded run lacks what the mode needs (ground truth, parts)."""
        c = Colouring(self.colouring.mode if mode is None else mode, self.colouring.part if part is None else int(part),
                      self.colouring.k if k is None else int(k))
        why = self._refusal(c)
        if why is not None:
            raise ActionRefused(why)
        if c != self.colouring:
            self.colouring = c
            self.events.colouring_changed.emit(c)

    def _refusal(self, c: Colouring) -> str | None:
        """Why the loaded run cannot be coloured as ``c`` (None: it can, or no run is loaded)."""
        e = self.explorer
        if e is None:
            return None
        if c.mode == ColourMode.GROUND_TRUTH and e.gt_labels is None:
            return "this run has no ground truth (gt/labels.npy beside its particles)"
        if c.mode.of_a_part and e.n_parts == 0:
            return "this run has no parts yet"
        return None

    # -- the map box ---------------------------------------------------------------------------------

    def set_map_box(self, box: int | None) -> None:
        """Show maps ``box`` samples per side (the model's field of view; None: the model's own
        box), kept for the runs loaded next. ActionRefused unless ``box`` is an even whole number
        from :data:`~cryospire_core.analysis.explorer.MIN_MAP_BOX` to 1024."""
        if box is not None and not (BOX.accepts(box) and box >= MIN_MAP_BOX):
            raise ActionRefused(f"a map box is an even number of samples from {MIN_MAP_BOX} to {BOX.hi}, not {box!r}")
        if box != self.map_box:
            self.map_box = box
            self.events.map_box_changed.emit(box)

    @property
    def map_lattice(self) -> Lattice | None:
        """The lattice the maps are shown on (None before a run is loaded)."""
        return None if self.explorer is None else self.explorer.map_lattice(self.map_box)

    # -- the cursor and the traversal ends ----------------------------------------------------------

    def _point(self, xy: np.ndarray) -> Point:
        xy = np.asarray(xy, np.float64)[:2]
        return Point(xy, self.embedding.to_latent(xy)[0])

    def move_cursor(self, xy: np.ndarray) -> None:
        """Move the cursor to embedding coordinates ``xy`` (2,): its latent is the embedding's
        inverse there."""
        if self.embedding is None:
            return
        self.cursor = self._point(xy)
        self.events.cursor_moved.emit(self.cursor)

    def set_end(self, which: int) -> None:
        """Make the cursor traversal end A (``which`` 0) or B (1)."""
        if self.cursor is None:
            return
        ends = list(self.ends)
        ends[which] = self.cursor
        self.ends = (ends[0], ends[1])
        self.events.ends_changed.emit(*self.ends)

    # -- traversals -----------------------------------------------------------------------------------

    def traversal_request(self, kind: TraversalKind, n_steps: int) -> Callable[[], Traversal]:
        """The computation of a traversal of ``kind`` with ``n_steps`` steps from the current state
        (ends A and B for the kinds between ends; ActionRefused when one is not set): a function
        of no arguments touching no session state, for a worker thread; give its result to
        :meth:`set_traversal`. Before a run is loaded: ActionRefused."""
        e = self.explorer
        if e is None:
            raise ActionRefused("load a run first")
        a = b = None
        if kind.between_ends:
            if self.ends[0] is None or self.ends[1] is None:
                raise ActionRefused("set ends A and B first (move the cursor, then 'A = cursor', 'B = cursor')")
            a, b = self.ends[0].z, self.ends[1].z

        def compute() -> Traversal:
            return e.traversal(kind, n_steps, a, b)

        return compute

    def set_traversal(self, traversal: Traversal) -> None:
        """Make ``traversal`` (of the loaded run) the current one and show its first step."""
        self.traversal = traversal
        self.events.traversal_changed.emit(traversal)
        self.step_to(0)

    def step_to(self, i: int) -> None:
        """Show step ``i`` of the traversal (clipped to its range): the cursor moves to its latent."""
        if self.traversal is None:
            return
        self.step = int(np.clip(i, 0, len(self.traversal) - 1))
        z = self.traversal.latents[self.step]
        self.cursor = Point(self.embedding.from_latent(z)[0].astype(np.float64), z)
        self.events.step_changed.emit(self.step)
        self.events.cursor_moved.emit(self.cursor)

    def play(self) -> None:
        """Start playing the traversal from its first step (ActionRefused without one); the
        viewer calls :meth:`advance` each time the previous step is on screen."""
        if self.traversal is None:
            raise ActionRefused("compute a traversal first")
        if not self.playing:
            self.playing = True
            self.events.playing_changed.emit(True)
        self.step_to(0)

    def advance(self) -> None:
        """While playing: show the next step (after the last, the first again)."""
        if self.playing and self.traversal is not None:
            self.step_to((self.step + 1) % len(self.traversal))

    def stop(self) -> None:
        """Stop playing (nothing happens when it does not play)."""
        if self.playing:
            self.playing = False
            self.events.playing_changed.emit(False)

    # -- selections -------------------------------------------------------------------------------------

    def _select(self, mask: np.ndarray) -> None:
        self.selected = np.asarray(mask, bool)
        self.events.selection_changed.emit(self.selected)

    def select_lasso(self, polygon: np.ndarray) -> None:
        """Select the particles inside ``polygon`` (M, 2) of embedding coordinates (closed
        implicitly; fewer than 3 vertices select nothing)."""
        if self.embedding is not None:
            self._select(points_in_polygon(self.embedding.points, polygon))

    def select_state(self, state: int) -> None:
        """Select the particles of k-means state ``state`` (0-based, k of the colouring)."""
        if self.explorer is not None:
            self._select(self.explorer.states(self.colouring.k) == state)

    def clear_selection(self) -> None:
        """Select nothing."""
        if self.explorer is not None:
            self._select(np.zeros(self.explorer.n_particles, bool))

    def selected_particles(self) -> np.ndarray:
        """(M,) int64 indices of the selected particles into the run's particle file (what a
        selection written or trained on lists:
        :meth:`~cryospire_core.analysis.explorer.Explorer.particle_indices`); empty before a run
        is loaded."""
        if self.explorer is None:
            return np.zeros(0, np.int64)
        return self.explorer.particle_indices(self.selected)

"""The explorer session without Qt: each transition's new state and the events it emits, on an
Explorer over a small two-part model (no training) and two clusters of latents."""

from __future__ import annotations

import numpy as np
import pytest

from cryospire_core.analysis import explorer as ex
from cryospire_core.analysis.session import ActionRefused, Colouring, ExplorerSession

from .test_explorer import _two_part_model


def _explorer(gt: bool = True, parts: bool = True) -> ex.Explorer:
    """200 latents (zdim 4) in two clusters along latent 0 (left: state 0, right: state 1)."""
    rng = np.random.default_rng(0)
    latents = rng.normal(0.0, 0.3, (200, 4)).astype(np.float32)
    latents[100:, 0] += 4.0
    labels = np.repeat([0, 1], 100) if gt else None
    model = _two_part_model(30.0, 6.0)
    return ex.Explorer(model, latents, model.part_index.numpy() if parts else None, gt_labels=labels)


def _record(session: ExplorerSession) -> list[tuple[str, tuple]]:
    seen: list[tuple[str, tuple]] = []
    session.events.all.connect(lambda info: seen.append((info.signal.name, info.args)))
    return seen


def _loaded(**kw) -> tuple[ExplorerSession, list[tuple[str, tuple]]]:
    session = ExplorerSession()
    e = _explorer(**kw)
    session.load(e, e.embedding(ex.EmbeddingMethod.PCA))
    return session, _record(session)


def test_load_announces_the_whole_new_state():
    session = ExplorerSession()
    seen = _record(session)
    e = _explorer()
    emb = e.embedding(ex.EmbeddingMethod.PCA)
    session.load(e, emb)
    assert [name for name, _ in seen] == ["loaded", "embedding_changed", "colouring_changed", "selection_changed",
                                          "ends_changed", "traversal_changed", "cursor_moved"]
    assert seen[0][1] == (e,) and seen[1][1] == (emb,) and seen[5][1] == (None,)
    assert session.colouring.mode is ex.ColourMode.GROUND_TRUTH  # the run has ground truth
    assert session.selected.shape == (200,) and not session.selected.any()
    # the cursor starts at the mean latent (on the PC plane through it: the mean itself)
    np.testing.assert_allclose(session.cursor.z, e.latents.mean(0), atol=1e-5)
    np.testing.assert_allclose(session.cursor.xy, [0.0, 0.0], atol=1e-5)
    assert seen[-1][1] == (session.cursor,)


def test_a_new_run_drops_the_old_traversal_ends_selection_and_playing():
    session, seen = _loaded()
    session.set_end(0)
    session.move_cursor([2.0, 0.0])
    session.set_end(1)
    session.set_traversal(session.traversal_request(ex.TraversalKind.LINE, 4)())
    session.play()
    session.select_state(0)
    seen.clear()
    e = _explorer(gt=False)
    session.load(e, e.embedding(ex.EmbeddingMethod.PCA))
    assert seen[0] == ("playing_changed", (False,))
    assert session.traversal is None and session.ends == (None, None) and not session.playing
    assert not session.selected.any()
    assert session.colouring.mode is ex.ColourMode.STATE  # no ground truth in the new run


def test_the_cursor_carries_the_latent_of_its_position_and_ends_take_it():
    session, seen = _loaded()
    session.move_cursor([1.5, -0.5])
    ((name, (point,)),) = seen
    assert name == "cursor_moved" and point is session.cursor
    np.testing.assert_allclose(point.z, session.embedding.to_latent([1.5, -0.5])[0])
    session.set_end(1)
    assert seen[-1] == ("ends_changed", (None, point))


def test_traversal_between_the_ends_then_play_advance_and_stop():
    session, seen = _loaded()
    with pytest.raises(ActionRefused, match="set ends A and B first"):
        session.traversal_request(ex.TraversalKind.LINE, 5)
    with pytest.raises(ActionRefused, match="compute a traversal first"):
        session.play()
    assert seen == []  # refused: nothing changed
    session.move_cursor([-2.0, 0.0])
    session.set_end(0)
    session.move_cursor([2.0, 0.0])
    session.set_end(1)
    a, b = session.ends[0].z, session.ends[1].z
    compute = session.traversal_request(ex.TraversalKind.LINE, 5)
    session.move_cursor([0.0, 1.0])  # the request keeps the ends it was made with
    seen.clear()
    trav = compute()
    assert isinstance(trav, ex.Traversal) and len(trav) == 5 and len(trav.readouts) == 5
    np.testing.assert_allclose(trav.latents[[0, -1]], [a, b], atol=1e-6)
    session.set_traversal(trav)
    assert [name for name, _ in seen] == ["traversal_changed", "step_changed", "cursor_moved"]
    assert seen[1][1] == (0,)
    np.testing.assert_allclose(session.cursor.z, a, atol=1e-6)
    np.testing.assert_allclose(session.cursor.xy, session.embedding.from_latent(a)[0], atol=1e-6)
    seen.clear()
    session.play()
    session.advance()
    session.step_to(99)  # clipped to the last step
    session.advance()  # ... and round to the first
    session.stop()
    session.stop()  # already stopped: no event
    session.advance()  # not playing: no step
    assert [(n, args) for n, args in seen if n != "cursor_moved"] == [
        ("playing_changed", (True,)), ("step_changed", (0,)), ("step_changed", (1,)), ("step_changed", (4,)),
        ("step_changed", (0,)), ("playing_changed", (False,))]
    np.testing.assert_allclose(session.cursor.z, trav.latents[0])


def test_pc_traversal_runs_along_pc1():
    session, _ = _loaded()
    trav = session.traversal_request(ex.TraversalKind.PC1, 7)()
    pts = session.embedding.from_latent(trav.latents)
    assert trav.latents.shape == (7, 4) and pts[-1, 0] - pts[0, 0] > 3.0
    np.testing.assert_allclose(pts[:, 1], 0.0, atol=1e-4)


def test_selections_by_lasso_state_and_clear():
    session, seen = _loaded()
    x = session.embedding.points[:, 0]
    gap = (np.sort(x)[99] + np.sort(x)[100]) / 2  # between the two clusters on PC1
    session.select_lasso(np.array([[x.min() - 1, -10], [gap, -10], [gap, 10], [x.min() - 1, 10]]))
    assert seen[-1][0] == "selection_changed"
    left = np.flatnonzero(x < gap)
    assert np.flatnonzero(session.selected).tolist() == left.tolist() and len(left) == 100
    session.set_colouring(k=3)
    session.select_state(1)
    assert (session.selected == (session.explorer.states(3) == 1)).all()
    session.clear_selection()
    assert not session.selected.any() and seen[-1][0] == "selection_changed"


def test_selected_particles_are_indices_into_the_run_s_particle_file():
    session = ExplorerSession()
    assert session.selected_particles().tolist() == []  # no run yet
    e = _explorer()
    keep = np.arange(0, 400, 2)  # a stage-2 run that kept every other particle of 400
    kept = ex.Explorer(e.model, e.latents, e.part_index, selection=keep)
    session.load(kept, kept.embedding())
    session.select_state(1)
    rows = np.flatnonzero(session.selected)
    assert len(rows) > 0
    assert session.selected_particles().tolist() == (2 * rows).tolist()


def test_colouring_is_refused_when_the_run_lacks_what_it_needs():
    session, seen = _loaded(gt=False, parts=False)
    with pytest.raises(ActionRefused, match="no ground truth"):
        session.set_colouring(ex.ColourMode.GROUND_TRUTH)
    with pytest.raises(ActionRefused, match="no parts yet"):
        session.set_colouring(ex.ColourMode.PRESENCE)
    assert seen == [] and session.colouring == Colouring()
    session.set_colouring(k=2)
    session.set_colouring(k=2)  # unchanged: no second event
    assert seen == [("colouring_changed", (Colouring(ex.ColourMode.STATE, 0, 2),))]


def test_a_part_colouring_survives_a_new_run_with_parts_and_is_dropped_without():
    session, seen = _loaded()
    session.set_colouring(ex.ColourMode.DISPLACEMENT, part=1)
    assert seen == [("colouring_changed", (Colouring(ex.ColourMode.DISPLACEMENT, 1, 8),))]
    e = _explorer(gt=False)
    session.load(e, e.embedding())
    assert session.colouring == Colouring(ex.ColourMode.DISPLACEMENT, 1, 8)
    e = _explorer(gt=False, parts=False)
    session.load(e, e.embedding())
    assert session.colouring == Colouring(ex.ColourMode.STATE, 0, 8)


def test_a_new_embedding_keeps_the_latents_of_the_cursor_and_ends():
    session, seen = _loaded()
    session.move_cursor([1.0, 0.5])
    session.set_end(0)
    z = session.cursor.z.copy()
    e = session.explorer
    other = ex.Embedding(ex.EmbeddingMethod.UMAP, e.embedding().points * [2.0, -1.0] + 3.0, e.latents, None, k=1)
    seen.clear()
    session.set_embedding(other)
    assert seen == [("embedding_changed", (other,))]
    np.testing.assert_array_equal(session.cursor.z, z)
    np.testing.assert_allclose(session.cursor.xy, other.from_latent(z)[0])
    np.testing.assert_array_equal(session.ends[0].z, z)
    np.testing.assert_allclose(session.ends[0].xy, session.cursor.xy)

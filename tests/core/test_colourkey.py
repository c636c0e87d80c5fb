"""The key of each colouring of the explorer's scatter: categories with names and counts that sum
to the particles, or the range a colormap spans, with the quantity's unit."""

from __future__ import annotations

import numpy as np
import pytest

from cryospire_core.analysis.colourkey import (
    MAX_CATEGORIES,
    colour_key,
    density_key,
    ground_truth_state_names,
)
from cryospire_core.analysis.explorer import ColourMode
from cryospire_core.io.atomic import write_npz


def test_states_are_categories_numbered_from_1_with_their_counts():
    values = np.array([0, 2, 2, 1, 2, 0], np.float32)
    key = colour_key(ColourMode.STATE, values)
    assert key.categorical and "state" in key.title
    assert [(c.value, c.name, c.count) for c in key.categories] == [(0, "1", 2), (1, "2", 1), (2, "3", 3)]


def test_ground_truth_states_take_their_names_up_to_the_category_limit():
    values = np.array([1, 1, 0, 1], np.float32)
    key = colour_key(ColourMode.GROUND_TRUTH, values, state_names=["open", "closed"])
    assert [(c.name, c.count) for c in key.categories] == [("open", 1), ("closed", 3)]
    assert [c.name for c in colour_key(ColourMode.GROUND_TRUTH, values).categories] == ["state 0", "state 1"]
    # A motion's many steps: a colour bar from the named state at the 1st percentile to the 99th's.
    many = np.repeat(np.arange(MAX_CATEGORIES + 5), 10).astype(np.float32)
    names = [f"step_{k:02d}" for k in range(MAX_CATEGORIES + 5)]
    key = colour_key(ColourMode.GROUND_TRUTH, many, state_names=names)
    assert not key.categorical
    assert (key.lo, key.hi) == tuple(np.percentile(many, [1, 99]))
    assert (key.lo_text, key.hi_text) == (names[round(key.lo)], names[round(key.hi)])


@pytest.mark.parametrize("mode, words", [(ColourMode.PRESENCE, "presence of part 3 (0-1)"),
                                         (ColourMode.DISPLACEMENT, "displacement of part 3 (Å)")])
def test_continuous_values_span_their_1st_to_99th_percentile(mode, words):
    values = np.linspace(0.0, 1.0, 201, dtype=np.float32)
    values[0] = -50.0  # an outlier does not stretch the bar
    key = colour_key(mode, values, part=2)
    assert not key.categorical and words in key.title
    lo, hi = np.percentile(values, [1, 99])
    assert (key.lo, key.hi) == (lo, hi) and 0.0 < key.lo < 0.02 and 0.98 < key.hi < 1.0
    t = key.scaled(values)
    assert t.min() == 0.0 and t.max() == 1.0 and t[0] == 0.0
    np.testing.assert_allclose(t[100], (values[100] - lo) / (hi - lo), rtol=1e-6)


def test_density_key_reads_the_fullest_bin():
    key = density_key(37)
    assert key.hi == pytest.approx(np.log1p(37)) and (key.lo_text, key.hi_text) == ("0", "37")


def test_state_names_from_a_simulation_ground_truth(tmp_path):
    assert ground_truth_state_names(None) is None and ground_truth_state_names(tmp_path) is None
    write_npz(tmp_path / "beads.npz", state_names=np.asarray(["open", "closed"]), sigmas=np.ones(3))
    assert ground_truth_state_names(tmp_path) == ["open", "closed"]
    write_npz(tmp_path / "beads.npz", sigmas=np.ones(3))  # no names: the states are numbered
    assert ground_truth_state_names(tmp_path) is None

"""Hostile and broken inputs: every reader ends in one clear InputError (file, field, what was
expected), a documented repair, or a sound read; never another exception, a hang or a giant
allocation. The damage generators and the rule live in ``hostile_cases`` (shared with
``benchmarks/hostile_tally.py``); hypothesis draws ``EXAMPLES`` cases per family, and the tally
table (family -> tried / InputError / repair / read ok) is printed and written to
``<pytest tmp>/hostile/tally.txt`` at the end of the module.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryospire_core.errors import InputError
from cryospire_core.io.load import load_particles

from .hostile_cases import FAMILIES, Tally, fresh_copy, make_template, run_case

EXAMPLES = 10  # per family (~50 families)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return make_template(tmp_path_factory.mktemp("hostile") / "valid")


@pytest.fixture(scope="module")
def tally(template):
    t = Tally()
    yield t
    table = t.table()
    (template.parent / "tally.txt").write_text(table + "\n")
    print(f"\nhostile-input tally ({template.parent / 'tally.txt'}):\n{table}")


def test_template_is_valid(template):
    for name, kw in (("particles.star", {}), ("particles.cs", {}),
                     ("stack.mrcs", {"poses": "poses.pkl", "ctf": "ctf.pkl"})):
        ps = load_particles(template / name, invert=False, **{k: template / v for k, v in kw.items()})
        assert len(ps) == 12 and np.isfinite(ps.images(np.arange(12))).all()


@pytest.mark.parametrize("name", sorted(FAMILIES))
@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_inputs_end_cleanly(template, tally, name, data):
    family = FAMILIES[name]
    outcome = run_case(family, template, data.draw(family.strategy, label="case"))
    tally.add(name, outcome)


def test_nan_pixels_are_repaired_and_reported(template):
    """The documented repair: NaN/Inf pixels read as 0, with a warning naming the stack and image."""
    with fresh_copy(template) as folder:
        raw = bytearray((folder / "stack.mrcs").read_bytes())
        raw[1024 + 4 * (3 * 16 * 16 + 5): 1024 + 4 * (3 * 16 * 16 + 6)] = np.float32(np.nan).tobytes()
        (folder / "stack.mrcs").write_bytes(bytes(raw))
        ps = load_particles(folder / "particles.star", invert=False)
        with pytest.warns(RuntimeWarning, match=r"stack.mrcs: 1 NaN/Inf pixels in image\(s\) \[4\]"):
            imgs = ps.images(np.arange(12))
        assert imgs[3].reshape(-1)[5] == 0 and np.isfinite(imgs).all()


def test_missing_stack_error_names_the_metadata_and_stack(template):
    with fresh_copy(template) as folder:
        (folder / "stack.mrcs").unlink()
        with pytest.raises(InputError) as err:
            load_particles(folder / "particles.star")
        assert err.value.path == str(folder / "particles.star") and "stack.mrcs" in err.value.expected


def test_copies_are_removed(template):
    with fresh_copy(template) as folder:
        assert (folder / "stack.mrcs").exists()
    assert not folder.exists()
    assert sorted(p.name for p in template.parent.iterdir() if p.name.startswith("hostile-")) == []

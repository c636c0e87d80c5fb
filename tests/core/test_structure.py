"""Ground truth from atomic models: beads, groups by residue ranges, motions, presence states, loops."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from cryospire_core.errors import InputError
from cryospire_core.sim.phantoms import state_volume
from cryospire_core.sim.structure import phantom_from_structure

_ATOMS = (("N", "N", (-1, 0, 0)), ("CA", "C", (0, 0, 0)), ("C", "C", (1, 0, 0)), ("O", "O", (1, 1, 0)))


def _write_model(path, chains=(("A", (0, 0, 0), (1, 0, 0), 40), ("B", (62, 0, 0), (0.3, 1, 0.2), 30),
                               ("C", (-4, 10, 6), (0, 0.3, 1), 15))):
    """A small PDB: per chain, residues of N, CA, C, O along a helical trace (1.5 Å rise)."""
    gemmi = pytest.importorskip("gemmi")
    st = gemmi.Structure()
    model = gemmi.Model("1")
    for name, start, direction, n in chains:
        u = np.asarray(direction, float) / np.linalg.norm(direction)
        v = np.cross(u, [0.0, 0.0, 1.0] if abs(u[2]) < 0.9 else [1.0, 0.0, 0.0])
        v /= np.linalg.norm(v)
        w = np.cross(u, v)
        chain = gemmi.Chain(name)
        for i in range(n):
            t = np.deg2rad(100.0 * i)
            trace = np.asarray(start, float) + 1.5 * i * u + 2.3 * (np.cos(t) * v + np.sin(t) * w)
            res = gemmi.Residue()
            res.name, res.seqid = "ALA", gemmi.SeqId(i + 1, " ")
            for atom_name, element, offset in _ATOMS:
                atom = gemmi.Atom()
                atom.name, atom.element, atom.b_iso = atom_name, gemmi.Element(element), 40.0
                atom.pos = gemmi.Position(*(trace + offset))
                res.add_atom(atom)
            chain.add_residue(res)
        model.add_chain(chain)
    st.add_model(model)
    st.setup_entities()
    st.write_pdb(str(path))
    return path


def test_structure_beads_domains_and_units(tmp_path):
    pdb = _write_model(tmp_path / "m.pdb")
    ph = phantom_from_structure(pdb, 48, 4.0)
    assert ph.domain_names == ("A", "B", "C") and ph.n_states == 1 and ph.n_beads == 85
    np.testing.assert_array_equal(np.bincount(ph.domains), [40, 30, 15])
    assert ph.integral(0) == pytest.approx(85 * (7 + 6 + 6 + 8))  # electrons of N, CA, C, O
    sig_px = ph.sigmas / ph.apix
    assert sig_px.min() >= 1.0 - 1e-9 and sig_px.max() <= 1.5 + 1e-9
    w = ph.amplitudes * ph.sigmas**3
    np.testing.assert_allclose((ph.centres[0] * w[:, None]).sum(0) / w.sum(), 0.0, atol=1e-9)  # centred
    vol = state_volume(ph, 0)
    assert vol.sum(dtype=np.float64) * ph.apix**3 == pytest.approx(ph.integral(0), rel=1e-5)
    atoms = phantom_from_structure(pdb, 48, 4.0, {"beads": "atom"})
    assert atoms.n_beads == 4 * 85 and atoms.integral(0) == pytest.approx(ph.integral(0))
    cif = tmp_path / "m.cif"
    import gemmi

    gemmi.read_structure(str(pdb)).make_mmcif_document().write_file(str(cif))
    np.testing.assert_allclose(phantom_from_structure(cif, 48, 4.0).centres, ph.centres, atol=1e-3)


def test_structure_spec_moves_and_removes_chains(tmp_path):
    pdb = _write_model(tmp_path / "m.pdb")
    pivot = [61.0, 0.0, 0.0]
    spec = {"moving": {"chains": ["B"], "pivot": pivot, "axis": [0, 0, 1], "angles_deg": [-40, 40], "states": 5},
            "optional": [["C"]]}
    ph = phantom_from_structure(pdb, 64, 3.0, spec)
    assert ph.n_states == 10 and ph.populations == pytest.approx(np.full(10, 0.1))
    b, c = ph.domains == 1, ph.domains == 2
    assert np.all(ph.presence[:5, c] == 1) and np.all(ph.presence[5:, c] == 0) and np.all(ph.presence[:, ~c] == 1)
    np.testing.assert_array_equal(ph.centres[:, ~b], np.broadcast_to(ph.centres[:1, ~b], ph.centres[:, ~b].shape))
    p = np.asarray(pivot) - ph.info["centre_offset_A"]
    ref = ph.centres[2, b]  # angle 0: the file's pose
    for k in (0, 4):
        dist = np.linalg.norm(ph.centres[k, b] - p, axis=1)
        np.testing.assert_allclose(dist, np.linalg.norm(ref - p, axis=1), atol=1e-9)
        np.testing.assert_allclose(ph.centres[k, b, 2], ref[:, 2], atol=1e-9)  # turned about z
        assert np.abs(ph.centres[k, b] - ref).max() > 5.0
    rnd = phantom_from_structure(pdb, 64, 3.0, {"moving": {"chains": ["B", "C"], "pivot": pivot, "states": 6,
                                                            "random_max_angle_deg": 30}})
    assert rnd.n_states == 6
    assert np.linalg.norm(np.asarray(rnd.info["motion"]["rotvecs_rad"]), axis=1).max() <= np.deg2rad(30) + 1e-12


def test_structure_that_does_not_fit_or_does_not_parse(tmp_path):
    pdb = _write_model(tmp_path / "m.pdb")
    with pytest.raises(InputError, match="molecule size"):
        phantom_from_structure(pdb, 24, 2.0)
    bad = tmp_path / "bad.pdb"
    bad.write_text("this is not a structure\n")
    with pytest.raises(InputError, match="bad.pdb"):
        phantom_from_structure(bad, 48, 3.0)


def _rigid(a: np.ndarray, b: np.ndarray) -> bool:
    """Points a, b (g, 3) related by a rigid motion (every pairwise distance kept)."""
    return np.allclose(pdist(a), pdist(b), atol=1e-6)


def test_groups_by_residue_ranges_hinge_and_twist(tmp_path):
    pdb = _write_model(tmp_path / "m.pdb")
    spec = {"groups": {"tip": [["A", 31, 40]], "arm": [["B"]]}, "motion_states": 5,
            "motions": [{"group": "arm", "pivot": "interface", "axis": "swing", "angles_deg": [-20, 20]},
                        {"group": "tip", "pivot": "centroid", "axis": "long", "angles_deg": [30, -30]}]}
    ph = phantom_from_structure(pdb, 64, 3.0, spec)
    assert ph.domain_names == ("tip", "arm", "rest") and ph.n_states == 5
    np.testing.assert_array_equal(np.bincount(ph.domains), [10, 30, 45])  # A 31-40; B; A 1-30 and C
    tip, arm, rest = (ph.domains == d for d in range(3))
    for k in range(5):
        assert _rigid(ph.centres[k, arm], ph.centres[2, arm]) and _rigid(ph.centres[k, tip], ph.centres[2, tip])
        np.testing.assert_allclose(ph.centres[k, rest], ph.centres[2, rest])
        # a twist turns the domain about an axis through its own centre
        np.testing.assert_allclose(ph.centres[k, tip].mean(0), ph.centres[2, tip].mean(0), atol=1e-9)
    assert np.abs(ph.centres[0, arm] - ph.centres[4, arm]).max() > 10.0  # 40° across a 45 Å arm
    assert np.abs(ph.centres[0, tip] - ph.centres[4, tip]).max() > 1.0
    turned = np.linalg.norm(np.asarray(ph.info["motion"][0]["axis"]))
    assert turned == pytest.approx(1.0)
    np.testing.assert_allclose(ph.info["motion"][0]["angles_deg"], np.linspace(-20, 20, 5))


def test_presence_states_weights_and_two_groups_moving_as_one(tmp_path):
    pdb = _write_model(tmp_path / "m.pdb")
    spec = {"groups": {"b": [["B"]], "c": [["C"]]}, "motion_states": 2,
            "motions": [{"group": ["b", "c"], "pivot": [61, 0, 0], "axis": [0, 0, 1], "angles_deg": [0, 30]}],
            "states": [{"name": "full", "absent": [], "weight": 3}, {"name": "no_c", "absent": ["c"], "weight": 1}]}
    ph = phantom_from_structure(pdb, 64, 3.0, spec)
    assert ph.state_names == ("full_pose_000", "full_pose_001", "no_c_pose_000", "no_c_pose_001")
    np.testing.assert_allclose(ph.populations, [0.375, 0.375, 0.125, 0.125])
    b, c = ph.domains == 0, ph.domains == 1
    assert np.all(ph.presence[:2] == 1) and np.all(ph.presence[2:, c] == 0) and np.all(ph.presence[2:, ~c] == 1)
    moved = b | c  # b and c turn together: distances between them are kept too
    assert _rigid(ph.centres[1, moved], ph.centres[0, moved]) and not np.allclose(ph.centres[1, b], ph.centres[0, b])


def test_flexible_loops_bend_between_fixed_anchors(tmp_path):
    pdb = _write_model(tmp_path / "m.pdb")
    spec = {"flexible": {"loops": [["A", 11, 19], ["B", 5, 9]], "amplitude_A": 4.0, "states": 6}}
    ph = phantom_from_structure(pdb, 64, 3.0, spec, seed=3)
    assert ph.n_states == 6 and ph.domain_names == ("A", "B", "C")
    loop = np.zeros(ph.n_beads, bool)
    loop[10:19] = True  # A 11-19
    loop[40 + 4:40 + 9] = True  # B 5-9
    moved = np.linalg.norm(ph.centres - ph.centres[:1], axis=2)  # (S, G)
    assert moved[:, ~loop].max() < 1e-9 and moved[0].max() == 0.0
    assert 1.0 < moved[1:, loop].max() <= 4.0 + 1e-9
    assert moved[1:, 14].min() > moved[1:, 10].max() - 1e-9  # the middle of a loop moves most
    other = phantom_from_structure(pdb, 64, 3.0, spec, seed=4)
    assert not np.allclose(other.centres, ph.centres)


@pytest.mark.parametrize(
    "spec, field",
    [({"moving": {"chains": ["Z"], "pivot": [0, 0, 0], "axis": [0, 0, 1], "angles_deg": [0, 9]}}, "moving.chains"),
     ({"moving": {"chains": ["B"], "pivot": [0, 0], "axis": [0, 0, 1], "angles_deg": [0, 9]}}, "moving.pivot"),
     ({"moving": {"chains": ["B"], "pivot": [0, 0, 0]}}, "moving"),
     ({"optional": "C"}, "optional"),
     ({"beads": "blob"}, "beads"),
     ({"colour": 1}, "keys"),
     ({"chains": "A"}, "chains"),
     ({"groups": {"x": [["A", 1, 5]], "y": [["A", 5, 9]]}}, "groups.y"),
     ({"groups": {"x": [["A", 500, 600]]}}, "groups.x"),
     ({"groups": {"x": [["Q"]]}}, "groups.x"),
     ({"groups": {"x": [["B"]]}, "motions": [{"group": "y", "angles_deg": [0, 9]}]}, r"motions\[0\].group"),
     ({"groups": {"x": [["B"]]}, "motions": [{"group": "x", "angles_deg": 9}]}, r"motions\[0\].angles_deg"),
     ({"groups": {"x": [["B"]]}, "motions": [{"group": "x", "axis": [0, 0], "angles_deg": [0, 9]}]},
      r"motions\[0\].axis"),
     ({"groups": {"x": [["B"]]}, "states": [{"name": "a", "absent": ["z"]}]}, r"states\[0\].absent"),
     ({"groups": {"x": [["B"]]}, "states": [{"name": "a", "weight": 0}]}, r"states\[0\].weight"),
     ({"flexible": {"loops": [["A", 3]]}}, "flexible.loops"),
     ({"flexible": {"loops": [["A", 3, 8]], "amplitude_A": -1}}, "flexible.amplitude_A"),
     ({"groups": {"x": [["B"]]}, "motions": [{"group": "x", "angles_deg": [0, 9]}],
       "flexible": {"loops": [["A", 3, 8]]}}, "flexible")],
)
def test_structure_spec_errors_name_the_field(tmp_path, spec, field):
    pdb = _write_model(tmp_path / "m.pdb")
    with pytest.raises(InputError, match=rf"spec.json: {field}: expected"):
        phantom_from_structure(pdb, 64, 3.0, spec, spec_path="spec.json")


_SETS = Path(__file__).resolve().parents[2] / "benchmarks" / "realistic" / "sets.json"


@pytest.mark.parametrize("name", [k for k in json.loads(_SETS.read_text()) if not k.startswith("_")])
def test_realistic_sets_build_fit_and_have_what_the_issue_asks(name):
    """Every realistic benchmark set builds from its shipped structure and fits its box; the
    complexes have a subunit under 15% of the mass and a state under 10% of the images."""
    s = json.loads(_SETS.read_text())[name]
    ph = phantom_from_structure(_SETS.parents[1] / "structures" / s["structure"], 64, s["apix"], s["spec"])
    assert s["role"] in ("tune", "held-out")
    mass = ph.amplitudes * ph.sigmas**3
    share = {n: mass[ph.domains == d].sum() / mass.sum() for d, n in enumerate(ph.domain_names)}
    optional = [n for d, n in enumerate(ph.domain_names) if (ph.presence[:, ph.domains == d] == 0).any()]
    if "states" in s["spec"] and "motions" not in s["spec"]:  # a complex with optional chains
        assert min(share[n] for n in optional) < 0.15 and ph.populations.min() < 0.10
    if "flexible" in s["spec"]:
        assert len(ph.domain_names) == 1
    if "motions" in s["spec"]:
        assert ph.n_states >= 10 and np.linalg.norm(ph.centres - ph.centres[:1], axis=2).max() > 2 * s["apix"]

"""Procedural phantoms: what moves, what disappears, the rendering's units and position, the hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.distance import pdist

from cryospire_core.errors import InputError
from cryospire_core.imaging.lattice import Lattice
from cryospire_core.sim.phantoms import (
    PRESETS,
    make_phantom,
    phantom_from_structure,
    rasterise,
    state_volume,
    state_volumes,
)

BOX = 32


def _domain(ph, name):
    return ph.domains == ph.domain_names.index(name)


@pytest.mark.parametrize("preset", PRESETS)
def test_basic_shape_and_sizes(preset):
    ph = make_phantom(preset, BOX, 6.0)
    S, G = ph.n_states, ph.n_beads
    assert ph.centres.shape == (S, G, 3) and ph.presence.shape == (S, G)
    assert ph.populations.sum() == pytest.approx(1.0) and np.all(ph.populations > 0)
    assert len(ph.state_names) == S == len(set(ph.state_names))
    sig_px = ph.sigmas / ph.apix
    assert sig_px.min() >= 1.0 and sig_px.max() <= 1.5
    # The molecule spans roughly 60% of the box and stays inside it in every state.
    on = ph.presence[0] > 0
    span = (pdist(ph.centres[0][on]).max() + 4 * ph.sigmas.mean()) / (BOX * ph.apix)
    assert 0.45 < span < 0.75
    assert np.abs(ph.centres).max() / ph.apix < 0.35 * BOX


def test_sizes_scale_with_pixel_size_and_seed_fixes_molecule():
    a, b = make_phantom("hinge", BOX, 2.0), make_phantom("hinge", BOX, 5.0)
    np.testing.assert_allclose(b.centres, a.centres * 2.5)
    np.testing.assert_allclose(b.sigmas, a.sigmas * 2.5)
    c = make_phantom("hinge", BOX, 2.0, seed=1)
    assert c.n_beads != a.n_beads or not np.allclose(c.centres, a.centres)
    # More pixels, more beads: the fine structure is set in pixels.
    assert make_phantom("homogeneous", 64, 6.0).n_beads > 3 * make_phantom("homogeneous", BOX, 12.0).n_beads


@pytest.mark.parametrize("preset", ["hinge", "random-hinge"])
def test_hinge_moves_one_domain_rigidly(preset):
    ph = make_phantom(preset, BOX, 4.0)
    assert ph.n_states == 100 and np.all(ph.presence == 1)
    moving = _domain(ph, "fab_b")
    # The core and the other arm never move.
    still = ph.centres[:, ~moving]
    np.testing.assert_array_equal(still, np.broadcast_to(still[:1], still.shape))
    # The hinged domain moves, rigidly (distances within it kept) about the hinge point.
    pivot = np.asarray(ph.info["motion"]["pivot_A"])
    ref = ph.centres[0, moving]
    assert np.all(np.abs(ph.centres[1:, moving] - ref).max(axis=(1, 2)) > 0)
    for k in (50, 99):
        cur = ph.centres[k, moving]
        assert np.abs(cur - ref).max() > 2 * ph.apix
        np.testing.assert_allclose(pdist(cur), pdist(ref), atol=1e-9)
        np.testing.assert_allclose(np.linalg.norm(cur - pivot, axis=1), np.linalg.norm(ref - pivot, axis=1), atol=1e-9)
    # No state pushes the moving domain into the rest (closer than 1 px).
    for k in range(ph.n_states):
        assert cKDTree(ph.centres[k, ~moving]).query(ph.centres[k, moving])[0].min() > ph.apix


def test_hinge_angles_spread_evenly_over_a_large_range():
    ph = make_phantom("hinge", BOX, 4.0)
    angles = np.asarray(ph.info["motion"]["angles_deg"])
    assert angles.max() - angles.min() >= 120
    np.testing.assert_allclose(np.diff(angles), np.diff(angles)[0])


def test_assembly_states_drop_whole_subunits_with_uneven_populations():
    ph = make_phantom("assembly", BOX, 6.0)
    assert 8 <= ph.n_states <= 16
    np.testing.assert_array_equal(ph.centres, np.broadcast_to(ph.centres[:1], ph.centres.shape))  # nothing moves
    assert np.all(ph.presence[:, _domain(ph, "core")] == 1)
    patterns = set()
    for k in range(ph.n_states):
        per_domain = []
        for d in range(len(ph.domain_names)):
            vals = np.unique(ph.presence[k, ph.domains == d])
            assert len(vals) == 1  # a subunit is all there or all gone
            per_domain.append(int(vals[0]))
        patterns.add(tuple(per_domain))
    assert len(patterns) == ph.n_states  # every state is a different assembly
    assert any(sum(p) < len(p) for p in patterns)
    assert ph.populations.min() == pytest.approx(0.01, abs=2e-3)
    assert ph.populations.max() == pytest.approx(0.13, abs=2e-3)


def test_mixed_combines_presence_and_motion():
    ph = make_phantom("mixed", BOX, 6.0)
    cap, moving = _domain(ph, "cap"), _domain(ph, "fab_b")
    on = ph.presence[:, cap].mean(1)
    assert set(on) == {0.0, 1.0} and on.mean() == 0.5
    assert np.all(ph.presence[:, ~cap] == 1)
    moved = np.abs(ph.centres[:, moving] - ph.centres[:1, moving]).max(axis=(1, 2))
    assert len(np.unique(np.round(moved[on == 0], 6))) == len(moved) // 2  # each position once per cap state
    assert on[0] == 1  # state 0 is the complete molecule


@pytest.mark.parametrize("oversample", [1, 2])
def test_voxel_sum_equals_analytic_integral(oversample):
    ph = make_phantom("assembly", BOX, 5.0)
    for k in (0, 3):
        vol = state_volume(ph, k, oversample=oversample)
        assert vol.shape == (BOX,) * 3 and vol.dtype == np.float32
        assert vol.sum(dtype=np.float64) * ph.apix**3 == pytest.approx(ph.integral(k), rel=1e-5)
    # States with fewer subunits hold less density.
    assert ph.integral(int(np.argmin(ph.presence.sum(1)))) < ph.integral(int(np.argmax(ph.presence.sum(1))))


def test_rasterise_position_and_band_limit():
    # One bead off-centre: it peaks at voxel (z, y, x) = D//2 + (5, -3, 2) and matches the
    # Gaussian sampled directly to the small error of the band limit (sigma 1.5 px).
    D, apix, sigma = 24, 2.0, 3.0
    c = np.array([[2.0, -3.0, 5.0]]) * apix
    vol = rasterise(c, np.array([sigma]), np.array([1.0]), Lattice(D, apix), oversample=2)
    assert np.unravel_index(np.argmax(vol), vol.shape) == (D // 2 + 5, D // 2 - 3, D // 2 + 2)
    g = (np.arange(D) - D // 2) * apix
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    direct = np.exp(-((x - c[0, 0]) ** 2 + (y - c[0, 1]) ** 2 + (z - c[0, 2]) ** 2) / (2 * sigma**2))
    assert np.abs(vol - direct).max() < 1e-3
    # Without oversampling the map is the Gaussian sampled at the voxel centres.
    direct1 = rasterise(c, np.array([sigma]), np.array([1.0]), Lattice(D, apix), oversample=1)
    np.testing.assert_allclose(direct1, direct, atol=1e-6)


def test_state_volumes_share_the_fixed_part():
    ph = make_phantom("hinge", BOX, 6.0)
    ph_small = type(ph)(**{**ph.__dict__, "centres": ph.centres[:3], "presence": ph.presence[:3],
                           "populations": np.full(3, 1 / 3), "state_names": ph.state_names[:3]})
    for k, vol in enumerate(state_volumes(ph_small)):
        np.testing.assert_allclose(vol, state_volume(ph_small, k), atol=1e-5 * vol.max())


def _principal_frame(points):
    c = points - points.mean(0)
    _, v = np.linalg.eigh(c.T @ c)
    v = v[:, ::-1]
    if np.linalg.det(v) < 0:
        v[:, 2] *= -1
    return c @ v


@pytest.mark.parametrize("preset", ["homogeneous", "assembly"])
def test_molecule_is_chiral(preset):
    # Put the molecule and its mirror image in their principal-axes frames; an achiral molecule
    # would then match its mirror image under one of the four proper axis flips. Ours correlates
    # clearly worse with its mirror image than with itself rotated by 5 degrees.
    D = 48
    ph = make_phantom(preset, D, 1.0)
    on = ph.presence[0] > 0
    x, s, w = ph.centres[0][on], ph.sigmas[on], ph.amplitudes[on]

    def render(points):
        return rasterise(points, s, w, Lattice(D, 1.0), oversample=1).ravel()

    def corr(a, b):
        return np.corrcoef(a, b)[0, 1]

    ref = render(_principal_frame(x))
    mirror = _principal_frame(x * [-1.0, 1.0, 1.0])
    flips = ([1, 1, 1], [-1, -1, 1], [-1, 1, -1], [1, -1, -1])  # the proper axis flips
    best_mirror = max(corr(ref, render(mirror @ np.diag(f))) for f in flips)
    t = np.deg2rad(5.0)
    rot5 = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    assert best_mirror < corr(ref, render(_principal_frame(x) @ rot5.T)) - 0.1
    assert best_mirror < 0.9


# --- atomic models --------------------------------------------------------------------------


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


@pytest.mark.parametrize(
    "spec, field",
    [({"moving": {"chains": ["Z"], "pivot": [0, 0, 0], "axis": [0, 0, 1], "angles_deg": [0, 9]}}, "moving.chains"),
     ({"moving": {"chains": ["B"], "pivot": [0, 0], "axis": [0, 0, 1], "angles_deg": [0, 9]}}, "moving.pivot"),
     ({"moving": {"chains": ["B"], "pivot": [0, 0, 0]}}, "moving"),
     ({"optional": "C"}, "optional"),
     ({"beads": "blob"}, "beads"),
     ({"colour": 1}, "keys")],
)
def test_structure_spec_errors_name_the_field(tmp_path, spec, field):
    pdb = _write_model(tmp_path / "m.pdb")
    with pytest.raises(InputError, match=rf"spec.json: {field}: expected"):
        phantom_from_structure(pdb, 64, 3.0, spec, spec_path="spec.json")


def test_structure_that_does_not_fit_or_does_not_parse(tmp_path):
    pdb = _write_model(tmp_path / "m.pdb")
    with pytest.raises(InputError, match="molecule size"):
        phantom_from_structure(pdb, 24, 2.0)
    bad = tmp_path / "bad.pdb"
    bad.write_text("this is not a structure\n")
    with pytest.raises(InputError, match="bad.pdb"):
        phantom_from_structure(bad, 48, 3.0)

"""Part scores against a simulation's bead ground truth: part ARI, split-tolerant ARI, per-group
purity and recall, and presence-gate medians."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryospire_core.analysis import partscores
from cryospire_core.analysis.partscores import (
    domain_presence,
    format_part_scores,
    gt_domains_for_gaussians,
    load_beads,
    optional_domains,
    part_scores,
    score_parts,
)
from cryospire_core.errors import InputError
from cryospire_core.models import parts
from cryospire_core.sim.phantoms import make_phantom


def _beads():
    """Two domains of 50 beads 60 Å apart; domain 1 is present in states 1 and 2 of 3."""
    rng = np.random.default_rng(0)
    centres = np.r_[rng.normal(scale=8, size=(50, 3)), [60.0, 0, 0] + rng.normal(scale=8, size=(50, 3))]
    presence = np.ones((3, 100), np.float32)
    presence[0, 50:] = 0
    return {"centres": np.repeat(centres[None], 3, 0), "domains": np.repeat([0, 1], 50),
            "domain_names": np.array(["core", "cap"]), "presence": presence, "sigmas": np.full(100, 3.0),
            "amplitudes": np.ones(100), "populations": np.full(3, 1 / 3)}


class _GatedModel(torch.nn.Module):
    """Gaussians on the beads; the cap's gates follow the sign of z[0]."""

    def __init__(self, centres):
        super().__init__()
        self.centres = torch.as_tensor(centres, dtype=torch.float32)

    def gates(self, z):
        cap = (self.centres[:, 0] > 30).float()
        on = (z[:, :1] > 0).float()
        return 1 - cap[None] + cap[None] * (0.05 + 0.9 * on)


def test_presence_medians_follow_the_states_with_and_without_the_subunit():
    beads = _beads()
    assert list(optional_domains(beads)) == [1]
    labels = np.repeat([0, 1, 2], 100)
    z = np.where(labels[:, None] == 0, -1.0, 1.0) * np.ones((300, 4))
    rows = domain_presence(_GatedModel(beads["centres"][0]), z.astype(np.float32), labels, beads)
    assert len(rows) == 1 and rows[0].name == "cap" and rows[0].n_gaussians == 50
    assert rows[0].median_absent == pytest.approx(0.05) and rows[0].median_present == pytest.approx(0.95)
    assert (rows[0].n_absent, rows[0].n_present) == (100, 200)


def test_part_scores_against_bead_domains(tmp_path):
    beads = _beads()
    c = beads["centres"][0]
    clustering = parts.discover_parts(np.random.default_rng(1).normal(size=(100, 4)), c, np.ones(100),
                                      n_level1=2, n_level2=None, dynamics=np.c_[np.repeat([0.0, 5.0], 50)])
    scores = part_scores(clustering, beads)
    assert scores.n_parts == 2 and scores.ari == pytest.approx(1.0) and scores.split_ari == pytest.approx(1.0)
    assert [(g.name, g.n_gaussians, g.n_parts, g.purity, g.recall) for g in scores.groups] == [
        ("core", 50, 1, pytest.approx(1.0), pytest.approx(1.0)), ("cap", 50, 1, pytest.approx(1.0), pytest.approx(1.0))]
    np.savez(tmp_path / "beads.npz", **{k: v for k, v in beads.items() if k != "presence"})
    with pytest.raises(InputError, match="presence"):
        load_beads(tmp_path / "beads.npz")


def test_gt_domains_of_gaussians_on_a_phantom_s_beads(tmp_path, monkeypatch):
    ph = make_phantom("hinge", 32, 4.0, seed=0)
    np.savez(tmp_path / "beads.npz", domains=ph.domains, domain_names=ph.domain_names, centres=ph.centres[:1],
             presence=ph.presence[:1], sigmas=ph.sigmas, amplitudes=ph.amplitudes, populations=[1.0])
    rng = np.random.default_rng(0)
    pick = rng.choice(ph.n_beads, size=min(400, ph.n_beads), replace=False)
    centres = ph.centres[0, pick] + rng.normal(scale=0.2, size=(len(pick), 3))
    np.testing.assert_array_equal(gt_domains_for_gaussians(centres, load_beads(tmp_path / "beads.npz")),
                                  ph.domains[pick])
    # a few Gaussians at a time (what keeps a large complex's arrays small) gives the same labels
    monkeypatch.setattr(partscores, "GT_CHUNK", 7 * ph.n_beads)
    np.testing.assert_array_equal(gt_domains_for_gaussians(centres, load_beads(tmp_path / "beads.npz")),
                                  ph.domains[pick])
    with pytest.raises(InputError, match="beads"):
        load_beads(tmp_path / "missing.npz")


def test_a_static_domain_keeps_its_surface_where_a_swinging_domain_passes_in_one_state_of_ten():
    """A static bead at the origin; a moving bead 6 Å away in 9 states, 3.5 Å away in one: a
    Gaussian 2 Å from the static bead, towards it, is the static domain's (most of
    the density there is the static bead's), although the moving bead once passes closer."""
    moving = np.tile([6.0, 0, 0], (10, 1))
    moving[0] = [3.5, 0, 0]
    beads = {"centres": np.stack([np.zeros((10, 3)), moving], axis=1), "domains": np.array([0, 1]),
             "sigmas": np.full(2, 2.0), "amplitudes": np.ones(2), "populations": np.full(10, 0.1)}
    g = np.array([[2.0, 0, 0], [5.5, 0, 0], [-1.0, 0, 0]])
    np.testing.assert_array_equal(gt_domains_for_gaussians(g, beads), [0, 1, 0])
    # With the swinging bead there in most states the point is the swinging domain's.
    beads["populations"] = np.r_[0.91, np.full(9, 0.01)]
    np.testing.assert_array_equal(gt_domains_for_gaussians(g, beads), [1, 1, 0])
    # Far from every bead (densities underflow) the nearer domain still wins.
    np.testing.assert_array_equal(gt_domains_for_gaussians(np.array([[-400.0, 0, 0], [400.0, 0, 0]]), beads), [0, 1])


def _rows(scores):
    return {g.name: g for g in scores.groups}


def test_a_rigid_group_cut_into_pieces_costs_the_plain_ari_only():
    # core: 30 Gaussians cut into 3 spatial parts (labels 7, 2, 9); arm: 10 Gaussians, part 4.
    gt = np.repeat([0, 1], [30, 10])
    part = np.repeat([7, 2, 9, 4], 10)
    scores = score_parts(part, gt, np.ones(40), ["core", "arm"])
    assert scores.n_parts == 4 and scores.split_ari == pytest.approx(1.0) and scores.ari < 0.9
    core, arm = _rows(scores)["core"], _rows(scores)["arm"]
    assert (core.n_gaussians, core.n_parts, core.mass_fraction) == (30, 3, pytest.approx(0.75))
    assert (arm.n_gaussians, arm.n_parts, arm.mass_fraction) == (10, 1, pytest.approx(0.25))
    for g in (core, arm):
        assert g.purity == pytest.approx(1.0) and g.recall == pytest.approx(1.0)


def test_a_part_mixing_groups_costs_the_split_ari_and_purity_and_recall():
    # part 0: all 20 core Gaussians + 4 of the arm's 10; part 1: the other 6 arm Gaussians.
    gt = np.repeat([0, 1], [20, 10])
    part = np.r_[np.zeros(24, int), np.ones(6, int)]
    scores = score_parts(part, gt, np.ones(30), ["core", "arm"])
    assert scores.split_ari < 0.9 and scores.split_ari == pytest.approx(scores.ari)  # nothing was cut
    core, arm = _rows(scores)["core"], _rows(scores)["arm"]
    assert core.purity == pytest.approx(20 / 24) and core.recall == pytest.approx(1.0)
    assert arm.purity == pytest.approx(1.0) and arm.recall == pytest.approx(6 / 10)


def test_a_group_merged_into_another_part_is_not_found():
    # the cap's 5 Gaussians lie in the core's part: no part has the cap as its majority.
    gt = np.repeat([0, 1, 2], [20, 10, 5])
    part = np.repeat([0, 1, 0], [20, 10, 5])
    scores = score_parts(part, gt, np.ones(35), np.array(["core", "arm", "cap"]))
    cap = _rows(scores)["cap"]
    assert cap.n_parts == 0 and np.isnan(cap.purity) and cap.recall == 0.0
    assert _rows(scores)["core"].purity == pytest.approx(20 / 25) and scores.split_ari < 1.0
    table = format_part_scores(scores)
    assert table.splitlines()[0] == f"parts: 2 found; ARI {scores.ari:.3f}; split-tolerant ARI {scores.split_ari:.3f}"
    assert table.splitlines()[-1].split() == ["cap", "5", f"{5 / 35:.3f}", "0", "nan", "0.000"]


def test_the_majority_is_by_mass_not_by_count():
    # part 0: 3 light Gaussians of group a (mass 1 each) and 2 heavy of group b (mass 5 each):
    # b holds the mass (10 of 13) though a holds the count; part 1: 4 light Gaussians of a.
    gt = np.array([0, 0, 0, 1, 1, 0, 0, 0, 0])
    part = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])
    w = np.array([1, 1, 1, 5, 5, 1, 1, 1, 1], float)
    scores = score_parts(part, gt, w, ["a", "b"])
    a, b = _rows(scores)["a"], _rows(scores)["b"]
    assert (a.n_parts, b.n_parts) == (1, 1)
    assert b.purity == pytest.approx(10 / 13) and b.recall == pytest.approx(1.0)
    assert a.purity == pytest.approx(1.0) and a.recall == pytest.approx(4 / 7)
    assert a.mass_fraction == pytest.approx(7 / 17) and b.mass_fraction == pytest.approx(10 / 17)
    by_count = score_parts(part, gt, np.ones(9), ["a", "b"])  # the same parts, every Gaussian alike
    assert (_rows(by_count)["a"].n_parts, _rows(by_count)["b"].n_parts) == (2, 0)
    assert scores.split_ari != pytest.approx(by_count.split_ari)


def test_one_ground_truth_group_gives_split_ari_one_and_the_plain_ari_as_it_is():
    gt = np.zeros(6, int)
    cut = score_parts(np.array([0, 0, 1, 1, 2, 2]), gt, np.ones(6), ["all"])
    assert cut.split_ari == 1.0 and cut.ari == 0.0
    assert cut.groups[0].n_parts == 3 and cut.groups[0].purity == 1.0 and cut.groups[0].recall == 1.0
    whole = score_parts(np.zeros(6, int), gt, np.ones(6), ["all"])
    assert whole.split_ari == 1.0 and whole.ari == 1.0


def test_score_parts_refuses_bad_inputs():
    with pytest.raises(ValueError, match="strictly positive"):
        score_parts(np.array([0, 1]), np.array([0, 1]), np.array([1.0, 0.0]), ["a", "b"])
    with pytest.raises(ValueError, match="0..1"):
        score_parts(np.array([0, 1]), np.array([0, 2]), np.ones(2), ["a", "b"])
    with pytest.raises(ValueError, match=r"\(G,\)"):
        score_parts(np.array([0, 1]), np.array([0]), np.ones(2), ["a", "b"])

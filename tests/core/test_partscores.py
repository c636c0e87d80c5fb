"""Part scores against a simulation's bead ground truth: part ARI and presence-gate medians."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryospire_core.analysis.partscores import (
    domain_presence,
    load_beads,
    optional_domains,
    part_ari,
)
from cryospire_core.errors import InputError
from cryospire_core.models import parts


def _beads():
    """Two domains of 50 beads 60 Å apart; domain 1 is present in states 1 and 2 of 3."""
    rng = np.random.default_rng(0)
    centres = np.r_[rng.normal(scale=8, size=(50, 3)), [60.0, 0, 0] + rng.normal(scale=8, size=(50, 3))]
    presence = np.ones((3, 100), np.float32)
    presence[0, 50:] = 0
    return {"centres": np.repeat(centres[None], 3, 0), "domains": np.repeat([0, 1], 50),
            "domain_names": np.array(["core", "cap"]), "presence": presence}


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


def test_part_ari_against_bead_domains(tmp_path):
    beads = _beads()
    c = beads["centres"][0]
    clustering = parts.discover_parts(np.random.default_rng(1).normal(size=(100, 4)), c, np.ones(100),
                                      n_level1=2, n_level2=None, dynamics=np.c_[np.repeat([0.0, 5.0], 50)])
    assert part_ari(clustering, beads) == pytest.approx(1.0)
    np.savez(tmp_path / "beads.npz", **{k: v for k, v in beads.items() if k != "presence"})
    with pytest.raises(InputError, match="presence"):
        load_beads(tmp_path / "beads.npz")

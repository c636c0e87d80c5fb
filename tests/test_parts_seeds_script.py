"""benchmarks/parts_seeds.py without training: its stage-1 changes are checked, a set without a
consensus is refused, and a finished seeded run is scored and tabulated as it is."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from cryospire_core.models.parts import discover_parts

_PATH = Path(__file__).parents[1] / "benchmarks" / "parts_seeds.py"
_SPEC = importlib.util.spec_from_file_location("parts_seeds", _PATH)
parts_seeds = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(parts_seeds)


def test_only_stage1_fields_can_be_changed():
    assert parts_seeds.overrides(["feature_tv=1e-4", "prior_weight=0.2"]) == {"feature_tv": 1e-4, "prior_weight": 0.2}
    hidden = parts_seeds.overrides(["hidden=64"])["hidden"]
    assert hidden == 64 and isinstance(hidden, int)  # an int field stays an int in the run's config
    for bad in (["seed=3"], ["feature_tv"], ["no_such_field=1"], ["hidden=6.5"], ["mlp_form=lowrank"]):
        with pytest.raises(SystemExit, match="--set"):
            parts_seeds.overrides(bad)


def test_a_set_without_a_consensus_is_refused(tmp_path):
    (tmp_path / "s" / "run").mkdir(parents=True)
    with pytest.raises(SystemExit, match="no finished consensus"):
        parts_seeds.seeded_run(tmp_path / "s", "default", 0, {}, 1)


def test_finished_runs_are_scored_per_seed(tmp_path, capsys):
    # two ground-truth blobs of beads; seed 0's parts are right, seed 1's cut across both blobs
    rng = np.random.default_rng(0)
    centres = np.concatenate([rng.normal(size=(40, 3)) * 5, rng.normal(size=(40, 3)) * 5 + [60, 0, 0]])
    folder = tmp_path / "blobs"
    (folder / "data" / "gt").mkdir(parents=True)
    np.savez(folder / "data" / "gt" / "beads.npz", centres=centres[None], domains=np.repeat([0, 1], 40),
             domain_names=np.array(["A", "B"]), presence=np.ones((1, 80)), sigmas=np.full(80, 3.0),
             amplitudes=np.ones(80), populations=[1.0])
    right = np.repeat([0, 1], 40)
    wrong = (centres[:, 1] > 0).astype(int)
    for seed, labels in ((0, right), (1, wrong)):
        run = folder / "seeds" / f"default-s{seed}" / "run"
        (run / "parts").mkdir(parents=True)
        clustering = discover_parts(np.eye(80, 4, dtype=np.float32), centres, np.ones(80),
                                    dynamics=np.eye(2)[labels].astype(np.float32), n_level1=2, n_level2=None)
        clustering.to_npz(run / "parts" / "clustering.npz")
    out = tmp_path / "table.txt"
    assert parts_seeds.main(["--work", str(tmp_path), "--sets", "blobs", "--seeds", "0", "1", "--out", str(out)]) == 0
    row = [line for line in out.read_text().splitlines() if line.startswith("blobs")][0].split()
    assert float(row[1]) == pytest.approx(1.0) and float(row[2]) < 0.2
    assert float(row[4]) == float(row[2]) and float(row[5]) == 1.0  # min, max
    assert "(reused)" in capsys.readouterr().out
    # --parts-refine rigid scores the re-clustered copies (here seed 0's copy holds the wrong parts)
    refined = folder / "seeds" / "default-rigid-s0" / "run" / "parts"
    refined.mkdir(parents=True)
    discover_parts(np.eye(80, 4, dtype=np.float32), centres, np.ones(80), dynamics=np.eye(2)[wrong].astype(np.float32),
                   n_level1=2, n_level2=None).to_npz(refined / "clustering.npz")
    assert parts_seeds.main(["--work", str(tmp_path), "--sets", "blobs", "--seeds", "0", "--parts-refine", "rigid",
                             "--out", str(out)]) == 0
    assert "parts refinement: rigid" in out.read_text()
    last = [line for line in out.read_text().splitlines() if line.startswith("blobs")][-1]
    assert float(last.split()[1]) < 0.2

"""benchmarks/realistic.py without training: its sets are the shipped ones, and --report tabulates
the `cryospire evaluate --out` files it finds (stage 2 where trained, else stage 1)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from cryospire_core.models.parts import discover_parts

_PATH = Path(__file__).parents[1] / "benchmarks" / "realistic.py"
_SPEC = importlib.util.spec_from_file_location("realistic", _PATH)
realistic = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(realistic)


def _scores(mean: float, groups: list[tuple[str, int, float, float]] | None = None, ideal: float = 0.45) -> dict:
    out = {"scores": {"summary": {"mean_auc": mean, "median_auc": mean + 0.001}},
           "ceiling": {"summary": {"mean_auc": 0.4844}},
           "ideal_homogeneous": {"summary": {"mean_auc": ideal}}}
    if groups is not None:
        out["parts"] = {"n_parts": sum(g[1] for g in groups), "ari": 0.5, "split_ari": 0.9,
                        "groups": [{"name": n, "n_parts": k, "purity": p, "recall": r} for n, k, p, r in groups]}
    return out


def test_sets_are_shipped_and_split_into_tuning_and_held_out():
    sets = realistic.load_sets()
    assert len(sets) >= 6
    assert {s["role"] for s in sets.values()} == {"tune", "held-out"}
    for s in sets.values():
        assert (realistic.STRUCTURES / s["structure"]).is_file()
        assert "adk" not in s["structure"].lower() and "1bd2" not in s["structure"].lower()


def test_report_tabulates_the_scores_it_finds(tmp_path):
    sets = realistic.load_sets()
    a, b = list(sets)[:2]
    for name, tag, mean in ((a, "stage1", 0.40), (a, "final", 0.46), (b, "stage1", 0.42)):
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        groups = [("core", 2, 0.95, 0.99), ("arm", 1, 0.8, 0.7)] if name == a else [("x", 0, float("nan"), 0.0)]
        (folder / f"{tag}_run.json").write_text(json.dumps(_scores(mean, groups)))
        (folder / f"{tag}_floor.json").write_text(json.dumps(_scores(0.38)))
    # b's run is still here: its parts are scored again (one part holding both beads' Gaussians)
    (tmp_path / b / "data" / "gt").mkdir(parents=True)
    np.savez(tmp_path / b / "data" / "gt" / "beads.npz", centres=np.array([[[0.0, 0, 0], [50, 0, 0]]]),
             domains=[0, 1], domain_names=["x", "y"], presence=np.ones((1, 2)), sigmas=np.full(2, 3.0),
             amplitudes=np.ones(2), populations=[1.0])
    (tmp_path / b / "run" / "parts").mkdir(parents=True)
    centres = np.array([[0.0, 0, 0], [1, 0, 0], [50, 0, 0], [51, 0, 0]])
    discover_parts(np.eye(4, 2), centres, np.ones(4), n_level1=1, n_level2=None).to_npz(
        tmp_path / b / "run" / "parts" / "clustering.npz")
    out = subprocess.run([sys.executable, str(_PATH), "--work", str(tmp_path), "--report"], check=True,
                         capture_output=True, text=True).stdout
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.split() and line.split()[0] in sets}
    assert set(lines) == {a, b}  # sets without scores are left out
    ra = lines[a]
    assert ra[2:4] == ["stage", "2"] and ra[11] == "0.4600" and ra[13] == "0.3800" and ra[-1] == "+0.0100"
    assert ra[5] == "2" and ra[9] == "0.800" and ra[10] == "0.700"  # both groups found; lowest purity, recall
    rb = lines[b]
    assert rb[2:4] == ["stage", "1"] and rb[11] == "0.4200"
    assert rb[4:7] == ["2", "1", "1"] and rb[8] == "0.000"  # two groups, one found, one part: split ARI 0
    assert f"  {a}: core 2, 0.95, 0.99; arm 1, 0.80, 0.70" in out

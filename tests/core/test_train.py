"""`cryospire train` runs every stage into one run folder that `render` and `evaluate` read back,
and a cancelled run resumes."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil

import numpy as np
import pytest
import torch

from cryospire_core.analysis.partscores import load_beads, part_scores
from cryospire_core.cli import train as train_cli
from cryospire_core.cli.main import main
from cryospire_core.io.load import load_particles
from cryospire_core.io.mrc import read_map
from cryospire_core.models.parts import PartClustering
from cryospire_core.pipeline.config import TrainConfig
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.pipeline.train import STAGE_NAMES, train
from cryospire_core.services.training import new_config

SMALL = ["--epochs-consensus", "1", "--epochs-1", "1", "--epochs-2", "1", "--gaussians-1", "128",
         "--gaussians-2", "256", "--quiet"]


@pytest.fixture(scope="module")
def trained(homogeneous_32, tmp_path_factory):
    run = tmp_path_factory.mktemp("train") / "run"
    assert main(["train", str(homogeneous_32 / "particles.star"), "--out", str(run), *SMALL]) == 0
    return run


def test_run_folder_holds_every_stage(trained, homogeneous_32):
    for rel in ("config.json", "latents.npy", "consensus/map.mrc", "discovery/model.pt", "discovery/map.mrc",
                "parts/clustering.npz", "hierarchical/model.pt"):
        assert (trained / rel).is_file(), rel
    latents = np.load(trained / "latents.npy")
    assert latents.shape == (2000, 4) and latents.dtype == np.float32 and np.isfinite(latents).all()
    model = RunFolder(trained).model()
    np.testing.assert_array_equal(model.latents.numpy(), latents)  # rows in input particle order
    cfg = RunFolder(trained).config()
    assert cfg["train"]["profile"] == "cpu" and cfg["train"]["hierarchical"]["n_gaussians"] == 256
    assert cfg["train_command"]["epochs_1"] == 1 and cfg["n_particles"] == 2000


def test_rerun_without_resume_is_refused(trained, homogeneous_32, capsys):
    assert main(["train", str(homogeneous_32 / "particles.star"), "--out", str(trained), *SMALL]) == 1
    assert "--resume" in capsys.readouterr().err


def test_render_writes_maps_at_latents_and_particles(trained, tmp_path):
    model = RunFolder(trained).model()
    z = model.latents.numpy()[[3, 7]]
    np.savetxt(tmp_path / "z.txt", z)
    np.savetxt(tmp_path / "idx.txt", [3, 7], fmt="%d")
    assert main(["render", str(trained), "--z", str(tmp_path / "z.txt"), "--out", str(tmp_path / "a")]) == 0
    assert main(["render", str(trained), "--particles", str(tmp_path / "idx.txt"), "--out", str(tmp_path / "b")]) == 0
    for k in (0, 1):
        a, b = read_map(tmp_path / "a" / f"vol_{k:03d}.mrc"), read_map(tmp_path / "b" / f"vol_{k:03d}.mrc")
        assert a.data.shape == (32, 32, 32) and a.apix == pytest.approx(b.apix)
        np.testing.assert_allclose(a.data, b.data, rtol=1e-4, atol=1e-5 * np.abs(a.data).max())
    np.savetxt(tmp_path / "bad.txt", np.zeros((2, 3)))
    assert main(["render", str(trained), "--z", str(tmp_path / "bad.txt"), "--out", str(tmp_path / "c")]) == 1


def test_evaluate_scores_a_run(trained, homogeneous_32, tmp_path):
    out = tmp_path / "scores.json"
    assert main(["evaluate", "--gt", str(homogeneous_32 / "gt"), "--run", str(trained), "--out", str(out)]) == 0
    scores = json.loads(out.read_text())
    parts = scores["parts"]  # the run's parts against the phantom's domains (fc, fab_a, fab_b)
    assert set(parts) == {"n_parts", "ari", "split_ari", "groups"} and scores["part_ari"] == parts["ari"]
    beads = load_beads(homogeneous_32 / "gt" / "beads.npz")
    assert [g["name"] for g in parts["groups"]] == list(beads["domain_names"])
    assert parts["n_parts"] == len(np.unique(RunFolder(trained).clustering().part_index))
    assert sum(g["n_parts"] for g in parts["groups"]) == parts["n_parts"]  # every part has one majority
    assert sum(g["n_gaussians"] for g in parts["groups"]) == 128  # stage 1's Gaussians
    assert sum(g["mass_fraction"] for g in parts["groups"]) == pytest.approx(1.0)
    # compared as JSON text: a group not found has purity NaN, and NaN != NaN
    assert json.dumps(parts) == json.dumps(dataclasses.asdict(part_scores(RunFolder(trained).clustering(), beads)))


def test_cancelled_training_resumes_to_finish(homogeneous_32, tmp_path):
    ps = load_particles(homogeneous_32 / "particles.star")
    cfg = TrainConfig.for_profile("cpu")
    for section, g in (("discovery", 128), ("hierarchical", 256)):
        setattr(cfg, section, type(getattr(cfg, section))(**{**vars(getattr(cfg, section)), "n_gaussians": g, "epochs": 1}))
    cfg.consensus.epochs = 1
    run = RunFolder(tmp_path / "run")
    run.update_config(train=cfg, n_particles=len(ps))
    stage_1_steps = []

    def stop_in_stage_1():
        return (tmp_path / "run" / "discovery" / "checkpoint.pt").exists() or len(stage_1_steps) > 3

    def progress(event):
        if event.stage == STAGE_NAMES["discovery"]:
            stage_1_steps.append(event)

    assert train(ps, run, cfg, torch.device("cpu"), progress=progress, should_stop=stop_in_stage_1) == "cancelled"
    assert (tmp_path / "run" / "consensus" / "gaussians.npz").exists()
    assert not (tmp_path / "run" / "hierarchical" / "model.pt").exists()
    assert train(ps, run, cfg, torch.device("cpu")) == "finished"
    assert np.load(tmp_path / "run" / "latents.npy").shape == (len(ps), 4)


def test_selection_between_the_stages_drops_particles_from_stage_2(trained, homogeneous_32, tmp_path):
    run = tmp_path / "selected"
    run.mkdir()
    for rel in ("config.json", "consensus", "discovery", "parts"):
        src = trained / rel
        (shutil.copytree if src.is_dir() else shutil.copy)(src, run / rel)
    keep = np.arange(0, 2000, 3)
    np.savetxt(tmp_path / "keep.txt", keep, fmt="%d")
    star = str(homogeneous_32 / "particles.star")
    assert main(["train", star, "--out", str(run), "--resume", "--select", str(tmp_path / "keep.txt"), *SMALL]) == 0
    np.testing.assert_array_equal(np.load(run / "selection.npy"), keep)
    latents = np.load(run / "latents.npy")
    assert latents.shape == (len(keep), 4)
    stage1 = np.load(trained / "discovery" / "outputs.npz")["latents"]
    np.testing.assert_array_equal(np.load(run / "hierarchical" / "seed.npz")["latents"], stage1[keep])
    assert RunFolder(run).config()["train"]["select"] == str((tmp_path / "keep.txt").resolve())
    # Once stage 2 exists, a new selection is refused instead of mixing particle sets.
    assert main(["train", star, "--out", str(run), "--resume", "--select", str(tmp_path / "keep.txt"), *SMALL]) == 1


def test_resume_with_more_stage_2_epochs_continues_the_finished_stage(trained, homogeneous_32, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    star = str(homogeneous_32 / "particles.star")
    before = np.load(run / "latents.npy")
    assert main(["train", star, "--out", str(run), "--resume", "--epochs-2", "2", "--quiet"]) == 0
    assert RunFolder(run).config()["train"]["hierarchical"]["epochs"] == 2
    assert torch.load(run / "hierarchical" / "checkpoint.pt", weights_only=True)["epoch"] == 2
    after = np.load(run / "latents.npy")
    assert after.shape == before.shape and np.isfinite(after).all() and not np.array_equal(after, before)
    np.testing.assert_array_equal(RunFolder(run).model().latents.numpy(), after)
    capsys.readouterr()
    # Stage 1 cannot train longer under the stage 2 built on it, and no stage un-trains epochs.
    assert main(["train", star, "--out", str(run), "--resume", "--epochs-1", "2", "--quiet"]) == 1
    assert ("--epochs-1: expected 1 (stage 1: part discovery has trained 1 epoch and parts, hierarchical were built "
            "on it: train longer in a new run folder), found 2") in capsys.readouterr().err
    assert main(["train", star, "--out", str(run), "--resume", "--epochs-2", "1", "--quiet"]) == 1
    assert ("--epochs-2: expected at least 2 (stage 2: hierarchical has trained 2 epochs), found 1"
            in capsys.readouterr().err)


def test_evaluate_reports_part_scores_with_bead_ground_truth(trained, homogeneous_32, capsys):
    assert main(["evaluate", "--gt", str(homogeneous_32 / "gt"), "--run", str(trained), "--rows", "0"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^parts: \d+ found; ARI -?\d\.\d{3}; split-tolerant ARI -?\d\.\d{3}$", out, re.MULTILINE)
    assert re.search(r"^ *group +Gaussians +mass +parts +purity +recall$", out, re.MULTILINE)
    assert re.search(r"^ *fab_a +\d+ +[01]\.\d{3} +\d+ +(nan|[01]\.\d{3}) +[01]\.\d{3}$", out, re.MULTILINE)


def test_rigid_refinement_reclusters_with_the_decoded_motion(trained, homogeneous_32, tmp_path):
    """`--stage parts --parts-refine rigid` keeps stage 1's decoded motion with the parts (so the
    Parts dock re-clusters the same way) and ends the clustering with the rigid reassignment."""
    run = tmp_path / "run"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("hierarchical"))
    assert "rigid reassignment" not in PartClustering.from_npz(run / "parts" / "clustering.npz").rule
    assert main(["train", str(homogeneous_32 / "particles.star"), "--out", str(run), "--resume", "--stage", "parts",
                 "--parts", "2", "--parts-refine", "rigid", "--quiet"]) == 0
    clustering = PartClustering.from_npz(run / "parts" / "clustering.npz")
    assert "rigid reassignment" in clustering.rule and clustering.n_level1 == 2
    assert clustering.inputs.motion.shape == (512, 128, 3) and clustering.inputs.gates.shape == (512, 128)
    assert RunFolder(run).train_config().parts_refine == "rigid"


def test_handles_and_the_rigid_refinement_come_from_the_command_line():
    parser = argparse.ArgumentParser()
    train_cli.add_args(parser)
    args = parser.parse_args(["p.star", "--out", "r", "--handles-1", "24", "--parts-refine", "rigid"])
    cfg = new_config(train_cli.options_from_args(args))
    assert cfg.discovery.handles == 24 and cfg.parts_refine == "rigid"
    plain = new_config(train_cli.options_from_args(parser.parse_args(["p.star", "--out", "r"])))
    assert plain.discovery.handles == 0 and plain.parts_refine == "none"

"""Part editing as a service and as `cryospire parts`: re-cluster, merge and split give the
clustering functions' results and are saved into RUN/parts/clustering.npz (what the Parts dock
and `cryospire train --resume` read); masks and the label map are written as `analyze` names
them; a run whose stage 2 was seeded, a held lock, bad part numbers and files in the way are
refused with the file and the field."""

from __future__ import annotations

import numpy as np
import pytest

from cryospire_core.cli.main import main
from cryospire_core.colours import part_hex
from cryospire_core.errors import InputError
from cryospire_core.io.atomic import write_npz
from cryospire_core.io.chimerax import SCRIPT_NAME
from cryospire_core.io.mrc import read_map
from cryospire_core.models import parts as part_model
from cryospire_core.pipeline.config import TrainConfig
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.services import parts as run_parts
from cryospire_core.sim.phantoms import make_phantom
from tests.core.test_chimerax import opened, volume_settings

BOX, APIX = 32, 12.0


@pytest.fixture
def stage1_run(tmp_path):
    """A run folder after part discovery, without training: config.json, the stage-1 seed (the
    hinge phantom's beads, 32 px at 12 Å/px) and its clustering into 3 spatial parts."""
    ph = make_phantom("hinge", BOX, APIX)
    centres = ph.centres[0]
    run = RunFolder(tmp_path / "run")
    run.update_config(train=TrainConfig.for_profile("cpu"), n_particles=10)
    write_npz(run.stage_dir("discovery") / "seed.npz", centres=centres, widths=ph.sigmas,
              amplitudes=ph.amplitudes, box=np.int64(BOX), apix=np.float64(APIX))
    features = np.random.default_rng(0).normal(size=(len(centres), 4))
    clustering = part_model.discover_parts(features, centres, ph.amplitudes * ph.sigmas**3, n_level1=1,
                                           n_level2=3)
    clustering.to_npz(run.stage_dir("parts") / "clustering.npz")
    return run


def saved(run: RunFolder) -> part_model.PartClustering:
    return part_model.PartClustering.from_npz(run.clustering_path)


def test_loaded_parts_match_the_run(stage1_run):
    parts = run_parts.load_parts(stage1_run.root)
    assert parts.n_parts == 3 and parts.saved and parts.labels.shape == (BOX,) * 3
    assert parts.counts().sum() == len(parts.clustering.part_index)
    assert set(np.unique(parts.labels)) == {0, 1, 2, 3}
    fractions = parts.volume_fractions()
    assert fractions.sum() == pytest.approx(1.0) and np.all(fractions > 0)
    assert fractions[0] == pytest.approx(np.mean(parts.labels[parts.labels > 0] == 1))


def test_edits_equal_the_clustering_functions_and_are_saved(stage1_run):
    parts = run_parts.load_parts(stage1_run.root)
    inputs = parts.clustering.inputs

    two = run_parts.recluster(parts, 1, 2)
    expected = part_model.recluster(inputs, 1, 2)
    np.testing.assert_array_equal(two.clustering.part_index, expected.part_index)
    np.testing.assert_array_equal(saved(stage1_run).part_index, expected.part_index)
    assert two.n_parts == 2 and two.labels.max() == 2

    merged = run_parts.merge(parts, 2, 0)  # either order: part 3 joins part 1
    old = parts.clustering.part_index
    np.testing.assert_array_equal(merged.clustering.part_index, np.where(old == 2, 0, old))
    np.testing.assert_array_equal(saved(stage1_run).part_index, merged.clustering.part_index)
    assert "edited by hand" in saved(stage1_run).rule

    split = run_parts.split(merged, 0, 3)
    assert split.n_parts == 4 and split.counts().sum() == len(old)
    np.testing.assert_array_equal(saved(stage1_run).part_index, split.clustering.part_index)
    # what the dock loads next is what the edit saved
    np.testing.assert_array_equal(run_parts.load_parts(stage1_run.root).labels, split.labels)


def test_bad_edits_name_the_file_and_the_field(stage1_run):
    parts = run_parts.load_parts(stage1_run.root)
    path = stage1_run.clustering_path
    G = len(parts.clustering.part_index)
    with pytest.raises(InputError,
                       match=f"{path}: parts to merge: expected two different parts of 1..3, found 2 and 2"):
        run_parts.merge(parts, 1, 1)
    with pytest.raises(InputError, match=f"{path}: part to split: expected a part of 1..3, found 4"):
        run_parts.split(parts, 3, 2)
    size = int(parts.counts()[0])
    with pytest.raises(InputError, match=rf"{path}: pieces: expected 2..{size} \(part 1 has {size} Gaussians\)"):
        run_parts.split(parts, 0, size + 1)
    with pytest.raises(InputError, match=f"level-1 clusters: expected auto or a count in 1..{G}"):
        run_parts.recluster(parts, G + 1, "auto")
    assert saved(stage1_run).n_parts == 3  # nothing written


def test_an_edit_is_refused_while_a_training_holds_the_run(stage1_run):
    parts = run_parts.load_parts(stage1_run.root)
    with RunFolder(stage1_run.root), pytest.raises(InputError, match="run lock"):
        run_parts.merge(parts, 0, 1)
    assert saved(stage1_run).n_parts == 3


def test_edits_are_not_saved_once_stage_2_was_seeded(stage1_run):
    parts = run_parts.load_parts(stage1_run.root)
    before = stage1_run.clustering_path.read_bytes()
    stage1_run.stage_dir("hierarchical")
    stage1_run.seed_path("hierarchical").write_bytes(b"seeded")
    merged = run_parts.merge(parts, 0, 1)  # loaded before the seed: the save still looks first
    assert merged.n_parts == 2 and not merged.saved
    assert stage1_run.clustering_path.read_bytes() == before
    late = run_parts.load_parts(stage1_run.root)
    assert not late.saved
    with pytest.raises(InputError, match="hierarchical/seed.npz: parts: expected a run whose stage 2 has not been"):
        run_parts.require_saved(late)


def test_masks_and_label_map_are_written_as_analyze_names_them(stage1_run, tmp_path):
    parts = run_parts.load_parts(stage1_run.root)
    files = run_parts.export_masks(parts, tmp_path / "masks")
    assert [p.name for p in files.all()] == ["part_labels.mrc", "mask_part_01.mrc", "mask_part_02.mrc",
                                             "mask_part_03.mrc"]
    labels = read_map(files.labels)
    assert labels.apix == pytest.approx(APIX)
    np.testing.assert_array_equal(labels.data, parts.labels)
    mask = read_map(files.masks[0]).data
    assert np.all(mask[parts.labels == 1] == 1.0) and mask.min() >= 0.0 and mask.min() < 1.0
    # The ChimeraX script beside them opens every map written, each mask in its part's colour.
    script = files.folder / SCRIPT_NAME
    assert opened(script) == [[p.name] for p in files.all()]
    assert [volume_settings(script)[k + 2]["color"] for k in range(3)] == part_hex(3)
    with pytest.raises(InputError, match="part_labels.mrc: --out: expected a file name not in use"):
        run_parts.export_masks(parts, tmp_path / "masks")
    assert run_parts.export_masks(parts, tmp_path / "masks", overwrite=True).n_parts == 3


def test_cli_shows_edits_and_writes_masks(stage1_run, tmp_path, capsys):
    root = str(stage1_run.root)
    assert main(["parts", root, "show"]) == 0
    out = capsys.readouterr().out
    parts = run_parts.load_parts(root)
    assert f"{stage1_run.clustering_path}: 3 parts" in out and "volume fraction" in out
    fraction = parts.volume_fractions()[0]
    assert f"   1  {parts.counts()[0]:>9d}  {fraction:>15.3f}" in out and "edits are saved to the run" in out

    assert main(["parts", root, "merge", "1", "3"]) == 0
    assert saved(stage1_run).n_parts == 2 and "2 parts" in capsys.readouterr().out
    assert main(["parts", root, "split", "2", "--into", "2"]) == 0
    assert saved(stage1_run).n_parts == 3
    assert main(["parts", root, "recluster", "--level1", "1", "--level2", "4"]) == 0
    assert saved(stage1_run).n_parts == 4 and "level 2: 4 per level-1 cluster (given)" in saved(stage1_run).rule
    capsys.readouterr()

    assert main(["parts", root, "masks", "-o", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "mask_part_04.mrc").is_file() and (tmp_path / "m" / "part_labels.mrc").is_file()
    assert main(["parts", root, "masks", "-o", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cryospire parts: error: ")
    assert "part_labels.mrc: --out: expected a file name not in use (or --overwrite)" in err
    assert main(["parts", root, "masks", "-o", str(tmp_path / "m"), "--overwrite"]) == 0


@pytest.mark.parametrize(("argv", "error"), [
    (["merge", "1", "1"], "{clustering}: parts to merge: expected two different parts of 1..3, found 1 and 1"),
    (["merge", "0", "2"], "A: expected a whole number >= 1, found 0"),
    (["split", "4", "--into", "2"], "{clustering}: part to split: expected a part of 1..3, found 4"),
    (["split", "1", "--into", "1"], "--into: expected a whole number >= 2, found 1"),
    (["recluster", "--level1", "two"], "--level1: expected auto or a whole number >= 1, found two"),
    ([], "ACTION: expected a value (required), found none"),
])
def test_cli_refuses_bad_edits_in_one_line(stage1_run, capsys, argv, error):
    assert main(["parts", str(stage1_run.root), *argv]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and error.format(clustering=stage1_run.clustering_path) in err
    assert saved(stage1_run).n_parts == 3


def test_cli_refuses_a_run_without_parts_or_with_stage_2(stage1_run, tmp_path, capsys):
    assert main(["parts", str(tmp_path / "nowhere"), "show"]) == 1
    assert f"{tmp_path / 'nowhere'}: run folder: expected an existing run folder, found no such folder" in \
        capsys.readouterr().err
    stage1_run.stage_dir("hierarchical")
    stage1_run.seed_path("hierarchical").write_bytes(b"seeded")
    assert main(["parts", str(stage1_run.root), "show"]) == 0
    assert "stage 2 was seeded from these parts: edits are not saved" in capsys.readouterr().out
    assert main(["parts", str(stage1_run.root), "merge", "1", "2"]) == 1
    assert "parts: expected a run whose stage 2 has not been seeded" in capsys.readouterr().err
    stage1_run.clustering_path.unlink()
    assert main(["parts", str(stage1_run.root), "show"]) == 1
    assert f"{stage1_run.clustering_path}: part clustering: expected a run whose part discovery has finished" in \
        capsys.readouterr().err

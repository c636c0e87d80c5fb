"""The commands that do what the latent explorer does: `cryospire traverse` (map series), `select`
(a .star/.cs subset) and `branch` (stage 2 on a selection, in a new run folder), on a tiny
trained run, through `cryospire_core.cli.main.main` as a user runs them."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest

from cryospire_core.analysis import explorer as ex
from cryospire_core.cli.main import main
from cryospire_core.io.load import load_particles
from cryospire_core.io.mrc import read_map
from cryospire_core.io.selection import read_selection
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.services import select, traverse


@pytest.fixture(scope="module")
def explorer(tiny_run):
    return ex.Explorer.from_run(tiny_run)


def _error(capsys, command: str) -> str:
    """The one error line a failed command printed."""
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cryospire {command}: error: ") and "\n" not in err, err
    return err


# -- traverse ------------------------------------------------------------------------------------


def test_traverse_along_pc1_writes_the_maps_of_the_explorer(tiny_run, explorer, tmp_path, capsys):
    out = tmp_path / "pc1"
    assert main(["traverse", str(tiny_run), "--pc", "1", "-n", "3", "-o", str(out)]) == 0
    assert "ChimeraX: open" in capsys.readouterr().out
    zs = np.load(out / "latents.npy")
    np.testing.assert_allclose(zs, explorer.traversal(ex.TraversalKind.PC1, 3).latents, rtol=1e-6)
    for k, z in enumerate(zs):
        np.testing.assert_array_equal(read_map(out / f"vol_{k:03d}.mrc").data, explorer.map_at(z))
    assert len((out / "parts.csv").read_text().splitlines()) == 1 + 3 * explorer.n_parts
    before = (out / "vol_001.mrc").read_bytes()
    assert main(["traverse", str(tiny_run), "--pc", "1", "-n", "3", "-o", str(out)]) == 1
    assert "vol_000.mrc: map series: expected a file name not in use (or --overwrite)" in _error(capsys, "traverse")
    assert (out / "vol_001.mrc").read_bytes() == before
    assert main(["traverse", str(tiny_run), "--pc", "2", "-n", "3", "-o", str(out), "--overwrite"]) == 0
    assert (out / "vol_001.mrc").read_bytes() != before


def test_traverse_between_particles_and_states(tiny_run, explorer, tmp_path):
    assert main(["traverse", str(tiny_run), "--from", "7", "--to", "123", "--through-data", "-n", "5", "-o",
                 str(tmp_path / "a")]) == 0
    zs = np.load(tmp_path / "a" / "latents.npy")
    assert zs.shape == (5, explorer.zdim)
    np.testing.assert_allclose(zs[[0, -1]], explorer.latents[[7, 123]], atol=1e-5)
    assert main(["traverse", str(tiny_run), "--from-state", "0", "--to", "9", "--k", "3", "-n", "4", "-o",
                 str(tmp_path / "b")]) == 0
    zs = np.load(tmp_path / "b" / "latents.npy")
    np.testing.assert_allclose(zs[0], traverse.state_centres(explorer, 3)[0], atol=1e-5)
    np.testing.assert_allclose(zs[-1], explorer.latents[9], atol=1e-5)
    assert len(list((tmp_path / "b").glob("vol_*.mrc"))) == 4


@pytest.mark.parametrize(("options", "message"), [
    (["--pc", "1", "--from", "2"], "--pc: expected either --pc or the two ends"),
    (["--from", "2"], "--to (or --to-state): expected --pc N, or both ends of the traversal, found none"),
    ([], "--from (or --from-state): expected --pc N, or both ends"),
    (["--from-state", "8", "--to", "1"], "--from-state: expected a state in 0..7 (of --k 8), found 8"),
    (["--from", "300", "--to", "1"], "--from: expected a particle index in 0..299, found 300"),
    (["--from", "1", "--from-state", "1", "--to", "2"], "--from-state: expected either --from-state or --from, found both"),
    (["--pc", "3"], "--pc: expected one of 1, 2, found 3"),
    (["--pc", "1", "-n", "1"], "-n/--steps: expected a whole number >= 2, found 1"),
])
def test_traverse_refuses_options_that_make_no_traversal(tiny_run, tmp_path, capsys, options, message):
    assert main(["traverse", str(tiny_run), *options, "-o", str(tmp_path / "t")]) == 1
    assert message in _error(capsys, "traverse")
    assert not (tmp_path / "t").exists()


# -- select --------------------------------------------------------------------------------------


def test_select_by_states_polygon_box_and_index_file(tiny_run, explorer, tmp_path, capsys):
    ps = load_particles(explorer.particles, invert=False)
    keep = np.flatnonzero(np.isin(explorer.states(4), [0, 2]))
    assert main(["select", str(tiny_run), "--states", "0,2", "--k", "4", "-o", str(tmp_path / "s.star")]) == 0
    assert f"wrote {len(keep)} particles" in capsys.readouterr().out
    assert read_selection(tmp_path / "s.star", ps).tolist() == keep.tolist()
    assert np.loadtxt(tmp_path / "s_indices.txt", dtype=int).tolist() == keep.tolist()

    emb = explorer.embedding(ex.EmbeddingMethod.PCA)
    lo, hi = np.percentile(emb.points, [10, 60], axis=0)
    polygon = f"{lo[0]},{lo[1]},{hi[0]},{lo[1]},{hi[0]},{hi[1]},{lo[0]},{hi[1]}"
    assert main(["select", str(tiny_run), f"--polygon={polygon}", "-o", str(tmp_path / "p.cs")]) == 0
    inside = np.flatnonzero(np.all((emb.points > lo) & (emb.points < hi), axis=1))
    assert read_selection(tmp_path / "p.cs", ps).tolist() == inside.tolist()

    z = explorer.latents
    bounds = np.stack([np.percentile(z, 5, axis=0), np.percentile(z, 80, axis=0)], axis=1)
    box = ",".join(f"{v:.6f}" for v in bounds.reshape(-1))
    assert main(["select", str(tiny_run), f"--latent-box={box}", "-o", str(tmp_path / "b.star")]) == 0
    lo, hi = np.round(bounds, 6).T
    assert read_selection(tmp_path / "b.star", ps).tolist() == np.flatnonzero(np.all((z >= lo) & (z <= hi), 1)).tolist()

    assert main(["select", str(tiny_run), "--indices", str(tmp_path / "s_indices.txt"), "-o",
                 str(tmp_path / "s2.cs")]) == 0
    assert read_selection(tmp_path / "s2.cs", ps).tolist() == keep.tolist()


def test_select_refuses_bad_options_before_writing(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    for options, message in (
        (["--states", "0,8"], "--states: expected states in 0..7 (of 8 k-means states), found 8"),
        (["--states", "0,x"], "--states: expected comma-separated k-means states, each a whole number >= 0, found 0,x"),
        (["--polygon=1,2,3,4"], "--polygon: expected comma-separated x,y vertices on PC1/PC2 (at least 3"),
        (["--polygon=1e6,1e6,2e6,1e6,2e6,2e6"], "--polygon: expected a selection of at least one particle, found none"),
        (["--latent-box=0,1"], "--latent-box: expected a lower and an upper bound for each of the 4 latent dimensions"),
        (["--states", "1", "--indices", "x.txt"], "--indices: expected either --indices or --states, found both"),
    ):
        assert main(["select", str(tiny_run), *options, "-o", str(tmp_path / "k.star")]) == 1
        assert message in _error(capsys, "select")
    assert main(["select", str(tiny_run), "--states", "1", "-o", str(tmp_path / "k.txt")]) == 1
    assert "k.txt: selection file: expected a .star or .cs file name" in _error(capsys, "select")
    assert not list(tmp_path.iterdir())
    # A run whose particle file moved: refused, unless --particles names it.
    import shutil

    shutil.copytree(tiny_run, run)
    star = RunFolder(tiny_run).particles_path()
    saved = json.loads((run / "config.json").read_text())
    saved["train_command"]["particles"] = saved["inputs"]["particles"]["absolute"] = str(tmp_path / "moved.star")
    saved["inputs"]["particles"]["relative"] = "moved.star"
    (run / "config.json").write_text(json.dumps(saved))
    assert main(["select", str(run), "--states", "1", "-o", str(tmp_path / "k.star")]) == 1
    assert "config.json: inputs.particles: expected the particle file the run was trained on (give it with " \
           "--particles), found none of" in _error(capsys, "select")
    assert main(["select", str(run), "--states", "1", "--particles", str(star), "-o", str(tmp_path / "k.star")]) == 0


# -- branch --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_branch_then_the_printed_command_trains_stage_2_on_the_selection(tiny_run, explorer, tmp_path, capsys):
    rows = explorer.particle_indices(explorer.states(3) == 1)
    index = select.write_indices(tmp_path / "keep.txt", rows)
    new = tmp_path / "new"
    assert main(["branch", str(tiny_run), "--select", str(index), "-o", str(new)]) == 0
    printed = capsys.readouterr().out
    assert f"stage 2 will train on {len(rows)} particles" in printed
    saved = RunFolder(new).config()
    assert saved["train"]["select"] == str(index.resolve()) and saved["branched_from"] == str(tiny_run.resolve())
    assert RunFolder(tiny_run).config()["train"]["select"] is None
    command = shlex.split(printed.splitlines()[-1])
    assert command[:2] == ["cryospire", "train"] and command[3:6] == ["--out", str(new), "--resume"]
    assert main([*command[1:], "--quiet", "--threads", "1"]) == 0
    assert np.load(new / "selection.npy").tolist() == rows.tolist()
    assert np.load(new / "latents.npy").shape == (len(rows), explorer.zdim)
    assert (new / "hierarchical" / "model.pt").is_file() and not (tiny_run / "selection.npy").exists()
    # A folder with files, and a selection that does not fit the run, are refused before writing.
    assert main(["branch", str(tiny_run), "--select", str(index), "-o", str(new)]) == 1
    assert f"{new}: new run folder: expected an empty or new folder, found a folder with files" in _error(capsys,
                                                                                                          "branch")
    np.savetxt(tmp_path / "bad.txt", [3, 300], fmt="%d")
    assert main(["branch", str(tiny_run), "--select", str(tmp_path / "bad.txt"), "-o", str(tmp_path / "b2")]) == 1
    assert "bad.txt: selection: expected indices in 0..299, found 3..300" in _error(capsys, "branch")
    assert not (tmp_path / "b2").exists()

"""A run folder's layout and its checked readers: each accessor on a tiny trained run, and on a
missing or damaged file (an InputError naming the file); and no module but
:mod:`cryospire_core.pipeline.runfolder` spells a run folder's file names."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import cryospire_core
import cryospire_napari
from cryospire_core.errors import InputError
from cryospire_core.io.load import ParticleSource, load_particles
from cryospire_core.models.consensus import GaussianMixture
from cryospire_core.models.parts import PartClustering
from cryospire_core.pipeline import runfolder
from cryospire_core.pipeline.config import TrainConfig
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.pipeline.train import train
from cryospire_core.sim.simulate import simulate, write_simulation
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run of every stage on a 32 px hinge of 300 images, with its particle file recorded."""
    data = tmp_path_factory.mktemp("runfolder") / "data"
    write_simulation(data, simulate("hinge", 32, 300, snr=10.0, seed=1))
    star = data / "particles.star"
    ps = load_particles(star)
    cfg = tiny_config()
    run = RunFolder(data.parent / "run")
    run.update_config(train=cfg, n_particles=len(ps), train_command={"particles": str(star)})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train(ps, run, cfg, torch.device("cpu")) == "finished"
    finally:
        torch.set_num_threads(threads)
    return run.root


@pytest.fixture
def copy(trained, tmp_path) -> RunFolder:
    """A private copy of the trained run, to damage."""
    return RunFolder(shutil.copytree(trained, tmp_path / "run"))


def test_the_layout_is_the_documented_one(tmp_path):
    run = RunFolder(tmp_path)
    assert run.config_path == tmp_path / "config.json" and run.latents_path == tmp_path / "latents.npy"
    assert run.clustering_path == tmp_path / "parts" / "clustering.npz"
    assert run.seed_path("hierarchical") == tmp_path / "hierarchical" / "seed.npz"
    assert run.finished_path("consensus") == run.gaussians_path == tmp_path / "consensus" / "gaussians.npz"
    assert run.checkpoint_path("consensus").parent == run.backprojection_path.parent == run.stage_path("consensus")
    for name in RUN_NAMES:
        assert name in runfolder.__doc__, name  # the layout lists every file
    with pytest.raises(ValueError):
        run.seed_path("consensus")  # the consensus has no seed.npz
    with pytest.raises(ValueError):
        run.stage_path("stage3")
    assert not any(tmp_path.iterdir())  # paths only: nothing made


def test_a_trained_run_reads_back(trained):
    run = RunFolder(trained)
    cfg = run.train_config()
    assert cfg == TrainConfig.from_dict(run.config()["train"], run.config_path) and cfg.discovery.n_gaussians == 128
    assert run.n_particles() == 300
    assert all(run.stage_done(stage) for stage in ("consensus", "discovery", "parts", "hierarchical"))
    assert run.trained_stage() == "hierarchical" and run.stage2_started()
    latents = run.latents()
    assert latents.shape == (300, cfg.hierarchical.zdim) and latents.dtype == np.float32
    assert run.selection() is None
    clustering = run.clustering()
    assert isinstance(clustering, PartClustering) and len(clustering.part_index) == 128
    assert len(run.gaussians("consensus")["centres"]) == 128
    stage1 = run.gaussians("discovery")
    assert len(stage1["centres"]) == 128 and int(stage1["box"]) == 32
    g, part_index, source = run.part_gaussians()
    assert source == run.seed_path("hierarchical") and len(part_index) == len(g["centres"]) == 256
    assert run.particles_path() == (trained.parent / "data" / "particles.star").resolve()
    assert len(run.particles()) == 300 and run.particles().box == 32


def test_models_rebuild_from_their_weights(trained):
    run = RunFolder(trained)
    model = run.model()
    assert model.stage == "hierarchical" and not model.training
    np.testing.assert_array_equal(model.latents.numpy(), run.latents())  # RUN/latents.npy is stage 2's
    stage1 = run.model("discovery")
    assert stage1.stage == "discovery" and stage1.latents.weight.shape == (300, run.train_config().discovery.zdim)
    with torch.no_grad():
        vol = model.volume(torch.as_tensor(run.latents()[0]))
    assert vol.shape == (32, 32, 32) and torch.isfinite(vol).all() and vol.abs().max() > 0
    # The last checkpoint of a finished stage holds its final weights.
    for stage in ("discovery", "hierarchical"):
        preview, final = run.latest_checkpoint_model(stage), run.model(stage)
        assert preview.stage == stage
        for key, value in final.state_dict().items():
            torch.testing.assert_close(preview.state_dict()[key], value, msg=key)
    mixture = run.latest_checkpoint_model("consensus")
    assert isinstance(mixture, GaussianMixture) and mixture.lattice.box == 32
    np.testing.assert_allclose(mixture.export()["centres"], run.gaussians("consensus")["centres"], atol=1e-4)


def _garble(path: Path) -> None:
    path.write_bytes(b"not what cryospire wrote")


@pytest.mark.parametrize("damage, read, named", [
    (lambda r: _garble(r.latents_path), lambda r: r.latents(), "latents.npy"),
    (lambda r: r.latents_path.unlink(), lambda r: r.latents(), "latents.npy"),
    (lambda r: np.save(r.latents_path, np.zeros((300, 4), np.int64)), lambda r: r.latents(), "latents.npy"),
    (lambda r: np.save(r.selection_path, np.array([0.5, 1.0])), lambda r: r.selection(), "selection.npy"),
    (lambda r: np.save(r.selection_path, np.array([3, 300])), lambda r: r.selection(300), "selection.npy"),
    (lambda r: _garble(r.clustering_path), lambda r: r.clustering(), "parts/clustering.npz"),
    (lambda r: _garble(r.gaussians_path), lambda r: r.gaussians("consensus"), "consensus/gaussians.npz"),
    (lambda r: r.seed_path("discovery").unlink(), lambda r: r.gaussians("discovery"), "discovery/seed.npz"),
    (lambda r: _garble(r.seed_path("hierarchical")), lambda r: r.part_gaussians(), "hierarchical/seed.npz"),
    (lambda r: _garble(r.config_path), lambda r: r.train_config(), "config.json"),
    (lambda r: r.update_config(train_command={"particles": "gone.star"}), lambda r: r.particles(), "config.json"),
    (lambda r: _garble(r.model_path("hierarchical")), lambda r: r.model(), "hierarchical/model.pt"),
    (lambda r: _garble(r.seed_path("discovery")), lambda r: r.model("discovery"), "discovery/seed.npz"),
    (lambda r: torch.save({"w": torch.zeros(2)}, r.model_path("discovery")), lambda r: r.model("discovery"),
     "discovery/model.pt"),
    (lambda r: _garble(r.checkpoint_path("discovery")), lambda r: r.latest_checkpoint_model("discovery"),
     "discovery/checkpoint.pt"),
    (lambda r: _garble(r.backprojection_path), lambda r: r.latest_checkpoint_model("consensus"),
     "consensus/backprojection.mrc"),
])
def test_a_missing_or_damaged_file_is_an_input_error_naming_it(copy, damage, read, named):
    damage(copy)
    with pytest.raises(InputError) as err:
        read(copy)
    assert str(err.value).startswith(str(copy.root / named))


def test_absent_optional_files_read_as_none(copy):
    copy.clustering_path.unlink()
    assert copy.clustering() is None and copy.part_gaussians() is None and not copy.stage_done("parts")
    assert copy.selection() is None
    keep = np.array([1, 5, 7])
    np.save(copy.selection_path, keep)
    np.testing.assert_array_equal(copy.selection(300), keep)


def test_the_particle_source_a_run_records_is_the_one_it_reads_back(copy):
    """What a dock or the command line records as the run's particles (every option of
    load_particles) comes back whole: the explorer trains a branch on the same images."""
    star = Path(copy.particle_source().particles)
    source = ParticleSource(star, datadir=str(star.parent), invert=True, apix=12.0)
    copy.update_config(train_command={"gui": "test", **source.command()})
    assert copy.particle_source() == ParticleSource(star.resolve(), datadir=star.parent.resolve(), invert=True,
                                                    apix=12.0)
    assert copy.particles().apix == 12.0
    copy.update_config(train_command={**source.command(), "invert": "sometimes"})
    with pytest.raises(InputError, match="train_command.invert"):
        copy.particle_source()


def test_a_run_without_a_trained_stage_has_no_model(tmp_path):
    with pytest.raises(InputError, match="run folder: expected a run folder trained by"):
        RunFolder(tmp_path / "nothing").model()
    run = RunFolder(tmp_path / "run")
    run.update_config(train=tiny_config(), n_particles=8)
    assert run.trained_stage() is None
    with pytest.raises(InputError, match="model: expected a finished stage 1 or stage 2"):
        run.model()
    run.update_config(train_command={})
    assert run.particles_path() is None


# --------------------------------------------------------------------------------------------
# Nothing outside runfolder.py spells the run folder's layout


RUN_NAMES = (runfolder.CONFIG, runfolder.LOCK, runfolder.LATENTS, runfolder.SELECTION, runfolder.EXPLORER_SELECTION,
             *runfolder.RUN_FOLDERS, *{name for names in runfolder.STAGE_FILES.values() for name in names})
#: A run folder name joined to a path (``root / "seed.npz"``, ``Path(run) / "parts" / x``; ``left``:
#: where the chain of joins starts), or a relative path literal holding one
#: (``"parts/clustering.npz"``, ``f"{run}/latents.npy"``).
_NAMES = "|".join(re.escape(name) for name in RUN_NAMES)
JOINED = re.compile(rf"""(?P<left>[\w.\])]+)(?:\s*/\s*[rfb]?["'][^"']*["'])*\s*/\s*[rfb]?["'](?P<joined>{_NAMES})["']"""
                    rf"""|["'](?:[^"'\s]*[/}}])(?P<literal>{_NAMES})["']""")
#: Folders whose own files happen to share a run folder's names: an analysis output folder
#: (``AnalysisFiles.out``: pc1/latents.npy, parts/...) and a traversal export folder.
OTHER_FOLDERS = {"self.out", "folder"}
#: (module, name): the demo's and the sample data's own folders keep their backprojection at
#: their top level, beside the run folder (``run/``) they make.
OTHER_LAYOUTS = {("demo.py", "backprojection.mrc"), ("_sample_data.py", "backprojection.mrc")}


def test_no_module_but_runfolder_joins_run_folder_names():
    packages = (Path(cryospire_core.__file__).parent, Path(cryospire_napari.__file__).parent)
    owner = Path(runfolder.__file__)
    found = []
    for source in sorted(p for package in packages for p in package.rglob("*.py") if p != owner):
        for number, line in enumerate(source.read_text().splitlines(), 1):
            for match in JOINED.finditer(line):
                name = match["joined"] or match["literal"]
                if match["left"] not in OTHER_FOLDERS and (source.name, name) not in OTHER_LAYOUTS:
                    found.append(f"{source.name}:{number}: {line.strip()}")
    assert not found, "spell these with RunFolder's paths:\n" + "\n".join(found)


def test_the_layout_check_finds_a_join():
    assert JOINED.search('path = run.root / "parts" / "clustering.npz"')
    assert JOINED.search('FINISHED = {"parts": "parts/clustering.npz"}')
    assert JOINED.search('p = root / "latents.npy"')
    assert JOINED.search('p = Path(run_dir) / "x" / "selection.npy"')["left"] == "run_dir)"
    assert JOINED.search('p = self.out / f"pc{pc}" / "latents.npy"')["left"] == "self.out"
    assert not JOINED.search('raise InputError(path, "latents", "expected RUN/latents.npy here")')

"""Safe loading: malicious pickles and checkpoints run nothing through any loader, and paths
inside metadata files are only read, never turned into places we write."""

from __future__ import annotations

import os
import pathlib
import pickle

import numpy as np
import pandas as pd
import pytest
import starfile
import torch
from torch import nn

from cryospire_core.errors import InputError
from cryospire_core.imaging.geometry import matrix_to_euler, random_rotations
from cryospire_core.io.cryodrgn import write_ctf_pkl, write_poses_pkl
from cryospire_core.io.load import load_particles, write_particles
from cryospire_core.io.mrc import write_stack
from cryospire_core.io.safe_pickle import load_pickle
from cryospire_core.io.star import read_star
from cryospire_core.models.engine import (
    LoopConfig,
    load_checkpoint,
    run_loop,
    save_checkpoint,
)

N, D, APIX = 6, 16, 2.0


class _Opens:
    """Unpickling it would create ``target`` (builtins.open)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


class _Shell:
    """Unpickling it would create ``target`` (os.system)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _Touch:
    """Unpickling it would create ``target`` (pathlib.Path.touch)."""

    def __init__(self, target):
        self.target = pathlib.Path(target)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.target,))


EVIL = [_Opens, _Shell, _Touch]


def _tree(root: pathlib.Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture()
def cryodrgn_set(tmp_path):
    """A valid stack with poses.pkl and ctf.pkl in tmp_path/data."""
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    write_stack(data / "stack.mrcs", rng.standard_normal((N, D, D)).astype(np.float32), APIX)
    ps = load_particles(_star(data, ["stack.mrcs"] * N), invert=False)
    write_poses_pkl(data / "poses.pkl", ps)
    write_ctf_pkl(data / "ctf.pkl", ps)
    return data


def _star(folder: pathlib.Path, stacks: list[str]) -> pathlib.Path:
    rng = np.random.default_rng(1)
    n = len(stacks)
    ang = matrix_to_euler(random_rotations(n, rng))
    particles = pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@{s}" for i, s in enumerate(stacks)],
        "rlnAngleRot": ang[:, 0], "rlnAngleTilt": ang[:, 1], "rlnAnglePsi": ang[:, 2],
        "rlnDefocusU": np.full(n, 1.5e4), "rlnDefocusV": np.full(n, 1.4e4), "rlnDefocusAngle": np.zeros(n),
        "rlnOpticsGroup": np.ones(n, int),
    })
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["g1"], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                           "rlnImagePixelSize": [APIX], "rlnImageSize": [D]})
    path = folder / "particles.star"
    starfile.write({"optics": optics, "particles": particles}, path, overwrite=True)
    return path


@pytest.mark.parametrize("evil", EVIL)
@pytest.mark.parametrize("which", ["poses", "ctf"])
def test_malicious_pkl_through_the_particle_loader_runs_nothing(cryodrgn_set, tmp_path, evil, which):
    target = tmp_path / "pwned"
    bad = cryodrgn_set / f"evil_{which}.pkl"
    # A plausible payload: the real arrays with the malicious object inside the tuple.
    bad.write_bytes(pickle.dumps((np.eye(3)[None].repeat(N, 0), evil(target)), protocol=4))
    pkls = {"poses": cryodrgn_set / "poses.pkl", "ctf": cryodrgn_set / "ctf.pkl", which: bad}
    with pytest.raises(InputError) as err:
        load_particles(cryodrgn_set / "stack.mrcs", poses=pkls["poses"], ctf=pkls["ctf"])
    assert not target.exists()
    assert err.value.path == str(bad) and "refused" in str(err.value)


@pytest.mark.parametrize("evil", EVIL)
def test_malicious_index_style_pickle_runs_nothing(tmp_path, evil):
    """Index files (a pickled int array of kept particles) go through the same loader."""
    target = tmp_path / "pwned"
    bad = tmp_path / "ind.pkl"
    bad.write_bytes(pickle.dumps([np.arange(3), evil(target)], protocol=2))
    with pytest.raises(InputError, match="ind.pkl"):
        load_pickle(bad)
    assert not target.exists()


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(D, D))

    def loss(self, batch):
        return (batch.images - self.w).pow(2).mean(), {}


@pytest.mark.parametrize("evil", EVIL)
def test_malicious_checkpoint_is_refused_before_anything_runs(cryodrgn_set, tmp_path, evil):
    target = tmp_path / "pwned"
    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"version": 1, "model": {"w": torch.zeros(D, D)}, "payload": evil(target)}, ckpt)
    with pytest.raises(InputError) as err:
        load_checkpoint(ckpt)
    assert err.value.path == str(ckpt) and err.value.field == "checkpoint"
    assert not target.exists()

    # Resuming a loop from it stops before the first step: the model is untouched.
    ps = load_particles(cryodrgn_set / "stack.mrcs", poses=cryodrgn_set / "poses.pkl", ctf=cryodrgn_set / "ctf.pkl",
                        invert=False)
    model = _Tiny()
    with pytest.raises(InputError):
        run_loop(model, torch.optim.Adam(model.parameters()), ps, LoopConfig(epochs=1, batch_size=4, prefetch=0),
                 ckpt, "test", torch.device("cpu"))
    assert not target.exists() and torch.count_nonzero(model.w) == 0


def test_model_state_loads_use_weights_only(tmp_path):
    """A run's model.pt loader refuses a malicious state dict without running it."""
    from cryospire_core.pipeline.runfolder import RunFolder

    target = tmp_path / "pwned"
    run = RunFolder(tmp_path)
    run.stage_dir("discovery")
    torch.save({"w": _Touch(target)}, run.model_path("discovery"))
    with pytest.raises(InputError, match="model.pt"):
        run.weights("discovery")
    assert not target.exists()


def test_corrupt_and_future_checkpoints_are_clear_errors(tmp_path):
    ckpt = tmp_path / "checkpoint.pt"
    save_checkpoint(ckpt, {"version": 1, "epoch": 3})
    assert load_checkpoint(ckpt)["epoch"] == 3
    ckpt.write_bytes(ckpt.read_bytes()[:40])
    with pytest.raises(InputError, match="checkpoint"):
        load_checkpoint(ckpt)
    save_checkpoint(ckpt, {"version": 99})
    with pytest.raises(InputError, match="checkpoint version"):
        load_checkpoint(ckpt)


def test_dotdot_image_names_are_only_read(tmp_path):
    """rlnImageName = 00000k@../../x/stack.mrcs: a missing stack is an InputError that creates
    nothing; an existing one is read, and writing a subset writes only the file asked for, its
    image names still reaching the original stack."""
    job = tmp_path / "project" / "Job1" / "sub"
    job.mkdir(parents=True)
    star = _star(job, ["../../x/stack.mrcs"] * N)
    before = _tree(tmp_path)
    with pytest.raises(InputError) as err:
        read_star(star)
    assert err.value.field == "rlnImageName" and _tree(tmp_path) == before

    stack = tmp_path / "project" / "x" / "stack.mrcs"
    write_stack(stack, np.random.default_rng(2).standard_normal((N, D, D)).astype(np.float32), APIX)
    before = _tree(tmp_path)
    ps = load_particles(star, invert=False)
    assert ps.source.files[0].resolve() == stack.resolve()
    out = tmp_path / "out"
    for name in ("subset.star", "subset.cs"):
        write_particles(out / name, ps.subset(np.array([1, 3])))
    assert _tree(tmp_path) - before == {"out", "out/subset.star", "out/subset.cs"}
    assert stack.stat().st_size == 1024 + N * D * D * 4  # read, never rewritten
    names = starfile.read(out / "subset.star", always_dict=True)["particles"]["rlnImageName"]
    assert all((out / n.split("@")[1]).resolve() == stack.resolve() for n in names)
    sub = load_particles(out / "subset.cs", invert=False)
    np.testing.assert_array_equal(sub.images(np.arange(2)), ps.images(np.array([1, 3])))

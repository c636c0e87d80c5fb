"""Hostile command-line cases: runs (see ``hostile_cli``)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cryospire_core.io.mrc import read_map
from cryospire_core.pipeline.config import RUN_FORMAT_VERSION

from .hostile_cli import Case, error, ok, run_cli, sound_map, steps

CASES: list[Case] = []


def _z_file(ws):
    z = np.load(ws / "run" / "latents.npy")[:2]
    np.savetxt(ws / "user" / "z.txt", z)


CASES += [
    Case("results", "render at two latents of the run", lambda ws: ["render", "run", "--z", "user/z.txt", "--out", "maps"],
         ok(lambda ws: [sound_map(ws / "maps" / f"vol_00{k}.mrc") for k in range(2)]), setup=_z_file),
]


# -- helpers that damage the workspace's run folder -----------------------------------------------


def _config(change: Callable[[dict], object]) -> Callable[[Path], None]:
    """A setup that rewrites run/config.json through ``change(cfg)`` (in place)."""
    def setup(ws: Path) -> None:
        path = ws / "run" / "config.json"
        cfg = json.loads(path.read_text())
        change(cfg)
        path.write_text(json.dumps(cfg))
    return setup


def _text(rel: str, text: str) -> Callable[[Path], None]:
    return lambda ws: (ws / rel).write_text(text)


def _truncate(rel: str, n: int = 300) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        p = ws / rel
        p.write_bytes(p.read_bytes()[:n])
    return setup


def _remove(*rels: str) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        for rel in rels:
            p = ws / rel
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return setup




def _torch_save(rel: str, make: Callable[[Path], object]) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        import torch
        torch.save(make(ws), ws / rel)
    return setup


def _state(rel: str) -> Callable[[Path], dict]:
    def read(ws: Path) -> dict:
        import torch
        return torch.load(ws / rel, weights_only=True)
    return read


def _npz(rel: str, change: Callable[[dict], object]) -> Callable[[Path], None]:
    """Rewrite an .npz of the run through ``change(arrays)`` (in place)."""
    def setup(ws: Path) -> None:
        with np.load(ws / rel) as z:
            arrays = dict(z)
        change(arrays)
        with open(ws / rel, "wb") as f:
            np.savez(f, **arrays)
    return setup


class _Exploit:
    """A pickle that would run code when loaded without weights_only."""

    def __reduce__(self):
        return (os.system, ("touch user/pwned",))


def _render(ws: Path) -> list[str]:
    return ["render", "run", "--particles", "user/idx.txt", "--out", "maps"]


def _idx(ws: Path) -> None:
    (ws / "user" / "idx.txt").write_text("0\n5\n")


_RESUME = ["train", "data/particles.star", "--out", "run", "--resume", "--quiet"]
_CFG = r"^cryospire render: error: run/config\.json: "

# -- config.json ----------------------------------------------------------------------------------

CASES += [
    Case("run folder", "config.json of another tool", _render,
         error(_CFG + r"format_version: expected a cryospire run config \(with an integer run-format version\), "
               r"found a JSON object with other keys \(name, version\)$"),
         setup=steps(_idx, _text("run/config.json", '{"name": "sweep", "version": 3}'))),
    Case("run folder", "config.json without a train section", _render,
         error(_CFG + r"train: expected a run trained by `cryospire train`"),
         setup=steps(_idx, _config(lambda c: c.pop("train")))),
    Case("run folder", "config.json with a train list", _render,
         error(_CFG + r"train: expected a JSON object \{\.\.\.\}, found \[1, 2\]$"),
         setup=steps(_idx, _config(lambda c: c.update(train=[1, 2])))),
    Case("run folder", "config.json with epochs as text", _render,
         error(_CFG + r'train\.discovery\.epochs: expected a whole number, found "ten"$'),
         setup=steps(_idx, _config(lambda c: c["train"]["discovery"].update(epochs="ten")))),
    Case("run folder", "config.json with a batch size of 0", _render,
         error(_CFG + r"train\.hierarchical\.batch_size: expected a whole number >= 1, found 0$"),
         setup=steps(_idx, _config(lambda c: c["train"]["hierarchical"].update(batch_size=0)))),
    Case("run folder", "config.json with a NaN learning rate", _render,
         error(_CFG + r"train\.consensus\.lr: expected a finite number in \(0, 1\], found NaN$"),
         setup=steps(_idx, _config(lambda c: c["train"]["consensus"].update(lr=float("nan"))))),
    Case("run folder", "config.json with an unknown train key", _render,
         error(_CFG + r"train\.colour: expected an option of train \(.*\), found an unknown key$"),
         setup=steps(_idx, _config(lambda c: c["train"].update(colour="blue")))),
    Case("run folder", "config.json with an unknown stage key", _render,
         error(_CFG + r"train\.hierarchical\.dropout: expected an option of train\.hierarchical"),
         setup=steps(_idx, _config(lambda c: c["train"]["hierarchical"].update(dropout=0.5)))),
    Case("run folder", "config.json with an unknown top-level key", _render,
         error(_CFG + r"notes: expected a run config key \(format_version, .*\), found an unknown key$"),
         setup=steps(_idx, _config(lambda c: c.update(notes="mine")))),
    Case("run folder", "config.json without a stage section", _render,
         error(_CFG + r"train\.discovery: expected a value, found none \(the key is missing\)$"),
         setup=steps(_idx, _config(lambda c: c["train"].pop("discovery")))),
    Case("run folder", "config.json with an unknown profile", _render,
         error(_CFG + r'train\.profile: expected cpu or paper, found "gpu"$'),
         setup=steps(_idx, _config(lambda c: c["train"].update(profile="gpu")))),
    Case("run folder", "config.json with an unknown MLP form", _render,
         error(_CFG + r'train\.discovery\.mlp_form: expected dense or lowrank, found "wide"$'),
         setup=steps(_idx, _config(lambda c: c["train"]["discovery"].update(mlp_form="wide")))),
    Case("run folder", "config.json with n_particles as text", _render,
         error(_CFG + r'n_particles: expected a JSON whole number, found "300"$'),
         setup=steps(_idx, _config(lambda c: c.update(n_particles="300")))),
    Case("run folder", "config.json from a newer cryospire", _render,
         error(_CFG + rf"format_version: expected at most {RUN_FORMAT_VERSION} .*upgrade to open it\), found 99$"),
         setup=steps(_idx, _config(lambda c: c.update(format_version=99, cryospire="9.0")))),
    Case("run folder", "config.json with a text format version", _render,
         error(_CFG + r'format_version: expected an integer run-format version, found "1"$'),
         setup=steps(_idx, _config(lambda c: c.update(format_version="1")))),
    Case("run folder", "config.json truncated", _render,
         error(_CFG + r"config: expected a JSON run config written by cryospire, found "),
         setup=steps(_idx, _truncate("run/config.json", 120))),
    Case("run folder", "config.json empty", _render,
         error(_CFG + r"config: expected a JSON run config written by cryospire, found "),
         setup=steps(_idx, _text("run/config.json", ""))),
    Case("run folder", "config.json a list", _render,
         error(_CFG + r"config: expected a JSON object written by cryospire, found list$"),
         setup=steps(_idx, _text("run/config.json", "[1, 2, 3]"))),
    Case("run folder", "config.json whose latent size differs from the model's", _render,
         error(r"run/hierarchical/seed\.npz: latents: expected \(N, 8\) finite numbers"),
         setup=steps(_idx, _config(lambda c: c["train"]["hierarchical"].update(zdim=8)))),
    Case("run folder", "config.json with a negative seed, on train --resume", lambda ws: _RESUME,
         error(r"^cryospire train: error: run/config\.json: train\.seed: expected a whole number in "
               r"\[0, 4294967295\], found -1$"),
         setup=_config(lambda c: c["train"].update(seed=-1))),
    Case("run folder", "config.json damaged, on analyze", lambda ws: ["analyze", "run", "--out", "ana"],
         error(r"^cryospire analyze: error: run/config\.json: train\.hierarchical\.hidden: expected a whole number "
               r">= 1, found 0$"),
         setup=_config(lambda c: c["train"]["hierarchical"].update(hidden=0))),
    Case("run folder", "config.json damaged, on evaluate --run",
         lambda ws: ["evaluate", "--gt", "data/gt", "--run", "run"],
         error(r"^cryospire evaluate: error: run/config\.json: train\.discovery\.zdim: expected a whole number, "
               r"found 4\.5$"),
         setup=_config(lambda c: c["train"]["discovery"].update(zdim=4.5))),
    Case("run folder", "config.json damaged, on infer",
         lambda ws: ["infer", "run", "data/particles.star", "--out", "out/z.npy", "--quiet"],
         error(r"^cryospire infer: error: run/config\.json: train\.parts_level1: expected auto or a whole number "
               r'>= 1, found "many"$'),
         setup=_config(lambda c: c["train"].update(parts_level1="many"))),
]

# -- model, seed, checkpoint and latent files -----------------------------------------------------

_MODEL = r"run/hierarchical/model\.pt: model: expected a state dict saved by `cryospire train`"
CASES += [
    Case("run folder", "stage-2 model.pt truncated", _render,
         error(_MODEL + r" \(tensors only\), found a damaged or truncated file \(RuntimeError: "),
         setup=steps(_idx, _truncate("run/hierarchical/model.pt"))),
    Case("run folder", "stage-2 model.pt of random bytes", _render,
         error(_MODEL + r" \(tensors only\), found a damaged or truncated file"),
         setup=steps(_idx, lambda ws: (ws / "run/hierarchical/model.pt").write_bytes(os.urandom(4096)))),
    Case("run folder", "stage-2 model.pt that would run code", _render,
         # the refusal never repeats torch's advice to load the file with weights_only=False
         error(r"^(?!.*weights_only)cryospire render: error: run/hierarchical/model\.pt: model: expected .*"
               r"found a pickled (posix|os)\.system \(refused unread"),
         setup=steps(_idx, _torch_save("run/hierarchical/model.pt", lambda ws: {"x": _Exploit()}))),
    Case("run folder", "stage-2 model.pt holding stage 1's weights", _render,
         error(r"run/hierarchical/model\.pt: model: expected the weights of the model that config\.json and "
               r"seed\.npz describe, found Error\(s\) in loading state_dict"),
         setup=steps(_idx, lambda ws: shutil.copy(ws / "run/discovery/model.pt", ws / "run/hierarchical/model.pt"))),
    Case("run folder", "stage-2 model.pt holding one tensor", _render,
         error(_MODEL + r" \(name -> tensor\), found Tensor$"),
         setup=steps(_idx, _torch_save("run/hierarchical/model.pt", lambda ws: __import__("torch").zeros(3)))),
    Case("run folder", "stage-2 model.pt with NaN weights", _render,
         error(r"run/hierarchical/model\.pt: weights: expected finite numbers, found \d+ NaN/Inf values"),
         setup=steps(_idx, _torch_save("run/hierarchical/model.pt", lambda ws: {
             k: v.fill_(float("nan")) if v.is_floating_point() else v
             for k, v in _state("run/hierarchical/model.pt")(ws).items()}))),
    Case("run folder", "stage-2 seed.npz truncated", _render,
         error(r"run/hierarchical/seed\.npz: Gaussian mixture: expected an \.npz of centres, .* found a damaged or "
               r"truncated file"),
         setup=steps(_idx, _truncate("run/hierarchical/seed.npz"))),
    Case("run folder", "stage-2 seed.npz without latents", _render,
         error(r"run/hierarchical/seed\.npz: latents: expected the Gaussian mixture array latents, found missing$"),
         setup=steps(_idx, _npz("run/hierarchical/seed.npz", lambda a: a.pop("latents")))),
    Case("run folder", "stage-2 seed.npz with 2D centres", _render,
         error(r"run/hierarchical/seed\.npz: centres: expected \(G, 3\) finite numbers \(Å\), found float32 array of "
               r"shape \(\d+, 2\)$"),
         setup=steps(_idx, _npz("run/hierarchical/seed.npz", lambda a: a.update(centres=a["centres"][:, :2])))),
    Case("run folder", "stage-2 seed.npz with a part index out of range", _render,
         error(r"run/hierarchical/seed\.npz: arrays: expected a seed that fits the run's config\.json, found "
               r"PartAwareModel: part_index"),
         setup=steps(_idx, _npz("run/hierarchical/seed.npz", lambda a: a.update(part_index=a["part_index"] + 99)))),
    Case("run folder", "stage-1 seed.npz truncated (no stage 2)", _render,
         error(r"run/discovery/seed\.npz: Gaussian mixture: expected .* found a damaged or truncated file"),
         setup=steps(_idx, _remove("run/hierarchical"), _truncate("run/discovery/seed.npz", 100))),
    Case("run folder", "no finished stage to render", _render,
         error(r"^cryospire render: error: run: model: expected a finished stage 1 or stage 2"),
         setup=steps(_idx, _remove("run/hierarchical", "run/discovery/model.pt"))),
    Case("run folder", "render a folder that is not a run", lambda ws: ["render", "user", "--z", "user/z.txt",
                                                                        "--out", "maps"],
         error(r"^cryospire render: error: user/config\.json: train: expected a run trained by `cryospire train`"),
         setup=_z_file),
    Case("run folder", "render a run folder that does not exist", lambda ws: ["render", "nowhere", "--z", "user/z.txt",
                                                                              "--out", "maps"],
         error(r"^cryospire render: error: nowhere: run folder: expected a run folder trained by `cryospire train`, "
               r"found no such folder$"),
         setup=_z_file),
    Case("run folder", "latents.npy truncated, on analyze", lambda ws: ["analyze", "run", "--out", "ana"],
         error(r"^cryospire analyze: error: run/latents\.npy: latents: expected an \.npy array written by cryospire, "
               r"found a damaged file"),
         setup=_truncate("run/latents.npy", 100)),
    Case("run folder", "latents.npy empty, on analyze", lambda ws: ["analyze", "run", "--out", "ana"],
         error(r"^cryospire analyze: error: run/latents\.npy: latents: expected .*found a damaged or truncated file"),
         setup=_text("run/latents.npy", "")),
    Case("run folder", "latents.npy of pickled objects, on analyze", lambda ws: ["analyze", "run", "--out", "ana"],
         error(r"run/latents\.npy: latents: expected .*, found pickled Python objects \(refused"),
         setup=lambda ws: np.save(ws / "run/latents.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)),
    Case("run folder", "latents.npy with 3 columns, on analyze", lambda ws: ["analyze", "run", "--out", "ana"],
         error(r"run/latents\.npy: latents: expected \(300, 4\) numbers \(one row of 4 per latent of the run's "
               r"model\), found \(300, 3\)$"),
         setup=lambda ws: np.save(ws / "run/latents.npy", np.load(ws / "run/latents.npy")[:, :3])),
    Case("run folder", "latents.npy with NaN, on analyze", lambda ws: ["analyze", "run", "--out", "ana"],
         error(r"run/latents\.npy: latents: expected a finite float \(N, zdim\) array"),
         setup=lambda ws: np.save(ws / "run/latents.npy", np.full((300, 4), np.nan, np.float32))),
    Case("run folder", "clustering.npz truncated, on analyze of a stage-1 run", lambda ws: ["analyze", "run", "--out",
                                                                                           "ana"],
         error(r"run/parts/clustering\.npz: part clustering: expected .* found a damaged or truncated file"),
         setup=steps(_remove("run/hierarchical"), _truncate("run/parts/clustering.npz"))),
    Case("run folder", "stage-2 checkpoint.pt truncated, on train --resume", lambda ws: _RESUME,
         error(r"^cryospire train: error: run/hierarchical/checkpoint\.pt: checkpoint: expected a cryospire checkpoint "
               r"\(tensors, numbers and strings only\), found a damaged or truncated file"),
         setup=_truncate("run/hierarchical/checkpoint.pt")),
    Case("run folder", "stage-1 checkpoint.pt without its epoch, on train --resume", lambda ws: _RESUME,
         error(r"run/discovery/checkpoint\.pt: epoch: expected a whole number of finished epochs, found missing$"),
         setup=_torch_save("run/discovery/checkpoint.pt", lambda ws: {
             k: v for k, v in _state("run/discovery/checkpoint.pt")(ws).items() if k != "epoch"})),
    Case("run folder", "stage-2 checkpoint.pt of another model, on train --resume", lambda ws: _RESUME,
         error(r"run/hierarchical/checkpoint\.pt: model and optimizer: expected the state of this stage 2: "
               r"hierarchical model"),
         setup=steps(_remove("run/hierarchical/model.pt"),
                      lambda ws: shutil.copy(ws / "run/discovery/checkpoint.pt",
                                             ws / "run/hierarchical/checkpoint.pt"))),
    Case("run folder", "stage-2 model.pt truncated, on infer",
         lambda ws: ["infer", "run", "data/particles.star", "--out", "out/z.npy", "--quiet"],
         error(r"^cryospire infer: error: " + _MODEL),
         setup=_truncate("run/hierarchical/model.pt")),
    Case("run folder", "stage-2 model.pt truncated, on evaluate --run",
         lambda ws: ["evaluate", "--gt", "data/gt", "--run", "run"],
         error(r"^cryospire evaluate: error: " + _MODEL),
         setup=_truncate("run/hierarchical/model.pt")),
]

# -- stages, selections and output folders --------------------------------------------------------


def _keep(text: str) -> Callable[[Path], None]:
    return _text("user/keep.txt", text)


def _foreign_subset(ws: Path) -> None:
    """user/other.star: the same rows, pointing to a copy of the stack (not the training images)."""
    shutil.copy(ws / "data/particles.mrcs", ws / "user/other.mrcs")
    star = (ws / "data/particles.star").read_text().replace("@particles.mrcs", "@other.mrcs")
    (ws / "user/other.star").write_text(star)


def _stage2_removed(ws: Path) -> None:
    """The run as it was before stage 2, with the empty RUN/hierarchical a refused command used
    to leave behind."""
    _remove("run/hierarchical", "run/latents.npy")(ws)
    (ws / "run/hierarchical").mkdir()


def _bad_then_good(ws: Path) -> None:
    _stage2_removed(ws)
    (ws / "user/bad.txt").write_text("5000\n")
    code, _, err = run_cli([*_RESUME, "--select", "user/bad.txt"], ws)
    assert code == 1 and "bad.txt: selection: expected indices in 0..299" in err, err
    (ws / "user/keep.txt").write_text("\n".join(str(i) for i in range(0, 300, 6)) + "\n")


def _selected_run(ws: Path) -> None:
    latents = np.load(ws / "run/latents.npy")
    assert latents.shape == (50, 4) and np.isfinite(latents).all(), latents.shape
    assert np.array_equal(np.load(ws / "run/selection.npy"), np.arange(0, 300, 6))


_NEW = ["train", "data/particles.star", "--out", "new", "--quiet"]
CASES += [
    Case("run folder", "--stage parts on a fresh folder", lambda ws: [*_NEW, "--stage", "parts"],
         error(r"^cryospire train: error: new/consensus/gaussians\.npz: --stage parts: expected a finished consensus "
               r"stage first \(leave out --stage, or add --stage consensus\), found no such file$")),
    Case("run folder", "--stage hierarchical without parts", lambda ws: [*_RESUME, "--stage", "hierarchical"],
         error(r"run/parts/clustering\.npz: --stage hierarchical: expected a finished parts stage first"),
         setup=_remove("run/parts", "run/hierarchical")),
    Case("run folder", "--select of a missing file", lambda ws: [*_NEW, "--select", "user/nothing.txt"],
         error(r"user/nothing\.txt: selection: expected an index file \(\.npy/\.txt\) or a \.star/\.cs subset, "
               r"found no such file$")),
    Case("run folder", "--select out of range", lambda ws: [*_NEW, "--select", "user/keep.txt"],
         error(r"user/keep\.txt: selection: expected indices in 0\.\.299, found -1\.\.5000$"),
         setup=_keep("-1\n5000\n")),
    Case("run folder", "--select empty", lambda ws: [*_NEW, "--select", "user/keep.txt"],
         error(r"user/keep\.txt: selection: expected at least one particle, found an empty file$"), setup=_keep("\n")),
    Case("run folder", "--select of fractions", lambda ws: [*_NEW, "--select", "user/keep.txt"],
         error(r"user/keep\.txt: selection: expected whole-number particle indices, found float64$"),
         setup=_keep("0.5\n1.5\n")),
    Case("run folder", "--select of other particles", lambda ws: [*_NEW, "--select", "user/other.star"],
         error(r"user/other\.star: particles: expected a subset of the training particles \(same stacks and frames\), "
               r"found 300 images not among them"), setup=_foreign_subset),
    Case("run folder", "--select after stage 2 started", lambda ws: [*_RESUME, "--select", "user/keep.txt"],
         error(r"user/keep\.txt: --select: expected a run whose stage 2 has not started"), setup=_keep("0\n1\n")),
    Case("run folder", "--select refused, then the corrected --select trains stage 2",
         lambda ws: [*_RESUME, "--select", "user/keep.txt"], ok(_selected_run), setup=_bad_then_good),
    Case("run folder", "--out is a file", lambda ws: ["train", "data/particles.star", "--out", "user/notes.txt",
                                                      "--quiet"],
         error(r"^cryospire train: error: user/notes\.txt: run folder: expected a folder \(or a name not in use\), "
               r"found an existing file$")),
    Case("run folder", "--out inside a file", lambda ws: ["consensus", "data/particles.star", "--out",
                                                          "user/notes.txt/run", "--quiet"],
         error(r"^cryospire consensus: error: user/notes\.txt: run folder: expected a folder")),
    Case("run folder", "train again without --resume", lambda ws: _NEW[:3] + ["run", "--quiet"],
         error(r"^cryospire train: error: run/config\.json: train: expected a new run folder, or --resume")),
    Case("run folder", "--resume with another Gaussian count", lambda ws: [*_RESUME, "--gaussians-1", "64"],
         error(r"run/config\.json: --gaussians-1: expected the run's 128 with --resume \(start a new run folder to "
               r"change it\), found 64$")),
    Case("run folder", "--resume with rigid handles", lambda ws: [*_RESUME, "--handles-1", "24"],
         error(r"run/config\.json: --handles-1: expected the run's 0 with --resume \(start a new run folder to "
               r"change it\), found 24$")),
    Case("run folder", "--resume with another seed", lambda ws: [*_RESUME, "--seed", "3"],
         error(r"run/config\.json: --seed: expected the run's 0 with --resume")),
    Case("run folder", "--resume with more stage-1 epochs under a stage 2", lambda ws: [*_RESUME, "--epochs-1", "3"],
         error(r"run/discovery/checkpoint\.pt: --epochs-1: expected 1 \(stage 1: part discovery has trained 1 epoch "
               r"and parts, hierarchical were built on it: train longer in a new run folder\), found 3$")),
    Case("run folder", "--resume with a part count but no --stage parts", lambda ws: [*_RESUME, "--parts", "3"],
         error(r"run/parts/clustering\.npz: --parts: expected --stage parts with --resume to re-cluster")),
]

# -- results: latents refused at the door, sound maps and latents otherwise -----------------------


def _rows(text: str, name: str = "z.txt") -> Callable[[Path], None]:
    return _text(f"user/{name}", text)


_RENDER_Z = lambda ws: ["render", "run", "--z", "user/z.txt", "--out", "maps"]  # noqa: E731
CASES += [
    Case("results", "render --z with NaN", _RENDER_Z,
         error(r"^cryospire render: error: user/z\.txt: --z: expected finite numbers \(no NaN or inf\), found 1 "
               r"non-finite values, the first in row 2$"), setup=_rows("0 0 0 0\n0 nan 0 0\n")),
    Case("results", "render --z with inf", _RENDER_Z,
         error(r"user/z\.txt: --z: expected finite numbers \(no NaN or inf\), found 4 non-finite values, the first in "
               r"row 1$"), setup=_rows("inf -inf inf inf\n")),
    Case("results", "render --z .npy with NaN", lambda ws: ["render", "run", "--z", "user/z.npy", "--out", "maps"],
         error(r"user/z\.npy: --z: expected finite numbers \(no NaN or inf\)"),
         setup=lambda ws: np.save(ws / "user/z.npy", np.full((2, 4), np.nan))),
    Case("results", "render --z of the wrong width", _RENDER_Z,
         error(r"user/z\.txt: --z: expected rows of 4 numbers \(the run's latent size\), found \(1, 3\)$"),
         setup=_rows("0 0 0\n")),
    Case("results", "render --z empty", _RENDER_Z,
         error(r"user/z\.txt: --z: expected at least one row of numbers, found none$"), setup=_rows("")),
    Case("results", "render --z of words", _RENDER_Z,
         error(r"user/z\.txt: --z: expected numbers, one row per map, found "), setup=_rows("a b c d\n")),
    Case("results", "render --z .npy truncated", lambda ws: ["render", "run", "--z", "user/z.npy", "--out", "maps"],
         error(r"user/z\.npy: --z: expected numbers, one row per map, found "),
         setup=lambda ws: (ws / "user/z.npy").write_bytes(b"\x93NUMPY\x01\x00")),
    Case("results", "render --particles of fractions", lambda ws: ["render", "run", "--particles", "user/i.txt",
                                                                   "--out", "maps"],
         error(r"user/i\.txt: --particles: expected whole numbers \(0-based indices\), found fractions"),
         setup=_rows("1.5\n", "i.txt")),
    Case("results", "render --particles out of range", lambda ws: ["render", "run", "--particles", "user/i.txt",
                                                                   "--out", "maps"],
         error(r"user/i\.txt: --particles: expected indices in 0\.\.299, found -1\.\.300$"),
         setup=_rows("-1\n300\n", "i.txt")),
    Case("results", "render at particles", lambda ws: ["render", "run", "--particles", "user/idx.txt", "--out", "maps"],
         ok(lambda ws: [sound_map(ws / "maps" / f"vol_00{k}.mrc") for k in range(2)]), setup=_idx),
    Case("results", "render far outside the latents: written, with a warning", _RENDER_Z,
         ok(lambda ws: np.testing.assert_array_equal(read_map(ws / "maps/vol_000.mrc").data, 0)),
         setup=_rows("1e30 1e30 1e30 1e30\n")),
    Case("results", "infer latents of the particles",
         lambda ws: ["infer", "run", "data/particles.star", "--out", "out/z.npy", "--epochs", "1", "--candidates", "2",
                     "--quiet"],
         ok(lambda ws: _finite_latents(ws / "out/z.npy", (300, 4)))),
    Case("results", "analyze the run",
         lambda ws: ["analyze", "run", "--out", "ana", "--ksample", "2", "--pc-steps", "2"],
         ok(lambda ws: [sound_map(ws / "ana" / name) for name in ("state_000.mrc", "state_001.mrc", "pc1/vol_000.mrc",
                                                                  "pc1/vol_001.mrc")])),
    Case("results", "backproject the particles",
         lambda ws: ["backproject", "data/particles.star", "--out", "out/bp.mrc", "--wiener", "100", "--quiet"],
         ok(lambda ws: sound_map(ws / "out/bp.mrc"))),
    Case("results", "train --resume of the finished run trains nothing", lambda ws: _RESUME,
         ok(lambda ws: _finite_latents(ws / "run/latents.npy", (300, 4)))),
]


def _finite_latents(path: Path, shape: tuple[int, int]) -> None:
    z = np.load(path)
    assert z.shape == shape and np.isfinite(z).all(), f"{path}: {z.shape}"


# -- evaluate against a damaged ground truth, and latents beyond float32 (red-team additions) -----


def _gt_copy(ws: Path) -> None:
    """user/gt: the first two states of data/gt and its mask (two states score fast)."""
    (ws / "user" / "gt").mkdir()
    for name in ("vol_000.mrc", "vol_001.mrc", "mask.mrc"):
        shutil.copy(ws / "data" / "gt" / name, ws / "user" / "gt" / name)


def _flat_map(rel: str, value: float = 0.0) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        from cryospire_core.io.mrc import write_map

        write_map(ws / rel, np.full((32, 32, 32), value, np.float32), 12.0)
    return setup


_EVAL_MAP = ["evaluate", "--gt", "user/gt", "--map", "data/gt/vol_000.mrc"]
CASES += [
    Case("metadata", "evaluate --map of all zeros", lambda ws: ["evaluate", "--gt", "user/gt", "--map", "user/m.mrc"],
         error(r"^cryospire evaluate: error: user/m\.mrc: map values: expected a map whose voxels vary, found every "
               r"voxel 0$"), setup=steps(_gt_copy, _flat_map("user/m.mrc"))),
    Case("metadata", "evaluate a ground-truth state of constant value", lambda ws: _EVAL_MAP,
         error(r"user/gt/vol_001\.mrc: map values: expected a map whose voxels vary, found every voxel 1$"),
         setup=steps(_gt_copy, _flat_map("user/gt/vol_001.mrc", 1.0))),
    Case("metadata", "evaluate with an all-zero ground-truth mask", lambda ws: _EVAL_MAP,
         error(r"user/gt/mask\.mrc: mask values: expected some voxels > 0 \(the region scored\), found none"),
         setup=steps(_gt_copy, _flat_map("user/gt/mask.mrc"))),
    Case("metadata", "evaluate with ground-truth states vol_000, vol_002 (a gap)", lambda ws: _EVAL_MAP,
         error(r"user/gt/vol_002\.mrc: ground-truth maps: expected vol_000\.mrc, vol_001\.mrc, \.\.\. numbered from 0 "
               r"without gaps \(state 1 here\), found vol_002\.mrc"),
         setup=steps(_gt_copy, lambda ws: (ws / "user/gt/vol_001.mrc").rename(ws / "user/gt/vol_002.mrc"))),
    Case("metadata", "evaluate --run with gt/labels.npy not an .npy file",
         lambda ws: ["evaluate", "--gt", "user/gt", "--run", "run"],
         error(r"user/gt/labels\.npy: labels: expected an \.npy array of \(N,\) integers in 0\.\.1, found a file "
               r"starting with b'garbag'"), setup=steps(_gt_copy, _text("user/gt/labels.npy", "garbage\n"))),
    Case("run folder", "latents.npy beyond float32 (1e300), on analyze",
         lambda ws: ["analyze", "run", "--out", "ana"],
         error(r"run/latents\.npy: latents: expected values finite in float32 \(\|z\| <= 3\.4e38\), found 1200 larger "
               r"values, the first in row 1$"),
         setup=lambda ws: np.save(ws / "run/latents.npy", np.full((300, 4), 1e300))),
    Case("results", "render --z beyond float32 (1e39)", _RENDER_Z,
         error(r"user/z\.txt: --z: expected numbers finite in float32 \(\|z\| <= 3\.4e38\), found 1 larger values, "
               r"the first in row 1$"), setup=_rows("1e39 0 0 0\n")),
    Case("results", "render --particles 1e20 (past int64)", lambda ws: ["render", "run", "--particles", "user/i.txt",
                                                                       "--out", "maps"],
         error(r"user/i\.txt: --particles: expected 0-based indices, found 1e\+20$"),
         setup=_rows("99999999999999999999\n", "i.txt")),
]

# Byte patterns on which torch's weights-only unpickler raises IndexError, KeyError, struct.error
# (random bytes hit one in about ten runs): each one clear line, never the safety net.
CASES += [
    Case("run folder", f"stage-2 model.pt of bytes {raw!r} ({why})", _render,
         error(_MODEL + r" \(tensors only\), found a damaged or truncated file"),
         setup=steps(_idx, lambda ws, raw=raw: (ws / "run/hierarchical/model.pt").write_bytes(raw)))
    for raw, why in ((b"\x80\x02(.", "IndexError"), (b"\x80\x02h\x00", "KeyError"), (b"\x80\x02G", "struct.error"))
]

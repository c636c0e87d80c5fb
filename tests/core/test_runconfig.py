"""A run's config.json: its schema (top-level keys, the train section key by key), the format
migration, and the checked readers of a run's array files."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from cryospire_core.errors import InputError
from cryospire_core.io.arrays import read_npy, read_npz
from cryospire_core.models.consensus import ConsensusConfig
from cryospire_core.pipeline import config as run_config
from cryospire_core.pipeline.config import (
    RUN_FORMAT_VERSION,
    TrainConfig,
    migrate_config,
    section_from_dict,
)
from cryospire_core.pipeline.runfolder import RunFolder

PATH = "RUN/config.json"


def _saved(cfg: TrainConfig | None = None) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg or TrainConfig.for_profile("paper", seed=3))))


def test_a_saved_train_config_round_trips():
    cfg = TrainConfig.for_profile("paper", seed=3, parts_level1=4, select="/x/keep.txt")
    assert TrainConfig.from_dict(_saved(cfg), PATH) == cfg


def test_a_field_missing_from_an_older_format_1_run_takes_its_default():
    d = _saved()
    del d["precision"], d["hierarchical"]["anchors"]
    cfg = TrainConfig.from_dict(d, PATH)
    assert cfg.precision == "auto" and cfg.hierarchical.anchors is True


def test_json_whole_numbers_are_read_as_floats_where_floats_belong():
    d = _saved()
    d["checkpoint_minutes"] = 2
    cfg = TrainConfig.from_dict(d, PATH)
    assert cfg.checkpoint_minutes == 2.0 and isinstance(cfg.checkpoint_minutes, float)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("consensus"), "train.consensus: expected a value, found none (the key is missing)"),
    (lambda d: d.update(colour="red"), "train.colour: expected an option of train ("),
    (lambda d: d["discovery"].update(dropout=0.1), "train.discovery.dropout: expected an option of train.discovery"),
    (lambda d: d["discovery"].update(epochs="ten"), 'train.discovery.epochs: expected a whole number, found "ten"'),
    (lambda d: d["discovery"].update(epochs=2.0), "train.discovery.epochs: expected a whole number, found 2.0"),
    (lambda d: d["hierarchical"].update(batch_size=0), "train.hierarchical.batch_size: expected a whole number >= 1"),
    (lambda d: d["consensus"].update(lr=float("nan")), "train.consensus.lr: expected a finite number in (0, 1], "
                                                       "found NaN"),
    (lambda d: d["hierarchical"].update(anchors="yes"),
     'train.hierarchical.anchors: expected a true/false, found "yes"'),
    (lambda d: d.update(seed=-1), "train.seed: expected a whole number in [0, 4294967295], found -1"),
    (lambda d: d.update(parts_level1=0), "train.parts_level1: expected auto or a whole number >= 1, found 0"),
    (lambda d: d.update(profile="gpu"), 'train.profile: expected cpu or paper, found "gpu"'),
    (lambda d: d.update(precision="fp8"), 'train.precision: expected auto or fp32 or bf16 or fp16, found "fp8"'),
    (lambda d: d["hierarchical"].update(mlp_form="wide"), 'train.hierarchical.mlp_form: expected dense or lowrank'),
    (lambda d: d.update(discovery=[]), "train.discovery: expected a JSON object {...} of options, found []"),
])
def test_a_wrong_train_section_names_the_key(change, message):
    d = _saved()
    change(d)
    with pytest.raises(InputError) as err:
        TrainConfig.from_dict(d, PATH)
    assert str(err.value).startswith(f"{PATH}: {message}")


def test_the_consensus_zero_gaussians_means_from_the_map_but_stage_counts_are_at_least_one():
    assert section_from_dict(ConsensusConfig, {"n_gaussians": 0}, PATH, "consensus").n_gaussians == 0
    d = _saved()
    d["discovery"]["n_gaussians"] = 0
    with pytest.raises(InputError, match=r"train\.discovery\.n_gaussians: expected a whole number >= 1"):
        TrainConfig.from_dict(d, PATH)


@pytest.mark.parametrize("config, message", [
    ({"name": "sweep", "version": 3}, "format_version: expected a cryospire run config (with an integer run-format "
                                      "version), found a JSON object with other keys (name, version)"),
    ({"format_version": 1, "notes": "x"}, "notes: expected a run config key (format_version, "),
    ({"format_version": 1, "train": []}, "train: expected a JSON object {...}, found []"),
    ({"format_version": 1, "n_particles": "300"}, 'n_particles: expected a JSON whole number, found "300"'),
    ({"format_version": 1, "n_particles": 0}, "n_particles: expected a whole number >= 1, found 0"),
    ({"format_version": True}, "format_version: expected an integer run-format version, found true"),
    ({"format_version": 0, "train": {}}, f"format_version: expected 1 to {RUN_FORMAT_VERSION} (older formats predate"),
])
def test_a_wrong_config_names_the_key(tmp_path, config, message):
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError) as err:
        RunFolder(tmp_path).config()
    assert str(err.value).startswith(f"{tmp_path / 'config.json'}: {message}")


def test_an_unreadable_config_is_an_input_error(tmp_path):
    (tmp_path / "config.json").mkdir()
    with pytest.raises(InputError, match="config: expected a JSON run config written by cryospire"):
        RunFolder(tmp_path).config()


def test_older_formats_are_upgraded_one_version_at_a_time(monkeypatch):
    steps = []

    def one_to_two(cfg):
        steps.append(cfg["format_version"])
        renamed = {k: v for k, v in cfg.items() if k != "particles"}
        return {**renamed, "n_particles": cfg["particles"]}

    def two_to_three(cfg):
        steps.append(cfg["format_version"])
        return {**cfg, "cryospire": "upgraded"}

    monkeypatch.setattr(run_config, "RUN_FORMAT_VERSION", 3)
    monkeypatch.setattr(run_config, "CONFIG_UPGRADES", {1: one_to_two, 2: two_to_three})
    cfg = migrate_config({"format_version": 1, "particles": 12, "train": {}}, PATH)
    assert steps == [1, 2]
    assert cfg == {"format_version": 3, "n_particles": 12, "train": {}, "cryospire": "upgraded"}
    assert migrate_config(dict(cfg), PATH) == cfg  # the current format is read as it is


def test_the_current_format_needs_no_upgrade():
    assert run_config.CONFIG_UPGRADES.keys() == set(range(1, run_config.RUN_FORMAT_VERSION))


def test_array_files_of_a_run_are_read_without_pickles_and_checked(tmp_path):
    good = tmp_path / "a.npz"
    np.savez(good, x=np.arange(3))
    assert read_npz(good, "things", ("x",))["x"].tolist() == [0, 1, 2]
    with pytest.raises(InputError, match=r"a\.npz: y: expected the things array y, found missing"):
        read_npz(good, "things", ("y",))
    (tmp_path / "b.npz").write_bytes(good.read_bytes()[:50])
    with pytest.raises(InputError, match=r"b\.npz: things: expected .*found a damaged or truncated file"):
        read_npz(tmp_path / "b.npz", "things", ("x",))
    np.save(tmp_path / "c.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"c\.npy: latents: expected .*found pickled Python objects \(refused"):
        read_npy(tmp_path / "c.npy", "latents")
    (tmp_path / "d.npy").write_bytes(b"")
    with pytest.raises(InputError, match=r"d\.npy: latents: expected .*found a damaged or truncated file"):
        read_npy(tmp_path / "d.npy", "latents")
    with pytest.raises(InputError, match=r"a\.npz: latents: expected an \.npy array, found an \.npz archive"):
        read_npy(good, "latents")
    with pytest.raises(InputError, match="no such file"):
        read_npy(tmp_path / "none.npy", "latents")

"""Training profiles are data (resources/profiles/*.toml): what they hold is what a run gets."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from cryospire_core.errors import InputError
from cryospire_core.pipeline import profiles
from cryospire_core.pipeline.config import TrainConfig

RESOURCES = Path(__file__).resolve().parents[2] / "resources" / "profiles"


def test_the_shipped_profiles_are_the_files_in_resources():
    assert profiles.profile_names() == tuple(sorted(p.stem for p in RESOURCES.glob("*.toml")))
    assert {"cpu", "paper"} <= set(profiles.profile_names())


@pytest.mark.parametrize("name", ["cpu", "paper"])
def test_every_value_of_a_profile_reaches_the_config(name):
    data = tomllib.loads((RESOURCES / f"{name}.toml").read_text())
    cfg = TrainConfig.for_profile(name, seed=5, parts_level1=3)
    assert cfg.profile == name and cfg.seed == 5 and cfg.parts_level1 == 3
    for section, values in data.items():
        stage = getattr(cfg, section)
        assert stage.seed == 5
        for key, value in values.items():
            assert getattr(stage, key) == value, f"{name}.toml [{section}] {key}"


def test_the_profiles_differ_where_the_cpu_one_is_smaller():
    cpu, paper = TrainConfig.for_profile("cpu"), TrainConfig.for_profile("paper")
    assert cpu.hierarchical.n_gaussians < paper.hierarchical.n_gaussians
    assert cpu.discovery.epochs < paper.discovery.epochs
    for stage in ("consensus", "discovery", "hierarchical"):  # the paper's boxes are twice the cpu one's
        assert getattr(paper, stage).box == 2 * getattr(cpu, stage).box
    assert paper.hierarchical.box == 256 and paper.discovery.box == paper.consensus.box == 128
    assert dataclasses.replace(cpu.consensus, box=None) == dataclasses.replace(paper.consensus, box=None)


def test_an_unknown_profile_names_the_ones_there_are():
    with pytest.raises(InputError) as err:
        TrainConfig.for_profile("gpu")
    assert err.value.field == "--profile" and "cpu or paper" in str(err.value)


@pytest.mark.parametrize(("text", "field"), [
    ("[discovery]\nepochs = 0\n", "profile.discovery.epochs"),
    ("[discovery]\nepoch = 3\n", "profile.discovery.epoch"),
    ("[stage3]\nepochs = 3\n", "stage3"),
    ("[discovery\nepochs = 3\n", "profile"),
])
def test_a_damaged_profile_is_refused_by_file_and_key(tmp_path, monkeypatch, text, field):
    (tmp_path / "mine.toml").write_text(text)
    monkeypatch.setattr(profiles, "profiles_folder", lambda: tmp_path)
    with pytest.raises(InputError) as err:
        TrainConfig.for_profile("mine")
    assert err.value.field == field
    assert str(tmp_path / "mine.toml") in str(err.value)

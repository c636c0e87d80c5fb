"""Training profiles: the sizes of every stage, kept as data in ``resources/profiles/<name>.toml``
(shipped in the wheel as ``cryospire_core/resources/profiles``).

A profile file holds sections ``consensus``, ``discovery`` and ``hierarchical`` whose keys are
the options of that stage's config (the same keys as a run's ``config.json``); the options it
leaves out keep their defaults. :meth:`cryospire_core.pipeline.config.TrainConfig.for_profile`
turns one into a checked config.
"""

from __future__ import annotations

import tomllib
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

from cryospire_core.errors import InputError

STAGE_SECTIONS = ("consensus", "discovery", "hierarchical")
DEFAULT_PROFILE = "cpu"
"""The profile a new run gets when none is named (sized for a CPU; ``paper`` for a GPU)."""


def profiles_folder() -> Traversable:
    """The folder of the shipped profiles."""
    return files("cryospire_core") / "resources" / "profiles"


def profile_names() -> tuple[str, ...]:
    """The names of the shipped profiles (their file names without ``.toml``), sorted."""
    return tuple(sorted(p.name.removesuffix(".toml") for p in profiles_folder().iterdir()
                        if p.name.endswith(".toml")))


def read_profile(name: str) -> tuple[str, dict[str, dict[str, Any]]]:
    """The file of profile ``name`` and its stage sections; InputError naming ``--profile`` for
    an unknown name, and the file and key for a damaged file or a section that is not a stage."""
    names = profile_names()
    if name not in names:
        raise InputError(None, "--profile", " or ".join(names), name)
    path = profiles_folder() / f"{name}.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(str(path), "profile", "a TOML file of stage sections", f"unreadable TOML ({exc})") from exc
    for key, value in data.items():
        if key not in STAGE_SECTIONS or not isinstance(value, dict):
            raise InputError(str(path), key, f"a table [{'], ['.join(STAGE_SECTIONS)}]", f"the key {key!r}")
    return str(path), data

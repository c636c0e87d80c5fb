"""A run's config: the options of every stage (:class:`TrainConfig`) and the schema of
``config.json`` (its format version, top-level keys and how each section is checked).

Formats: ``config.json``'s ``format_version`` is :data:`RUN_FORMAT_VERSION`. A folder from a
newer cryospire is refused (upgrade cryospire); format 1 is the first released one, so a folder
with an older or missing version was not written by a released cryospire and is refused too.
An older released format is upgraded on reading (:func:`migrate_config`, :data:`CONFIG_UPGRADES`).
The schema: the top-level keys and their JSON types (:data:`SECTIONS`), and each section that
becomes a config dataclass checked key by key (:func:`section_from_dict`: known keys, types,
ranges, choices); whatever does not fit is one InputError naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryospire_core import __version__
from cryospire_core.errors import InputError
from cryospire_core.imaging.noise import NORMALIZATIONS
from cryospire_core.imaging.precision import PRECISIONS, resolve_precision
from cryospire_core.io.load import ParticleSource
from cryospire_core.models.consensus import ConsensusConfig
from cryospire_core.models.discovery import MLP_FORMS, DiscoveryConfig
from cryospire_core.models.engine import LoopConfig
from cryospire_core.models.hierarchical import HierarchicalConfig
from cryospire_core.pipeline.preprocess import NORMALIZE_CHOICES, PreprocessConfig
from cryospire_core.pipeline.profiles import STAGE_SECTIONS, profile_names, read_profile

if typing.TYPE_CHECKING:
    import torch

RUN_FORMAT_VERSION = 3


def _preprocess_off(cfg: dict[str, Any]) -> dict[str, Any]:
    """Format 1 -> 2: ``train.preprocess`` appeared, its defaults windowing and (``auto``)
    normalising the images; a format-1 run trained without either, and resumes so."""
    train = cfg.get("train")
    if isinstance(train, dict) and "preprocess" not in train:
        cfg = {**cfg, "train": {**train, "preprocess": {"window": False, "normalize": "no", "noise_weighting": False}}}
    return cfg


def _inputs_unrecorded(cfg: dict[str, Any]) -> dict[str, Any]:
    """Format 2 -> 3: ``inputs`` appeared (where the input files are, relative to the run folder
    and absolute). A format-2 run has none: its files are found the legacy ways, from
    ``train_command`` (:meth:`~cryospire_core.pipeline.runfolder.RunFolder.input_candidates`)."""
    return cfg


CONFIG_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _preprocess_off, 2: _inputs_unrecorded}
"""``CONFIG_UPGRADES[v]`` turns a format-``v`` config into format ``v + 1``. A change of the
config's format increments :data:`RUN_FORMAT_VERSION` and adds the upgrade from the previous
one, so every released run folder keeps opening."""

SECTIONS: dict[str, type | tuple[type, ...]] = {
    "format_version": int, "cryospire": str, "n_particles": int, "train": dict, "train_command": dict,
    "consensus": dict, "consensus_command": dict, "branched_from": str, "inputs": dict,
}
"""Every top-level key of config.json and its JSON type. The contents of ``train``,
``consensus`` and ``inputs`` are checked where they become configs (:func:`section_from_dict`,
:func:`inputs_from_dict`)."""

INPUTS = ("particles", "poses", "ctf", "datadir")
"""The input files (and the data folder) of a run, as ``train_command`` names their options; each
one given is recorded in config.json ``inputs`` (:func:`recorded_inputs`)."""


@dataclass(frozen=True)
class InputPath:
    """Where one input of a run was when it was recorded: ``relative`` to the run folder and
    ``absolute``, both as spelled (symbolic links kept), so a run moved together with its data
    finds it by the first and a run moved alone by the second."""

    relative: str
    absolute: str

    @classmethod
    def of(cls, path: str | os.PathLike, run_root: str | os.PathLike) -> InputPath:
        """``path`` (absolute, or relative to the current directory) recorded for the run folder ``run_root``."""
        absolute = os.path.abspath(path)
        return cls(os.path.relpath(absolute, os.path.abspath(run_root)), absolute)

    def candidates(self, run_root: str | os.PathLike) -> tuple[str, str]:
        """Where to look, in order: relative to ``run_root`` (normalised), then the absolute path."""
        return os.path.normpath(os.path.join(os.path.abspath(run_root), self.relative)), self.absolute


def recorded_inputs(source: ParticleSource, run_root: str | os.PathLike) -> dict[str, dict[str, str]]:
    """config.json ``inputs`` for a run in ``run_root`` reading ``source``: each input given
    (:data:`INPUTS`) as an :class:`InputPath`."""
    given = {name: getattr(source, name) for name in INPUTS}
    return {name: dataclasses.asdict(InputPath.of(path, run_root)) for name, path in given.items() if path is not None}


def inputs_from_dict(data: dict[str, Any], path: str | os.PathLike) -> dict[str, InputPath]:
    """config.json ``inputs`` (in the config file ``path``) checked: keys of :data:`INPUTS`, each
    an object with the text fields ``relative`` and ``absolute``; InputError naming the key."""
    unknown = sorted(set(data) - set(INPUTS))
    if unknown:
        raise InputError(path, f"inputs.{unknown[0]}", f"an input of the run ({', '.join(INPUTS)})", "an unknown key")
    return {name: section_from_dict(InputPath, value, path, f"inputs.{name}", required=("relative", "absolute"))
            for name, value in data.items()}


def migrate_config(cfg: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """``cfg`` (a parsed config.json) in the current format: refused when it is not a cryospire
    run config, older than format 1 or newer than this cryospire reads; upgraded one format at a
    time by :data:`CONFIG_UPGRADES`; its top-level keys checked against :data:`SECTIONS`."""
    version = cfg.get("format_version")
    if "format_version" not in cfg and "train" not in cfg and "consensus" not in cfg:
        keys = ", ".join(list(cfg)[:5]) or "none"
        raise InputError(path, "format_version", "a cryospire run config (with an integer run-format version)",
                         f"a JSON object with other keys ({keys})")
    if not isinstance(version, int) or isinstance(version, bool):
        raise InputError(path, "format_version", "an integer run-format version", shown_json(version))
    if version < 1:
        raise InputError(path, "format_version", f"1 to {RUN_FORMAT_VERSION} (older formats predate released "
                         "cryospire versions: train again into a new run folder)", version)
    if version > RUN_FORMAT_VERSION:
        raise InputError(path, "format_version",
                         f"at most {RUN_FORMAT_VERSION} (this is cryospire {__version__}; "
                         f"the run was written by cryospire {cfg.get('cryospire', '?')}: upgrade to open it)", version)
    for v in range(version, RUN_FORMAT_VERSION):
        cfg = {**CONFIG_UPGRADES[v](cfg), "format_version": v + 1}
    for key, value in cfg.items():
        if key not in SECTIONS:
            raise InputError(path, key, f"a run config key ({', '.join(SECTIONS)})", "an unknown key")
        kind = SECTIONS[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise InputError(path, key, f"a JSON {_JSON_NAMES.get(kind, kind.__name__)}", shown_json(value))
    if "n_particles" in cfg and cfg["n_particles"] < 1:
        raise InputError(path, "n_particles", "a whole number >= 1", cfg["n_particles"])
    return cfg


_JSON_NAMES = {int: "whole number", float: "number", str: "string", bool: "true/false", dict: "object {...}",
               list: "list [...]", type(None): "null"}


def shown_json(value: Any) -> str:
    """A config value as an error message quotes it: its JSON, shortened."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def section_from_dict(cls: type, data: Any, path: str | os.PathLike, key: str,
                      required: tuple[str, ...] = (), choices: dict[str, tuple[str, ...]] | None = None) -> Any:
    """The dataclass ``cls`` built from the config section ``data`` (at ``key``, e.g.
    ``train.discovery``, in the config file ``path``), checked field by field: ``required``
    fields present, no unknown field, each value of its annotated type (nested dataclasses
    recursively), numbers in their range (:data:`~cryospire_core.ranges.FIELD_RANGES`) and
    text fields named in ``choices`` (field name -> allowed words, at every depth) one of theirs.
    A field missing and not required takes its default (a format-1 run written before the field
    existed). InputError naming ``key.field`` otherwise."""
    if not isinstance(data, dict):
        raise InputError(path, key, "a JSON object {...} of options", shown_json(data))
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    for name in data:
        if name not in fields:
            raise InputError(path, f"{key}.{name}", f"an option of {key} ({', '.join(sorted(fields))})",
                             "an unknown key")
    for name in required:
        if name not in data:
            raise InputError(path, f"{key}.{name}", "a value", "none (the key is missing)")
    choices = choices or {}
    return cls(**{name: _field_value(hints[name], value, path, f"{key}.{name}", choices)
                  for name, value in data.items()})


def _field_value(hint: Any, value: Any, path: str | os.PathLike, where: str,
                 choices: dict[str, tuple[str, ...]]) -> Any:
    from cryospire_core.ranges import FIELD_RANGES

    if dataclasses.is_dataclass(hint):
        return section_from_dict(hint, value, path, where, choices=choices)
    kinds = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    ok = any(value is None if k is type(None) else
             isinstance(value, bool) if k is bool else
             isinstance(value, int) and not isinstance(value, bool) if k is int else
             isinstance(value, (int, float)) and not isinstance(value, bool) if k is float else
             isinstance(value, k) for k in kinds)
    if not ok:
        names = " or ".join(_JSON_NAMES.get(k, k.__name__) for k in kinds)
        raise InputError(path, where, f"a {names}", shown_json(value))
    if float in kinds and int not in kinds and not isinstance(value, bool) and isinstance(value, int):
        value = float(value)  # JSON writes 1.0 as 1
    section, field = where.rsplit(".", 2)[-2:]
    check = FIELD_RANGES.get(f"{section}.{field}", FIELD_RANGES.get(field))
    if check is not None and value is not None and not check.accepts(value):
        raise InputError(path, where, check.what, shown_json(value))
    if field in choices and value is not None and value not in choices[field]:
        raise InputError(path, where, " or ".join(choices[field]), shown_json(value))
    return value


STAGES = ("consensus", "discovery", "parts", "hierarchical")
PART_SIGNALS = ("dynamics", "features")
PART_REFINES = ("rigid", "none")


@dataclass
class TrainConfig:
    """Every option of ``cryospire train`` (saved as RUN/config.json section ``train``).

    profile: ``cpu`` or ``paper`` (sizes of every stage); parts_level1/parts_level2: ``auto`` or
    a count (``--parts K`` fixes level 1); parts_signal: what level 1 clusters, ``dynamics`` (each
    Gaussian's decoded motion and presence, our default) or ``features`` (the paper's);
    parts_refine: ``rigid`` (each Gaussian then goes to the part whose rigid motion and presence
    explain its decoded ones best, ties go to space and parts that come and go in two patterns
    are cut: :mod:`~cryospire_core.models.parts`, step 3; meant for a stage 1 with
    ``discovery.handles``) or ``none``; gate_sample:
    images whose stage-1 decoding feeds the clustering; select: a particle selection (index file,
    or .star/.cs subset, see :mod:`selection`) that stage 2 keeps, dropping junk found after
    stage 1; checkpoint_minutes: between in-epoch checkpoints; seed: of every stage; precision:
    ``auto``, ``fp32``, ``bf16`` or ``fp16`` (:mod:`precision`; auto is bf16 or fp16 on CUDA,
    fp32 on CPUs); preprocess: how the data term sees the images (window, normalisation, noise
    weighting: :class:`~cryospire_core.pipeline.preprocess.PreprocessConfig`).
    """

    profile: str
    consensus: ConsensusConfig
    discovery: DiscoveryConfig
    hierarchical: HierarchicalConfig
    preprocess: PreprocessConfig = dataclasses.field(default_factory=PreprocessConfig)
    parts_level1: str | int = "auto"
    parts_level2: str | int | None = "auto"
    parts_signal: str = "dynamics"
    parts_refine: str = "none"
    gate_sample: int = 512
    select: str | None = None
    checkpoint_minutes: float = 5.0
    seed: int = 0
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InputError(None, "--precision", " or ".join(PRECISIONS), self.precision)

    def loop(self, stage_cfg, device: torch.device) -> LoopConfig:
        """The training loop of one stage's config on ``device``."""
        return LoopConfig.for_stage(stage_cfg, self.checkpoint_minutes, resolve_precision(self.precision, device))

    @classmethod
    def for_profile(cls, profile: str, seed: int = 0, **changes) -> TrainConfig:
        """The shipped profile ``profile`` (the sizes of every stage, read from
        ``resources/profiles/<profile>.toml``, :mod:`~cryospire_core.pipeline.profiles`), every
        stage seeded with ``seed``, and ``changes`` to the top-level options."""
        path, sections = read_profile(profile)
        data = {"profile": profile, "seed": seed, **{s: {**sections.get(s, {}), "seed": seed} for s in STAGE_SECTIONS}}
        return dataclasses.replace(section_from_dict(cls, data, path, "profile", choices=choices()), **changes)

    @classmethod
    def from_dict(cls, d: dict, path: str | os.PathLike) -> TrainConfig:
        """The section ``train`` of a run's config.json (``path``, named in errors), checked key
        by key (:func:`section_from_dict`)."""
        return section_from_dict(cls, d, path, "train", required=("profile", "consensus", "discovery", "hierarchical"),
                                 choices=choices())


def choices() -> dict[str, tuple[str, ...]]:
    """The words each text field of a saved TrainConfig may hold (the profiles: those shipped)."""
    return {"profile": profile_names(), "parts_signal": PART_SIGNALS, "parts_refine": PART_REFINES,
            "precision": PRECISIONS, "mlp_form": MLP_FORMS,
            "normalize": NORMALIZE_CHOICES, "stack_normalization": NORMALIZATIONS}

"""A training run is a folder; the command line and the napari plugin read and write the same one.

Layout::

    RUN/config.json              every option of every stage, the input particles, versions
    RUN/run.lock                 held while a process trains into the folder
    RUN/<stage>/.cryospire-tmp-<pid>-<random><suffix>   an atomic write in progress (removed when
                                 the folder is locked again and process <pid> is gone)

cryospire never follows a symbolic link where it keeps its own files: a link in place of
``run.lock``, ``config.json`` or a stage folder (:data:`RUN_FOLDERS`) is refused when the folder
is locked, so a run never writes into, truncates or cleans up the files a link points to.

Formats: ``config.json``'s ``format_version`` is :data:`RUN_FORMAT_VERSION`. A folder from a
newer cryospire is refused (upgrade cryospire); format 1 is the first released one, so a folder
with an older or missing version was not written by a released cryospire and is refused too.
An older released format is upgraded on reading (:func:`migrate_config`, :data:`CONFIG_UPGRADES`).
The config's schema: its top-level keys and their JSON types (:data:`SECTIONS`), and each
section that becomes a config dataclass checked key by key (:func:`section_from_dict`: known
keys, types, ranges, choices); whatever does not fit is one InputError naming the key. The
run's arrays are read by :func:`read_npz` / :func:`read_npy`: no pickles, and a truncated or
foreign file is an InputError naming it.
    RUN/consensus/backprojection.mrc, gaussians.npz, map.mrc, history.json, checkpoint.pt
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryospire_core import __version__
from cryospire_core.errors import InputError
from cryospire_core.io.atomic import remove_stale_temporaries, write_json
from cryospire_core.io.outputs import check_writable_folder, refuse_link

RUN_FORMAT_VERSION = 1

RUN_FOLDERS = ("consensus", "discovery", "parts", "hierarchical", "analysis")
"""The folders a run writes into itself (a symbolic link in their place is refused)."""
RUN_FILES = ("latents.npy", "selection.npy")
"""The files a run writes at its top level besides config.json and run.lock."""


CONFIG_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}
"""``CONFIG_UPGRADES[v]`` turns a format-``v`` config into format ``v + 1``. A change of the
config's format increments :data:`RUN_FORMAT_VERSION` and adds the upgrade from the previous
one, so every released run folder keeps opening. (Format 1 is the first: none yet.)"""

SECTIONS: dict[str, type | tuple[type, ...]] = {
    "format_version": int, "cryospire": str, "n_particles": int, "train": dict, "train_command": dict,
    "consensus": dict, "consensus_command": dict, "branched_from": str,
}
"""Every top-level key of config.json and its JSON type. The contents of ``train`` and
``consensus`` are checked where they become configs (:func:`section_from_dict`)."""


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
    recursively), numbers in their range (:data:`~cryospire_core.cli.options.FIELD_RANGES`) and
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
    if field in choices and value not in choices[field]:
        raise InputError(path, where, " or ".join(choices[field]), shown_json(value))
    return value


class RunFolder:
    """Paths and the shared config of one run folder."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._lock_fd: int | None = None

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    def stage_dir(self, stage: str) -> Path:
        """RUN/<stage>, made if missing; InputError when it is a symbolic link."""
        d = self.root / stage
        refuse_link(d, "run folder", "folder")
        d.mkdir(parents=True, exist_ok=True)
        return d

    def read_config(self) -> dict[str, Any]:
        """The config (migrated to :data:`RUN_FORMAT_VERSION`, its sections checked by
        :data:`SECTIONS`), or {} for a new run; InputError naming the key for anything else."""
        if not self.config_path.exists():
            return {}
        try:
            cfg = json.loads(self.config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            raise InputError(self.config_path, "config", "a JSON run config written by cryospire", exc) from exc
        if not isinstance(cfg, dict):
            raise InputError(self.config_path, "config", "a JSON object written by cryospire", type(cfg).__name__)
        return migrate_config(cfg, self.config_path)

    def config_for(self, section: str, resume: bool) -> dict[str, Any]:
        """The saved config, refusing to start ``section`` over a run that already has it unless
        ``resume`` (a rerun of the same command must not silently overwrite a run)."""
        saved = self.read_config()
        if section in saved and not resume:
            raise InputError(self.config_path, section, "a new run folder, or --resume to continue this run",
                             f"a {section} run already in it")
        return saved

    def update_config(self, **sections: Any) -> dict[str, Any]:
        """Store each section (a dataclass, a dict or a plain JSON value) under its name and write
        the config atomically."""
        cfg = self.read_config()
        cfg["format_version"] = RUN_FORMAT_VERSION
        cfg["cryospire"] = __version__
        for name, values in sections.items():
            cfg[name] = dataclasses.asdict(values) if dataclasses.is_dataclass(values) else values
        write_json(self.config_path, cfg)
        return cfg

    def lock(self) -> None:
        """Take the folder's training lock (released by :meth:`unlock` or when the process dies).

        Before anything is written, refuses (InputError) a root that is a file or a folder we
        cannot write to, and a symbolic link in place of run.lock, config.json or a stage folder."""
        self._refuse_foreign_paths()
        self.root.mkdir(parents=True, exist_ok=True)
        lock_path = self.root / "run.lock"
        try:
            # O_NOFOLLOW: a link put there after the check must not get its target truncated.
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                refuse_link(lock_path, "run folder")
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                holder = lock_path.read_text().strip() or "?"
                raise InputError(lock_path, "run lock",
                                 "no other cryospire process training into this run folder",
                                 f"held by process {holder}") from exc
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        self._remove_stale_temporaries()

    def _refuse_foreign_paths(self) -> None:
        """InputError for a root we cannot write into, or a link where the run keeps its files."""
        check_writable_folder(self.root, "run folder")
        for name in ("run.lock", "config.json"):
            refuse_link(self.root / name, "run folder")
        for name in RUN_FOLDERS:
            refuse_link(self.root / name, "run folder", "folder")
        if self.root.is_dir() and not self.config_path.exists():
            # Without config.json the folder is not a run: whatever already has a run's names
            # in it is the user's, and training would write into it.
            taken = sorted(name for name in (*RUN_FOLDERS, *RUN_FILES) if (self.root / name).exists())
            if taken:
                raise InputError(self.root, "run folder", "a new or empty folder, or a run folder cryospire "
                                 "made (with its config.json)", f"{', '.join(taken)} already in it and no config.json")

    def _remove_stale_temporaries(self) -> None:
        """Delete the temporary files of atomic writes a killed process left in the folder and
        its stage folders: only files with cryospire's temporary name whose writer is gone
        (:func:`~cryospire_core.io.atomic.stale_temporary`), never behind a symbolic link."""
        remove_stale_temporaries(self.root)
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    remove_stale_temporaries(entry.path)

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> RunFolder:
        self.lock()
        return self

    def __exit__(self, *exc) -> None:
        self.unlock()

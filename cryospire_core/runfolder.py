"""A training run is a folder; the command line and the napari plugin read and write the same one.

Layout::

    RUN/config.json              every option of every stage, the input particles, versions
    RUN/run.lock                 held while a process trains into the folder
    RUN/<stage>/.<name>.<random>.tmp<suffix>   an atomic write in progress (removed when a killed
                                 run's folder is locked again)

Formats: ``config.json``'s ``format_version`` is :data:`RUN_FORMAT_VERSION`. A folder from a
newer cryospire is refused (upgrade cryospire); format 1 is the first released one, so a folder
with an older or missing version was not written by a released cryospire and is refused too.
    RUN/consensus/backprojection.mrc, gaussians.npz, map.mrc, history.json, checkpoint.pt
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
from pathlib import Path
from typing import Any

from . import __version__
from .atomic import TEMP_GLOB, write_json
from .errors import InputError

RUN_FORMAT_VERSION = 1


class RunFolder:
    """Paths and the shared config of one run folder."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._lock_fd: int | None = None

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    def stage_dir(self, stage: str) -> Path:
        d = self.root / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def read_config(self) -> dict[str, Any]:
        """The config, or {} for a new run; a run from a newer cryospire is refused clearly."""
        if not self.config_path.exists():
            return {}
        try:
            cfg = json.loads(self.config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(self.config_path, "config", "a JSON run config written by cryospire", exc) from exc
        if not isinstance(cfg, dict):
            raise InputError(self.config_path, "config", "a JSON object written by cryospire", type(cfg).__name__)
        version = cfg.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise InputError(self.config_path, "format_version", "an integer run-format version", version)
        if version < RUN_FORMAT_VERSION:
            raise InputError(self.config_path, "format_version",
                             f"{RUN_FORMAT_VERSION} (older formats predate released cryospire versions: "
                             "train again into a new run folder)", version)
        if version > RUN_FORMAT_VERSION:
            raise InputError(self.config_path, "format_version",
                             f"at most {RUN_FORMAT_VERSION} (this is cryospire {__version__}; "
                             f"the run was written by cryospire {cfg.get('cryospire', '?')}: upgrade to open it)", version)
        return cfg

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
        """Take the folder's training lock (released by :meth:`unlock` or when the process dies)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "run.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                holder = (self.root / "run.lock").read_text().strip() or "?"
                raise InputError(self.root / "run.lock", "run lock",
                                 "no other cryospire process training into this run folder",
                                 f"held by process {holder}") from exc
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        self._remove_stale_temporaries()

    def _remove_stale_temporaries(self) -> None:
        """Delete the temporary files of atomic writes a killed process left in the folder and
        its stage folders (holding the lock, no other trainer is writing them)."""
        for d in (self.root, *(p for p in self.root.iterdir() if p.is_dir())):
            for tmp in d.glob(TEMP_GLOB):
                if tmp.is_file():
                    tmp.unlink(missing_ok=True)

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

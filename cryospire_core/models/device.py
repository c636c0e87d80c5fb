"""Device selection shared by every command (``--device auto|cpu|cuda[:N]``)."""

from __future__ import annotations

import re

import torch

from cryospire_core.errors import InputError
from cryospire_core.ranges import shown

DEVICE_NAMES = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cpu``, ``cuda`` and ``cuda:N`` name a
    device, which must exist here. Anything else (``mps``, ``meta``, a typo) is an InputError:
    the models run on CPUs and CUDA GPUs only."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if m is None:
        raise InputError(None, "--device", DEVICE_NAMES, shown(name))
    if not torch.cuda.is_available():
        raise InputError(None, "--device", "a device that exists here (no CUDA GPU is visible: use cpu)", name)
    index = int(m[1] or 0)
    if index >= torch.cuda.device_count():
        raise InputError(None, "--device", f"cuda:0 to cuda:{torch.cuda.device_count() - 1} (the GPUs visible here)",
                         name)
    return torch.device("cuda", index) if m[1] is not None else torch.device("cuda")

"""Hostile command-line cases: options (see ``hostile_cli``)."""

from __future__ import annotations

import re

from .hostile_cli import Case, error, ok

CASES: list[Case] = []

CASES += [
    Case("options", "train --batch-size 0",
         lambda ws: ["train", "data/particles.star", "--out", "new", "--batch-size", "0", "--quiet"],
         error(r"--batch-size")),
]


# -- every numeric option of every command, refused while the command line is read -----------------
#
# A command line valid apart from the option under test (its outputs are new names under the
# workspace, never data/ or user/); the option is appended last, so it is the value argparse reads.

_BASE = {
    "train": ["train", "data/particles.star", "--out", "new", "--quiet"],
    "consensus": ["consensus", "data/particles.star", "--out", "new", "--quiet"],
    "backproject": ["backproject", "data/particles.star", "--out", "out/bp.mrc", "--quiet"],
    "infer": ["infer", "run", "data/particles.star", "--out", "out/z.npy", "--quiet"],
    "analyze": ["analyze", "run", "--out", "out/analysis"],
    "evaluate": ["evaluate", "--gt", "data/gt", "--run", "run"],
    "simulate": ["simulate", "--preset", "hinge", "--box", "32", "--n", "10", "--snr", "1", "--out", "sim", "--quiet"],
    "demo": ["demo", "--out", "demo", "--viewer", "none", "--quiet"],
}

_COUNT = "a whole number >= 1"
_SEED = r"a whole number in \[0, 4294967295\]"
_ZERO_UP = "a whole number >= 0"
_PARTS = "auto or a whole number >= 1"
_MINUTES = "a finite number >= 0"
_LR = r"a finite number in \(0, 1\]"
_BOX = r"an even whole number in \[8, 1024\]"
_IMAGES = r"a whole number in \[1, 100000000\]"
_SNR = r"a finite number > 0 \(or inf\)"

# (command, option, what it accepts as the error says it, bad values)
_NUMERIC = [
    ("train", "--epochs-consensus", _COUNT, ["0", "-1", "abc"]),
    ("train", "--epochs-1", _COUNT, ["-3", "1.5"]),
    ("train", "--epochs-2", _COUNT, ["0", "1e30"]),
    ("train", "--gaussians-1", _COUNT, ["0", "nan"]),
    ("train", "--gaussians-2", _COUNT, ["-1", "inf"]),
    ("train", "--handles-1", _ZERO_UP, ["-1", "2.5"]),
    ("train", "--batch-size", _COUNT, ["-64", "1e3"]),
    ("train", "--seed", _SEED, ["-1", "4294967296", "x"]),
    ("train", "--checkpoint-minutes", _MINUTES, ["-0.5", "-5", "nan", "inf"]),
    ("train", "--parts", _PARTS, ["0", "two", "-2"]),
    ("train", "--parts-level2", _PARTS, ["0", "1.5"]),
    ("train", "--window-radius", r"a finite number in \(0, 1\]", ["0", "1.5", "nan", "-0.5"]),
    ("consensus", "--n-gaussians", _ZERO_UP, ["-1", "abc"]),
    ("consensus", "--epochs", _COUNT, ["0", "-2"]),
    ("consensus", "--batch-size", _COUNT, ["0", "nan"]),
    ("consensus", "--lr", _LR, ["0", "-0.01", "nan", "inf", "1e30", "2"]),
    ("consensus", "--map-fit-steps", _ZERO_UP, ["-1", "2.5"]),
    ("consensus", "--seed", _SEED, ["-7"]),
    ("consensus", "--checkpoint-minutes", _MINUTES, ["-1", "-inf"]),
    ("backproject", "--wiener", r"a finite number in \[0, 100\]", ["nan", "-0.01", "inf", "1e30", "abc"]),
    ("backproject", "--pad", r"a finite number in \[1, 4\]", ["0.5", "nan", "100"]),
    ("backproject", "--batch-size", _COUNT, ["0", "-1"]),
    ("infer", "--epochs", _COUNT, ["0", "-1"]),
    ("infer", "--candidates", _COUNT, ["0", "abc"]),
    ("infer", "--batch-size", _COUNT, ["0"]),
    ("infer", "--seed", _SEED, ["-1"]),
    ("analyze", "--ksample", _COUNT, ["0", "-5"]),
    ("analyze", "--pc-steps", _COUNT, ["0", "nan"]),
    ("analyze", "--pcs", _COUNT, ["0", "1.0"]),
    ("analyze", "--seed", _SEED, ["-1"]),
    ("evaluate", "--rows", _ZERO_UP, ["-1", "abc"]),
    ("simulate", "--box", _BOX, ["0", "33", "4", "2048", "abc"]),
    ("simulate", "--n", _IMAGES, ["0", "-10", "1e30"]),
    ("simulate", "--snr", _SNR, ["0", "-1", "nan", "-inf"]),
    ("simulate", "--seed", _SEED, ["-1"]),
    ("simulate", "--apix", r"a finite number in \(0, 100\]", ["0", "-2", "nan", "inf", "1e30"]),
    ("simulate", "--oversample", r"a whole number in \[1, 4\]", ["0", "5"]),
    ("simulate", "--phantom-seed", _SEED, ["-1"]),
    ("simulate", "--batch-size", _COUNT, ["0"]),
    ("simulate", "--clutter", r"a whole number in \[0, 8\]", ["-1", "9", "1.5"]),
    ("demo", "--box", _BOX, ["31", "0"]),
    ("demo", "--n", _IMAGES, ["0"]),
    ("demo", "--snr", _SNR, ["nan", "0"]),
    ("demo", "--epochs", _COUNT, ["0", "-1"]),
]


def _argv(command: str, *extra: str):
    return lambda ws: [*_BASE[command], *extra]


def _found(value: str) -> str:
    return re.escape(value)


CASES += [
    Case("options", f"{command} {option} {value}", _argv(command, f"{option}={value}"),
         error(rf"^cryospire {command}: error: {re.escape(option)}: expected {what}, found {_found(value)}$"))
    for command, option, what, values in _NUMERIC for value in values
]

# -- choices, devices and the shape of the command line -------------------------------------------

_CHOICES = [
    ("train", "--profile", "gpu", "cpu, paper"),
    ("train", "--precision", "fp8", "auto, fp32, bf16, fp16"),
    ("train", "--parts-signal", "motion", "dynamics, features"),
    ("train", "--parts-refine", "affine", "rigid, none"),
    ("train", "--stage", "all", "consensus, discovery, parts, hierarchical"),
    ("consensus", "--invert", "maybe", "auto, yes, no"),
    ("simulate", "--preset", "banana", None),
    ("simulate", "--contrast", "grey", "white, dark"),
    ("demo", "--viewer", "vr", "auto, window, screenshot, none"),
]
CASES += [
    Case("options", f"{command} {option} {value}", _argv(command, option, value),
         error(rf"^cryospire {command}: error: {re.escape(option)}: expected one of "
               rf"{re.escape(choices) if choices else '.+'}, found {value}$"))
    for command, option, value, choices in _CHOICES
]

_DEVICES = "auto, cpu, cuda or cuda:N"
CASES += [
    Case("options", f"{command} --device {value or 'empty'}", _argv(command, "--device", value),
         error(rf"^cryospire {command}: error: --device: expected {re.escape(_DEVICES)}, found {found}$"))
    for command, value, found in [("train", "mps", "mps"), ("consensus", "meta", "meta"),
                                  ("backproject", "gpu0", "gpu0"), ("infer", "cuda:x", "cuda:x"),
                                  ("simulate", "", "''"), ("demo", "CPU", "CPU"), ("train", "cpu:0", "cpu:0")]
]
CASES += [
    # no GPU here: "no CUDA GPU is visible"; on a machine with GPUs: the indices that exist
    Case("options", "train --device cuda:7", _argv("train", "--device", "cuda:7"),
         error(r"^cryospire train: error: --device: expected (a device that exists here|cuda:0 to cuda:\d).*, "
               r"found cuda:7$")),
    Case("options", "train without --out", lambda ws: ["train", "data/particles.star"],
         error(r"^cryospire train: error: --out: expected a value \(required\), found none$")),
    Case("options", "train without PARTICLES", lambda ws: ["train", "--out", "new"],
         error(r"^cryospire train: error: particles: expected a value \(required\), found none$")),
    Case("options", "train --batch-size without a value", _argv("train", "--batch-size"),
         error(r"^cryospire train: error: --batch-size: expected one value, found none$")),
    Case("options", "train with an unknown option", _argv("train", "--epochs", "3"),
         error(r"^cryospire train: error: --epochs: expected one option, found an abbreviation of --epochs-consensus, "
               r"--epochs-1, --epochs-2$")),
    Case("options", "train with a stray argument", _argv("train", "--colour", "blue"),
         error(r"^cryospire train: error: --colour blue: expected options of this command \(see --help\), "
               r"found unknown arguments$")),
    Case("options", "render with --z and --particles", lambda ws: ["render", "run", "--z", "a", "--particles", "b",
                                                                   "--out", "m"],
         error(r"^cryospire render: error: --particles: expected either --particles or --z, found both$")),
    Case("options", "render with neither --z nor --particles", lambda ws: ["render", "run", "--out", "m"],
         error(r"^cryospire render: error: --z/--particles: expected one of them, found none$")),
    Case("options", "evaluate with neither --map, --run nor --maps", lambda ws: ["evaluate", "--gt", "data/gt"],
         error(r"^cryospire evaluate: error: --map/--run/--maps: expected one of them, found none$")),
    Case("options", "train --help", _argv("train", "--help"), ok()),
    Case("options", "render --help", lambda ws: ["render", "--help"], ok()),
]

# -- ranges that depend on the run: checked before any compute ------------------------------------

CASES += [
    Case("options", "train --parts above the stage-1 Gaussian count",
         _argv("train", "--gaussians-1", "128", "--parts", "500"),
         error(r"^cryospire train: error: .*--parts: expected at most the stage-1 Gaussian count \(at most 128\), "
               r"found 500$")),
    Case("options", "train --parts-level2 above the stage-1 Gaussian count",
         _argv("train", "--gaussians-1", "64", "--parts-level2", "100"),
         error(r"--parts-level2: expected at most the stage-1 Gaussian count \(at most 64\), found 100$")),
    Case("options", "train --resume --parts above the run's stage-1 Gaussians",
         lambda ws: ["train", "data/particles.star", "--out", "run", "--resume", "--stage", "parts", "--parts", "129",
                     "--quiet"],
         error(r"--parts: expected at most the stage-1 Gaussian count \(128\), found 129$")),
]

"""cli.options: typed values with ranges, and argparse's usage errors as one ``expected ...,
found ...`` line with exit status 1 (cli.main.CommandParser)."""

from __future__ import annotations

import argparse

import pytest

from cryospire_core.cli.main import CommandParser, main
from cryospire_core.cli.options import usage_error
from cryospire_core.errors import InputError
from cryospire_core.models.device import resolve_device
from cryospire_core.ranges import COUNT, SEED, OrAuto, Real, Whole


@pytest.mark.parametrize("kind, text, value", [
    (COUNT, "3", 3), (COUNT, " 12 ", 12), (COUNT, "+4", 4), (Whole(0), "0", 0), (SEED, "4294967295", 2**32 - 1),
    (Whole(8, 16, even=True), "16", 16), (Real(0, 1, lo_open=True), "1", 1.0), (Real(0), "0", 0.0),
    (Real(0, lo_open=True, inf_ok=True), "inf", float("inf")), (Real(), "-1e3", -1000.0),
    (OrAuto(COUNT), "auto", "auto"), (OrAuto(COUNT), "2", 2),
])
def test_values_in_range_are_parsed(kind, text, value):
    assert kind(text) == value and type(kind(text)) is type(value)


@pytest.mark.parametrize("kind, text, message", [
    (COUNT, "0", "expected a whole number >= 1, found 0"),
    (COUNT, "1e3", "expected a whole number >= 1, found 1e3"),
    (COUNT, "2.0", "expected a whole number >= 1, found 2.0"),
    (COUNT, "", "expected a whole number >= 1, found ''"),
    (SEED, "-1", "expected a whole number in [0, 4294967295], found -1"),
    (Whole(8, 16, even=True), "9", "expected an even whole number in [8, 16], found 9"),
    (Real(0, 1, lo_open=True), "0", "expected a finite number in (0, 1], found 0"),
    (Real(0, 1, lo_open=True), "nan", "expected a finite number in (0, 1], found nan"),
    (Real(0), "inf", "expected a finite number >= 0, found inf"),
    (Real(0, lo_open=True, inf_ok=True), "-inf", "expected a finite number > 0 (or inf), found -inf"),
    (Real(hi=5, hi_open=True), "5", "expected a finite number < 5, found 5"),
    (OrAuto(COUNT), "Auto", "expected auto or a whole number >= 1, found Auto"),
])
def test_values_out_of_range_say_what_was_expected(kind, text, message):
    with pytest.raises(argparse.ArgumentTypeError) as err:
        kind(text)
    assert str(err.value) == message


def test_config_values_are_checked_by_the_same_ranges():
    assert COUNT.accepts(1) and not COUNT.accepts(0) and not COUNT.accepts(True) and not COUNT.accepts(1.0)
    assert Real(0, 1).accepts(1) and not Real(0, 1).accepts(float("nan")) and not Real(0, 1).accepts("0.5")
    assert OrAuto(COUNT).accepts("auto") and not OrAuto(COUNT).accepts("many")


@pytest.mark.parametrize("message, line", [
    ("argument --batch-size: expected a whole number >= 1, found 0",
     "--batch-size: expected a whole number >= 1, found 0"),
    ("argument --profile: invalid choice: 'gpu' (choose from 'cpu', 'paper')",
     "--profile: expected one of cpu, paper, found gpu"),
    ("argument --x: invalid int value: 'a'", "--x: expected a whole number, found a"),
    ("argument --z: not allowed with argument --particles", "--z: expected either --z or --particles, found both"),
    ("argument --batch-size: expected one argument", "--batch-size: expected one value, found none"),
    ("the following arguments are required: particles, --out", "particles, --out: expected a value (required), "
                                                               "found none"),
    ("one of the arguments --z --particles is required", "--z/--particles: expected one of them, found none"),
    ("unrecognized arguments: --colour blue", "--colour blue: expected options of this command (see --help), "
                                              "found unknown arguments"),
    ("ambiguous option: --ep could match --epochs-1, --epochs-2",
     "--ep: expected one option, found an abbreviation of --epochs-1, --epochs-2"),
])
def test_argparse_messages_become_expected_found_lines(message, line):
    assert usage_error(message) == line


def test_a_usage_error_is_one_line_and_exit_1(capsys):
    parser = CommandParser(prog="cryospire x")
    parser.add_argument("--n", type=COUNT, required=True)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--n", "-2"])
    assert exit_.value.code == 1
    assert capsys.readouterr().err == "cryospire x: error: --n: expected a whole number >= 1, found -2\n"


def test_every_command_keeps_help_and_refuses_bad_numbers(capsys):
    assert main(["train", "--help"]) == 0 and "--batch-size" in capsys.readouterr().out
    assert main(["consensus", "data.star", "--out", "r", "--lr", "nan"]) == 1
    assert capsys.readouterr().err == ("cryospire consensus: error: --lr: expected a finite number in (0, 1], "
                                       "found nan\n")


@pytest.mark.parametrize("name", ["mps", "meta", "cuda:x", "gpu", "CPU", "cpu:0", ""])
def test_devices_other_than_cpu_and_cuda_are_refused(name):
    with pytest.raises(InputError, match="--device: expected auto, cpu, cuda or cuda:N"):
        resolve_device(name)


def test_a_cuda_device_must_exist():
    import torch

    if torch.cuda.is_available():
        with pytest.raises(InputError, match=r"--device: expected cuda:0 to cuda:\d+"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(InputError, match="no CUDA GPU is visible"):
            resolve_device("cuda")
    assert resolve_device("cpu").type == "cpu"


def test_a_warning_reaches_the_terminal_as_one_line(monkeypatch, capsys):
    """A command's warning prints as ``cryospire CMD: warning: <message>`` (no Python file, line
    or source), and the default printer is back once the command returns."""
    import warnings

    from cryospire_core.cli import main as cli_main
    from cryospire_core.cli import render

    def warns(args):
        warnings.warn("particles.star: rlnDefocusU: expected 0.1-20 µm, found 50 µm", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(render, "run", warns)
    before = warnings.showwarning
    assert cli_main.main(["render", "RUN", "--z", "z.txt", "--out", "maps"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == ["cryospire render: warning: particles.star: rlnDefocusU: expected 0.1-20 µm, found 50 µm"]
    assert warnings.showwarning is before

"""Errors as the user sees them: one napari notification, our sentence on its first line.

A user's mistake (:class:`~cryospire_core.errors.InputError`: ``<file>: <field>: expected ...,
found ...``) or a machine limit (:class:`~cryospire_core.errors.ResourceError`: what to change)
is shown as its own one-line message. Anything else is a fault in cryospire or a library: it
reads ``cryospire: <action> failed: <Type>: <message>`` and keeps the traceback behind napari's
"View Traceback" button, never in a dialog of its own.

Messages the core writes for the command line name its options (``--resume``, ``--epochs-2``);
:func:`in_gui_words` says them as the docks offer them (the Resume button, the stage-2 epochs)
before anything is shown, so the core stays unaware of the GUI.

No Qt here: the readers use it too.
"""

from __future__ import annotations

import re

from napari.utils.notifications import (
    ErrorNotification,
    notification_manager,
    show_error,
)

from cryospire_core.errors import InputError, ResourceError

#: Errors whose message is written for users (no traceback needed).
USER_ERRORS = (InputError, ResourceError)


_OPTION = r"(?<![\w/.-]){}(?![\w-])"  # a command-line option, not part of a path or a longer option

#: Command-line wording in the core's messages and what a dock user does instead (first match
#: first: whole phrases before the options they hold).
GUI_WORDS: tuple[tuple[str, str], ...] = tuple((re.compile(_OPTION.format(option)), words) for option, words in (
    (r"leave out --stage, or add --stage \w+", "press Resume to train the stages in order"),
    (r"--stage parts with --resume to re-cluster a run that has its parts",
     "re-clustering in the Parts review tab (the run has its parts)"),
    (r"with --resume", "when resuming"),
    (r"--resume", "the Resume button"),
    (r"--epochs-consensus", "the consensus epochs"),
    (r"--epochs-1", "the stage-1 epochs"),
    (r"--epochs-2", "the stage-2 epochs"),
    (r"--box-consensus", "the consensus box"),
    (r"--box-1", "the stage-1 box"),
    (r"--box-2", "the stage-2 box"),
    (r"--gaussians-1", "the stage-1 Gaussian count"),
    (r"--gaussians-2", "the stage-2 Gaussian count"),
    (r"--handles-1", "the stage-1 handle count"),
    (r"--parts-level2", "the level-2 part count"),
    (r"--parts", "the part count"),
    (r"--select", "the particle selection"),
    (r"--profile", "the profile"),
    (r"--stage (\w+)", r"the \1 stage"),
))


def in_gui_words(text: str) -> str:
    """``text`` with the command line's wording replaced by the docks' (:data:`GUI_WORDS`)."""
    for pattern, words in GUI_WORDS:
        text = pattern.sub(words, text)
    return text


def _cause(exc: BaseException) -> str:
    return in_gui_words(str(exc)) if isinstance(exc, USER_ERRORS) else f"{type(exc).__name__}: {exc}"


def error_message(exc: BaseException, action: str) -> str:
    """The notification's text when ``action`` (e.g. "training", "opening X") failed with ``exc``:
    a user error's own sentence (file, field, what was expected) in the docks' words, anything
    else ``cryospire: <action> failed: <Type>: <message>``."""
    return _cause(exc) if isinstance(exc, USER_ERRORS) else f"cryospire: {action} failed: {_cause(exc)}"


def status_text(exc: BaseException, action: str) -> str:
    """A dock's status line after ``action`` failed: "<action> failed: <why>"."""
    return f"{action} failed: {_cause(exc)}"


def notify_error(exc: BaseException, action: str) -> None:
    """Show ``exc`` as one napari error notification (see the module docstring)."""
    message = error_message(exc, action)
    if isinstance(exc, USER_ERRORS):
        show_error(message)
        return
    notification = ErrorNotification(exc)
    notification.message = message
    notification_manager.dispatch(notification)

"""Errors as the user sees them: one napari notification, our sentence on its first line.

A user's mistake (:class:`~cryospire_core.errors.InputError`: ``<file>: <field>: expected ...,
found ...``) or a machine limit (:class:`~cryospire_core.errors.ResourceError`: what to change)
is shown as its own one-line message. Anything else is a fault in cryospire or a library: it
reads ``cryospire: <action> failed: <Type>: <message>`` and keeps the traceback behind napari's
"View Traceback" button, never in a dialog of its own.

No Qt here: the readers use it too.
"""

from __future__ import annotations

from napari.utils.notifications import (
    ErrorNotification,
    notification_manager,
    show_error,
)

from cryospire_core.errors import InputError, ResourceError

#: Errors whose message is written for users (no traceback needed).
USER_ERRORS = (InputError, ResourceError)


def _cause(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, USER_ERRORS) else f"{type(exc).__name__}: {exc}"


def error_message(exc: BaseException, action: str) -> str:
    """The notification's text when ``action`` (e.g. "training", "opening X") failed with ``exc``."""
    return str(exc) if isinstance(exc, USER_ERRORS) else f"cryospire: {action} failed: {_cause(exc)}"


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

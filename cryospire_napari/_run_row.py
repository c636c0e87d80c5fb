"""The "run folder [...] [Load]" row shared by the docks that open a trained run."""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLineEdit, QPushButton, QWidget


class RunFolderRow(QWidget):
    """A path field, a folder picker and a Load button; ``load(path)`` is called on Load or after
    a folder is picked. ``edit`` holds the path of the run shown."""

    def __init__(self, load: Callable[[str], None]) -> None:
        super().__init__()
        self._load = load
        self.edit = QLineEdit()
        self.edit.setPlaceholderText("run folder")
        browse = QPushButton("...")
        browse.setMaximumWidth(32)
        browse.clicked.connect(self._browse)
        button = QPushButton("Load")
        button.clicked.connect(lambda: self._load(self.edit.text()))
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        for w in (self.edit, browse, button):
            row.addWidget(w)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Run folder")
        if folder:
            self._load(folder)

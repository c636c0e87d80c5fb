"""The row a dock shows when a run's particle file is not where the run recorded it: why, in one
line (the file expected and every place it was looked for), a path field and a Browse button."""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from cryospire_core.errors import InputError

#: The particle files a run can have been trained on (as ``load_particles`` reads them).
PARTICLE_FILES = "Particles (*.star *.cs *.mrcs *.mrc *.txt)"


class ParticleFileRow(QWidget):
    """Hidden until :meth:`show_missing` gets an error; ``use(path)`` is called with the file the
    user picks (Browse) or types (Use, or Enter in the field)."""

    def __init__(self, use: Callable[[str], None]) -> None:
        super().__init__()
        self._use = use
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextSelectableByMouse)  # the paths tried, to copy
        self.edit = QLineEdit()
        self.edit.setPlaceholderText("the run's particle file (.star, .cs, .mrcs)")
        self.edit.returnPressed.connect(self._use_typed)
        browse = QPushButton("Browse...")
        browse.clicked.connect(self._browse)
        use_button = QPushButton("Use")
        use_button.clicked.connect(self._use_typed)
        row = QHBoxLayout()
        for w in (self.edit, browse, use_button):
            row.addWidget(w)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.message)
        layout.addLayout(row)
        self.setVisible(False)

    def show_missing(self, error: InputError | None) -> None:
        """Show why the run's particle file is missing (``error``: the file expected and where it
        was looked for), or hide the row (None: the file was found)."""
        self.setVisible(error is not None)
        self.message.setText("" if error is None else f"particle file not found: {error}")

    def _use_typed(self) -> None:
        if self.edit.text().strip():
            self._use(self.edit.text().strip())

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "The run's particle file", "", PARTICLE_FILES)
        if path:
            self.edit.setText(path)
            self._use(path)

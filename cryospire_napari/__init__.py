"""napari plugin for cryospire: readers, writers, sample data and dock widgets.

The only package of the project that imports Qt (through qtpy) or napari.
"""

__version__ = "0.1.0"

"""cryospire core: data I/O, CTF, simulation, reconstruction and metrics.

No Qt or napari import may appear anywhere in this package.
"""

__version__ = "0.1.0"

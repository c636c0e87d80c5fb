"""npe2 sample data: a simulated ``hinge`` data set and a consensus run on it.

Made on first use by what the commands a user would type (``cryospire simulate``,
``backproject``, ``consensus``) call, with those commands' defaults, and cached in
``platformdirs.user_cache_dir("cryospire")`` (the environment variable ``CRYOSPIRE_CACHE``
overrides it), one folder per :class:`SampleSpec`. A step whose output already exists is not
redone, so the second use is instant and an interrupted first use continues where it stopped.

The first use takes minutes on a CPU (measured here, 2 busy cores: ~100 s for the hinge data
set, ~140 s more for the consensus run). napari calls sample-data functions synchronously on
the GUI thread and needs their layers at once, so the manifest's entries
(:func:`hinge_sample_menu`, :func:`consensus_sample_menu`) return the ground-truth map at once
(rendered from the phantom in about a second) and make the rest in a background worker (shown
in napari's activity panel) that adds its layers to the viewer when done. Without a viewer
(scripts, tests) they make everything synchronously.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryospire_core.io.load import ParticleSource, load_particles
from cryospire_core.io.mrc import write_map
from cryospire_core.models.backproject import backproject
from cryospire_core.models.consensus import ConsensusConfig
from cryospire_core.models.device import resolve_device
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.pipeline.threads import thread_budget, use_threads
from cryospire_core.services.consensus import ConsensusRequest, consensus_run
from cryospire_core.sim.phantoms import make_phantom, state_volume
from cryospire_core.sim.simulate import DEFAULT_FOV_A, simulate, write_simulation

from ._layers import LayerDataTuple, map_layer, read_map_layer, run_layers


@dataclass(frozen=True)
class SampleSpec:
    """What the sample data are: simulator preset, box (px), number of images, SNR, and the
    consensus stage's image epochs and 3D pre-fit steps."""

    preset: str = "hinge"
    box: int = 64
    n: int = 2000
    snr: float = 0.1
    epochs: int = 1
    map_fit_steps: int = 100

    @property
    def folder_name(self) -> str:
        return f"{self.preset}_{self.box}px_{self.n}_snr{self.snr:g}_e{self.epochs}_m{self.map_fit_steps}"


DEFAULT_SPEC = SampleSpec()


def cache_dir() -> Path:
    """Where sample data live: ``$CRYOSPIRE_CACHE`` if set, else the user cache folder."""
    env = os.environ.get("CRYOSPIRE_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("cryospire"))


def ensure_sample(spec: SampleSpec = DEFAULT_SPEC, with_run: bool = False) -> Path:
    """Make (once) the sample folder of ``spec`` and return it.

    Layout: ``data/`` (a simulation as ``cryospire simulate`` writes it, ground truth in
    ``data/gt``), ``backprojection.mrc`` and, with ``with_run``, ``run/`` (a consensus run
    seeded from that backprojection). Torch computes with every CPU this process may use, as
    the commands do.
    """
    root = cache_dir() / spec.folder_name
    data, bp, run = root / "data", root / "backprojection.mrc", RunFolder(root / "run")
    use_threads(thread_budget())
    if not (data / "metadata.json").is_file():
        result = simulate(spec.preset, spec.box, spec.n, spec.snr, seed=0, device=resolve_device("auto"))
        write_simulation(data, result, overwrite=True)  # an interrupted simulation's files are redone
    star = data / "particles.star"
    if not bp.is_file():
        particles = load_particles(star)
        write_map(bp, backproject(particles, device="cpu").volume, particles.apix)
    if with_run and not run.map_path("consensus").is_file():
        request = ConsensusRequest(
            source=ParticleSource(star), out=run.root, map=bp,
            config=ConsensusConfig(epochs=spec.epochs, map_fit_steps=spec.map_fit_steps),
            resume=run.config_path.is_file(), device="cpu", command={"gui": "sample data", "particles": str(star)})
        with consensus_run(request) as job:
            job.fit()
    return root


def _gt_state_layer(root: Path) -> LayerDataTuple:
    """The ground-truth map of the middle state (the hinge half-way through its swing)."""
    vols = sorted((root / "data" / "gt").glob("vol_*.mrc"))
    vol = vols[len(vols) // 2]
    return read_map_layer(vol, name=f"ground truth {vol.stem}", colormap="green")


def is_made(spec: SampleSpec, with_run: bool = False) -> bool:
    """Whether the sample folder of ``spec`` is complete (using it is then instant)."""
    root = cache_dir() / spec.folder_name
    done = (root / "data" / "metadata.json").is_file() and (root / "backprojection.mrc").is_file()
    return done and (not with_run or RunFolder(root / "run").map_path("consensus").is_file())


def ground_truth_preview(spec: SampleSpec) -> LayerDataTuple:
    """The middle state's ground-truth map rendered straight from the phantom (what the
    simulation writes as ``gt/vol_<middle>.mrc``), without simulating any image."""
    phantom = make_phantom(spec.preset, spec.box, DEFAULT_FOV_A / spec.box)
    state = phantom.n_states // 2
    vol = state_volume(phantom, state, oversample=2)
    return map_layer(vol, phantom.apix, f"ground truth vol_{state:03d}", colormap="green")


def _in_background(spec: SampleSpec, with_run: bool, make) -> list[LayerDataTuple]:
    """npe2 entry behind the sample menu (see the module docstring)."""
    import napari
    from napari.layers import Layer
    from napari.qt.threading import create_worker
    from napari.utils.notifications import show_info

    from ._notify import notify_error
    from ._workers import dispatch, guarded

    viewer = napari.current_viewer()
    if viewer is None or is_made(spec, with_run):
        return make(spec)
    preview = ground_truth_preview(spec)

    def add_rest(layers: list[LayerDataTuple]) -> None:
        for data, kwargs, kind in layers:
            if kwargs["name"] not in viewer.layers:
                viewer.add_layer(Layer.create(data, kwargs, kind))

    show_info(f"cryospire: making the sample data in {cache_dir() / spec.folder_name} (first use only, a few "
              "minutes on a CPU); its layers appear when they are ready")
    report = dispatch(add_rest, lambda exc: notify_error(exc, "making the sample data"))
    worker = create_worker(guarded(make), spec, _start_thread=False, _progress={"desc": "cryospire sample data"},
                           _connect={"returned": report})
    worker.start()
    return [preview]


def hinge_sample_menu() -> list[LayerDataTuple]:
    """Menu entry of :func:`hinge_sample` (first use in the background)."""
    return _in_background(DEFAULT_SPEC, False, hinge_sample)


def consensus_sample_menu() -> list[LayerDataTuple]:
    """Menu entry of :func:`consensus_sample` (first use in the background)."""
    return _in_background(DEFAULT_SPEC, True, consensus_sample)


def hinge_sample(spec: SampleSpec = DEFAULT_SPEC) -> list[LayerDataTuple]:
    """Sample "cryospire hinge (simulated)": a ground-truth state and the backprojection of all
    images (a blur of every state: the hinge's motion is what the method recovers)."""
    root = ensure_sample(spec)
    return [_gt_state_layer(root), read_map_layer(root / "backprojection.mrc", name="backprojection", rendering="mip")]


def consensus_sample(spec: SampleSpec = DEFAULT_SPEC) -> list[LayerDataTuple]:
    """Sample "cryospire consensus run": the run folder's layers (consensus map, Gaussians) and
    a ground-truth state to compare with."""
    root = ensure_sample(spec, with_run=True)
    return [*run_layers(root / "run"), _gt_state_layer(root)]

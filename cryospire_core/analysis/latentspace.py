"""Latent-space analysis: PCA, k-means states, traversals, plots, and the maps they call for.

Works on plain arrays: latents (N, zdim) float32, one row per particle, and a ``render_fn`` that
turns one latent (zdim,) into a volume (D, D, D) on the data lattice. :func:`analyze` writes the
standard set of products into ``RUN/analysis/`` (see its docstring).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree
from sklearn.cluster import KMeans

from cryospire_core.io.atomic import atomic_path, write_npy, write_npz
from cryospire_core.io.mixture import mixture_lattice
from cryospire_core.io.outputs import check_new_outputs
from cryospire_core.models import parts
from cryospire_core.pipeline.runfolder import RunFolder

#: A volume for one latent: z (zdim,) float32 -> (D, D, D) float32 on the data lattice.
RenderFn = Callable[[np.ndarray], np.ndarray]

#: Above this many points the PCA scatter is drawn as a hexbin density.
HEXBIN_ABOVE = 5000


@dataclass
class LatentPCA:
    """Full-rank PCA of latents: exact inverse, so the GUI can move between PC and latent space.

    mean: (zdim,); components: (zdim, zdim), row j = PC j+1 (unit length, orthogonal, sign fixed
    so its largest-magnitude entry is positive); explained_variance: (zdim,) variance along each PC.
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray

    @property
    def explained_variance_ratio(self) -> np.ndarray:
        total = float(self.explained_variance.sum())
        return self.explained_variance / total if total > 0 else np.zeros_like(self.explained_variance)

    def transform(self, latents: np.ndarray) -> np.ndarray:
        """(N, zdim) latents -> (N, zdim) PC scores."""
        return (np.asarray(latents, np.float64) - self.mean) @ self.components.T

    def inverse_transform(self, scores: np.ndarray) -> np.ndarray:
        """(N, zdim) PC scores -> (N, zdim) latents (exact: the components are a full basis)."""
        return np.asarray(scores, np.float64) @ self.components + self.mean


def pca(latents: np.ndarray) -> LatentPCA:
    """PCA of latents (N, zdim) by SVD of the centred data (all zdim components kept)."""
    x = _check_latents(latents).astype(np.float64)
    mean = x.mean(axis=0)
    # Full V (zdim, zdim) needs full_matrices only when N < zdim; otherwise it would also build
    # U (N, N): 7 TiB for 10^6 particles.
    _, s, vt = np.linalg.svd(x - mean, full_matrices=len(x) < x.shape[1])
    var = np.zeros(x.shape[1])
    var[: len(s)] = s**2 / max(len(x) - 1, 1)
    signs = np.sign(vt[np.arange(len(vt)), np.argmax(np.abs(vt), axis=1)])
    return LatentPCA(mean, vt * signs[:, None], var)


def umap_embedding(latents: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """(N, 2) 2D embedding and the method that made it: "umap" when umap-learn is installed,
    else "pca" (the first two PC scores) so callers always get a map to draw."""
    x = _check_latents(latents)
    try:
        import umap  # optional: not a dependency of cryospire
    except ImportError:
        scores = pca(x).transform(x)
        return np.pad(scores, ((0, 0), (0, max(0, 2 - scores.shape[1]))))[:, :2], "pca"
    return umap.UMAP(n_components=2, random_state=seed).fit_transform(x), "umap"


def kmeans_states(latents: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k-means++ of latents into k states: labels (N,) int64 and centres (k, zdim). Deterministic
    for a seed."""
    x = _check_latents(latents)
    if not 1 <= k <= len(x):
        raise ValueError(f"kmeans_states: k must be in 1..{len(x)}, got {k}")
    km = KMeans(n_clusters=k, init="k-means++", n_init=4, random_state=seed).fit(x.astype(np.float64))
    return km.labels_.astype(np.int64), km.cluster_centers_


def nearest_particles(latents: np.ndarray, z: np.ndarray, k: int = 1) -> np.ndarray:
    """(k,) indices of the particles whose latents are nearest to ``z`` (zdim,), nearest first."""
    x = _check_latents(latents)
    k = min(int(k), len(x))
    _, idx = cKDTree(x).query(np.asarray(z, np.float64), k=k)
    return np.atleast_1d(idx).astype(np.int64)


def traversal(
    latents: np.ndarray,
    pc: int = 1,
    n_steps: int = 10,
    span: float | None = None,
    fit: LatentPCA | None = None,
) -> np.ndarray:
    """(n_steps, zdim) latents evenly spaced along principal component ``pc`` (1-based).

    The other PC scores stay 0 (the mean latent). The range covers the 5th to 95th percentile of
    the particles' scores on that PC, or mean +- ``span`` standard deviations when given.
    fit: a PCA of ``latents`` already computed (else computed here).
    """
    x = _check_latents(latents)
    fit = fit if fit is not None else pca(x)
    if not 1 <= pc <= x.shape[1]:
        raise ValueError(f"traversal: pc must be in 1..{x.shape[1]}, got {pc}")
    scores = fit.transform(x)[:, pc - 1]
    if span is None:
        lo, hi = np.percentile(scores, [5, 95])
    else:
        sd = np.sqrt(fit.explained_variance[pc - 1])
        lo, hi = -span * sd, span * sd
    points = np.zeros((n_steps, x.shape[1]))
    points[:, pc - 1] = np.linspace(lo, hi, n_steps)
    return fit.inverse_transform(points)


def _check_latents(latents: np.ndarray) -> np.ndarray:
    x = np.asarray(latents)
    if x.ndim != 2 or len(x) == 0 or not np.all(np.isfinite(x)):
        raise ValueError(f"latents must be a finite (N, zdim) array with N >= 1, got shape {x.shape}")
    return x


# --------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg canvas: no pyplot, no global backend change inside napari)
# --------------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def plot_latent_pca(scores: np.ndarray, labels: np.ndarray, centre_scores: np.ndarray, path: str | os.PathLike,
                    explained: np.ndarray | None = None) -> None:
    """PC1 vs PC2 of the particles, coloured by k-means state (a hexbin density above
    ``HEXBIN_ABOVE`` points, with the state centres marked and numbered).

    scores: (N, >=2) or (N, 1) PC scores; labels: (N,) states; centre_scores: (K, >=1).
    """
    s = scores if scores.shape[1] >= 2 else np.pad(scores, ((0, 0), (0, 1)))
    c = centre_scores if centre_scores.shape[1] >= 2 else np.pad(centre_scores, ((0, 0), (0, 1)))
    fig = _figure(6, 5)
    ax = fig.add_subplot()
    if len(s) > HEXBIN_ABOVE:
        hb = ax.hexbin(s[:, 0], s[:, 1], gridsize=60, bins="log", cmap="viridis", mincnt=1)
        fig.colorbar(hb, ax=ax, label="particles (log)")
    else:
        ax.scatter(s[:, 0], s[:, 1], c=labels, cmap="tab20", s=4, alpha=0.6, linewidths=0)
    ax.scatter(c[:, 0], c[:, 1], c="k", marker="x", s=40)
    for k, (x, y) in enumerate(c[:, :2]):
        ax.annotate(str(k), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    names = ["PC1", "PC2"]
    if explained is not None:
        names = [f"PC{j + 1} ({100 * e:.0f}% var.)" for j, e in enumerate(np.pad(explained, (0, 2))[:2])]
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title(f"latents: {len(s)} particles, {len(c)} k-means states")
    _save(fig, Path(path))


def plot_pc_histograms(scores: np.ndarray, path: str | os.PathLike, n_pcs: int = 4) -> None:
    """Histograms of the first ``n_pcs`` PC scores (N, zdim)."""
    n = min(n_pcs, scores.shape[1])
    fig = _figure(3 * n, 2.6)
    for j in range(n):
        ax = fig.add_subplot(1, n, j + 1)
        ax.hist(scores[:, j], bins=60, color="0.3")
        ax.set_xlabel(f"PC{j + 1}")
    fig.tight_layout()
    _save(fig, Path(path))


def plot_embedding(embedding: np.ndarray, labels: np.ndarray, method: str, path: str | os.PathLike) -> None:
    """A 2D embedding (N, 2) coloured by state."""
    fig = _figure(5, 5)
    ax = fig.add_subplot()
    ax.scatter(embedding[:, 0], embedding[:, 1], c=labels, cmap="tab20", s=3, alpha=0.6, linewidths=0)
    ax.set_title(f"{method.upper()} of the latents")
    _save(fig, Path(path))


# --------------------------------------------------------------------------------------------
# The standard analysis of a run
# --------------------------------------------------------------------------------------------


@dataclass
class AnalysisResult:
    """What :func:`analyze` wrote: file paths by kind, plus notes on what was skipped."""

    out_dir: Path
    files: dict[str, list[Path]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, kind: str, path: Path) -> None:
        self.files.setdefault(kind, []).append(path)


def analyze(
    run_dir: str | os.PathLike,
    render_fn: RenderFn,
    apix: float,
    ksample: int = 20,
    pc_steps: int = 10,
    n_pcs: int = 1,
    out_dir: str | os.PathLike | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    overwrite: bool = False,
    box: int | None = None,
) -> AnalysisResult:
    """Analyse RUN/latents.npy and write the products into ``out_dir`` (default RUN/analysis/).

    render_fn: z (zdim,) -> (D, D, D) map on the data lattice; apix: its voxel size (Å); box: the
    samples per side of the part maps, on the part Gaussians' field of view (None: their own
    lattice's; pass render_fn's D when it renders at another box than the model was trained at).
    Files: ``pca.npz`` (mean, components, explained_variance, scores (N, zdim)),
    ``kmeans_{K}.npz`` (labels (N,), centres (K, zdim), on_data_index (K,): the particle nearest
    each centre, whose latent is rendered), ``latent_pca.png``, ``pc_histograms.png``,
    ``embedding.png`` (UMAP, or PCA when umap-learn is missing), ``state_###.mrc`` (K maps),
    ``pc{j}/vol_###.mrc`` and ``pc{j}/latents.npy`` for j = 1..n_pcs, and when the run has a
    part clustering (:meth:`~cryospire_core.pipeline.runfolder.RunFolder.part_gaussians`),
    ``parts/part_labels.mrc`` (labels 1..K, 0 = solvent) and ``parts/mask_part_##.mrc`` (## = the
    label, 01..K).
    Plots are skipped with a note when matplotlib is not installed. Before computing anything,
    refuses (InputError) to replace an existing file unless ``overwrite`` (:func:`check_outputs`).
    """
    from cryospire_core.io import mrc

    say = log or (lambda _msg: None)
    run = RunFolder(run_dir)
    latents = run.latents()
    found = run.part_gaussians()
    files = check_outputs(run_dir, len(latents), latents.shape[1], ksample, pc_steps, n_pcs, out_dir, found, overwrite)
    out, k = files.out, files.k
    result = AnalysisResult(out)

    fit = pca(latents)
    scores = fit.transform(latents)
    write_npz(files.pca, mean=fit.mean, components=fit.components,
              explained_variance=fit.explained_variance, scores=scores.astype(np.float32))
    result.add("pca", files.pca)
    say(f"PCA: explained variance ratio {np.round(fit.explained_variance_ratio, 3).tolist()}")

    labels, centres = kmeans_states(latents, k, seed)
    on_data = np.array([nearest_particles(latents, c, 1)[0] for c in centres], dtype=np.int64)
    write_npz(files.kmeans, labels=labels, centres=centres, on_data_index=on_data, on_data_latents=latents[on_data])
    result.add("kmeans", files.kmeans)

    latent_pca, pc_histograms, embedding_png = files.plots
    plot_latent_pca(scores, labels, fit.transform(latents[on_data]), latent_pca, fit.explained_variance_ratio)
    plot_pc_histograms(scores, pc_histograms)
    embedding, method = umap_embedding(latents, seed)
    if method != "umap":
        result.notes.append("umap-learn is not installed: embedding.png shows PC1/PC2 instead")
    plot_embedding(embedding, labels, method, embedding_png)
    for path in files.plots:
        result.add("plot", path)

    for path, i in zip(files.states, on_data):
        mrc.write_map(path, _render(render_fn, latents[i]), apix)
        result.add("state", path)
    say(f"wrote {k} state maps")

    for pc in range(1, files.n_pcs + 1):
        points = traversal(latents, pc, pc_steps, fit=fit).astype(np.float32)
        write_npy(files.pc_latents(pc), points)
        for path, z in zip(files.pc_maps(pc), points):
            mrc.write_map(path, _render(render_fn, z), apix)
            result.add(f"pc{pc}", path)
        say(f"wrote PC{pc} traversal ({pc_steps} maps)")

    if found is None:
        result.notes.append(f"part maps skipped: need {run.clustering_path} and "
                            f"{run.seed_path('hierarchical')} or {run.seed_path('discovery')}")
        return result
    g, part_index, source = found
    lattice = mixture_lattice(g) if box is None else mixture_lattice(g).cropped(box)
    label_map = parts.part_label_volume(g["centres"], g["widths"], g["amplitudes"], part_index, lattice)
    write_part_maps(files.part_maps, label_map, lattice.apix)
    for path in files.part_maps.all():
        result.add("parts", path)
    say(f"wrote the part label map and {files.n_parts} masks (Gaussians of {source})")
    return result


@dataclass(frozen=True)
class PartMapFiles:
    """The part maps of a run in ``folder``: the label map ``part_labels.mrc`` (1..n_parts, 0 =
    solvent) and one soft mask ``mask_part_##.mrc`` per part (## = the label, 01..n_parts)."""

    folder: Path
    n_parts: int

    @property
    def labels(self) -> Path:
        return self.folder / "part_labels.mrc"

    @property
    def masks(self) -> list[Path]:
        return [self.folder / f"mask_part_{j:02d}.mrc" for j in range(1, self.n_parts + 1)]

    def all(self) -> list[Path]:
        return [self.labels, *self.masks]


def write_part_maps(files: PartMapFiles, label_map: np.ndarray, apix: float) -> None:
    """Write ``label_map`` ((D, D, D) int, 1 + the part at each voxel, 0 solvent; voxel size
    ``apix`` Å) and one soft mask per part (:func:`~cryospire_core.models.parts.part_masks`: a
    part with no voxel gets an empty mask) into ``files``."""
    from cryospire_core.io import mrc

    mrc.write_map(files.labels, label_map.astype(np.float32), apix)
    for path, mask in zip(files.masks, parts.part_masks(label_map, apix, n_parts=files.n_parts)):
        mrc.write_map(path, mask, apix)


@dataclass(frozen=True)
class AnalysisFiles:
    """The names of every file :func:`analyze` writes into ``out``: ``k`` state maps, traversals
    of PC 1..``n_pcs`` with ``pc_steps`` maps each, and, with ``n_parts`` > 0, the part maps."""

    out: Path
    k: int
    n_pcs: int
    pc_steps: int
    n_parts: int

    @property
    def pca(self) -> Path:
        return self.out / "pca.npz"

    @property
    def kmeans(self) -> Path:
        return self.out / f"kmeans_{self.k}.npz"

    @property
    def plots(self) -> list[Path]:
        """latent_pca.png, pc_histograms.png, embedding.png."""
        return [self.out / name for name in ("latent_pca.png", "pc_histograms.png", "embedding.png")]

    @property
    def states(self) -> list[Path]:
        return [self.out / f"state_{j:03d}.mrc" for j in range(self.k)]

    def pc_latents(self, pc: int) -> Path:
        return self.out / f"pc{pc}" / "latents.npy"

    def pc_maps(self, pc: int) -> list[Path]:
        return [self.out / f"pc{pc}" / f"vol_{s:03d}.mrc" for s in range(self.pc_steps)]

    @property
    def part_maps(self) -> PartMapFiles:
        """parts/: the part label map and masks."""
        return PartMapFiles(self.out / "parts", self.n_parts)

    def all(self) -> list[Path]:
        traversals = [p for pc in range(1, self.n_pcs + 1) for p in (self.pc_latents(pc), *self.pc_maps(pc))]
        part_maps = self.part_maps.all() if self.n_parts else []
        return [self.pca, self.kmeans, *self.plots, *self.states, *traversals, *part_maps]


def check_outputs(run_dir: str | os.PathLike, n: int, zdim: int, ksample: int, pc_steps: int, n_pcs: int,
                  out_dir: str | os.PathLike | None, found: tuple | None, overwrite: bool) -> AnalysisFiles:
    """The files :func:`analyze` will write for ``n`` latents of size ``zdim`` (``found``: what
    :meth:`~cryospire_core.pipeline.runfolder.RunFolder.part_gaussians` returned), after
    refusing (InputError) to replace any existing one unless ``overwrite``. A link in place of
    RUN/analysis or a folder below the output root is refused always (:func:`~cryospire_core.io.outputs.check_new_outputs`)."""
    run = RunFolder(run_dir)
    out = Path(out_dir) if out_dir is not None else run.analysis_dir
    n_parts = int(found[1].max()) + 1 if found is not None else 0
    files = AnalysisFiles(out, min(int(ksample), n), min(int(n_pcs), zdim), int(pc_steps), n_parts)
    check_new_outputs(files.all(), overwrite, under=out if out_dir is not None else run.root)
    return files


def _render(render_fn: RenderFn, z: np.ndarray) -> np.ndarray:
    vol = np.asarray(render_fn(np.asarray(z, dtype=np.float32)), dtype=np.float32)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise ValueError(f"render_fn must return a (D, D, D) map, got shape {vol.shape}")
    return vol

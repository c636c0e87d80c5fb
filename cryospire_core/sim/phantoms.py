"""Procedural ground truth: multi-domain molecules made of Gaussian beads, in several states.

A bead is an isotropic 3D Gaussian: centre (Å), width sigma (Å) and amplitude (density at its
centre). Each domain is a right-handed helical tube wound along a random smooth curve inside an
ellipsoid, so the molecule has secondary-structure-like detail at the resolution of the box;
domains are arranged asymmetrically, so the hand and the orientation are unambiguous.

A :class:`Phantom` holds the beads once (widths, amplitudes, a domain label each) and, per
state, where every bead is and whether it is present. States are rigid motions of domains
(conformational heterogeneity) or missing domains (compositional heterogeneity). Presets
imitate the CryoBench data sets: ``homogeneous``; ``hinge`` (IgG-1D); ``random-hinge``
(IgG-RL); ``assembly`` (Ribosembly); ``mixed`` (a subunit on or off x a moving domain).

Geometry is set in fractions of the box's field of view (the molecule spans about 60% of it)
and bead widths in pixels (1 to 1.5 px), so a phantom looks the same at any box and pixel size.
:func:`rasterise` renders beads on the map's :class:`~cryospire_core.imaging.lattice.Lattice`,
band-limited exactly like the simulated images: sampled at 2x and Fourier-cropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.interpolate import CubicSpline
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from cryospire_core.imaging.fourier import ifft3_centered, rfft_centered_crop
from cryospire_core.imaging.lattice import Lattice

PRESETS = ("homogeneous", "hinge", "random-hinge", "assembly", "mixed")

# Fine structure, in pixels of the final box: bead width range, helix radius and pitch, spacing
# of beads along the helix, and how much of a domain's ellipsoid the helical tube fills.
SIGMA_PX = (1.0, 1.5)
HELIX_RADIUS_PX = 1.3
HELIX_PITCH_PX = 4.2
BEAD_SPACING_PX = 1.0
FILL = 1.2


@dataclass(frozen=True)
class Phantom:
    """Beads of a molecule and its states.

    sigmas: (G,) Å; amplitudes: (G,) density at a bead's centre; domains: (G,) int, index into
    ``domain_names``; centres: (S, G, 3) float64 Å, (x, y, z) per state; presence: (S, G) float32
    0/1 per state; populations: (S,) fractions summing to 1; box, apix: the lattice it was built
    for; info: how the states were made (hinge point, axes, angles, ...), JSON-serialisable.
    """

    name: str
    box: int
    apix: float
    sigmas: np.ndarray
    amplitudes: np.ndarray
    domains: np.ndarray
    domain_names: tuple[str, ...]
    centres: np.ndarray
    presence: np.ndarray
    populations: np.ndarray
    state_names: tuple[str, ...]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_states(self) -> int:
        return self.centres.shape[0]

    @property
    def lattice(self) -> Lattice:
        """The lattice of the images and ground-truth maps."""
        return Lattice(self.box, self.apix)

    @property
    def n_beads(self) -> int:
        return self.sigmas.shape[0]

    def weights(self, state: int) -> np.ndarray:
        """(G,) amplitudes times presence in ``state``."""
        return self.amplitudes * self.presence[state]

    def integral(self, state: int) -> float:
        """Analytic integral of the density of ``state`` over all space, in density x Å^3."""
        return float(np.sum(self.weights(state) * (2.0 * np.pi) ** 1.5 * self.sigmas**3))


# ---------------------------------------------------------------------------------------------
# Building blocks


@dataclass(frozen=True)
class _Domain:
    """An ellipsoidal domain: centre (3,) and radii (3,) in fractions of the field of view,
    ``axis`` the direction of its first (long) radius."""

    name: str
    centre: tuple[float, float, float]
    axis: tuple[float, float, float]
    radii: tuple[float, float, float]


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _frame(axis: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(3, 3) rotation whose first column is ``axis``; the roll about it is random."""
    a = unit(axis)
    helper = np.array([0.0, 0.0, 1.0]) if abs(a[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    b = unit(np.cross(a, helper))
    c = np.cross(a, b)
    roll = rng.uniform(0, 2 * np.pi)
    b, c = np.cos(roll) * b + np.sin(roll) * c, -np.sin(roll) * b + np.cos(roll) * c
    return np.stack([a, b, c], 1)


def _backbone(rng: np.random.Generator, frame: np.ndarray, radii: np.ndarray, length: float) -> np.ndarray:
    """A smooth random curve (M, 3) px about ``length`` long, inside the ellipsoid centred at 0
    with ``radii`` along the columns of ``frame``.

    Control points drawn uniformly in the ellipsoid are joined in greedy nearest-neighbour
    order (so the curve meanders instead of crossing the domain back and forth) and
    interpolated by a cubic spline; more points are added until the curve is long enough.
    """
    k = 4
    while True:
        u = rng.standard_normal((k, 3))
        u *= (rng.uniform(size=(k, 1)) ** (1 / 3)) / np.linalg.norm(u, axis=1, keepdims=True)
        pts = u * radii
        order = [int(np.argmin(pts[:, 0]))]
        left = set(range(k)) - set(order)
        while left:
            last = pts[order[-1]]
            nxt = min(left, key=lambda j: float(np.sum((pts[j] - last) ** 2)))
            order.append(nxt)
            left.remove(nxt)
        pts = pts[order]
        chord = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))]
        spline = CubicSpline(chord, pts, bc_type="natural")
        t = np.linspace(0.0, chord[-1], max(200, int(chord[-1] * 20)))
        curve = spline(t)
        seg = np.linalg.norm(np.diff(curve, axis=0), axis=1)
        arc = np.r_[0.0, np.cumsum(seg)]
        if arc[-1] >= length or k >= 64:
            curve = curve[arc <= length]
            return curve @ frame.T
        k += 2


def _helix_beads(curve: np.ndarray) -> np.ndarray:
    """Points (g, 3) px of a right-handed helix wound around ``curve`` (M, 3) px, spaced
    ``BEAD_SPACING_PX`` apart along the helix."""
    tang = np.gradient(curve, axis=0)
    tang /= np.linalg.norm(tang, axis=1, keepdims=True)
    # Parallel-transport frame: normals turn no more than the tangent does (no twist).
    normal = np.empty_like(curve)
    n = np.cross(tang[0], [0.0, 0.0, 1.0] if abs(tang[0, 2]) < 0.9 else [1.0, 0.0, 0.0])
    for i in range(len(curve)):
        n = n - np.dot(n, tang[i]) * tang[i]
        n /= np.linalg.norm(n)
        normal[i] = n
    binormal = np.cross(tang, normal)
    arc = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(curve, axis=0), axis=1))]
    phase = 2.0 * np.pi * arc / HELIX_PITCH_PX  # turning from normal to binormal: right-handed
    helix = curve + HELIX_RADIUS_PX * (np.cos(phase)[:, None] * normal + np.sin(phase)[:, None] * binormal)
    h_arc = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(helix, axis=0), axis=1))]
    s = np.arange(0.0, h_arc[-1], BEAD_SPACING_PX)
    return np.stack([np.interp(s, h_arc, helix[:, j]) for j in range(3)], 1)


def _domain_beads(rng: np.random.Generator, dom: _Domain, fov_px: float, frame: np.ndarray | None = None) -> np.ndarray:
    """Bead centres (g, 3) in px for one ellipsoidal domain; ``frame`` (3, 3) orients its
    radii (default: long axis along ``dom.axis``, random roll)."""
    radii = np.asarray(dom.radii) * fov_px
    tube = HELIX_RADIUS_PX + np.mean(SIGMA_PX)
    inner = np.maximum(radii - 0.5 * tube, 0.5)
    volume = 4.0 / 3.0 * np.pi * np.prod(radii)
    length = FILL * volume / (np.pi * tube**2)
    frame = _frame(np.asarray(dom.axis), rng) if frame is None else frame
    curve = _backbone(rng, frame, inner, length)
    return _helix_beads(curve) + np.asarray(dom.centre) * fov_px


def _linker(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bead centres (g, 3) px on the straight segment from ``a`` to ``b`` (both px)."""
    n = max(2, int(np.ceil(np.linalg.norm(b - a) / BEAD_SPACING_PX)) + 1)
    return a + np.linspace(0.0, 1.0, n)[:, None] * (b - a)


@dataclass
class _Model:
    """Beads being assembled, in px (make_phantom converts them to Å)."""

    centres: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def add(self, name: str, pts: np.ndarray) -> None:
        if name not in self.names:
            self.names.append(name)
        self.centres.append(pts)
        self.labels.append(np.full(len(pts), self.names.index(name)))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.centres), np.concatenate(self.labels)


def _uneven_populations(k: int, low: float = 0.01, high: float = 0.13) -> np.ndarray:
    """k fractions summing to 1 spread from ``low`` to ``high`` (Ribosembly-like).

    p_j = low + (high - low) u_j^g on an even grid u in [0, 1]; g is found by bisection so the
    fractions sum to 1 (needs k * low < 1 < k * high).
    """
    u = np.linspace(0.0, 1.0, k)
    lo, hi = 1e-3, 1e3
    for _ in range(200):
        g = np.sqrt(lo * hi)
        total = np.sum(low + (high - low) * u**g)
        lo, hi = (g, hi) if total > 1.0 else (lo, g)
    p = low + (high - low) * u ** np.sqrt(lo * hi)
    return p / p.sum()


def _rotate_about(points: np.ndarray, pivot: np.ndarray, rotvec: np.ndarray) -> np.ndarray:
    """Rotate points (g, 3) about ``pivot`` (3,) by the rotation vector ``rotvec`` (radians)."""
    return (points - pivot) @ Rotation.from_rotvec(rotvec).as_matrix().T + pivot


# ---------------------------------------------------------------------------------------------
# The two molecules: an antibody-like Y (three domains on a hinge) and a complex of subunits.

@dataclass(frozen=True)
class _Arm:
    """A domain made of ellipsoidal segments laid end to end from ``joint`` along ``direction``;
    each next segment turns by ``elbow_deg`` towards ``bend``. segments: (long, side, side)
    radii per segment, fractions of the field of view; ``gap`` separates the joint from it."""

    name: str
    joint: tuple[float, float, float]
    direction: tuple[float, float, float]
    bend: tuple[float, float, float]
    elbow_deg: float
    segments: tuple[tuple[float, float, float], ...]
    gap: float = 0.015

    def ellipsoids(self) -> list[_Domain]:
        u = unit(self.direction)
        turn = Rotation.from_rotvec(unit(np.cross(u, unit(self.bend))) * np.deg2rad(self.elbow_deg)).as_matrix()
        start, out = np.asarray(self.joint) + u * self.gap, []
        for radii in self.segments:
            out.append(_Domain(self.name, tuple(start + u * radii[0]), tuple(u), radii))
            start, u = start + 2 * u * radii[0], turn @ u
        return out


# An antibody-like molecule: two Fab arms with elbows and an Fc, joined at a hinge. The arms
# leave the hinge asymmetrically and the Fab elbows bend to opposite sides of the arms' plane
# (a propeller twist), so the molecule and its mirror image differ clearly at low resolution.
_FC_TOP = (0.0, -0.04, 0.0)
_HINGE_A = (-0.035, 0.01, -0.005)
_HINGE_B = (0.04, 0.0, 0.015)
_ANTIBODY = (
    _Arm("fc", _FC_TOP, (0.1, -1.0, 0.1), (1.0, 0.0, 0.6), 30.0, ((0.065, 0.09, 0.06), (0.06, 0.085, 0.065)), 0.01),
    _Arm("fab_a", _HINGE_A, (-0.8, 0.75, 0.0), (0.0, 0.0, 1.0), 60.0, ((0.07, 0.075, 0.055), (0.07, 0.07, 0.06))),
    _Arm("fab_b", _HINGE_B, (0.85, 0.7, 0.0), (0.0, 0.0, -1.0), 50.0, ((0.065, 0.08, 0.06), (0.065, 0.075, 0.055))),
)
_CAP = _Domain("cap", (0.12, -0.225, 0.085), (0.3, -0.2, 1.0), (0.075, 0.06, 0.05))

_CORE = _Domain("core", (0.0, 0.0, 0.0), (1.0, 0.3, 0.2), (0.17, 0.145, 0.125))
# Subunits of the complex: direction from the core's centre and ellipsoid radii (long first).
_SUBUNITS = (
    ((1.0, 0.35, 0.15), (0.095, 0.07, 0.06)),
    ((-0.55, 0.9, 0.3), (0.085, 0.065, 0.055)),
    ((-0.35, -0.7, 0.8), (0.08, 0.07, 0.055)),
    ((0.2, -0.95, -0.45), (0.1, 0.065, 0.06)),
    ((-0.9, -0.25, -0.6), (0.075, 0.06, 0.055)),
    ((0.35, 0.45, -0.95), (0.09, 0.07, 0.06)),
)


def _antibody(rng: np.random.Generator, fov_px: float, with_cap: bool) -> _Model:
    model = _Model()
    for arm in _ANTIBODY:
        for dom in arm.ellipsoids():
            model.add(dom.name, _domain_beads(rng, dom, fov_px))
    top = np.asarray(_FC_TOP) * fov_px
    # The linkers belong to the Fc: they stay put while a Fab turns about its joint.
    model.add("fc", _linker(top, np.asarray(_HINGE_A) * fov_px))
    model.add("fc", _linker(top, np.asarray(_HINGE_B) * fov_px))
    if with_cap:
        model.add("cap", _domain_beads(rng, _CAP, fov_px))
    return model


def _complex(rng: np.random.Generator, fov_px: float) -> _Model:
    model = _Model()
    core_frame = _frame(np.asarray(_CORE.axis), rng)
    model.add("core", _domain_beads(rng, _CORE, fov_px, core_frame))
    core_r = np.asarray(_CORE.radii)
    for j, (direction, radii) in enumerate(_SUBUNITS):
        u = unit(direction)
        # Distance from the core's centre to its ellipsoid surface along u, then out by most
        # of the subunit's long radius so the two touch without overlapping much.
        local = core_frame.T @ u
        surface = 1.0 / np.sqrt(np.sum((local / core_r) ** 2))
        centre = u * (surface + 0.8 * radii[0])
        dom = _Domain(f"subunit_{j + 1}", tuple(centre), tuple(u), radii)
        model.add(dom.name, _domain_beads(rng, dom, fov_px))
    return model


def hinge_rotvecs(axis: np.ndarray, angles_deg: np.ndarray) -> np.ndarray:
    """Rotation vectors (n, 3), radians: turns by ``angles_deg`` about one ``axis``."""
    return unit(axis)[None] * np.deg2rad(np.asarray(angles_deg, dtype=np.float64))[:, None]


def random_rotvecs(rng: np.random.Generator, n: int, max_angle_deg: float, pivot: np.ndarray,
                    moving: np.ndarray, static: np.ndarray, min_gap: float) -> np.ndarray:
    """Rotation vectors (n, 3) about random axes, angles uniform up to ``max_angle_deg``; the
    first is the resting pose. A placement of ``moving`` (g, 3) about ``pivot`` is drawn again
    when it comes closer to ``static`` than ``min_gap`` (or than at rest, if closer already)."""
    tree = cKDTree(static)
    limit = min(min_gap, float(tree.query(moving)[0].min()))
    out = [np.zeros(3)]
    for _ in range(1000 * n):
        if len(out) == n:
            return np.asarray(out)
        rv = unit(rng.standard_normal(3)) * np.deg2rad(rng.uniform(0.0, max_angle_deg))
        if tree.query(_rotate_about(moving, pivot, rv))[0].min() >= limit:
            out.append(rv)
    raise RuntimeError("could not place the moving domain without clashes")


def compose_states(placements: np.ndarray, presence: list[tuple[str, np.ndarray, float]],
                   pose_tag: str = "hinge") -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Every presence pattern x every placement of the beads.

    placements: (M, G, 3) bead centres per pose; presence: (name, (G,) 0/1, weight) patterns.
    Returns centres (S, G, 3), presence (S, G), names and populations (S,) (a pattern's weight
    shared equally by its poses, normalised to sum 1), S = len(presence) x M, patterns outermost.
    """
    centres, on, names, pops = [], [], [], []
    total = float(sum(w for _, _, w in presence))
    for name, mask, weight in presence:
        for k in range(len(placements)):
            centres.append(placements[k])
            on.append(mask)
            tags = [name] if name else []
            names.append("_".join(tags + ([f"{pose_tag}_{k:03d}"] if len(placements) > 1 else [])) or "state_000")
            pops.append(weight / total / len(placements))
    return np.asarray(centres), np.asarray(on, dtype=np.float64), names, np.asarray(pops)


def rigid_placements(base: np.ndarray, motions: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """(M, G, 3) bead centres: pose k turns each motion's beads by its k-th rotation vector.

    base: (G, 3) resting centres; motions: (moving (G,) bool, pivot (3,), rotvecs (M, 3) radians),
    all with the same M; motions are applied in order (a later one moves what an earlier one moved).
    """
    M = len(motions[0][2]) if motions else 1
    poses = np.repeat(base[None], M, axis=0)
    for moving, pivot, rotvecs in motions:
        for k, rv in enumerate(rotvecs):
            poses[k, moving] = _rotate_about(poses[k, moving], pivot, rv)
    return poses


def all_patterns(n_beads: int, optional: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray, float]]:
    """Every combination of the optional bead groups present or absent, equally weighted, the
    complete molecule first: (name, (G,) 0/1, weight) for :func:`compose_states`."""
    out = []
    for bits in range(2 ** len(optional) - 1, -1, -1):
        on = np.ones(n_beads)
        tags = []
        for j, (name, mask) in enumerate(optional):
            present = (bits >> j) & 1
            on[mask] = present
            tags.append(name if present else f"no_{name}")
        out.append(("_".join(tags), on, 1.0))
    return out


def make_phantom(preset: str, box: int, apix: float, seed: int = 0) -> Phantom:
    """Build the molecule and states of ``preset`` for a box of ``box`` px at ``apix`` Å/px.

    ``seed`` fixes the molecule's fine structure (bead paths, widths, amplitudes, random
    placements), not the images: the same seed gives the same ground truth for any data set.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    rng = np.random.default_rng(seed)
    fov = float(box)  # geometry is in fractions of the field of view, built in px
    model = _complex(rng, fov) if preset == "assembly" else _antibody(rng, fov, with_cap=preset == "mixed")
    base, labels = model.arrays()
    names = tuple(model.names)
    g = len(base)
    sigmas_px = rng.uniform(*SIGMA_PX, size=g)
    amplitudes = rng.uniform(0.7, 1.3, size=g)
    info: dict[str, Any] = {"preset": preset, "phantom_seed": seed}

    if preset == "homogeneous":
        centres, presence, state_names = base[None], np.ones((1, g)), ["state_000"]
    elif preset in ("hinge", "random-hinge", "mixed"):
        moving = labels == names.index("fab_b")
        pivot = np.asarray(_HINGE_B) * fov
        if preset == "random-hinge":
            rotvecs = random_rotvecs(rng, 100, 60.0, pivot, base[moving], base[~moving], 2.0 * SIGMA_PX[1])
            motion = {"max_angle_deg": 60.0, "rotvecs_rad": rotvecs.tolist()}
        else:
            # Swinging the Fab out of the plane of the arms clears the rest of the molecule.
            axis = unit(np.cross(_ANTIBODY[2].direction, [0.0, 0.0, 1.0]))
            angles = np.linspace(-75.0, 75.0, 10 if preset == "mixed" else 100)
            rotvecs = hinge_rotvecs(axis, angles)
            motion = {"axis": axis.tolist(), "angles_deg": angles.tolist()}
        optional = [("cap", labels == names.index("cap"))] if preset == "mixed" else []
        centres, presence, state_names, _ = compose_states(rigid_placements(base, [(moving, pivot, rotvecs)]),
                                                           all_patterns(g, optional))
        info["motion"] = {"domain": "fab_b", "pivot_A": (pivot * apix).tolist(), **motion}
        if optional:
            info["presence"] = {"optional_domains": ["cap"]}
    else:  # assembly
        n_sub = len(_SUBUNITS)
        # 16 distinct subsets of subunits (always with the core), the full complex included.
        patterns = rng.permutation(np.arange(2**n_sub - 1))[:15]
        patterns = np.r_[2**n_sub - 1, patterns]
        bits = (patterns[:, None] >> np.arange(n_sub)) & 1
        presence = np.ones((len(patterns), g))
        for j in range(n_sub):
            sub = labels == names.index(f"subunit_{j + 1}")
            presence[:, sub] = bits[:, j : j + 1]
        centres = np.repeat(base[None], len(patterns), axis=0)
        state_names = ["+".join(["core"] + [f"s{j + 1}" for j in range(n_sub) if b[j]]) for b in bits]
        info["presence"] = {"subunits_present": bits.astype(int).tolist()}

    n_states = len(state_names)
    if preset == "assembly":
        populations = rng.permutation(_uneven_populations(n_states))
    else:
        populations = np.full(n_states, 1.0 / n_states)
    return Phantom(
        name=preset,
        box=int(box),
        apix=float(apix),
        sigmas=sigmas_px * apix,
        amplitudes=amplitudes,
        domains=labels.astype(np.int64),
        domain_names=names,
        centres=np.asarray(centres) * apix,
        presence=np.asarray(presence, dtype=np.float32),
        populations=populations,
        state_names=tuple(state_names),
        info=info,
    )


# ---------------------------------------------------------------------------------------------
# Rendering


def _gaussian_factors(coords: torch.Tensor, centres: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """exp(-(u - c)^2 / (2 s^2)) for grid coordinates u (P,), centres (..., G), widths (G,):
    returns (..., G, P)."""
    d = coords - centres[..., None]
    return torch.exp(-0.5 * (d / sigmas[:, None]) ** 2)


def rasterise(
    centres: np.ndarray,
    sigmas: np.ndarray,
    weights: np.ndarray,
    lattice: Lattice,
    oversample: int = 2,
    device: str | torch.device = "cpu",
    chunk_bytes: int = 64 << 20,
) -> np.ndarray:
    """Density of Gaussian beads on ``lattice``, (D, D, D) float32 (z, y, x).

    centres: (G, 3) Å (x, y, z); sigmas: (G,) Å; weights: (G,) density at each centre.
    The density is sampled at ``oversample`` x the lattice (spacing apix / oversample) and
    Fourier-cropped to the box, so the map holds exactly the frequencies of a D-pixel image;
    voxel values are densities (projection = sum over z in voxel units), the voxel sum times
    apix^3 is the integral. Evaluated separably (a GEMM per z slab), in slabs of about
    ``chunk_bytes``.
    """
    dev = torch.device(device)
    fine = lattice.cropped(lattice.box * int(oversample))  # Fourier-padded: oversample x finer
    P = fine.box
    coords = fine.axis_torch(dev, torch.float64)
    c = torch.as_tensor(np.asarray(centres), dtype=torch.float64, device=dev)
    s = torch.as_tensor(np.asarray(sigmas), dtype=torch.float64, device=dev)
    w = torch.as_tensor(np.asarray(weights), dtype=torch.float64, device=dev)
    keep = w != 0
    c, s, w = c[keep], s[keep], w[keep]
    # Factors under 1e-19 of a bead's peak are set to 0: in float32 they and their products are
    # denormal numbers (a GEMM over them runs many times slower) that no map can show.
    ex, ey, ez = (torch.nn.functional.threshold(_gaussian_factors(coords, c[:, j], s).to(torch.float32), 1e-19, 0.0)
                  for j in range(3))  # (G, P)
    ey_w = ey * w.to(torch.float32)[:, None]
    vol = torch.empty((P, P, P), dtype=torch.float32, device=dev)
    slab = max(1, chunk_bytes // max(1, 4 * P * len(w)))
    for z0 in range(0, P, slab):
        z1 = min(P, z0 + slab)
        t = ez[:, z0:z1].T[:, None, :] * ey_w.T[None, :, :]  # (Z, P_y, G)
        vol[z0:z1] = t @ ex  # (Z, P_y, P_x)
    if oversample > 1:
        vol = ifft3_centered(rfft_centered_crop(vol, lattice.box, ndim=3)) / oversample**3
    return vol.cpu().numpy().astype(np.float32)


def state_volume(
    phantom: Phantom,
    state: int,
    oversample: int = 2,
    device: str | torch.device = "cpu",
    select: np.ndarray | None = None,
) -> np.ndarray:
    """Ground-truth map (D, D, D) float32 of one state on the phantom's lattice.

    select: optional (G,) bool, render only those beads (e.g. one domain).
    """
    w = phantom.weights(state)
    if select is not None:
        w = np.where(select, w, 0.0)
    return rasterise(phantom.centres[state], phantom.sigmas, w, phantom.lattice, oversample, device)


def state_volumes(phantom: Phantom, oversample: int = 2, device: str | torch.device = "cpu") -> Iterator[np.ndarray]:
    """Ground-truth maps (D, D, D) float32 of every state, in state order.

    Beads that sit still and stay present in every state are rendered once and shared
    (rendering is linear in the beads), so only the moving or missing ones cost per state.
    """
    still = np.all(phantom.centres == phantom.centres[:1], axis=(0, 2))
    fixed = still & np.all(phantom.presence == phantom.presence[:1], axis=0)
    common = state_volume(phantom, 0, oversample, device, select=fixed)
    for k in range(phantom.n_states):
        moving = state_volume(phantom, k, oversample, device, select=~fixed) if not fixed.all() else 0.0
        yield common + moving

"""Fast rendering of isotropic Gaussian mixtures: 2D projections and 3D rasterisation.

The mixture is ``V(p) = sum_i m_i exp(-|p - c_i|^2 / (2 s_i^2))`` with centres ``c_i`` (Å, model
frame), widths ``s_i`` (Å) and amplitudes ``m_i``. Every output is sampled on the data lattice
(:class:`~cryospire_core.imaging.lattice.Lattice`): index ``j`` of an axis sits at
``(j - D // 2) * apix`` Å; volumes are (z, y, x), images (y, x).

How it is fast. A Gaussian is separable, so a block of output samples is a sum of outer products
of 1D factors; a block of ``R`` rows by ``T`` columns fed by ``L`` Gaussians is one GEMM
``(R x L) @ (L x T)``. The output is cut into tiles and each tile's GEMM only sees the Gaussians
whose box of ``window`` widths on every axis overlaps the tile (windowing). Each Gaussian is
truncated to that box (its 1D factors are set to 0 beyond ``window`` widths), so the result is
the same whatever the tiling. Truncation error: at most ``exp(-window^2 / 2)`` of a Gaussian's
peak at any sample (5 widths, the default: 3.7e-6; 4.5: 4.0e-5; 4: 3.4e-4); measured against
the dense reference, values and gradients agree to ~3e-5 of their maxima at 5 widths (width
gradients reach ~3e-4 at 4.5 widths, which is why the default is 5).
The (Gaussian, tile) lists are padded to the longest list in a chunk of similar tiles; chunks
are sized so one chunk's work arrays hold about ``CHUNK_ELEMENTS`` scalars.

Gradients come from a custom ``autograd.Function``: its backward pass does two more GEMMs per
tile and the per-axis moment sums by hand, chunk by chunk, so no autograd graph of the big
intermediate arrays is ever built. It keeps the forward pass's 1D factors (at most
``SAVED_FACTORS_MAX`` scalars; beyond that they are recomputed). See :func:`peak_memory_bytes`.

Choosing tiles. With a tile as large as the whole output the method is the plain separable
product (one GEMM per image over all Gaussians); smaller tiles do less arithmetic in smaller
GEMMs with more bookkeeping. :func:`default_tile` holds the rule measured on the CPU.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from cryospire_core.imaging import ctf as ctf_mod
from cryospire_core.imaging import fourier
from cryospire_core.imaging.lattice import Lattice
from cryospire_core.imaging.precision import float32_region, to_float32

#: Default half-window in widths. 5 keeps values and gradients within ~2e-5 of the untruncated
#: mixture (relative to their maxima); 4.5 gives ~2e-5 on values but ~3e-4 on width gradients.
WINDOW_SIGMAS = 5.0

#: Budget (number of scalars) for all the live work arrays of one chunk of tiles (16 MiB in
#: float32): small enough to stay near the caches, large enough for efficient batched GEMMs.
CHUNK_ELEMENTS = 2**22

#: The forward pass keeps its 1D factors for the backward pass (saving the exponentials, ~10-15%
#: of a forward+backward step) when they hold at most this many scalars (1 GiB in float32).
SAVED_FACTORS_MAX = 2**28


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _float32(fn):
    """Run a renderer entry point in float32 under mixed-precision training: autocast off and
    half-precision tensor arguments cast up, because each pixel sums thousands of Gaussians
    (GEMMs) and the CTF goes through FFTs, which bf16/fp16 would round badly."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        args = [to_float32(a) for a in args]
        kwargs = {k: to_float32(v) for k, v in kwargs.items()}
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
        with float32_region(device.type):
            return fn(*args, **kwargs)

    return wrapper


@_float32
def project(
    centres: torch.Tensor,
    widths: torch.Tensor,
    amplitudes: torch.Tensor,
    rotations: torch.Tensor,
    shifts: torch.Tensor,
    lattice: Lattice,
    ctf: torch.Tensor | None = None,
    *,
    window: float = WINDOW_SIGMAS,
    tile: Sequence[int] | None = None,
) -> torch.Tensor:
    """Project the mixture along the beam for a batch of poses.

    centres: (G, 3) or (B, G, 3), Å (x, y, z), model frame.
    widths: (G,), Å.
    amplitudes: (G,) or (B, G).
    rotations: (B, 3, 3) pose matrices A; a centre ``c`` lands at ``(A @ c)[:2]`` (x', y').
    shifts: (B, 2), Å, RELION origin (x, y): the image content is translated by ``-shift``.
    lattice: the images' lattice (D pixels of ``apix`` Å per side).
    ctf: (B, 9) rows of ``ctf.CTF_COLUMNS`` or None (no CTF).
    window, tile: see the module docstring and :func:`default_tile`.

    Returns (B, D, D) real images in the dtype/device of ``centres``. The projection is the line
    integral along z' in voxel units: a Gaussian contributes
    ``m sqrt(2 pi) (s / apix) exp(-r^2 / (2 s^2))`` at each pixel centre.
    """
    images = _splat_images(centres, widths, amplitudes, rotations, shifts, lattice, window, tile)
    if ctf is None:
        return images
    box = lattice.box
    # A CTF is a circular convolution, which commutes with the roll between centred and
    # uncentred layouts: filter the uncentred half spectrum of the real image, no rolls needed.
    ky = torch.fft.fftfreq(box, device=images.device, dtype=images.dtype)
    kx = torch.fft.rfftfreq(box, device=images.device, dtype=images.dtype)
    half = torch.stack(torch.meshgrid(kx, ky, indexing="xy"), -1)  # (D, D // 2 + 1, 2): (kx, ky)
    return torch.fft.irfft2(torch.fft.rfft2(images) * _lattice_ctf(ctf, half, lattice.apix), s=(box, box))


@_float32
def project_fourier(
    centres: torch.Tensor,
    widths: torch.Tensor,
    amplitudes: torch.Tensor,
    rotations: torch.Tensor,
    shifts: torch.Tensor,
    lattice: Lattice,
    ctf: torch.Tensor | None = None,
    *,
    window: float = WINDOW_SIGMAS,
    tile: Sequence[int] | None = None,
) -> torch.Tensor:
    """Like :func:`project` but returns the centred 2D FFT of the image after the CTF.

    Returns (B, D, D) complex. Saves the inverse FFT when the loss is computed in Fourier space
    (Parseval: ``sum |x|^2 = sum |fft2_centered(x)|^2 / D^2``).
    """
    images = _splat_images(centres, widths, amplitudes, rotations, shifts, lattice, window, tile)
    spectrum = fourier.fft2_centered(images)
    if ctf is None:
        return spectrum
    return spectrum * ctf_values(ctf, lattice, images.dtype)


def ctf_values(ctf: torch.Tensor, lattice: Lattice, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """CTF (B, D, D) on the centred 2D frequency lattice of a D-pixel image on ``lattice``.

    ctf: (B, 9) rows of ``ctf.CTF_COLUMNS``. See :func:`_lattice_ctf` for the Nyquist detail.
    """
    return _lattice_ctf(ctf, fourier.freq_grid_2d(lattice.box, device=ctf.device, dtype=dtype), lattice.apix)


def _lattice_ctf(ctf: torch.Tensor, freqs: torch.Tensor, apix: float) -> torch.Tensor:
    """CTF (B, H, W) at lattice frequencies (H, W, 2) cycles/px, averaged with the opposite one.

    The average changes nothing but the Nyquist row and column of an even box, where the
    opposite of (kx, -1/2) wraps to (-kx, -1/2): there an astigmatic CTF is not symmetric, and
    without the average the product with a real image's spectrum would not be the spectrum of a
    real image (:func:`project_fourier` would then differ from the FFT of :func:`project`).
    """

    def wrap(f):  # into [-1/2, 1/2)
        return torch.remainder(f + 0.5, 1.0) - 0.5

    return 0.5 * (ctf_mod.compute_ctf(wrap(freqs) / apix, ctf) + ctf_mod.compute_ctf(wrap(-freqs) / apix, ctf))


@_float32
def rasterize(
    centres: torch.Tensor,
    widths: torch.Tensor,
    amplitudes: torch.Tensor,
    lattice: Lattice,
    *,
    window: float = WINDOW_SIGMAS,
    tile: Sequence[int] | None = None,
) -> torch.Tensor:
    """Sample the mixture on the D^3 ``lattice``.

    centres: (G, 3) Å (x, y, z), or (B, G, 3) for B volumes at once.
    widths: (G,) Å. amplitudes: (G,) or (B, G).
    Returns (D, D, D) (or (B, D, D, D) when centres or amplitudes are batched), array order
    (z, y, x); voxel ``i`` at ``(i - D // 2) * apix`` Å on each axis.
    """
    batched = centres.dim() == 3 or amplitudes.dim() == 2
    c = centres if centres.dim() == 3 else centres[None]
    m = amplitudes if amplitudes.dim() == 2 else amplitudes[None]
    n = max(c.shape[0], m.shape[0])
    c = c.expand(n, -1, -1)
    m = m.expand(n, -1)
    G = c.shape[1]
    # Index coordinates in array order (z, y, x).
    u = lattice.index(c.flip(-1))
    widths_px = widths / lattice.apix
    s_px = widths_px.expand(n, G)
    t = tuple(tile) if tile is not None else default_tile(3, lattice.box, _typical_width_px(widths_px), window)
    vol = splat(u, s_px, m, lattice.shape, t, window)
    return vol if batched else vol[0]


def default_tile(ndim: int, box: int, width_px: float, window: float = WINDOW_SIGMAS) -> tuple[int, ...]:
    """Tile shape (one size per output axis) used when ``tile`` is not given.

    ndim: 2 for images (y, x), 3 for volumes (z, y, x); width_px: a typical large width in pixels
    (callers pass the 90th percentile). The rule follows single-thread CPU timings of
    benchmarks/render.py at box 64-256 with widths 0.5-1, 1-2, 2-4 and 4-6 pixels: the best
    tile side grows with the window radius r = window * width_px (images: about 1.6 r; volumes:
    a flatter tile). It was not measured on a GPU.
    """
    r = max(window * width_px, 1.0)
    p = 2 ** round(math.log2(r))
    if ndim == 2:
        t = min(max(2 ** round(math.log2(1.6 * r)), 8), 64)
        return (min(t, box), min(t, box))
    return (min(max(p, 8), 16, box), min(max(2 * p, 16), 32, box), min(max(2 * p, 16), 32, box))


def _typical_width_px(s_px: torch.Tensor) -> float:
    """90th percentile of the widths (pixels), the width the default tile is chosen for."""
    if s_px.numel() == 0:
        return 1.0
    return float(torch.quantile(s_px.detach().reshape(-1).float(), 0.9))


def peak_memory_bytes(
    n_groups: int,
    n_gaussians: int,
    shape: Sequence[int],
    tile: Sequence[int],
    width_px: float,
    window: float = WINDOW_SIGMAS,
    itemsize: int = 4,
) -> int:
    """Estimate of the renderer's own peak memory (bytes) for one forward+backward call.

    n_groups: images (or volumes) in the call; n_gaussians: G; shape: the output of one group;
    width_px: typical width in pixels. Counts the output, its gradient and padded copies,
    per-instance inputs/gradients/gathers (~12 scalars each), the pair lists while they are
    sorted (~8 int64 per pair), the saved factors and two chunks' work arrays. Each instance
    overlaps about prod(1 + 2 r / t) tiles (r = window * width_px); padding adds ~20%.
    """
    out = n_groups * math.prod(-(-d // t) * t for d, t in zip(shape, tile))
    inst = n_groups * n_gaussians
    pairs = 1.2 * inst * math.prod(1.0 + 2.0 * window * width_px / t for t in tile)
    saved = pairs * sum(tile)
    if saved > SAVED_FACTORS_MAX:
        saved = 0
    return int((4 * out + 12 * inst + saved + 2 * CHUNK_ELEMENTS) * itemsize + 8 * pairs * 8)


# --------------------------------------------------------------------------------------------
# Projection geometry
# --------------------------------------------------------------------------------------------


def _splat_images(centres, widths, amplitudes, rotations, shifts, lattice: Lattice, window, tile) -> torch.Tensor:
    """Rotate, shift and splat; (B, D, D) on ``lattice`` before the CTF."""
    B = rotations.shape[0]
    G = widths.shape[0]
    expected = {"rotations": (rotations, (B, 3, 3)), "shifts": (shifts, (B, 2)), "widths": (widths, (G,))}
    expected["centres"] = (centres, (B, G, 3) if centres.dim() == 3 else (G, 3))
    expected["amplitudes"] = (amplitudes, (B, G) if amplitudes.dim() == 2 else (G,))
    for name, (x, want) in expected.items():
        if tuple(x.shape) != want:
            raise ValueError(f"project: {name} must have shape {want}, got {tuple(x.shape)}")
    c = centres if centres.dim() == 3 else centres[None].expand(B, -1, -1)
    m = amplitudes if amplitudes.dim() == 2 else amplitudes[None].expand(B, -1)
    rotated = torch.einsum("bij,bgj->bgi", rotations[:, :2, :].to(c.dtype), c)  # (B, G, 2): x', y'
    # The image content moves by -shift, i.e. every centre moves by -shift.
    xy = rotated - shifts.to(c.dtype)[:, None, :]
    u = lattice.index(xy.flip(-1))  # (row, col) = (y, x) index coordinates
    widths_px = widths / lattice.apix
    s_px = widths_px.expand(B, G)
    # Line integral along z' in voxel units: sqrt(2 pi) s / apix.
    weight = m * (math.sqrt(2.0 * math.pi) * s_px)
    t = tuple(tile) if tile is not None else default_tile(2, lattice.box, _typical_width_px(widths_px), window)
    return splat(u, s_px, weight, (lattice.box, lattice.box), t, window)


# --------------------------------------------------------------------------------------------
# The windowed separable splatting engine (any number of axes)
# --------------------------------------------------------------------------------------------


def splat(
    u: torch.Tensor,
    s: torch.Tensor,
    w: torch.Tensor,
    shape: Sequence[int],
    tile: Sequence[int],
    window: float = WINDOW_SIGMAS,
) -> torch.Tensor:
    """Sum of isotropic Gaussians sampled on an integer lattice, in groups.

    u: (N, G, k) centres in index coordinates (array order); s: (N, G) widths in samples;
    w: (N, G) peak values. shape: k output sizes; tile: k tile sizes.
    Returns (N, *shape): ``out[n, p] = sum_g w[n,g] exp(-|p - u[n,g]|^2 / (2 s[n,g]^2))``
    with each Gaussian cut to 0 beyond ``window`` widths on any axis. Differentiable in u, s, w.
    """
    shape = tuple(int(d) for d in shape)
    tile = tuple(max(1, min(int(t), d)) for t, d in zip(tile, shape))
    if len(shape) < 2 or len(tile) != len(shape) or u.shape[-1] != len(shape):
        raise ValueError(f"splat: need k >= 2 axes with matching tile, got shape {shape} tile {tile} u {tuple(u.shape)}")
    return _WindowedSplat.apply(u, s, w, shape, tile, float(window))


class TilePlan:
    """Which Gaussian instances each output tile sees, and the chunks the tiles are processed in.

    Built from u (N, G, k) centres in index coordinates and s (N, G) widths in samples: an
    instance is paired with every tile that its box of ``window`` widths on each axis overlaps.
    inst: (P,) flat instance index of each pair, grouped by tile; tiles: (T,) flat tile ids
    (group-major) of the non-empty tiles by decreasing list length; starts/counts: (T,) each tile's
    segment of ``inst``; chunks: (first tile, number of tiles, padded list length), sized so one
    chunk's work arrays hold about ``CHUNK_ELEMENTS`` scalars.
    """

    def __init__(self, u: torch.Tensor, s: torch.Tensor, shape: Sequence[int], tile: Sequence[int], window: float):
        N, G, k = u.shape
        dev = u.device
        self.shape, self.tile, self.k, self.window = tuple(shape), tuple(tile), k, window
        self.ntiles = tuple(-(-d // t) for d, t in zip(shape, tile))
        per_group = math.prod(self.ntiles)
        r = (window * s).reshape(-1)
        uf = u.reshape(-1, k)
        first_tile, n_tiles = [], []
        count = torch.ones(N * G, dtype=torch.long, device=dev)
        for a in range(k):
            lo = torch.ceil(uf[:, a] - r).clamp(min=0)
            hi = torch.floor(uf[:, a] + r).clamp(max=shape[a] - 1)
            ok = (lo <= hi) & torch.isfinite(uf[:, a])
            t0 = torch.where(ok, lo, 0.0).long() // tile[a]
            t1 = torch.where(ok, hi, 0.0).long() // tile[a]
            n = torch.where(ok, t1 - t0 + 1, 0)
            first_tile.append(t0)
            n_tiles.append(n)
            count = count * n
        inst = torch.repeat_interleave(torch.arange(N * G, device=dev), count)
        j = torch.arange(inst.numel(), device=dev) - (torch.cumsum(count, 0) - count)[inst]
        tid = (inst // G) * per_group
        # Mixed-radix decomposition of the pair's rank inside its instance, last axis fastest.
        stride = 1
        for a in reversed(range(k)):
            na = n_tiles[a][inst]
            tid += (first_tile[a][inst] + j % na) * stride
            j = j // na
            stride *= self.ntiles[a]
        tid, order = torch.sort(tid)
        self.inst = inst[order]
        tiles, counts = torch.unique_consecutive(tid, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        counts, by_len = torch.sort(counts, descending=True)
        self.tiles, self.counts, self.starts = tiles[by_len], counts, starts[by_len]
        # Scalars per padded pair in a chunk's largest live arrays (backward pass).
        per_pair = 3 * sum(tile) + 2 * math.prod(tile[:-1]) + 2 * tile[-1] + 4 * k + 8
        self.chunks: list[tuple[int, int, int]] = []
        lengths = counts.tolist()
        i = 0
        while i < len(lengths):
            L = lengths[i]
            n = max(1, min(len(lengths) - i, CHUNK_ELEMENTS // (L * per_pair)))
            self.chunks.append((i, n, L))
            i += n

    @property
    def factor_elements(self) -> int:
        """Scalars in the 1D factors of all chunks (padding included)."""
        return sum(self.tile) * sum(n * L for _, n, L in self.chunks)

    @property
    def gemm_flops(self) -> int:
        """Floating-point operations of the forward GEMMs, padding included (backward: twice this)."""
        return 2 * math.prod(self.tile) * sum(n * L for _, n, L in self.chunks)

    def chunk(self, i: int, n: int, L: int):
        """One chunk: flat instance ids (n * L,), validity (n, L) 0/1, and for its n tiles the
        group (n,) and per-axis tile indices k x (n,)."""
        tl = self.tiles[i : i + n]
        ar = torch.arange(L, device=tl.device)
        valid = ar[None, :] < self.counts[i : i + n, None]
        idx = torch.where(valid, self.starts[i : i + n, None] + ar[None, :], self.starts[i : i + n, None])
        pid = self.inst.index_select(0, idx.reshape(-1))
        local = tl % math.prod(self.ntiles)
        index = []
        for a in reversed(range(self.k)):
            index.insert(0, local % self.ntiles[a])
            local = local // self.ntiles[a]
        return pid, valid, tl // math.prod(self.ntiles), index

    def tiles_of(self, group: torch.Tensor, index: list[torch.Tensor]) -> tuple:
        """Key selecting n tiles from :meth:`tiled_view`: ``tiled_view(x)[key]`` is (n, *tile)."""
        return (group,) + tuple(v for a in range(self.k) for v in (index[a], slice(None)))

    def tiled_view(self, x: torch.Tensor) -> torch.Tensor:
        """View of x (N, *padded shape) as (N, ntiles_0, tile_0, ntiles_1, tile_1, ...)."""
        return x.view(x.shape[0], *[v for a in range(self.k) for v in (self.ntiles[a], self.tile[a])])

    @property
    def padded_shape(self) -> tuple[int, ...]:
        return tuple(nt * t for nt, t in zip(self.ntiles, self.tile))


def _gather(x: torch.Tensor, pid: torch.Tensor, n: int) -> torch.Tensor:
    """x (N,) at flat instance ids pid (n * L,) -> (n, L)."""
    return x.index_select(0, pid).view(n, -1)


def _factors(plan: TilePlan, origins, ucols, neg_inv2, keep_offsets: bool):
    """Per-axis 1D factors (n, t_a, L) for one chunk and, if asked, the offsets d = p - u.

    ucols: k x (n, L) centres; neg_inv2: (n, L) = -1 / (2 s^2). Factors are zero beyond
    ``window`` widths: the rendered function is then the truncated mixture whatever the tiling,
    and no denormal numbers (very slow on CPUs) reach the GEMMs.
    """
    floor = math.exp(-0.5 * plan.window**2)
    fs, ds = [], []
    for a, t in enumerate(plan.tile):
        d = _offsets(origins[a], t, ucols[a])
        q = d * d if keep_offsets else d.square_()
        f = q.mul_(neg_inv2[:, None, :]).exp_()
        fs.append(torch.nn.functional.threshold_(f, floor, 0.0))
        ds.append(d)
    return fs, ds


def _offsets(origin: torch.Tensor, t: int, ua: torch.Tensor) -> torch.Tensor:
    """d = p - u (n, t, L) for the t samples of each tile from origin (n,), centres ua (n, L)."""
    coord = origin[:, None].to(ua.dtype) + torch.arange(t, device=ua.device, dtype=ua.dtype)[None, :]
    return coord[:, :, None] - ua[:, None, :]


def _row_product(fs, w=None):
    """Product of the factors of all axes but the last, times w (n, L) if given: (n, R, L)."""
    rows = fs[0] if w is None else fs[0] * w[:, None, :]
    for f in fs[1:-1]:
        rows = (rows[:, :, None, :] * f[:, None, :, :]).reshape(rows.shape[0], -1, rows.shape[-1])
    return rows


def _moments(f: torch.Tensor, d: torch.Tensor, c: torch.Tensor, need_m1: bool, need_m2: bool):
    """sum_t f c, sum_t f d c, sum_t f d^2 c over axis 1 of (n, t, L) arrays; c is overwritten."""
    c.mul_(f)
    m0 = c.sum(1)
    m1 = m2 = None
    if need_m1 or need_m2:
        c.mul_(d)
        m1 = c.sum(1)
        if need_m2:
            m2 = c.mul_(d).sum(1)
    return m0, m1, m2


class _WindowedSplat(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, s, w, shape, tile, window):
        N, G, k = u.shape
        plan = TilePlan(u.detach(), s.detach(), shape, tile, window)
        ucols = u.detach().reshape(-1, k).T.contiguous()  # (k, N * G)
        neg_inv2 = -0.5 / s.detach().reshape(-1) ** 2
        wf = w.detach().reshape(-1)
        out = torch.zeros(N, *plan.padded_shape, dtype=u.dtype, device=u.device)
        tiled = plan.tiled_view(out)
        # The factors are kept for the backward pass (it then skips the exponentials).
        keep = any(ctx.needs_input_grad[:3]) and plan.factor_elements <= SAVED_FACTORS_MAX
        ctx.factors = []
        for i, n, L in plan.chunks:
            pid, valid, group, index = plan.chunk(i, n, L)
            origins = [index[a] * t for a, t in enumerate(tile)]
            fs, _ = _factors(plan, origins, [_gather(x, pid, n) for x in ucols], _gather(neg_inv2, pid, n), False)
            rows = _row_product(fs, _gather(wf, pid, n) * valid)
            tiled[plan.tiles_of(group, index)] = torch.bmm(rows, fs[-1].transpose(1, 2)).view(n, *tile)
            if keep:
                ctx.factors.append(fs)
        ctx.plan = plan
        ctx.save_for_backward(u, s, w)
        if plan.padded_shape == tuple(shape):
            return out
        return out[(slice(None),) + tuple(slice(0, d) for d in shape)].contiguous()

    @staticmethod
    def backward(ctx, grad):
        u, s, w = ctx.saved_tensors
        plan = ctx.plan
        N, G, k = u.shape
        tile = plan.tile
        need_u, need_s, need_w = ctx.needs_input_grad[:3]
        pad = [v for d, p in zip(reversed(plan.shape), reversed(plan.padded_shape)) for v in (0, p - d)]
        grad_tiled = plan.tiled_view(torch.nn.functional.pad(grad, pad) if any(pad) else grad.contiguous())
        R = math.prod(tile[:-1])
        ucols = u.reshape(-1, k).T.contiguous()
        sf, wf = s.reshape(-1), w.reshape(-1)
        neg_inv2 = -0.5 / sf**2
        gu = torch.zeros_like(ucols)
        gs = torch.zeros_like(sf)
        gw = torch.zeros_like(wf)
        for c, (i, n, L) in enumerate(plan.chunks):
            pid, valid, group, index = plan.chunk(i, n, L)
            origins = [index[a] * t for a, t in enumerate(tile)]
            ucol = [_gather(x, pid, n) for x in ucols]
            if ctx.factors:
                fs = ctx.factors[c]
                ds = [_offsets(origins[a], t, ucol[a]) for a, t in enumerate(tile)]
            else:
                fs, ds = _factors(plan, origins, ucol, _gather(neg_inv2, pid, n), True)
            g = grad_tiled[plan.tiles_of(group, index)].reshape(n, R, tile[-1])
            rows = _row_product(fs)
            # Last axis: B[x, l] = sum_r g[r, x] rows[r, l] (r runs over the other axes).
            m0, m1x, m2x = _moments(fs[-1], ds[-1], torch.bmm(g.transpose(1, 2), rows), need_u, need_s)
            m1, m2 = [m1x], [m2x]
            if need_u or need_s:
                # Other axes: A[r, l] = sum_x g[r, x] f_x[x, l], contracted over the remaining row axes.
                A = torch.bmm(g, fs[-1]).view(n, *tile[:-1], L)
                for a in reversed(range(k - 1)):
                    C = A
                    for b in range(k - 1):
                        if b != a:
                            shape_b = [n] + [1] * (k - 1) + [L]
                            shape_b[1 + b] = tile[b]
                            C = C * fs[b].view(shape_b)
                    other = [1 + b for b in range(k - 1) if b != a]
                    C = C.sum(other) if other else C
                    _, m1a, m2a = _moments(fs[a], ds[a], C, need_u, need_s)
                    m1.insert(0, m1a)
                    m2.insert(0, m2a)
            flat = pid
            if need_w:
                gw.index_add_(0, flat, (m0 * valid).reshape(-1))
            if need_u or need_s:
                # d/du f = f d / s^2 and d/ds f = f d^2 / s^3 on each axis.
                scale = _gather(wf, pid, n) * valid * (-2.0 * _gather(neg_inv2, pid, n))
                if need_u:
                    for a in range(k):
                        gu[a].index_add_(0, flat, (m1[a] * scale).reshape(-1))
                if need_s:
                    gs.index_add_(0, flat, (sum(m2) * scale / _gather(sf, pid, n)).reshape(-1))
        return (
            gu.T.reshape(u.shape) if need_u else None,
            gs.reshape(s.shape) if need_s else None,
            gw.reshape(w.shape) if need_w else None,
            None,
            None,
            None,
        )

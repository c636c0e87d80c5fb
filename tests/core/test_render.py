"""Gaussian-mixture renderer: geometry conventions, fast vs dense reference, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryospire_core.imaging import fourier, render
from cryospire_core.imaging.ctf import make_ctf_params
from cryospire_core.imaging.geometry import euler_to_matrix, random_rotations
from cryospire_core.imaging.lattice import Lattice
from cryospire_core.imaging.render_reference import project_dense, rasterize_dense

F64 = torch.float64


def mixture(G: int, radius: float, smin: float, smax: float, seed: int, dtype=F64):
    """G Gaussians with centres in a ball of ``radius`` Å, widths in [smin, smax] Å."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(G, 3, generator=g, dtype=dtype)
    v = v / v.norm(dim=1, keepdim=True) * torch.rand(G, 1, generator=g, dtype=dtype) ** (1 / 3) * radius
    s = smin + (smax - smin) * torch.rand(G, generator=g, dtype=dtype)
    m = 0.5 + torch.rand(G, generator=g, dtype=dtype)
    return v, s, m


def poses(B: int, seed: int, dtype=F64):
    return torch.tensor(random_rotations(B, np.random.default_rng(seed)), dtype=dtype)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the largest reference value."""
    return float((a - b).abs().max() / b.abs().max())


def test_identity_projection_is_the_z_sum_of_the_volume():
    lattice = Lattice(24, 1.5)
    apix = lattice.apix
    c, s, m = mixture(30, radius=5 * apix, smin=1.0 * apix, smax=2.0 * apix, seed=1)
    vol = render.rasterize(c, s, m, lattice)
    img = render.project(c, s, m, torch.eye(3, dtype=F64)[None], torch.zeros(1, 2, dtype=F64), lattice)[0]
    assert rel(img, vol.sum(0)) < 1e-3
    # The line integral is in voxel units: pixel sum of the image == voxel sum of the volume.
    assert abs(float(img.sum() / vol.sum()) - 1.0) < 1e-3


def _dft3_at(vol: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """3D DFT of a centred (z, y, x) volume at off-grid frequencies k (F, 3) = (kx, ky, kz) cycles/px."""
    D = vol.shape[0]
    r = torch.arange(D, dtype=F64) - D // 2
    ex, ey, ez = (torch.exp(-2j * math.pi * k[:, a, None] * r[None, :]) for a in range(3))
    return torch.einsum("fz,fy,fx,zyx->f", ez, ey, ex, vol.to(torch.complex128))


def test_projection_is_the_fourier_slice_of_the_rasterised_volume():
    # Rotation convention: image frequency (kx, ky) == volume frequency A.T @ (kx, ky, 0).
    D, apix = 32, 2.0
    c, s, m = mixture(20, radius=5 * apix, smin=1.5 * apix, smax=2.0 * apix, seed=2)
    vol = render.rasterize(c, s, m, Lattice(D, apix))
    A = torch.cat([poses(2, seed=3), torch.tensor(euler_to_matrix([30.0], [70.0], [-40.0]))])
    img_ft = fourier.fft2_centered(render.project(c, s, m, A, torch.zeros(3, 2, dtype=F64), Lattice(D, apix)))
    k2 = fourier.freq_grid_2d(D, dtype=F64).reshape(-1, 2)
    # Below 0.4 cycles/px the aliases of a >= 1.5 px Gaussian are < 1e-6 of its peak.
    keep = k2.norm(dim=1) < 0.4
    k3 = torch.cat([k2, torch.zeros(len(k2), 1, dtype=F64)], 1)[keep]
    for b in range(len(A)):
        slice_ = _dft3_at(vol, k3 @ A[b])  # rows: (A.T @ k)^T = k^T A
        got = img_ft[b].reshape(-1)[keep]
        assert rel(got, slice_) < 1e-4
        wrong = _dft3_at(vol, k3 @ A[b].T)  # the transposed convention must fail
        assert rel(got, wrong) > 1e-2


def _inputs(per_image: bool, with_ctf: bool, with_shifts: bool, dtype=F64):
    B, D, apix = 3, 20, 2.0
    c, s, m = mixture(25, radius=4 * apix, smin=1.0 * apix, smax=2.0 * apix, seed=4, dtype=dtype)
    g = torch.Generator().manual_seed(5)
    if per_image:
        c = c[None] + 0.8 * apix * torch.randn(B, *c.shape, generator=g, dtype=dtype)
        m = m[None] * (0.5 + torch.rand(B, m.shape[0], generator=g, dtype=dtype))
    shifts = (3.0 * apix * torch.randn(B, 2, generator=g, dtype=dtype)) if with_shifts else torch.zeros(B, 2, dtype=dtype)
    ctf = None
    if with_ctf:
        ctf = torch.tensor(make_ctf_params(B, [8000.0, 12000.0, 15000.0], [7500.0, 12500.0, 14000.0], [10.0, 45.0, 80.0],
                                           bfactor=20.0), dtype=dtype)
    return dict(centres=c, widths=s, amplitudes=m, rotations=poses(B, seed=6, dtype=dtype), shifts=shifts,
                lattice=Lattice(D, apix), ctf=ctf)


def _value_and_grads(fn, kw: dict, weights: torch.Tensor):
    kw = {k: (v.detach().clone().requires_grad_(True) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    out = fn(**kw)
    (out * weights).sum().backward()
    return out.detach(), {k: v.grad for k, v in kw.items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("with_ctf,with_shifts", [(False, False), (True, True), (False, True)])
def test_fast_projection_matches_dense_reference(per_image, with_ctf, with_shifts):
    kw = _inputs(per_image, with_ctf, with_shifts)
    D = kw["lattice"].box
    weights = torch.randn(3, D, D, generator=torch.Generator().manual_seed(7), dtype=F64)
    ref, gref = _value_and_grads(project_dense, kw, weights)
    for tile in [None, (7, 5), (20, 20)]:
        out, g = _value_and_grads(lambda **a: render.project(**a, tile=tile), kw, weights)
        assert rel(out, ref) < 1e-4
        for name, gr in gref.items():
            assert g[name].shape == gr.shape
            assert rel(g[name], gr) < 1e-4, (tile, name)


def test_float32_projection_matches_dense_reference():
    kw = _inputs(per_image=True, with_ctf=True, with_shifts=True, dtype=torch.float32)
    D = kw["lattice"].box
    weights = torch.randn(3, D, D, generator=torch.Generator().manual_seed(8))
    ref, gref = _value_and_grads(project_dense, kw, weights)
    out, g = _value_and_grads(render.project, kw, weights)
    assert out.dtype == torch.float32
    assert rel(out, ref) < 1e-4
    for name in ("centres", "widths", "amplitudes"):
        assert rel(g[name], gref[name]) < 1e-4, name


def test_project_fourier_is_the_fft_of_project():
    kw = _inputs(per_image=False, with_ctf=True, with_shifts=True)
    spec = render.project_fourier(**kw)
    assert torch.allclose(spec, fourier.fft2_centered(render.project(**kw)), atol=1e-9 * float(spec.abs().max()))


def test_shift_moves_the_image_by_minus_shift():
    kw = _inputs(per_image=False, with_ctf=False, with_shifts=False)
    apix = kw["lattice"].apix
    base = render.project(**kw)
    # Integer-pixel origin (+3 px in x, -2 px in y): content moves by (-3, +2) pixels.
    moved = render.project(**{**kw, "shifts": torch.tensor([[3.0, -2.0]] * 3, dtype=F64) * apix})
    assert rel(moved[:, 2:, :-3], base[:, :-2, 3:]) < 1e-12
    # Sub-pixel shift == Fourier phase shift by -shift (the convention in fourier.shift_phase),
    # for a mixture that stays well inside the box and is smooth enough not to alias.
    c, s, m = mixture(15, radius=4.0, smin=2.0, smax=2.5, seed=12)
    wide = dict(centres=c, widths=s, amplitudes=m, rotations=poses(3, seed=13), lattice=Lattice(40, 1.0))
    shifts = torch.tensor([[0.4, -1.3], [2.5, 0.7], [-0.2, 0.0]], dtype=F64)
    got = render.project(**wide, shifts=shifts)
    freqs = fourier.freq_grid_2d(40, dtype=F64)
    centred = render.project(**wide, shifts=torch.zeros(3, 2, dtype=F64))
    expect = fourier.ifft2_centered(fourier.fft2_centered(centred) * fourier.shift_phase(freqs, -shifts))
    assert rel(got, expect) < 1e-5


def test_pure_amplitude_contrast_ctf_negates_the_image():
    kw = _inputs(per_image=False, with_ctf=False, with_shifts=True)
    ctf = torch.tensor(make_ctf_params(3, 0.0, 0.0, 0.0, cs=0.0, amplitude_contrast=1.0), dtype=F64)  # CTF == -1
    assert torch.allclose(render.project(**{**kw, "ctf": ctf}), -render.project(**kw), atol=1e-12)


def test_gradcheck_float64():
    kw = _inputs(per_image=True, with_ctf=True, with_shifts=True)
    B, D = 2, 10
    args = dict(kw, lattice=Lattice(D, 3.0), rotations=kw["rotations"][:B], shifts=kw["shifts"][:B], ctf=kw["ctf"][:B],
                centres=kw["centres"][:B, :6], amplitudes=kw["amplitudes"][:B, :6], widths=kw["widths"][:6] * 1.5)
    names = ["centres", "widths", "amplitudes", "rotations", "shifts"]
    leaves = [args[n].detach().clone().requires_grad_(True) for n in names]

    def fn(*xs):
        return render.project(**{**args, **dict(zip(names, xs))}, tile=(4, 3))

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-4)

    def vol(c, s, m):
        return render.rasterize(c, s, m, Lattice(8, 3.0), tile=(3, 4, 5))

    inputs = [x.detach().clone().requires_grad_(True) for x in (args["centres"][0], args["widths"], args["amplitudes"][0])]
    # fast_mode checks random vector-Jacobian products: the full Jacobian has 512 rows here.
    assert torch.autograd.gradcheck(vol, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_rasterize_matches_dense_reference_including_box_edges():
    D, apix = 20, 1.5
    c, s, m = mixture(40, radius=6 * apix, smin=1.0 * apix, smax=2.0 * apix, seed=9)
    # Straddling faces, an edge and a corner, and one wholly outside the box.
    edge = torch.tensor([[9.5, 0.0, 0.0], [0.0, -10.5, 2.0], [-10.0, 9.0, 0.0], [9.8, 9.8, -10.2], [30.0, 0.0, 0.0]],
                        dtype=F64) * apix
    c = torch.cat([c, edge])
    s = torch.cat([s, torch.full((5,), 1.5 * apix, dtype=F64)])
    m = torch.cat([m, torch.full((5,), 3.0, dtype=F64)])
    weights = torch.randn(D, D, D, generator=torch.Generator().manual_seed(10), dtype=F64)
    kw = dict(centres=c, widths=s, amplitudes=m, lattice=Lattice(D, apix))
    ref, gref = _value_and_grads(rasterize_dense, kw, weights)
    for tile in [None, (4, 4, 20), (3, 5, 7)]:
        out, g = _value_and_grads(lambda **a: render.rasterize(**a, tile=tile), kw, weights)
        assert out.shape == (D, D, D)
        assert rel(out, ref) < 1e-4
        for name in ("centres", "widths", "amplitudes"):
            assert rel(g[name], gref[name]) < 1e-4, (tile, name)
    # Array order is (z, y, x): the Gaussian at x = +9.5 px peaks at the high x end.
    assert int(out[D // 2, D // 2].argmax()) == D - 1


def test_batched_rasterize_equals_one_by_one():
    c, s, m = mixture(30, radius=8.0, smin=1.5, smax=3.0, seed=11)
    cs = torch.stack([c, c + 1.0, c.flip(0)])
    ms = torch.stack([m, 2 * m, m])
    lattice = Lattice(16, 1.5)
    vols = render.rasterize(cs, s, ms, lattice)
    assert vols.shape == (3, 16, 16, 16)
    for b in range(3):
        assert torch.allclose(vols[b], render.rasterize(cs[b], s, ms[b], lattice), atol=1e-12)


def test_no_gaussians_renders_zeros():
    empty = torch.zeros(0, 3, dtype=F64)
    none = torch.zeros(0, dtype=F64)
    lattice = Lattice(8, 1.0)
    img = render.project(empty, none, none, poses(2, 0), torch.zeros(2, 2, dtype=F64), lattice)
    assert img.shape == (2, 8, 8) and not img.any()
    assert not render.rasterize(empty, none, none, lattice).any()


def test_backward_recomputing_factors_gives_the_same_gradients(monkeypatch):
    kw = _inputs(per_image=True, with_ctf=True, with_shifts=True)
    D = kw["lattice"].box
    weights = torch.randn(3, D, D, generator=torch.Generator().manual_seed(14), dtype=F64)
    _, kept = _value_and_grads(render.project, kw, weights)
    monkeypatch.setattr(render, "SAVED_FACTORS_MAX", 0)
    _, recomputed = _value_and_grads(render.project, kw, weights)
    for name, g in kept.items():
        assert torch.allclose(g, recomputed[name], rtol=1e-10, atol=1e-12), name


def test_default_tile_follows_the_window_radius():
    assert render.default_tile(2, 128, 0.9) == (8, 8)
    assert render.default_tile(2, 128, 1.9) == (16, 16)
    assert render.default_tile(2, 128, 3.8) == (32, 32)
    assert render.default_tile(2, 20, 3.8) == (20, 20)
    assert render.default_tile(3, 128, 1.9) == (8, 16, 16)
    assert render.default_tile(3, 128, 5.8) == (16, 32, 32)

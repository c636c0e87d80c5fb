"""Ground truth from an atomic model (PDB / mmCIF, read with gemmi): beads and states.

One bead per residue (its electron-weighted centre) or per atom, widths from the atoms' spread
and B-factors, amplitudes in electrons. A JSON spec (optional) says how the molecule varies:

- ``chains``: keep only these chains (e.g. one copy of a dimer).
- ``groups``: named rigid bodies, each a list of ``[chain]`` or ``[chain, first, last]``
  (residue numbers, inclusive). With groups, the ground-truth domains are the groups plus
  ``rest`` (every bead in no group); without, one domain per chain.
- ``motions`` (with ``motion_states``, default 20): rigid turns of a group (or a list of
  groups turning as one body) along one path of poses; pose k turns each by the k-th of ``np.linspace(*angles_deg, motion_states)``
  about its axis through its pivot. ``pivot``: ``[x, y, z]`` (file coordinates, Å),
  ``"interface"`` (the centre of the group's beads touching the rest: a hinge) or
  ``"centroid"``; ``axis``: ``[x, y, z]``, ``"long"`` (the group's principal axis: a twist)
  or ``"swing"`` (across the line from the pivot to the group's centre: a hinge swing).
- ``states``: presence patterns, ``{"name", "absent": [groups], "weight"}``; each pattern is
  combined with every pose and its weight shared equally among them.
- ``flexible``: ``{"loops": [[chain, first, last], ...], "amplitude_A", "states"}``: per
  state every loop bends by a smooth random displacement (zero at its ends, up to
  ``amplitude_A`` in the middle); nothing moves rigidly.
- ``moving`` / ``optional`` (the first spec format, one domain per chain): one rigid group of
  chains on a hinge or random turns, and chain groups present in every combination.

Errors name the spec file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from cryospire_core.errors import InputError
from cryospire_core.sim.phantoms import (
    SIGMA_PX,
    Phantom,
    all_patterns,
    compose_states,
    hinge_rotvecs,
    random_rotvecs,
    rigid_placements,
    unit,
)

SPEC_KEYS = ("beads", "chains", "groups", "motions", "motion_states", "states", "flexible", "moving", "optional")
#: Beads of a group closer than this to the rest of the molecule make its hinge ("interface" pivot).
INTERFACE_A = 8.0


class _Spec:
    """A spec being read: remembers its file for error messages."""

    def __init__(self, spec: dict[str, Any] | None, path) -> None:
        self.spec = dict(spec or {})
        self.path = path if path is not None else "<spec>"
        unknown = set(self.spec) - set(SPEC_KEYS)
        if unknown:
            raise self.error("keys", ", ".join(SPEC_KEYS), ", ".join(sorted(unknown)))

    def error(self, field_name: str, expected: str, found: object) -> InputError:
        return InputError(self.path, field_name, expected, found)

    def get(self, key: str, default=None):
        return self.spec.get(key, default)

    def vector(self, value, field_name: str) -> np.ndarray:
        v = np.asarray(value, dtype=np.float64) if isinstance(value, list) else np.zeros(0)
        if v.shape != (3,) or not np.all(np.isfinite(v)):
            raise self.error(field_name, "three numbers [x, y, z]", value)
        return v

    def count(self, value, field_name: str, low: int = 2) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise self.error(field_name, f"an integer >= {low}", value)
        return value

    def angles(self, value, field_name: str) -> tuple[float, float]:
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(a, (int, float)) for a in value)):
            raise self.error(field_name, "[first, last] in degrees", value)
        return float(value[0]), float(value[1])


class _Beads:
    """Beads of the first model: centres (G, 3) Å, electrons (G,), spread (G,) Å^2 (per-axis
    variance of the atoms a bead stands for), mean B-factor (G,) Å^2, chain (G,) index into
    ``chains``, residue number (G,)."""

    def __init__(self, path: Path, residues: bool, keep: list[str] | None) -> None:
        import gemmi

        try:
            st = gemmi.read_structure(str(path))
        except Exception as exc:  # gemmi raises RuntimeError/ValueError for unreadable files
            raise InputError(path, "structure", "a readable PDB or mmCIF file", exc) from exc
        st.remove_hydrogens()
        st.remove_waters()
        if len(st) == 0:
            raise InputError(path, "models", "at least one model with atoms", "none")
        rows, names = [], []
        for chain in st[0]:
            if keep is not None and chain.name not in keep:
                continue
            if chain.name not in names:
                names.append(chain.name)
            label = names.index(chain.name)
            for res in chain:
                atoms = np.array([[a.pos.x, a.pos.y, a.pos.z, a.element.atomic_number, a.b_iso] for a in res])
                if len(atoms) == 0:
                    continue
                for grp in [atoms] if residues else [a[None] for a in atoms]:
                    z = np.maximum(grp[:, 3], 1.0)
                    centre = (grp[:, :3] * z[:, None]).sum(0) / z.sum()
                    spread = float((((grp[:, :3] - centre) ** 2).sum(1) * z).sum() / z.sum() / 3.0)
                    rows.append([*centre, z.sum(), spread, grp[:, 4].mean(), label, res.seqid.num])
        if not rows:
            raise InputError(path, "atoms", "at least one non-hydrogen atom in the first model"
                             + (f" of chains {', '.join(keep)}" if keep else ""), "none")
        a = np.asarray(rows)
        self.centres, self.electrons, self.spread, self.bfactor = a[:, :3], a[:, 3], a[:, 4], a[:, 5]
        self.chain, self.resnum = a[:, 6].astype(np.int64), a[:, 7].astype(np.int64)
        self.chains = tuple(names)

    def select(self, spec: _Spec, ranges, field_name: str) -> np.ndarray:
        """(G,) bool: the beads of ``[[chain], [chain, first, last], ...]``."""
        if not isinstance(ranges, list) or not ranges:
            raise spec.error(field_name, "a non-empty list of [chain] or [chain, first, last]", ranges)
        mask = np.zeros(len(self.chain), dtype=bool)
        for r in ranges:
            ok = (isinstance(r, list) and len(r) in (1, 3) and isinstance(r[0], str)
                  and all(isinstance(x, int) and not isinstance(x, bool) for x in r[1:]))
            if not ok:
                raise spec.error(field_name, "[chain] or [chain, first residue, last residue]", r)
            if r[0] not in self.chains:
                raise spec.error(field_name, f"chains of the structure ({', '.join(self.chains)})", r[0])
            sel = self.chain == self.chains.index(r[0])
            if len(r) == 3:
                sel &= (self.resnum >= r[1]) & (self.resnum <= r[2])
            if not sel.any():
                raise spec.error(field_name, f"residues present in chain {r[0]}", r)
            mask |= sel
        return mask

    def chain_mask(self, spec: _Spec, chains, field_name: str) -> np.ndarray:
        if not isinstance(chains, list) or not chains or not all(isinstance(c, str) for c in chains):
            raise spec.error(field_name, "a non-empty list of chain names", chains)
        return self.select(spec, [[c] for c in chains], field_name)


def _groups(spec: _Spec, beads: _Beads) -> dict[str, np.ndarray]:
    groups = spec.get("groups", {})
    if not isinstance(groups, dict):
        raise spec.error("groups", "an object {name: [[chain, first, last], ...]}", groups)
    out: dict[str, np.ndarray] = {}
    taken = np.zeros(len(beads.chain), dtype=bool)
    for name, ranges in groups.items():
        if name == "rest":
            raise spec.error("groups", "group names other than 'rest' (the beads in no group)", name)
        mask = beads.select(spec, ranges, f"groups.{name}")
        if (mask & taken).any():
            raise spec.error(f"groups.{name}", "residues in no other group", "an overlap")
        out[name], taken = mask, taken | mask
    return out


def _pivot_and_axis(spec: _Spec, m: dict, mask: np.ndarray, base: np.ndarray, offset: np.ndarray,
                    where: str) -> tuple[np.ndarray, np.ndarray]:
    moving, rest = base[mask], base[~mask]
    centroid = moving.mean(0)
    pivot = m.get("pivot", "interface")
    if pivot == "interface":
        if len(rest) == 0:
            raise spec.error(f"{where}.pivot", "[x, y, z] or 'centroid' (the group is the whole molecule)", pivot)
        d, _ = cKDTree(rest).query(moving)
        touching = moving[d < INTERFACE_A]
        pivot = touching.mean(0) if len(touching) else moving[np.argmin(d)]
    elif pivot == "centroid":
        pivot = centroid
    else:
        pivot = spec.vector(pivot, f"{where}.pivot") - offset
    _, vecs = np.linalg.eigh(np.cov((moving - centroid).T))
    long = vecs[:, -1]
    axis = m.get("axis", "swing")
    if axis == "long":
        axis = long
    elif axis == "swing":
        arm = centroid - pivot
        axis = np.cross(arm, long)
        if np.linalg.norm(axis) < 1e-6 * max(np.linalg.norm(arm), 1.0):
            axis = np.cross(arm, vecs[:, 0])
        axis = unit(axis) if np.linalg.norm(axis) > 1e-9 else vecs[:, 0]
    else:
        axis = unit(spec.vector(axis, f"{where}.axis"))
    return pivot, axis


def _motions(spec: _Spec, beads: _Beads, groups: dict[str, np.ndarray], base: np.ndarray, offset: np.ndarray,
             apix: float, rng: np.random.Generator) -> tuple[list, list]:
    """Rigid motions (moving mask, pivot, rotvecs (M, 3)) and their description for ``info``."""
    motions, info = [], []
    if "moving" in spec.spec:  # the first spec format
        mv = spec.get("moving")
        if not isinstance(mv, dict):
            raise spec.error("moving", "an object with chains, pivot, states and a motion", mv)
        mask = beads.chain_mask(spec, mv.get("chains"), "moving.chains")
        pivot = spec.vector(mv.get("pivot"), "moving.pivot") - offset
        n = spec.count(mv.get("states", 20), "moving.states")
        if "axis" in mv:
            rotvecs = hinge_rotvecs(spec.vector(mv["axis"], "moving.axis"), np.linspace(*spec.angles(
                mv.get("angles_deg"), "moving.angles_deg"), n))
        elif isinstance(mv.get("random_max_angle_deg"), (int, float)):
            rotvecs = random_rotvecs(rng, n, float(mv["random_max_angle_deg"]), pivot, base[mask], base[~mask],
                                      2.0 * SIGMA_PX[1] * apix)
        else:
            raise spec.error("moving", "axis + angles_deg, or random_max_angle_deg", sorted(mv))
        motions.append((mask, pivot, rotvecs))
        info.append({"chains": mv["chains"], "pivot_A": pivot.tolist(), "rotvecs_rad": rotvecs.tolist()})
    listed = spec.get("motions", [])
    if not isinstance(listed, list):
        raise spec.error("motions", "a list of {group, pivot, axis, angles_deg}", listed)
    n = spec.count(spec.get("motion_states", 20), "motion_states")
    for i, m in enumerate(listed):
        where = f"motions[{i}]"
        named = m.get("group") if isinstance(m, dict) else m
        names = [named] if isinstance(named, str) else named
        if not isinstance(names, list) or not names or any(g not in groups for g in names):
            raise spec.error(f"{where}.group", f"a group or a list of groups ({', '.join(groups) or 'none defined'})",
                             named)
        mask = np.any([groups[g] for g in names], axis=0)
        pivot, axis = _pivot_and_axis(spec, m, mask, base, offset, where)
        angles = np.linspace(*spec.angles(m.get("angles_deg"), f"{where}.angles_deg"), n)
        rotvecs = hinge_rotvecs(axis, angles)
        motions.append((mask, pivot, rotvecs))
        info.append({"group": m["group"], "pivot_A": pivot.tolist(), "axis": axis.tolist(),
                     "angles_deg": angles.tolist()})
    if len({len(r) for _, _, r in motions}) > 1:
        raise spec.error("motion_states", "one pose count for every motion (moving.states = motion_states)",
                         sorted({len(r) for _, _, r in motions}))
    return motions, info


def _flexible(spec: _Spec, beads: _Beads, base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(M, G, 3) bead centres with the loops bent, pose 0 the file's."""
    fx = spec.get("flexible")
    if not isinstance(fx, dict):
        raise spec.error("flexible", "an object {loops, amplitude_A, states}", fx)
    n = spec.count(fx.get("states", 20), "flexible.states")
    amp = fx.get("amplitude_A", 6.0)
    if isinstance(amp, bool) or not isinstance(amp, (int, float)) or not 0 < amp < 100:
        raise spec.error("flexible.amplitude_A", "a displacement in Å, 0-100", amp)
    loops = fx.get("loops")
    if not isinstance(loops, list) or not loops:
        raise spec.error("flexible.loops", "a non-empty list of [chain, first, last]", loops)
    poses = np.repeat(base[None], n, axis=0)
    for j, loop in enumerate(loops):
        if not (isinstance(loop, list) and len(loop) == 3):
            raise spec.error("flexible.loops", "[chain, first, last]", loop)
        mask = beads.select(spec, [loop], f"flexible.loops[{j}]")
        first, last = loop[1] - 1, loop[2] + 1  # the anchors just outside the loop stay put
        u = (beads.resnum[mask] - first) / (last - first)
        bend = np.sin(np.pi * u)[:, None]
        for k in range(1, n):
            poses[k, mask] += bend * unit(rng.standard_normal(3)) * rng.uniform(0.3, 1.0) * amp
    return poses


def _presence(spec: _Spec, beads: _Beads, domains: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray, float]]:
    G = len(beads.chain)
    if "optional" in spec.spec:  # the first spec format
        groups = spec.get("optional")
        if not isinstance(groups, list):
            raise spec.error("optional", "a list of lists of chain names", groups)
        if "states" in spec.spec:
            raise spec.error("optional", "either optional or states", "both")
        return all_patterns(G, [("+".join(g), beads.chain_mask(spec, g, "optional")) for g in groups])
    states = spec.get("states")
    if states is None:
        return [("", np.ones(G), 1.0)]
    if not isinstance(states, list) or not states:
        raise spec.error("states", "a non-empty list of {name, absent, weight}", states)
    out = []
    for i, st in enumerate(states):
        where = f"states[{i}]"
        if not isinstance(st, dict) or not isinstance(st.get("name"), str):
            raise spec.error(f"{where}.name", "a name", st)
        absent = st.get("absent", [])
        if not isinstance(absent, list) or any(a not in domains for a in absent):
            raise spec.error(f"{where}.absent", f"a list of groups ({', '.join(domains)})", absent)
        w = st.get("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
            raise spec.error(f"{where}.weight", "a positive number", w)
        on = np.ones(G)
        for a in absent:
            on[domains[a]] = 0.0
        out.append((st["name"], on, float(w)))
    return out


def phantom_from_structure(
    path: str | Path,
    box: int,
    apix: float,
    spec: dict[str, Any] | None = None,
    spec_path: str | Path | None = None,
    seed: int = 0,
) -> Phantom:
    """A phantom from an atomic model and a spec (see the module docstring).

    Bead widths: sqrt(spread of the atoms + B / (8 pi^2)) clipped to 1-1.5 px; amplitudes set so
    each bead integrates to its electrons (sum of atomic numbers), so maps are in electrons/Å^3.
    The molecule is centred on its electron-weighted centre. ``spec_path`` names the spec in
    errors; ``seed`` fixes random turns and loop bends.
    """
    sp = _Spec(spec, spec_path)
    path = Path(path)
    mode = sp.get("beads", "residue")
    if mode not in ("residue", "atom"):
        raise sp.error("beads", "residue or atom", mode)
    keep = sp.get("chains")
    if keep is not None and (not isinstance(keep, list) or not keep or not all(isinstance(c, str) for c in keep)):
        raise sp.error("chains", "a non-empty list of chain names", keep)
    beads = _Beads(path, mode == "residue", keep)
    sigmas = np.clip(np.sqrt(beads.spread + np.maximum(beads.bfactor, 0.0) / (8 * np.pi**2)),
                     SIGMA_PX[0] * apix, SIGMA_PX[1] * apix)
    amplitudes = beads.electrons / ((2 * np.pi) ** 1.5 * sigmas**3)
    offset = (beads.centres * beads.electrons[:, None]).sum(0) / beads.electrons.sum()
    base = beads.centres - offset
    rng = np.random.default_rng(seed)
    info: dict[str, Any] = {"structure": str(path), "spec": sp.spec, "beads": mode, "centre_offset_A": offset.tolist()}

    groups = _groups(sp, beads)
    if groups:
        rest = ~np.any(list(groups.values()), axis=0)
        names = tuple(groups) + (("rest",) if rest.any() else ())
        domains = np.full(len(base), len(groups), dtype=np.int64)
        for d, mask in enumerate(groups.values()):
            domains[mask] = d
    else:
        names, domains = beads.chains, beads.chain
    motions, motion_info = _motions(sp, beads, groups, base, offset, apix, rng)
    if "flexible" in sp.spec:
        if motions:
            raise sp.error("flexible", "loops bending on a molecule without rigid motions", "motions as well")
        placements, tag = _flexible(sp, beads, base, rng), "flex"
    else:
        placements, tag = rigid_placements(base, motions), "pose"
    if motion_info:
        info["motion"] = motion_info[0] if "moving" in sp.spec and len(motion_info) == 1 else motion_info
    presence_groups = {n: domains == d for d, n in enumerate(names)}
    all_centres, presence, state_names, populations = compose_states(
        placements, _presence(sp, beads, presence_groups), "hinge" if "moving" in sp.spec else tag)

    # Everything, in every state and at the largest shift, must stay inside the box.
    reach = np.linalg.norm(all_centres, axis=2).max() / apix + 3 * SIGMA_PX[1]
    limit = box / 2 - box / 12.8
    if reach > limit:
        raise InputError(path, "molecule size", f"a radius within {limit * apix:.0f} Å to fit {box} px at "
                         f"{apix:g} Å/px with room for shifts (use a larger --box or --apix)", f"{reach * apix:.0f} Å")
    return Phantom(
        name=f"structure:{path.name}",
        box=int(box),
        apix=float(apix),
        sigmas=sigmas,
        amplitudes=amplitudes,
        domains=domains,
        domain_names=tuple(names),
        centres=all_centres,
        presence=np.asarray(presence, dtype=np.float32),
        populations=populations,
        state_names=tuple(state_names),
        info=info,
    )

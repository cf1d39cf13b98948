"""Atomic models of Pt nanoparticles on CeO2 (111) in a [110] zone axis (ASE).

Frame of every model: x = [11-2] (horizontal in the image), y = [111] (the
support's surface normal, up in the image), z = [1-10] (the beam). The support
is fluorite CeO2 (a = 5.411 A) terminated by an O-Ce-O (111) trilayer; the
particle is a Wulff-shaped fcc Pt cluster (a = 3.924 A) cut to a flat (111)
base and placed cube-on-cube (epitaxial) about 2.3 A above the top O layer.
Surface defects are deletions of atoms in one surface column of the particle
(the papers' "remove a column", "halve its occupancy", "leave one atom"), at a
corner of the particle's projected outline (high-energy sites). Every model
is a pure function of its :class:`StructureParams` (seed included).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["DEFECTS", "PARTICLE_SIZES", "StructureParams", "build_structure", "column_groups"]

CEO2_A = 5.411
PT_A = 3.924
# Wulff sizes (atoms) giving particles of about 1, 2 and 3 nm
PARTICLE_SIZES = {"1nm": 40, "2nm": 250, "3nm": 850}
DEFECTS = ("none", "remove_column", "half_column", "single_atom")
# rows: the lab axes x, y, z in crystal (cubic) coordinates
_ORIENT = np.array([[1, 1, -2], [1, 1, 1], [1, -1, 0]], dtype=float)
_ORIENT /= np.linalg.norm(_ORIENT, axis=1, keepdims=True)


@dataclass(frozen=True)
class StructureParams:
    """Everything that defines one model (a row of the dataset's metadata).

    Attributes
    ----------
    seed : int
        Seed of the random choices (defect site, small shape variations).
    particle : str
        "1nm", "2nm" or "3nm".
    thickness_nm : float
        Support thickness along the beam, nm (3-6 in the papers).
    tilt_x_deg, tilt_y_deg : float
        Crystal tilts about the image's x and y axes, degrees.
    defect : str
        One of :data:`DEFECTS`.
    lateral_a : float
        Requested lateral cell size, A (the support's period makes it 53 A for 50).
    support_height_a : float
        Height of the support in the image (along y), A.
    """

    seed: int = 0
    particle: str = "2nm"
    thickness_nm: float = 4.0
    tilt_x_deg: float = 0.0
    tilt_y_deg: float = 0.0
    defect: str = "none"
    lateral_a: float = 50.0
    support_height_a: float = 20.0

    def validate(self) -> None:
        """Raise ValueError for parameters no model can have."""
        if self.particle not in PARTICLE_SIZES:
            raise ValueError(f"particle must be one of {sorted(PARTICLE_SIZES)}, got {self.particle!r}")
        if self.defect not in DEFECTS:
            raise ValueError(f"defect must be one of {DEFECTS}, got {self.defect!r}")
        if not 0.5 <= self.thickness_nm <= 20:
            raise ValueError(f"thickness_nm must be within 0.5-20 nm, got {self.thickness_nm}")
        if abs(self.tilt_x_deg) > 10 or abs(self.tilt_y_deg) > 10:
            raise ValueError("tilts beyond 10 degrees leave the zone axis: use |tilt| <= 10")
        if not 20 <= self.lateral_a <= 200 or not 8 <= self.support_height_a <= self.lateral_a / 2:
            raise ValueError("lateral_a must be 20-200 A and support_height_a 8 A to half of it")

    def record(self) -> dict:
        """Plain dict for the metadata table."""
        return asdict(self)


def _support(p: StructureParams, extra_x: int):
    from ase.build import bulk, make_supercell

    unit = make_supercell(bulk("CeO2", "fluorite", a=CEO2_A), [[-1, -1, 2], [1, 1, 1], [-1, 1, 0]])
    # the supercell is orthogonal but not axis-aligned: rotate it onto x, y, z
    vecs = unit.cell.array
    lengths = np.linalg.norm(vecs, axis=1)
    rot = vecs / lengths[:, None]
    unit.positions = unit.positions @ rot.T
    unit.set_cell(np.diag(lengths), scale_atoms=False)
    unit.wrap()
    cx, cy, cz = lengths
    nx = max(1, round(p.lateral_a / cx))
    ny = int(np.ceil(p.support_height_a / cy)) + 1
    nz = max(1, round(p.thickness_nm * 10 / cz))
    slab = unit.repeat((nx + 2 * extra_x, ny, nz))
    slab.positions[:, 0] -= extra_x * cx
    pos = slab.positions
    ce_y = np.unique(np.round(pos[slab.numbers == 58, 1], 2))
    top_ce = ce_y[ce_y <= p.support_height_a].max()
    # whole O-Ce-O (111) trilayers only (O sits ~0.78 A from its Ce layer): the
    # cell boundary cuts the lowest one, so drop it, and end on top with O
    keep = (pos[:, 1] <= top_ce + 1.0) & (pos[:, 1] >= ce_y[1] - 1.0)
    slab = slab[keep]
    slab.positions[:, 1] -= slab.positions[:, 1].min() - 0.4
    return slab, nx * cx, nz * cz, top_ce


def _particle(p: StructureParams, rng: np.random.Generator):
    from ase.cluster import wulff_construction

    energies = [1.0, 1.1 + rng.uniform(-0.03, 0.03), 1.25 + rng.uniform(-0.05, 0.05)]
    cl = wulff_construction("Pt", [(1, 1, 1), (1, 0, 0), (1, 1, 0)], energies,
                            PARTICLE_SIZES[p.particle], "fcc", rounding="closest",
                            latticeconstant=PT_A)
    pos = cl.positions - cl.positions.mean(axis=0)
    cl.positions = pos @ _ORIENT.T  # crystal -> lab frame
    # flat (111) base: drop the layers below a cut through the lower part
    ys = np.unique(np.round(cl.positions[:, 1], 2))
    cut = ys[int(len(ys) * 0.3)]
    cl = cl[cl.positions[:, 1] >= cut - 0.1]
    return cl


def column_groups(positions: np.ndarray, tol: float = 0.3) -> list[np.ndarray]:
    """Group atoms into columns along z (the beam) by their (x, y) position.

    Parameters
    ----------
    positions : numpy.ndarray
        (N, 3) positions, A.
    tol : float
        Rounding tolerance, A.

    Returns
    -------
    list of numpy.ndarray
        Atom indices of each column.
    """
    keys = np.round(positions[:, :2] / tol).astype(int)
    _, inverse = np.unique(keys, axis=0, return_inverse=True)
    return [np.flatnonzero(inverse == k) for k in range(inverse.max() + 1)]


def _apply_defect(particle, p: StructureParams, rng: np.random.Generator):
    if p.defect == "none":
        return particle, None
    from scipy.spatial import ConvexHull

    cols = column_groups(particle.positions)
    xy = np.array([particle.positions[c, :2].mean(axis=0) for c in cols])
    hull = ConvexHull(xy)
    base = xy[:, 1].min()
    # corners of the outline, not on the interface with the support
    corners = [v for v in hull.vertices if xy[v, 1] > base + 1.0 and len(cols[v]) > 1]
    if not corners:
        corners = list(hull.vertices)
    col = cols[corners[rng.integers(len(corners))]]
    order = col[np.argsort(particle.positions[col, 2])]
    if p.defect == "remove_column":
        drop = order
    elif p.defect == "half_column":
        drop = order[: len(order) // 2]
    else:  # single_atom
        drop = order[1:]
    keep = np.setdiff1d(np.arange(len(particle)), drop)
    return particle[keep], particle.positions[order[0], :2].tolist()


def build_structure(p: StructureParams):
    """Build the model: support + particle (+ defect), tilted.

    Parameters
    ----------
    p : StructureParams
        The parameters.

    Returns
    -------
    ase.Atoms
        The model in an orthogonal cell (x, y lateral; z along the beam).
    dict
        Facts about it: ``particle_columns`` (N, 2) projected (x, y) of the Pt
        columns before tilt, ``defect_site``, counts of atoms.
    """
    p.validate()
    rng = np.random.default_rng(p.seed)
    extra = 2 if p.tilt_y_deg else 0
    support, lx, lz, _top_ce = _support(p, extra)
    particle = _particle(p, rng)
    particle, site = _apply_defect(particle, p, rng)
    top_o = support.positions[:, 1].max()
    pp = particle.positions
    shift = np.array([lx / 2 - pp[:, 0].mean(), top_o + 2.3 - pp[:, 1].min(), lz / 2 - pp[:, 2].mean()])
    particle.positions = pp + shift
    pt_cols = np.array([particle.positions[c, :2].mean(axis=0) for c in column_groups(particle.positions)])
    atoms = support + particle
    top = particle.positions[:, 1].max()
    ly = p.lateral_a if p.lateral_a >= top + 5 else top + 8
    ly = max(ly, lx)  # square field of view
    atoms.set_cell([lx, ly, lz])
    atoms.pbc = True
    centre = np.array([lx / 2, ly / 2, lz / 2])
    if p.tilt_x_deg or p.tilt_y_deg:
        atoms.positions -= centre
        atoms.rotate(p.tilt_x_deg, "x", center=(0, 0, 0))
        atoms.rotate(p.tilt_y_deg, "y", center=(0, 0, 0))
        atoms.positions += centre
        # no wrap-around: atoms tilted out of the field would reappear at the
        # opposite edge of the periodic potential
        pos = atoms.positions
        inside = (pos[:, 0] >= 0) & (pos[:, 0] < lx) & (pos[:, 1] >= 0) & (pos[:, 1] < ly)
        atoms = atoms[inside]
        # thicker extent along z after tilting: grow the cell, keep atoms inside
        zmin, zmax = atoms.positions[:, 2].min(), atoms.positions[:, 2].max()
        atoms.positions[:, 2] -= zmin - 1.0
        atoms.set_cell([lx, ly, zmax - zmin + 2.0])
    info = {
        "particle_columns": pt_cols,
        "defect_site": site,
        "n_pt": int((atoms.numbers == 78).sum()),
        "n_ce": int((atoms.numbers == 58).sum()),
        "n_o": int((atoms.numbers == 8).sum()),
        "support_top_a": float(top_o),
        "cell_a": [float(v) for v in atoms.cell.lengths()],
    }
    return atoms, info

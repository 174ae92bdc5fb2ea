"""One demo case: BraTS-2018-style T1, T1c, T2 and FLAIR volumes with an inserted glioma, from MNI152.

Real BraTS data cannot be downloaded everywhere, so the main job and the tests run on this cohort. Each case
is the MNI152 2009a (nonlinear symmetric) brain, as shipped by nilearn (no download), moved into the BraTS
grid (240 x 240 x 155 voxels of 1 mm, LPS axes like the BraTS files), and then made individual:

- a random affine (rotation, scale, shift) and a smooth random deformation;
- a glioma: a lumpy enhancing rim (label 4) around a dark necrotic core (label 1), surrounded by edema
  (label 2) that reaches further into white matter than into grey matter; the tumour pushes the tissue
  around it outwards (mass effect);
- a T1c image painted from the deformed tissue maps (blended with the template's own T1 detail), with
  grey-level scale, tissue contrast, bias field and noise level set per simulated institution (scanner);
- Rician noise; zero outside the brain (skull-stripped);
- T1, T2 and FLAIR painted from the same tissue and tumour maps, each with its own contrast, bias field and
  noise (:mod:`synthseg.data.demo.sequences`; their own random generator, so the T1c of a seed is unchanged).

Beside each case it writes the true tissue maps in FSL FAST naming (``<case>_t1ce_pve_0/1/2.nii.gz`` =
CSF/GM/WM partial volumes, float32 in [0, 1], zero outside the brain and inside the tumour), so tissue
handling can be checked against ground truth. Output is byte-identical for a seed.

The command that writes a cohort is :mod:`synthseg.data.demo.demo_cohort`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from synthseg.data.demo.sequences import paint_sequences, periventricular_caps

GRID_SHAPE: tuple[int, int, int] = (240, 240, 155)
# The BraTS 2018 files' voxel-to-world matrix (1 mm, LPS axes): the same for T1c, seg and the tissue maps.
BRATS_AFFINE = np.array(
    [[-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 239.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
# BraTS 2018 HGG institutions; case ids are 3 letters for CBICA and numbers elsewhere.
INSTITUTIONS: tuple[str, ...] = ("2013", "CBICA", "TCIA01", "TCIA02", "TCIA03", "TCIA04", "TCIA06", "TCIA08")
SEG_LABELS = (0, 1, 2, 4)
# Partial volumes are stored in steps of 1/256 (exact in float32): FAST-like maps that gzip fast.
_PVE_STEPS = 256.0
COHORT_MARKER = "demo_cohort.json"


@dataclass(frozen=True)
class Scanner:
    """Image properties shared by all cases of one simulated institution.

    Attributes:
        wm_level: mean T1c grey value of white matter.
        gm_ratio: grey matter mean / white matter mean.
        csf_ratio: CSF mean / white matter mean.
        noise: Rician noise sigma as a fraction of ``wm_level``.
        bias: amplitude of the multiplicative bias field (0.1 = about +-10 %).
    """

    wm_level: float
    gm_ratio: float
    csf_ratio: float
    noise: float
    bias: float


@dataclass(frozen=True)
class DemoCase:
    """One generated case.

    Attributes:
        name: ``Brats18_<inst>_<id>_1``.
        t1ce: (240, 240, 155) int16, zero outside the brain.
        seg: (240, 240, 155) uint8 with values {0, 1, 2, 4}.
        pve: (3, 240, 240, 155) float32 CSF/GM/WM partial volumes, zero outside the brain and in the tumour.
        others: ``t1``, ``t2``, ``flair``: (240, 240, 155) int16 each (empty when not made).
    """

    name: str
    t1ce: np.ndarray
    seg: np.ndarray
    pve: np.ndarray
    others: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class _Templates:
    """MNI152 arrays flipped to LPS and cropped to the brain (+ margin), float32 (X, Y, Z)."""

    t1: np.ndarray
    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    mask: np.ndarray
    caps: np.ndarray  # periventricular caps (FLAIR-bright), soft
    center: np.ndarray  # brain bounding-box centre, template voxels
    half_extent: np.ndarray  # brain bounding-box half size, voxels
    tumor_sites: np.ndarray  # (N, 3) deep white-matter voxels where a tumour may be centred


@functools.lru_cache(maxsize=1)
def _templates() -> _Templates:
    from nilearn import datasets

    def load(fn: Any) -> np.ndarray:
        arr = np.asarray(fn(resolution=1).dataobj, dtype=np.float32)
        # nilearn's arrays are RAS; BraTS's are LPS: flip x and y so the affine stays truthful.
        return arr[::-1, ::-1, :]

    t1 = load(datasets.load_mni152_template)
    gm = load(datasets.load_mni152_gm_template)
    wm = load(datasets.load_mni152_wm_template)
    mask = (t1 > 0).astype(np.float32)  # the template is skull-stripped
    gm *= mask
    wm *= mask
    # No CSF template ships with nilearn: CSF is the rest of the brain mask.
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    lo = np.argwhere(mask > 0).min(0)
    hi = np.argwhere(mask > 0).max(0) + 1
    margin = 8
    pad = [(margin, margin)] * 3
    crop = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))

    def cut(arr: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.pad(arr[crop], pad))

    t1c, csfc, gmc, wmc, maskc = (cut(a) for a in (t1, csf, gm, wm, mask))
    size = (hi - lo).astype(np.float64)
    center = (size - 1) / 2 + margin
    # Tumour centres: white matter at least 12 mm inside the brain, above the cerebellum.
    depth = ndimage.distance_transform_edt(maskc > 0)
    zmin = margin + 0.35 * size[2]
    sites = np.argwhere((wmc > 0.6) & (depth > 12))
    sites = sites[sites[:, 2] > zmin]
    caps = periventricular_caps(csfc, maskc, depth)
    return _Templates(t1c, csfc, gmc, wmc, maskc, caps, center, size / 2, sites.astype(np.float64))


def scanner_of(seed: int, institution: str) -> Scanner:
    rng = np.random.default_rng([seed, 7, INSTITUTIONS.index(institution)])
    return Scanner(
        wm_level=float(rng.uniform(400, 2500)),
        gm_ratio=float(rng.uniform(0.68, 0.78)),
        csf_ratio=float(rng.uniform(0.25, 0.4)),
        noise=float(rng.uniform(0.015, 0.035)),
        bias=float(rng.uniform(0.03, 0.1)),
    )


def case_names(cases: int, seed: int) -> list[tuple[str, str]]:
    """BraTS-style (institution, id) pairs for ``cases`` cases, unique and deterministic for ``seed``.

    Returns:
        A list of ``(institution, id)``; the case name is ``Brats18_<institution>_<id>_1``.
    """
    rng = np.random.default_rng([seed, 3])
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    seen: set[tuple[str, str]] = set()
    names: list[tuple[str, str]] = []
    while len(names) < cases:
        inst = INSTITUTIONS[int(rng.integers(len(INSTITUTIONS)))]
        if inst == "CBICA":
            ident = "".join(rng.choice(letters, 3))
        elif inst == "2013":
            ident = str(int(rng.integers(2, 40)))
        else:
            ident = f"{int(rng.integers(100, 700)):03d}"
        if (inst, ident) not in seen:
            seen.add((inst, ident))
            names.append((inst, ident))
    return names


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, ...], knots: int, amplitude: float
) -> np.ndarray:
    """A smooth random scalar field over ``shape`` (3-D), float32.

    Random values on a ``knots``^3 grid, interpolated with Gaussian bumps separably (three small matrix
    products instead of a full-size filter).
    """
    weights = rng.standard_normal((knots, knots, knots)).astype(np.float32) * amplitude
    bases = []
    for n in shape:
        pos = np.linspace(0, knots - 1, n, dtype=np.float32)[:, None]
        basis = np.exp(-0.5 * (pos - np.arange(knots, dtype=np.float32)) ** 2 / 0.6**2)
        bases.append(basis / basis.sum(1, keepdims=True))
    out = np.tensordot(bases[0], weights, axes=(1, 0))  # (X, k, k)
    out = np.tensordot(out, bases[1], axes=(1, 1))  # (X, k, Y)
    out = np.tensordot(out, bases[2], axes=(1, 1))  # (X, Y, Z)
    return out.astype(np.float32)


def _rotation(angles: np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_case(
    name: str, scanner: Scanner, rng: np.random.Generator, others_rng: np.random.Generator | None = None
) -> DemoCase:
    """Generate one case: deformed template, tumour, T1c image, labels and true tissue maps.

    Args:
        name: case name stored in the result.
        scanner: the institution's image properties.
        rng: the case's own random generator (everything random about the case comes from it).
        others_rng: the generator of its T1, T2 and FLAIR (None: only the T1c is made).

    Returns:
        The case, arrays in the BraTS grid (240, 240, 155).
    """
    tpl = _templates()
    grid = np.array(GRID_SHAPE, dtype=np.float64)

    # Where the brain goes: centred in the grid, like SRI24 brains in BraTS, a little smaller than MNI152.
    scale = rng.uniform(0.88, 0.96) * rng.uniform(0.97, 1.03, 3)
    rot = _rotation(rng.uniform(-1, 1, 3) * np.array([5.0, 4.0, 6.0]))
    forward = rot @ np.diag(scale)  # template offset (mm) -> grid offset
    backward = np.linalg.inv(forward)
    out_center = (grid - 1) / 2 + rng.uniform(-3, 3, 3) * np.array([1.0, 1.0, 0.5])

    # Compute only over the box that can hold brain.
    half = np.abs(forward) @ tpl.half_extent + 10
    lo = np.clip(np.floor(out_center - half), 0, grid).astype(int)
    hi = np.clip(np.ceil(out_center + half) + 1, 0, grid).astype(int)
    box = tuple(int(b - a) for a, b in zip(lo, hi, strict=True))
    axes = [np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi, strict=True)]

    # The tumour: centre in deep white matter of the template, moved to the grid.
    site = tpl.tumor_sites[int(rng.integers(len(tpl.tumor_sites)))]
    center = out_center + forward @ (site - tpl.center)
    radius = float(rng.uniform(9, 20))  # enhancing tumour, mm
    local = [a - c for a, c in zip(axes, center, strict=True)]  # grid offsets from the tumour centre
    r2 = local[0][:, None, None] ** 2 + local[1][None, :, None] ** 2 + local[2][None, None, :] ** 2
    # Mass effect: sample nearer the tumour centre, which pushes the tissue outwards.
    push = (rng.uniform(0.25, 0.45) * np.exp(-0.5 * r2 / (1.6 * radius) ** 2)).astype(np.float32)

    coords = np.empty((3, *box), dtype=np.float32)
    pts = [a - c for a, c in zip(axes, out_center, strict=True)]
    amp = float(rng.uniform(1.5, 3.5))
    for i in range(3):
        field = _smooth_field(rng, box, 5, amp)
        acc = np.full(box, tpl.center[i], dtype=np.float32) + field
        for j in range(3):
            shape = [1, 1, 1]
            shape[j] = -1
            coef = np.float32(backward[i, j])
            # Pushed offset p - (p - c) * push, with p the grid offset from the brain centre.
            acc += coef * (pts[j].reshape(shape) - local[j].reshape(shape) * push)
        coords[i] = acc
    del push

    # Linear interpolation keeps partial volumes in [0, 1] and needs no spline prefilter.
    mask, gm, wm, t1, caps = (
        ndimage.map_coordinates(vol, coords, order=1, mode="constant", cval=0.0, prefilter=False)
        for vol in (tpl.mask, tpl.gm, tpl.wm, tpl.t1, *((tpl.caps,) if others_rng else (tpl.mask,)))
    )
    del coords
    brain = mask > 0.5
    gm *= brain
    wm *= brain
    csf = np.clip(mask - gm - wm, 0, 1) * brain

    seg, sub = _tumor(rng, local, radius, brain, wm, gm)
    image = _paint(rng, scanner, t1, csf, gm, wm, seg, sub, brain)
    others = (
        {}
        if others_rng is None
        else paint_sequences(others_rng, scanner, t1, (csf, gm, wm), caps, seg, sub, brain, _smooth_field)
    )

    full_t1ce = np.zeros(GRID_SHAPE, dtype=np.int16)
    full_seg = np.zeros(GRID_SHAPE, dtype=np.uint8)
    pve = np.zeros((3, *GRID_SHAPE), dtype=np.float32)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    full_t1ce[sl] = image
    full_seg[sl] = seg
    full_others = {}
    for seq, painted in others.items():
        full_others[seq] = np.zeros(GRID_SHAPE, dtype=np.int16)
        full_others[seq][sl] = painted
    # Quantise so that the three maps still add up to at most 1: CSF takes what GM and WM leave of the total.
    healthy = (seg == 0) & brain
    total = np.round(np.clip(csf + gm + wm, 0, 1) * healthy * _PVE_STEPS)
    wm_q = np.minimum(np.round(wm * healthy * _PVE_STEPS), total)
    gm_q = np.minimum(np.round(gm * healthy * _PVE_STEPS), total - wm_q)
    for k, p in enumerate((total - gm_q - wm_q, gm_q, wm_q)):
        pve[(k, *sl)] = p / np.float32(_PVE_STEPS)
    return DemoCase(name, full_t1ce, full_seg, pve, full_others)


def _tumor(
    rng: np.random.Generator,
    local: list[np.ndarray],
    radius: float,
    brain: np.ndarray,
    wm: np.ndarray,
    gm: np.ndarray,
) -> tuple[np.ndarray, tuple[slice, ...]]:
    """BraTS labels (uint8, box shape) for a glioma centred at offset 0 of ``local`` (grid offsets, 1-D each).

    Returns:
        The labels and the sub-box (slices into the box) that holds all of the tumour.
    """
    box = brain.shape
    seg = np.zeros(box, dtype=np.uint8)
    # Work in a cube around the tumour: edema reaches up to ~2.5 radii.
    reach = int(2.8 * radius) + 6
    idx = [np.flatnonzero(np.abs(ax) <= reach) for ax in local]
    if any(len(i) == 0 for i in idx):
        return seg, (slice(0, 0),) * 3
    sub = tuple(slice(int(i[0]), int(i[-1]) + 1) for i in idx)
    x, y, z = (ax[s] for ax, s in zip(local, sub, strict=True))
    dist = np.sqrt(x[:, None, None] ** 2 + y[None, :, None] ** 2 + z[None, None, :] ** 2)
    shape = dist.shape

    def lumps(sigma: float) -> np.ndarray:
        noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
        return noise / (noise.std() + 1e-6)

    # Lumpy outline of the enhancing tumour and of the necrotic core inside it.
    outer = dist / (radius * (1 + 0.18 * lumps(radius / 3)))
    core_frac = rng.uniform(0.45, 0.7)
    core = dist / (radius * core_frac * (1 + 0.15 * lumps(radius / 4)))
    inside = brain[sub]
    tumor = (outer < 1) & inside
    necrotic = (core < 1) & tumor
    # Edema: the tumour's blurred footprint, reaching further where there is white matter.
    spread = ndimage.gaussian_filter(tumor.astype(np.float32), radius * rng.uniform(0.5, 0.8))
    reachable = spread * (0.25 + 0.75 * wm[sub] + 0.1 * gm[sub])
    edema = (reachable > rng.uniform(0.05, 0.1)) & inside & ~tumor
    local_seg = np.zeros(shape, dtype=np.uint8)
    local_seg[edema] = 2
    local_seg[tumor] = 4
    local_seg[necrotic] = 1
    seg[sub] = local_seg
    return seg, sub


def _paint(
    rng: np.random.Generator,
    scanner: Scanner,
    t1: np.ndarray,
    csf: np.ndarray,
    gm: np.ndarray,
    wm: np.ndarray,
    seg: np.ndarray,
    sub: tuple[slice, ...],
    brain: np.ndarray,
) -> np.ndarray:
    """The T1c image (int16, box shape) from tissue maps, template T1 detail, tumour, bias field and noise."""
    level = np.float32(scanner.wm_level * rng.uniform(0.92, 1.08))
    mu = np.array([scanner.csf_ratio, scanner.gm_ratio, 1.0], dtype=np.float32) * level
    model = mu[0] * csf + mu[1] * gm + mu[2] * wm
    # The template's own T1 (CSF ~0.39, GM ~0.65, WM ~0.87) remapped to the scanner's levels adds detail.
    detail = np.interp(t1, [0.0, 0.39, 0.65, 0.87, 1.0], [0.0, *mu, mu[2] * 1.1]).astype(np.float32)
    image = 0.6 * model + 0.4 * detail
    # Tumour: T1-dark edema, bright enhancing rim, dark heterogeneous necrosis (soft edges).
    box = image.shape
    labels = seg[sub]
    part = image[sub]
    grain = ndimage.gaussian_filter(rng.standard_normal(labels.shape).astype(np.float32), 1.5)
    texture = 1 + 0.1 * grain / (grain.std() + 1e-6)
    for label, value in ((2, None), (4, rng.uniform(1.2, 1.45) * level), (1, rng.uniform(0.3, 0.45) * level)):
        soft = ndimage.gaussian_filter((labels == label).astype(np.float32), 0.8)
        if value is None:
            part *= 1 - np.float32(rng.uniform(0.1, 0.18)) * soft
        else:
            part = part * (1 - soft) + np.float32(value) * texture * soft
    image[sub] = part
    bias = np.exp(_smooth_field(rng, box, 3, scanner.bias))
    image *= bias
    sigma = np.float32(scanner.noise * level)
    n1 = rng.standard_normal(box, dtype=np.float32)
    n2 = rng.standard_normal(box, dtype=np.float32)
    image = np.sqrt((image + sigma * n1) ** 2 + (sigma * n2) ** 2)
    # Skull-stripped: zero outside the brain, at least 1 inside so the brain mask is the non-zero voxels.
    image = np.where(brain, np.clip(np.rint(image), 1, 32767), 0)
    return image.astype(np.int16)


def _save_nifti(path: Path, array: np.ndarray) -> None:
    img = nib.Nifti1Image(array, BRATS_AFFINE)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(BRATS_AFFINE, code=1)
    img.set_sform(BRATS_AFFINE, code=1)
    nib.save(img, str(path))


def write_case(folder: Path, case: DemoCase) -> None:
    """Write a case into ``folder`` (its own case folder) in BraTS and FSL FAST naming."""
    folder.mkdir(parents=True, exist_ok=True)
    _save_nifti(folder / f"{case.name}_t1ce.nii.gz", case.t1ce)
    _save_nifti(folder / f"{case.name}_seg.nii.gz", case.seg)
    for seq, volume in case.others.items():  # BraTS 2018 names: _t1, _t2, _flair
        _save_nifti(folder / f"{case.name}_{seq}.nii.gz", volume)
    for k in range(3):
        _save_nifti(folder / f"{case.name}_t1ce_pve_{k}.nii.gz", case.pve[k])

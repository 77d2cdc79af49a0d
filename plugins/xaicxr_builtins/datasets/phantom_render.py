"""Synthetic PA chest radiographs ("phantoms") with a known lesion mask for each class.

An image is built as a map of attenuation (tissue density times path length) in *patient*
coordinates: x runs from the image's left (patient's right) to its right, y from the top down,
both in half-image-widths, so that anatomy and lesions are defined independently of ``size``.
The map is then exposed (``1 - exp(-mu * A)``: bright = dense, as a CXR is displayed), windowed,
blurred and given quantum noise.

Every nuisance (pose, body habitus, lung shape, heart, ribs, hila and vessels, breast shadows,
exposure, noise) is drawn by code that does not know the class, from its own generator, with
the same distribution for every class, so the only class evidence is the lesion pattern inside
the lungs. Some nuisances (hilar prominence, breast shadows, patchy lung density) deliberately
overlap the classes' favourite regions, so that "brighter here on average" is not enough to
classify; the lesions' textures (a sharp fissure, streaks, mottled haze) are. The class patterns follow their
radiological descriptions, and where they lie varies within each description, so that no fixed
map of "where this class's lesions usually are" points at the lesion of most images:

* ``bacteria``: unilateral lobar consolidation (either lung; upper, middle or lower zone), dense
  and homogeneous, one side bounded by a fissure, sometimes with air bronchograms;
* ``virus``: interstitial streaks radiating from a hilum along the bronchi over a fine reticular
  net, usually in both lungs; in each lung the streaks are predominantly upper, middle or lower
  from the hilum and reach more or less far;
* ``covid``: peripheral ground-glass patches, faint and hazy, usually in both lungs, one to four
  per lung, lower-zone predominant but also middle or upper.

The lesion mask is the smallest set of lung pixels, taken from the densest (after slight
smoothing) down, that holds at least 90 % of the density the lesion adds; ``lesion_share`` in the
parameters says how much it holds. The lesion density is exactly zero below 1 % of its peak, so a
counterfactual twin rendered without it (``lesion="removed"``) differs from the image only near
the lesion (:func:`lesion_support`).

The difficulty sets the range of lesion density and extent; nuisances do not depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
from scipy import ndimage

CLASSES = ("normal", "bacteria", "virus", "covid")
DIFFICULTIES = ("easy", "standard", "subtle")
LESION_MODES = ("full", "removed", "mask_only")
"""What of the lesion an image shows: all of it, none of it (the counterfactual twin), or only
the part inside the lesion mask."""

_REFERENCE_SIZE = 128
"""Noise and blur are given for this size and scaled with it, so a smaller rendering looks like
a downsampled larger one."""

_SIDES = (-1, 1)
"""Image-left (patient's right lung) and image-right (patient's left lung)."""

MASK_SHARE = 0.9
"""The lesion mask holds at least this share of the density the lesion adds."""

_MASK_SMOOTHING_PX = 2.0
"""Sigma (at the reference size) of the smoothing that ranks pixels for the lesion mask: the mask
grows over a patch or a bundle of streaks as a whole rather than picking single bright pixels."""

_DENSITY_CUTOFF = 0.01
"""Lesion density below this share of its peak is set to zero, so the lesion has a compact support
outside which a counterfactual twin is pixel-identical to the image."""

_BLUR_TRUNCATE = 4.0
"""The detector blur's kernel reaches this many sigmas (scipy's default); the reach in pixels is
recorded in the parameters (``blur_reach_px``) for :func:`lesion_support`."""


@dataclass(frozen=True)
class Phantom:
    """One rendered radiograph: ``image`` in [0, 1], lesion and lung masks, and its parameters.

    ``lesion_density`` is the attenuation the lesion adds in the full image, whatever the
    rendering's lesion mode: the mask and ``params["lesion_share"]`` describe it, and a
    counterfactual twin differs from the image only where it is non-zero (:func:`lesion_support`).
    """

    image: np.ndarray
    lesion: np.ndarray
    lung: np.ndarray
    params: dict
    lesion_density: np.ndarray


@dataclass(frozen=True)
class _Difficulty:
    contrast: tuple[float, float]
    """Range of the lesion density, as a multiple of the class's nominal density."""
    extent: tuple[float, float]
    """Range of the lesion size, as a multiple of the class's nominal size."""


_DIFFICULTY = {
    "easy": _Difficulty(contrast=(1.2, 1.6), extent=(1.0, 1.3)),
    "standard": _Difficulty(contrast=(0.9, 1.35), extent=(0.85, 1.2)),
    "subtle": _Difficulty(contrast=(0.4, 0.8), extent=(0.6, 0.95)),
}


@dataclass(frozen=True)
class _Lung:
    """One lung field: its soft mask, and lung-local coordinates used to place lesions.

    ``u`` runs from the medial (0) to the lateral (1) border, ``v`` from the apex (0) to the
    costophrenic level (1); both are only meaningful where ``soft`` > 0.
    """

    side: int
    soft: np.ndarray
    inside: np.ndarray
    room: np.ndarray
    """Where a lesion may add density: like ``soft`` but ramping up just inside the border, so it
    is zero wherever ``inside`` is false and the lung mask holds the whole lesion."""
    u: np.ndarray
    v: np.ndarray
    hilum_r: np.ndarray
    """Distance from the hilum."""
    hilum_theta: np.ndarray
    """Angle about the hilum, 0 pointing laterally."""


@dataclass(frozen=True)
class _Body:
    x: np.ndarray
    y: np.ndarray
    px: float
    lungs: tuple[_Lung, _Lung]


def render_phantom(seed: int, label: str, index: int, size: int = 128,
                   difficulty: str = "standard", lesion: str = "full") -> Phantom:
    """Render one phantom; the result depends only on the arguments.

    ``lesion`` (one of :data:`LESION_MODES`) makes counterfactual twins: every random number is
    drawn the same way in every mode and only the lesion density added to the attenuation
    differs, so a twin is pixel-identical to the full image outside :func:`lesion_support`.
    """
    if label not in CLASSES:
        raise ValueError(f"unknown phantom class {label!r}; one of {', '.join(CLASSES)}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown phantom difficulty {difficulty!r}; one of {', '.join(DIFFICULTIES)}")
    if lesion not in LESION_MODES:
        raise ValueError(f"unknown lesion mode {lesion!r}; one of {', '.join(LESION_MODES)}")
    if size < 16:
        raise ValueError("phantom size must be at least 16")
    root = np.random.SeedSequence([seed, CLASSES.index(label), index, DIFFICULTIES.index(difficulty)])
    anatomy_rng, lesion_rng, film_rng = (np.random.default_rng(s) for s in root.spawn(3))

    anatomy = _draw_anatomy(anatomy_rng)
    body = _body_geometry(size, anatomy)
    attenuation = _anatomy_attenuation(body, anatomy, anatomy_rng)
    density, lesion_params = _LESIONS[label](lesion_rng, body, _DIFFICULTY[difficulty])
    density = _compact(density * np.maximum(body.lungs[0].room, body.lungs[1].room))
    lung = body.lungs[0].inside | body.lungs[1].inside
    mask = _lesion_mask(density, lung)
    if lesion == "full":
        attenuation += density
    elif lesion == "mask_only":
        attenuation += density * mask
    image, film = _expose(attenuation, body.px, film_rng)

    total = float(density.sum(dtype=np.float64))
    share = round(float(density[mask].sum(dtype=np.float64)) / total, 5) if total > 0 else None
    params = {"label": label, "index": index, "seed": seed, "size": size, "difficulty": difficulty,
              **{k: _jsonable(v) for k, v in anatomy.items()}, **film, "lesion": lesion_params,
              "lesion_mode": lesion, "lesion_share": share}
    return Phantom(image=image, lesion=mask, lung=lung, params=params, lesion_density=density)


def lesion_support(phantom: Phantom) -> np.ndarray:
    """The pixels the lesion can change: where its density is non-zero, grown by the reach of the
    detector blur's kernel (a square, as the blur is separable). Outside it the image and its
    counterfactual twins are pixel-identical."""
    reach = phantom.params["blur_reach_px"]
    support = phantom.lesion_density > 0
    if reach == 0 or not support.any():
        return support
    return ndimage.binary_dilation(support, structure=np.ones((2 * reach + 1, 2 * reach + 1), bool))


def _compact(density: np.ndarray) -> np.ndarray:
    """``density`` with everything below :data:`_DENSITY_CUTOFF` of its peak set to zero."""
    peak = float(density.max())
    if peak <= 0:
        return np.zeros_like(density)
    return np.where(density >= np.float32(_DENSITY_CUTOFF * peak), density, np.float32(0.0))


def _lesion_mask(density: np.ndarray, lung: np.ndarray) -> np.ndarray:
    """The fewest lung pixels, densest first after slight smoothing, that hold :data:`MASK_SHARE`
    of ``density``. Smoothing ranks the gaps between a lesion's streaks or mottles with the
    lesion; unsmoothed, the mask would be a scatter of single bright pixels."""
    mask = np.zeros(density.shape, bool)
    if not density.any():
        return mask
    sigma = _MASK_SMOOTHING_PX * density.shape[0] / _REFERENCE_SIZE
    ranking = ndimage.gaussian_filter(density, sigma, mode="constant")[lung]
    order = np.argsort(-ranking, kind="stable")
    held = np.cumsum(density[lung][order], dtype=np.float64)
    count = int(np.searchsorted(held, MASK_SHARE * held[-1])) + 1
    chosen = np.zeros(order.shape, bool)
    chosen[order[:count]] = True
    mask[lung] = chosen
    return mask


# ---------------------------------------------------------------- grids and random fields

@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in [-1, 1], x across and y down."""
    t = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2.0 - 1.0
    x, y = np.meshgrid(t, t)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


@lru_cache(maxsize=32)
def _basis(size: int, k: int) -> np.ndarray:
    """A (size, k) matrix of Gaussian bumps; ``B G B^T`` turns k*k numbers into a smooth field."""
    t = ((np.arange(size) + 0.5) / size) * 2.0 - 1.0
    centres = np.linspace(-1.1, 1.1, k)
    width = centres[1] - centres[0]
    b = np.exp(-0.5 * ((t[:, None] - centres[None, :]) / width) ** 2).astype(np.float32)
    b.flags.writeable = False
    return b


def _smooth_field(rng: np.random.Generator, size: int, k: int) -> np.ndarray:
    """A zero-mean, unit-variance random field with about k blobs across the image.

    Each pixel is a sum of k*k unit normals weighted by products of bumps whose squares sum
    to sqrt(pi) along each axis, hence the normalisation. einsum rather than ``@``: a threaded
    BLAS is slower here at 256 px when images are rendered in parallel threads, and its
    summation order may depend on the thread count.
    """
    b = _basis(size, k)
    weights = rng.standard_normal((k, k), dtype=np.float32)
    field = np.einsum("il,jl->ij", np.einsum("ik,kl->il", b, weights), b)
    return field / np.float32(np.sqrt(np.pi))


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _soft_inside(margin: np.ndarray, edge: float) -> np.ndarray:
    """0 outside, 1 inside, a linear ramp ``edge`` wide across the boundary (margin = 0)."""
    return np.clip(margin / np.float32(edge) + 0.5, 0.0, 1.0)


# ---------------------------------------------------------------- anatomy

def _draw_anatomy(rng: np.random.Generator) -> dict:
    """Every anatomical nuisance parameter; drawn the same way for every class."""
    u = rng.uniform
    return {
        "rotation_deg": u(-4.0, 4.0),
        "shift": (u(-0.06, 0.06), u(-0.05, 0.06)),
        "scale": u(0.9, 1.04),
        "aspect": u(0.94, 1.06),
        "body_half_width": u(0.8, 0.93),
        "tissue": u(1.35, 1.7),
        "lung_top": (u(-0.88, -0.78), u(-0.88, -0.78)),
        "lung_base": (u(0.44, 0.58), u(0.5, 0.64)),
        "lung_medial": (u(0.08, 0.12), u(0.08, 0.12)),
        "lung_span": (u(0.56, 0.66), u(0.56, 0.66)),
        "dome": (u(0.14, 0.24), u(0.12, 0.22)),
        "air": u(0.68, 0.78),
        "heart_centre": (u(0.12, 0.18), u(0.28, 0.36)),
        "heart_radii": (u(0.36, 0.42), u(0.25, 0.3)),
        "heart_tilt_deg": u(20.0, 35.0),
        "rib_spacing": u(0.15, 0.17),
        "rib_phase": u(0.0, 1.0),
        "rib_density": u(0.07, 0.13),
        "hilum_height": u(-0.1, 0.02),
        "gastric_bubble": bool(rng.random() < 0.5),
        "breast_shadow": u(0.06, 0.22) if rng.random() < 0.6 else 0.0,
        "lung_mottle": u(0.02, 0.08),
        "vessel_density": u(0.08, 0.16),
        "hilar_density": u(0.0, 0.3),
        "hilar_radius": u(0.1, 0.3),
    }


def _jsonable(value: object) -> object:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return round(value, 5)
    return value


def _patient_coords(size: int, a: dict) -> tuple[np.ndarray, np.ndarray]:
    """Image grid mapped into patient coordinates (pose: rotation, shift, scale)."""
    gx, gy = _grid(size)
    theta = np.deg2rad(a["rotation_deg"])
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    sx = np.float32(1.0 / (a["scale"] * a["aspect"]))
    sy = np.float32(a["aspect"] / a["scale"])
    dx, dy = (gx - np.float32(a["shift"][0])), (gy - np.float32(a["shift"][1]))
    return (c * dx + s * dy) * sx, (c * dy - s * dx) * sy


def _body_geometry(size: int, a: dict) -> _Body:
    x, y = _patient_coords(size, a)
    px = 2.0 / size
    heart = _ellipse_level(x, y, a["heart_centre"], a["heart_radii"], a["heart_tilt_deg"])
    lungs = tuple(_lung_field(x, y, i, a, px, heart) for i in range(2))
    return _Body(x=x, y=y, px=px, lungs=lungs)  # type: ignore[arg-type]


def _ellipse_level(x: np.ndarray, y: np.ndarray, centre: tuple[float, float],
                   radii: tuple[float, float], tilt_deg: float = 0.0) -> np.ndarray:
    """1 at the centre of a (tilted) ellipse, 0 on its border, negative outside."""
    t = np.deg2rad(tilt_deg)
    c, s = np.float32(np.cos(t)), np.float32(np.sin(t))
    dx, dy = x - np.float32(centre[0]), y - np.float32(centre[1])
    p = (c * dx + s * dy) / np.float32(radii[0])
    q = (c * dy - s * dx) / np.float32(radii[1])
    return 1.0 - p * p - q * q


def _lung_field(x: np.ndarray, y: np.ndarray, i: int, a: dict, px: float, heart: np.ndarray) -> _Lung:
    """A teardrop lung: a straight-ish medial border, a curved lateral wall, a domed base.

    The lateral wall meets the diaphragm dome at a sharp costophrenic angle; on the patient's
    left the aortic knob bulges the upper medial border. The heart is cut out of both lungs, as
    lung segmentation masks do; the mediastinum is then simply the airless gap between them.
    """
    side = _SIDES[i]
    top, base, medial = a["lung_top"][i], a["lung_base"][i], a["lung_medial"][i]
    span, dome = a["lung_span"][i], a["dome"][i]
    d = x * np.float32(side)
    v = (y - np.float32(top)) / np.float32(base - top)
    vc = np.clip(v, 0.0, 1.0)
    apex = medial + 0.4 * span
    grow = np.sqrt(vc * (2.0 - vc))
    lateral = np.float32(apex) + np.float32(medial + span - apex) * grow
    medial_edge = np.float32(apex) - np.float32(apex - medial) * np.sqrt(grow)
    if side == 1:
        medial_edge = medial_edge + np.float32(0.03) * np.exp(-(((v - 0.3) / 0.12) ** 2))
    width = np.maximum(lateral - medial_edge, np.float32(1e-3))
    u = (d - medial_edge) / width
    arch = np.sqrt(np.clip(1.0 - ((u - 0.4) / 0.6) ** 2, 0.0, 1.0))
    bottom = np.float32(base) - np.float32(dome) * arch
    margin = np.minimum(np.minimum(d - medial_edge, lateral - d), bottom - y)
    margin = np.where(v < 0.0, np.float32(-1.0), margin)
    margin = np.minimum(margin, -heart * np.float32(min(a["heart_radii"]) / 2))
    hx, hy = side * (medial + 0.1), top + 0.55 * (base - top) + a["hilum_height"]
    dx, dy = (x - np.float32(hx)) * np.float32(side), y - np.float32(hy)
    return _Lung(side=side, soft=_soft_inside(margin, 1.5 * px), inside=margin > 0,
                 room=np.clip(margin / np.float32(1.5 * px), 0.0, 1.0), u=u, v=v,
                 hilum_r=np.sqrt(dx * dx + dy * dy), hilum_theta=np.arctan2(dy, dx))


def _anatomy_attenuation(body: _Body, a: dict, rng: np.random.Generator) -> np.ndarray:
    """Soft tissue minus lung air, plus spine, ribs, clavicles and vessels."""
    x, y = body.x, body.y
    right, left = body.lungs
    lung_soft = np.maximum(right.soft, left.soft)
    atten = _soft_tissue(x, y, a, body.px)
    atten *= 1.0 - np.float32(a["air"]) * (_lung_depth(right) + _lung_depth(left))
    atten -= _trachea(x, y, body.px)
    atten += _spine(x, y, body.px)
    atten += _ribs(x, y, a, body.px) * (0.5 + 0.5 * lung_soft)
    atten += _clavicles(x, y, body.px)
    atten += _vessels(body, a, rng) * lung_soft
    atten += np.float32(a["lung_mottle"]) * _smooth_field(rng, x.shape[0], 4) * lung_soft
    if a["breast_shadow"] > 0:
        atten += np.float32(a["breast_shadow"]) * _breast_shadows(x, y, a)
    if a["gastric_bubble"]:
        atten -= _gastric_bubble(x, y, a, rng)
    return atten


def _soft_tissue(x: np.ndarray, y: np.ndarray, a: dict, px: float) -> np.ndarray:
    """A torso thickest in the middle, with a neck and sloping shoulders at the top."""
    hw = np.float32(a["body_half_width"]) + np.float32(0.04) * np.clip(y, 0, 1)
    d = np.abs(x)
    torso = _soft_inside(hw - d, 2.5 * px)
    shoulder_top = -0.93 + 0.12 * _smoothstep((d - 0.22) / 0.6)
    torso = torso * _soft_inside(y - shoulder_top, 3 * px)
    neck = _soft_inside(0.23 - d, 2.5 * px)
    r = np.minimum(d / hw, 1.0)
    thickness = np.sqrt(1.0 - r * r) ** 1.5
    return np.float32(a["tissue"]) * np.maximum(torso * (0.12 + 0.88 * thickness), 0.6 * neck)


def _lung_depth(lung: _Lung) -> np.ndarray:
    """Air path length through a lung: largest mid-lung, thinning at the borders."""
    w = np.clip(lung.u * (1.0 - lung.u), 0.0, 0.25) * 4.0
    return lung.soft * (0.6 + 0.4 * np.sqrt(w))


def _trachea(x: np.ndarray, y: np.ndarray, px: float) -> np.ndarray:
    return 0.35 * _soft_inside(0.035 - np.abs(x - 0.01), 2 * px) * _soft_inside(-0.3 - y, 6 * px)


def _spine(x: np.ndarray, y: np.ndarray, px: float) -> np.ndarray:
    """Vertebral column with disc spaces and pedicles, seen through the mediastinum."""
    d = np.abs(x)
    column = _soft_inside(0.065 - d, 2 * px)
    rings = np.cos(2.0 * np.pi * y / 0.13)
    pedicles = np.exp(-((d - 0.045) / 0.012) ** 2) * (0.5 + 0.5 * rings)
    return 0.2 * column * (0.8 + 0.2 * rings) + 0.1 * pedicles


def _ribs(x: np.ndarray, y: np.ndarray, a: dict, px: float) -> np.ndarray:
    """Posterior ribs (rise laterally from the spine, then curve down at the wall) and fainter
    anterior ribs (slope down towards the sternum).

    Each set is one periodic function of a curved coordinate, so the cost does not depend on
    the number of ribs; spacing widens slightly towards the base.
    """
    d = np.abs(x)
    spacing = np.float32(a["rib_spacing"])
    posterior = np.clip(y + 1.15 + 0.45 * d - 0.6 * d * d, 0.0, None) ** 1.12
    post = np.clip(np.cos(2.0 * np.pi * (posterior / spacing + np.float32(a["rib_phase"]))), 0.0, None)
    post = np.sqrt(post) * _soft_inside(d - 0.08, 3 * px)
    anterior = y + 1.15 + 0.5 * d
    ant = np.clip(np.cos(2.0 * np.pi * anterior / (spacing * 1.6)), 0.0, None) ** 2
    ant = ant * _soft_inside(d - 0.2, 0.15)
    thorax = _soft_inside(np.minimum(y + 0.9, 0.6 - y), 0.12)
    wall = _soft_inside(a["body_half_width"] - 0.02 - d, 3 * px)
    return np.float32(a["rib_density"]) * (post + 0.45 * ant) * thorax * wall


def _clavicles(x: np.ndarray, y: np.ndarray, px: float) -> np.ndarray:
    """Two gently S-shaped bands from the sternal notch up and out to the shoulders."""
    d = np.abs(x)
    centre = -0.6 - 0.25 * (d - 0.08) + 0.025 * np.sin(np.pi * (d - 0.08) / 0.3)
    along = _soft_inside(np.minimum(d - 0.06, 0.74 - d), 3 * px)
    bone = np.exp(-((y - centre) / 0.035) ** 2)
    return 0.3 * bone * along


def _ray_profile(rng: np.random.Generator, n: int, width: tuple[float, float],
                 spread: float, bins: int = 360, centre: float = 0.0) -> np.ndarray:
    """Sum of n narrow bumps over angle (-pi, pi], spread about ``centre`` (0: away from the
    midline)."""
    angles = np.linspace(-np.pi, np.pi, bins, endpoint=False, dtype=np.float32)
    centres = rng.normal(centre, spread, n).astype(np.float32)
    widths = rng.uniform(*width, n).astype(np.float32)
    amps = rng.uniform(0.4, 1.0, n).astype(np.float32)
    diff = (angles[None, :] - centres[:, None] + np.float32(np.pi)) % np.float32(2 * np.pi) - np.float32(np.pi)
    return (amps[:, None] * np.exp(-0.5 * (diff / widths[:, None]) ** 2)).sum(axis=0)


def _rays(lung: _Lung, profile: np.ndarray, curl: float,
          wobble: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rays radiating from a hilum: (intensity by angle, distance from the hilum).

    Angles are measured from the lateral direction, so a profile centred on 0 points outwards.
    ``curl`` bends all rays the same way; ``wobble`` (radians, per pixel) makes them irregular.
    """
    r = lung.hilum_r
    theta = lung.hilum_theta + np.float32(curl) * r
    if wobble is not None:
        theta = theta + wobble
    bins = profile.shape[0]
    idx = ((theta / np.float32(2 * np.pi) + 0.5) * bins).astype(np.int32) % bins
    return profile[idx], r


def _vessels(body: _Body, a: dict, rng: np.random.Generator) -> np.ndarray:
    """Normal hila and bronchovascular markings: a hilar shadow, tapering branches from it.

    How prominent the hila and vessels are varies from patient to patient, as it does on real
    films; it also keeps "denser near the hilum" from being evidence of the perihilar class.
    """
    out = np.zeros_like(body.x)
    for lung in body.lungs:
        profile = _ray_profile(rng, n=int(rng.integers(14, 22)), width=(0.015, 0.03), spread=1.0)
        along, r = _rays(lung, profile, curl=rng.uniform(-0.6, 0.6))
        out += np.float32(a["vessel_density"]) * along * np.exp(-r / 0.3) * _soft_inside(r - 0.04, 0.05)
        out += np.float32(a["hilar_density"]) * np.exp(-0.5 * (r / np.float32(a["hilar_radius"])) ** 2)
    return out


def _breast_shadows(x: np.ndarray, y: np.ndarray, a: dict) -> np.ndarray:
    """Soft tissue over both lower zones, fading upwards, with a sharp curved lower edge."""
    d = np.abs(x)
    base = 0.5 * (a["lung_base"][0] + a["lung_base"][1])
    level = _ellipse_level(d, y, (0.5, base - 0.05), (0.38, 0.32))
    upward = _smoothstep((y - (base - 0.5)) / 0.4)
    below = 1.0 - _smoothstep((y - base + 0.05) / 0.2)
    return _soft_inside(level, 0.15) * upward * below


def _gastric_bubble(x: np.ndarray, y: np.ndarray, a: dict, rng: np.random.Generator) -> np.ndarray:
    """Gas under the patient's left hemidiaphragm (image right)."""
    cx = 0.42 + rng.uniform(-0.08, 0.08)
    cy = a["lung_base"][1] + 0.05 + rng.uniform(0.0, 0.08)
    rx, ry = rng.uniform(0.08, 0.14), rng.uniform(0.05, 0.08)
    return 0.3 * _soft_inside(1.0 - ((x - cx) / rx) ** 2 - ((y - cy) / ry) ** 2, 0.6)


# ---------------------------------------------------------------- lesions

_LesionResult = tuple[np.ndarray, dict]
"""(added attenuation, parameters). :func:`render_phantom` confines the attenuation to the lungs'
``room`` and zeroes its faint tail; the lesion mask is made from what is left."""


def _normal(rng: np.random.Generator, body: _Body, diff: _Difficulty) -> _LesionResult:
    return np.zeros_like(body.x), {}


def _involved_lungs(rng: np.random.Generator, p_both: float) -> tuple[int, ...]:
    """Indices into ``body.lungs``: both with probability ``p_both``, otherwise either one alike."""
    if rng.random() < p_both:
        return (0, 1)
    return (int(rng.integers(2)),)


def _image_side(lung: _Lung) -> str:
    return "left" if lung.side < 0 else "right"


def _bacteria(rng: np.random.Generator, body: _Body, diff: _Difficulty) -> _LesionResult:
    """Lobar consolidation in one lung: dense, homogeneous, sharp along a fissure.

    The zone is a band of lung-local height ``v`` across the lung's width. The edge facing the
    rest of the lung is the fissure (sharp and straight); the opposite edge of an upper or
    middle zone consolidation, and the medial edge, are ragged (a smooth random field moves
    them).
    """
    i = int(rng.integers(2))
    lung = body.lungs[i]
    zone = str(rng.choice(["upper", "middle", "lower"], p=[0.3, 0.3, 0.4]))
    contrast = float(rng.uniform(*diff.contrast))
    extent = float(rng.uniform(*diff.extent))
    size = body.x.shape[0]
    rag = _smooth_field(rng, size, 6)
    fissure = lung.v + np.float32(rng.uniform(-0.2, 0.2)) * (lung.u - 0.5)
    height = 0.45 * extent
    if zone == "upper":
        sharp, ragged = (0.08 + height) - fissure, fissure + 1.0
    elif zone == "middle":
        lo = rng.uniform(0.35, 0.5) - height / 2
        sharp, ragged = fissure - lo, (lo + height) - fissure
    else:
        sharp, ragged = fissure - (1.05 - height), 2.0 - fissure
    medial_cut = rng.uniform(0.0, 0.35) * (1.2 - extent)
    envelope = (_soft_inside(sharp, 0.03) * _soft_inside(ragged + 0.05 * rag, 0.1)
                * _soft_inside(lung.u - medial_cut + 0.08 * rag, 0.15) * lung.soft)
    density = 0.8 * contrast * envelope * (0.9 + 0.1 * _smooth_field(rng, size, 14))
    bronchograms = bool(rng.random() < 0.6)
    if bronchograms:
        profile = _ray_profile(rng, n=int(rng.integers(3, 7)), width=(0.01, 0.02), spread=0.9)
        along, r = _rays(lung, profile, curl=rng.uniform(-0.5, 0.5))
        density -= 0.35 * density * np.minimum(along, 1.0) * _soft_inside(r - 0.08, 0.05)
    params = {"image_side": _image_side(lung),
              "patient_side": "right" if lung.side < 0 else "left", "zone": zone,
              "contrast": round(contrast, 4), "extent": round(extent, 4),
              "air_bronchograms": bronchograms}
    return density, params


_VIRUS_SECTORS = {"upper": -1.2, "middle": 0.0, "lower": 0.95}
"""Direction of each sector about the hilum: radians from lateral, positive downwards."""


def _virus(rng: np.random.Generator, body: _Body, diff: _Difficulty) -> _LesionResult:
    """Interstitial pattern: streaks radiating from the hilum along the bronchi, over a reticular net.

    Usually in both lungs. In each lung the pattern is predominant in one sector about the hilum
    (upper, middle or lower, its direction jittered), starts more or less close to the hilum and
    reaches more or less far, so that no one perihilar spot is involved in most images. The net
    is the zero-level set of a random field (a web of thin curved lines), the streaks are rays
    from the hilum; both fade with distance from the hilum and away from the sector's direction.
    The sector's angular window is flat-topped (a Gaussian of the fourth power), so little of
    the density lies in a faint fringe and the mask that holds 90 % of it is the sector one sees.
    The density is higher than a bilateral perihilar disc's would need to be, as one sector per
    lung is a smaller lesion to detect.
    """
    contrast = float(rng.uniform(*diff.contrast))
    extent = float(rng.uniform(*diff.extent))
    size = body.x.shape[0]
    density = np.zeros_like(body.x)
    lungs = []
    for i in _involved_lungs(rng, p_both=0.55):
        lung = body.lungs[i]
        sector = str(rng.choice(list(_VIRUS_SECTORS)))
        direction = _VIRUS_SECTORS[sector] + rng.uniform(-0.3, 0.3)
        spread = rng.uniform(0.45, 0.65)
        start = rng.uniform(0.03, 0.15)
        reach = 0.3 * extent * rng.uniform(0.8, 1.25)
        profile = _ray_profile(rng, n=int(rng.integers(8, 13)), width=(0.03, 0.06), spread=1.2 * spread,
                               centre=direction)
        wobble = np.float32(0.18) * _smooth_field(rng, size, 9)
        along, r = _rays(lung, profile, curl=rng.uniform(-0.6, 0.6), wobble=wobble)
        off_axis = (lung.hilum_theta - np.float32(direction - np.pi)) % np.float32(2 * np.pi) - np.float32(np.pi)
        window = np.exp(-0.5 * (off_axis / np.float32(1.3 * spread)) ** 4)
        beyond = r - np.float32(start)
        fade = np.exp(-0.5 * (np.maximum(beyond, 0.0) / np.float32(reach)) ** 2) * _smoothstep(beyond / 0.1)
        net = np.exp(-(_smooth_field(rng, size, 18) / 0.25) ** 2)
        pattern = 0.65 * np.minimum(along, 1.0) + 0.35 * net
        density += np.float32(rng.uniform(0.7, 1.0)) * fade * window * pattern * lung.soft
        lungs.append({"image_side": _image_side(lung), "sector": sector, "direction": round(direction, 4),
                      "start": round(start, 4), "reach": round(reach, 4)})
    params = {"contrast": round(contrast, 4), "extent": round(extent, 4), "lungs": lungs}
    return 1.2 * contrast * density, params


_COVID_ZONES = {"lower": (0.65, 0.95), "middle": (0.4, 0.65), "upper": (0.12, 0.4)}
"""Ranges of a patch centre's lung-local height ``v``."""
_COVID_ZONE_ODDS = (0.45, 0.35, 0.2)
"""How often each zone is an image's predominant one."""


def _covid(rng: np.random.Generator, body: _Body, diff: _Difficulty) -> _LesionResult:
    """Peripheral ground glass: faint, hazy, mottled patches along the lateral lung margin.

    Usually in both lungs, one to four patches in each. Lower-zone predominant: each image draws
    a predominant zone (lower, middle or upper, the lower likeliest) and most of its patches lie
    in it, the others in any zone. A patch falls off as ``exp(-d**3 / 2)`` rather than a
    Gaussian's ``exp(-d**2 / 2)``: as hazy to the eye, but with less density in a wide fringe, so
    the mask that holds 90 % of it is not much larger than the patch looks.
    """
    contrast = float(rng.uniform(*diff.contrast))
    extent = float(rng.uniform(*diff.extent))
    size = body.x.shape[0]
    haze = np.zeros_like(body.x)
    zone = str(rng.choice(list(_COVID_ZONES), p=_COVID_ZONE_ODDS))
    lungs = []
    for i in _involved_lungs(rng, p_both=0.6):
        lung = body.lungs[i]
        zones = []
        for _ in range(int(rng.integers(1, 5))):
            where = zone if rng.random() < 0.75 else str(rng.choice(list(_COVID_ZONES)))
            zones.append(where)
            cu = rng.uniform(0.7, 1.0)
            cv = rng.uniform(*_COVID_ZONES[where])
            su = 0.22 * extent * rng.uniform(0.7, 1.3)
            sv = 0.16 * extent * rng.uniform(0.7, 1.3)
            d2 = ((lung.u - np.float32(cu)) / np.float32(su)) ** 2 + ((lung.v - np.float32(cv)) / np.float32(sv)) ** 2
            blob = np.exp(-0.5 * d2 * np.sqrt(d2))
            haze = np.maximum(haze, blob * lung.soft)
        lungs.append({"image_side": _image_side(lung), "patches": zones})
    mottle = np.clip(0.55 + 0.6 * _smooth_field(rng, size, 20), 0.0, 1.2)
    density = 0.8 * contrast * haze * mottle
    params = {"contrast": round(contrast, 4), "extent": round(extent, 4), "zone": zone, "lungs": lungs}
    return density, params


_LESIONS: dict[str, Callable[[np.random.Generator, _Body, _Difficulty], _LesionResult]] = {
    "normal": _normal, "bacteria": _bacteria, "virus": _virus, "covid": _covid,
}


# ---------------------------------------------------------------- film

def _expose(attenuation: np.ndarray, px: float, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Exposure, window and gamma, detector blur and quantum noise; returns the image and its settings."""
    mu = rng.uniform(0.8, 1.25)
    lo, hi = rng.uniform(0.0, 0.1), rng.uniform(0.9, 1.05)
    gamma = rng.uniform(0.8, 1.25)
    noise = rng.uniform(0.005, 0.02)
    blur = rng.uniform(0.4, 0.9)
    scale = 2.0 / (px * _REFERENCE_SIZE)
    signal = 1.0 - np.exp(-np.float32(mu) * np.clip(attenuation, 0.0, None))
    signal = np.clip((signal - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0) ** np.float32(gamma)
    reach = int(_BLUR_TRUNCATE * blur * scale + 0.5)
    signal = ndimage.gaussian_filter(signal, blur * scale, mode="nearest", radius=reach)
    grain = rng.standard_normal(signal.shape, dtype=np.float32)
    image = signal + np.float32(noise * scale) * grain * (0.4 + 0.6 * np.sqrt(signal))
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    film = {"exposure": round(mu, 5), "window": [round(lo, 5), round(hi, 5)], "gamma": round(gamma, 5),
            "noise_at_128px": round(noise, 5), "blur_px_at_128px": round(blur, 5), "blur_reach_px": reach}
    return image, film

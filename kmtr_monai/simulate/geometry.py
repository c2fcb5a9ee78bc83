"""Parametric 4-D heart in a torso: world frame, per-frame chamber shapes, imaging planes and implicit functions.

World frame: NIfTI RAS+ millimetres (+x right, +y anterior, +z superior). The heart has a local orthonormal frame
``E = [e1, e2, e3]`` at the ED base-plane centre ``origin``: ``e3`` is the LV long axis (base -> apex), ``e1``
points from the LV axis towards the RV (septum), ``e2 = e3 × e1``. Local coordinates ``x = E^T (p - origin)``.

Chambers (all frames at once, parameters carry a leading frame axis ``(T, 1, 1)``):
* LV cavity: half ellipsoid of revolution about ``e3``, base plane at ``x3 = b(t)`` (the base descends towards the
  fixed apex), radius ``r(t)``, length ``L(t)``; volume ``(2/3)π r² L`` follows the LV volume curve.
* LV myocardium: the shell up to the epicardial half ellipsoid ``(r + w, L + w)``; ``w(t)`` solves the conserved
  myocardial volume, so the wall thickens in systole. A hypokinetic sector keeps ED radius and thickness.
* RV: half ellipsoid offset along ``e1`` minus the LV epicardium (a crescent around the septum), per-frame size
  solved so the crescent follows the RV volume curve.
* LA / RA: prolate ellipsoids above the base plane, following the atrial volume curves (filling in systole).

Signed distances are first-order approximations ``f (f - 1) / |∇(f²)/2|`` of ellipsoid implicits (exact on the
surface, good within a few mm), which is all partial-volume rendering needs.
"""

from __future__ import annotations

import numpy as np

_F = np.float32


def rotation_matrix(rotvec_deg) -> np.ndarray:
    """Rodrigues rotation (3, 3) for a rotation vector in degrees."""
    v = np.deg2rad(np.asarray(rotvec_deg, dtype=np.float64))
    angle = float(np.linalg.norm(v))
    if angle < 1e-12:
        return np.eye(3)
    k = v / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def heart_frame(p: dict) -> tuple[np.ndarray, np.ndarray]:
    """ED base-plane centre (3,) and local axes ``E`` (3, 3) (columns e1, e2, e3) in world mm."""
    e3 = _unit([-0.55, 0.50, -0.62])  # base -> apex: left, anterior, inferior
    e1 = np.array([0.75, 0.55, 0.10])  # towards the RV: right-anterior
    e1 = _unit(e1 - e1 @ e3 * e3)
    rot = rotation_matrix(p["heart_rotvec_deg"])
    e1, e3 = rot @ e1, rot @ e3
    e2 = np.cross(e3, e1)
    origin = np.array([-12.0, 12.0, 5.0]) + np.asarray(p["heart_shift_mm"])
    return origin, np.stack([e1, e2, e3], axis=1)


def _smooth_step(x):
    """0 -> 1 cosine ramp for x in [0, 1] (clipped outside)."""
    return 0.5 - 0.5 * np.cos(np.pi * np.clip(x, 0.0, 1.0))


def cycle_curves(n_frames: int, heart_rate_bpm: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Normalised ventricular ejection ``g`` and atrial filling ``h`` curves (T,), and the frame interval in ms.

    ``g``: 0 at ED (frame 0), 1 at end-systole, rapid filling, diastasis, atrial kick back to 0. ``h``: atrial volume
    0 (minimum, after the atrial kick = ED) rising to 1 at end-systole, passive emptying, atrial contraction.
    """
    rr_ms = 60000.0 / heart_rate_bpm
    phase = np.arange(n_frames) / n_frames
    f_es = float(np.clip(330.0 / rr_ms, 0.28, 0.48))
    f_fill, f_kick = f_es + 0.55 * (0.85 - f_es), 0.85
    g = np.where(phase <= f_es, _smooth_step(phase / f_es), 1.0 - 0.72 * _smooth_step((phase - f_es) / (f_fill - f_es)))
    g = np.where(phase > f_fill, 0.28 - 0.08 * (phase - f_fill) / (f_kick - f_fill), g)
    g = np.where(phase > f_kick, 0.20 * (1.0 - _smooth_step((phase - f_kick) / (1.0 - f_kick))), g)
    h = np.where(phase <= f_es + 0.03, _smooth_step(phase / (f_es + 0.03)), 1.0)
    h = np.where(phase > f_es + 0.03, 1.0 - 0.45 * _smooth_step((phase - f_es - 0.03) / (f_fill - f_es - 0.03)), h)
    h = np.where(phase > f_fill, 0.55 - 0.05 * (phase - f_fill) / (f_kick - f_fill), h)
    h = np.where(phase > f_kick, 0.50 * (1.0 - _smooth_step((phase - f_kick) / (1.0 - f_kick))), h)
    return g, h, rr_ms / n_frames


def _wall_thickness(r: np.ndarray, length: np.ndarray, myo_mm3: float) -> np.ndarray:
    """Solve ``(r + w)² (L + w) = r² L + 3 V / (2π)`` for the wall thickness ``w`` (Newton, vectorised)."""
    target = r * r * length + 1.5 * myo_mm3 / np.pi
    w = np.full_like(r, 8.0)
    for _ in range(30):
        f = (r + w) ** 2 * (length + w) - target
        df = 2 * (r + w) * (length + w) + (r + w) ** 2
        w = w - f / df
    return w


def ellipsoid_sd(dx, dy, dz, a, b, c):
    """Approximate signed distance (mm, negative inside) to the ellipsoid with semi-axes ``a, b, c``.

    Broadcasts: coordinates (S, N) with per-frame semi-axes (T, 1, 1) give (T, S, N) float32.
    """
    ia, ib, ic = 1.0 / a, 1.0 / b, 1.0 / c
    terms = ((dx, ia), (dy, ib), (dz, ic))
    shape = np.broadcast_shapes(*(np.shape(d) for d, _ in terms), *(np.shape(i) for _, i in terms))
    f2 = np.zeros(shape, np.result_type(dx, dy, dz, ia, ib, ic))  # Σ u², accumulated in place (few temporaries)
    g2 = np.zeros_like(f2)
    for d, i in terms:
        t = np.square(d * i)
        f2 += t
        t *= i * i
        g2 += t
    f = np.sqrt(f2, out=f2)
    grad = np.sqrt(g2, out=g2)
    # f / |∇(f²/2)| is the semi-axis along the direction; the epsilons make it the smallest one at the centre
    eps = 1e-6
    grad += eps * np.maximum(np.maximum(ia, ib), ic)
    out = f - 1
    f += eps
    f /= grad
    out *= f
    return out


def _crescent_fraction(p_rv: dict, lv: dict, lam: np.ndarray, grid: tuple) -> np.ndarray:
    """Volume (mm³) of the RV crescent for per-frame RV size factors ``lam`` (T,) on a coarse 3-D grid."""
    x1, x2, x3, cell = grid
    lam = lam[:, None]
    rv = ellipsoid_sd(x1 - p_rv["d"], x2, x3[None] - lv["b"][:, None], lam * p_rv["a1"], lam * p_rv["a2"],
                      lam * p_rv["L"]) < 0  # fmt: skip
    rv &= x3[None] >= lv["b"][:, None]
    epi = ellipsoid_sd(np.hypot(x1, x2), 0.0, x3[None] - lv["b"][:, None], (lv["r"] + lv["w"])[:, None], 1.0,
                       (lv["L"] + lv["w"])[:, None]) < 0  # fmt: skip
    return (rv & ~epi).sum(axis=1) * cell


def cardiac_shapes(p: dict, n_frames: int) -> dict:
    """Per-frame chamber parameters (arrays of shape (T,)) in heart-local mm, plus the frame interval ``dt_ms``."""
    g, h, dt_ms = cycle_curves(n_frames, p["heart_rate_bpm"])
    edv = p["lv_edv_ml"] * 1e3
    vol = edv * (1.0 - p["lv_ef"] / 100.0 * g)
    r_ed = (3.0 * edv / (2.0 * np.pi * p["lv_aspect"])) ** (1.0 / 3.0)
    l_ed = p["lv_aspect"] * r_ed
    length = l_ed * (1.0 - p["long_shortening"] * g)
    r = np.sqrt(3.0 * vol / (2.0 * np.pi * length))
    w = _wall_thickness(r, length, p["lv_mass_g"] / 1.05 * 1e3)
    lv = {"r": r, "L": length, "w": w, "b": l_ed - length, "r_ed": r_ed, "w_ed": float(w[0]), "L_ed": l_ed}

    # RV: crescent sized by bisection on a coarse half-grid (x2 >= 0, symmetric) so it follows the RV volume curve.
    # Every LV quantity is a function of g, so lam(g) is solved at a few g values and interpolated.
    r_epi = r_ed + lv["w_ed"]
    d_ratio, a2_ratio, l_ratio = p["rv_shape"]
    p_rv = {"d": d_ratio * r_epi, "a1": 1.0, "a2": a2_ratio, "L": l_ratio}  # shape ratios; size = lam
    g_knots = np.linspace(0.0, 1.0, 6)
    len_k = l_ed * (1.0 - p["long_shortening"] * g_knots)
    r_k = np.sqrt(3.0 * edv * (1.0 - p["lv_ef"] / 100.0 * g_knots) / (2.0 * np.pi * len_k))
    lv_k = {"r": r_k, "L": len_k, "w": _wall_thickness(r_k, len_k, p["lv_mass_g"] / 1.05 * 1e3), "b": l_ed - len_k}
    target = p["rv_edv_ml"] * 1e3 * (1.0 - p["rv_ef"] / 100.0 * g_knots)
    hi_lam = 2.2 * r_epi
    lo, hi = np.full(g_knots.size, 0.3 * r_epi), np.full(g_knots.size, hi_lam)
    bounds = ((-r_epi, p_rv["d"] + hi_lam * p_rv["a1"], 36), (0.0, hi_lam * p_rv["a2"], 18),
              (0.0, hi_lam * p_rv["L"] + l_ed * p["long_shortening"], 30))  # fmt: skip
    centres = [lo_ + (np.arange(k) + 0.5) * (hi_ - lo_) / k for lo_, hi_, k in bounds]  # cell centres
    x1, x2, x3 = (c.ravel() for c in np.meshgrid(*centres, indexing="ij"))
    cell = 2.0 * np.prod([(hi_ - lo_) / k for lo_, hi_, k in bounds])  # x2 >= 0 half, mirrored
    pts = (x1, x2, x3, cell)
    for _ in range(16):
        mid = 0.5 * (lo + hi)
        big = _crescent_fraction(p_rv, lv_k, mid, pts) > target
        hi, lo = np.where(big, mid, hi), np.where(big, lo, mid)
    lam = np.interp(g, g_knots, 0.5 * (lo + hi))
    rv = {"d": p_rv["d"], "a1": lam * p_rv["a1"], "a2": lam * p_rv["a2"], "L": lam * p_rv["L"], "wall": 3.0}

    def atrium(v_max, ef, elong=1.25):
        v = v_max * 1e3 * (1.0 - ef / 100.0 * (1.0 - h))
        a = (3.0 * v / (4.0 * np.pi * elong)) ** (1.0 / 3.0)
        return a, elong * a

    la_a, la_c = atrium(p["la_max_ml"], p["la_ef"], p["atrial_elongation"][0])
    ra_a, ra_c = atrium(p["ra_max_ml"], p["ra_ef"], p["atrial_elongation"][1])
    la = {"x1": -0.1 * r_ed, "x2": -0.1 * r_ed, "x3": lv["b"] - la_c - 1.0, "a": la_a, "c": la_c}
    ra = {"x1": rv["d"] + 0.75 * float(rv["a1"][0]), "x2": 0.0, "x3": lv["b"] - ra_c - 1.0, "a": ra_a, "c": ra_c}
    return {"lv": lv, "rv": rv, "la": la, "ra": ra, "dt_ms": dt_ms}

"""Parametric 4-D heart in a torso: world frame, per-frame chamber shapes, imaging planes and implicit functions.

World frame: NIfTI RAS+ millimetres (+x right, +y anterior, +z superior). The heart has a local orthonormal frame
``E = [e1, e2, e3]`` at the ED base-plane centre ``origin``: ``e3`` is the LV long axis (base -> apex), ``e1``
points from the LV axis towards the RV (septum), ``e2 = e3 × e1``. Local coordinates ``x = E^T (p - origin)``.

Chambers (all frames at once, parameters carry a leading frame axis ``(T, 1, 1)``):
* LV cavity: truncated ellipsoid of revolution about ``e3`` (a bullet): semi-axes ``r(t)`` and ``Lz(t)``, centred
  ``c(t) = κ·Lz`` below the base plane ``x3 = b(t)``, so the base is cut above the equator and the cavity is
  ``L = (1 + κ)·Lz`` long. The base descends ``base_descent_mm`` towards the fixed apex; the volume
  ``π r² Lz ((1 + κ) - (1 + κ³)/3)`` follows the LV volume curve.
* LV myocardium: the shell up to the epicardium ``lv_epi_sd``, the cavity offset outwards by ``w(t)·P(z/L)``: full
  mid-ventricular thickness ``w`` from 30 % to 60 % of the length, thinning into the annular hinge at the base (to
  0.75 ``w``, v2.4) and to a thin apical cap (``wall_profile``, v2.3); ``w(t)`` solves the conserved myocardial
  volume, so the wall thickens in systole. A hypokinetic sector keeps ED radius and thickness. v2.3: the cavity is
  longer (length ≈ 1.7 × width) and cut further above its equator (κ 0.4–0.6), so it is widest at about a third of
  its length and narrows to the mitral annulus (an ellipsoid, not a squat dome).
* RV: flattened, apically tapering body (``rv_form``: an egg in SAX, blunt towards the septum; triangular in 4ch)
  offset along ``e1`` minus the LV epicardium (a crescent that wraps the septum to insertions ~65-75° either side),
  per-frame size solved so the crescent follows the RV volume curve.
* AV (valve) plane: not flat. ``av_offset`` lowers it towards the apex on the RV side (the tricuspid annulus sits
  apical to the mitral annulus) and adds a saddle over the mitral annulus; every chamber is cut by it, so the
  ventricles open into the atria (and the LV into the aortic root) at the annuli.
* LA / RA: pear-shaped truncated ellipsoids of revolution sitting on the AV plane (cut near their lower pole, wider
  at the roof), the LA over the posterior LV base, away from the aortic root, the RA over the RV. Their size follows
  the atrial volume curves (filling in systole), calibrated so that the biplane / single-plane area-length volume of
  their long-axis section equals the target.

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
    h = np.where(phase <= f_es, _smooth_step(phase / f_es), 1.0)  # atrial maximum at end-systole (DESIGN §6)
    h = np.where(phase > f_es, 1.0 - 0.45 * _smooth_step((phase - f_es) / (f_fill - f_es)), h)
    h = np.where(phase > f_fill, 0.55 - 0.05 * (phase - f_fill) / (f_kick - f_fill), h)
    h = np.where(phase > f_kick, 0.50 * (1.0 - _smooth_step((phase - f_kick) / (1.0 - f_kick))), h)
    return g, h, rr_ms / n_frames


# LV wall profile along the long axis (v2.3): the wall is the cavity offset outwards by ``w·P(t)``, ``t = z / L`` the
# height below the base plane in cavity lengths. ``P`` is 1 over the mid-ventricle, thins towards the AV junction (the
# wall tapers into the annular hinge, to ``BASE_WALL·w`` at the base plane, full by ``BASE_RAMP``) and from
# ``APEX_RAMP`` to ``APEX_WALL·w`` at the cavity apex (a thin apical cap). At a fixed UK Biobank LV mass this puts the
# myocardium where the SAX mid slice sees it: 85 g around a 145 mL cavity is only ~6 mm if spread evenly.
APEX_WALL = 0.25  # wall thickness at the cavity apex / mid-ventricular wall thickness (a ~1.7 mm apical cap)
BASE_WALL = 0.75  # wall at the base plane (annular hinge) / mid wall; v2.4 (v2.3: 0.5, a ~3.5 mm mitral hinge)
BASE_RAMP, APEX_RAMP = 0.3, 0.6  # full thickness from BASE_RAMP to APEX_RAMP of the cavity length (v2.3: 0.35, 0.6)


def wall_profile(t):
    """Relative LV wall thickness ``P(t)`` at relative height ``t = z / L`` below the base plane (broadcasts; keeps
    float32). Smoothstep ramps ``3s² - 2s³`` (cheap: evaluated on every heart point of every frame)."""
    t = np.asarray(t)
    out = np.ones_like(t)
    if t.size == 0:
        return out
    if t.min() < BASE_RAMP:  # (a SAX slice is often entirely in the plateau or entirely on one ramp)
        s = np.clip(t * (1.0 / BASE_RAMP), 0.0, 1.0)
        out = BASE_WALL + (1.0 - BASE_WALL) * (s * s * (3.0 - 2.0 * s))
    if t.max() > APEX_RAMP:
        s = np.clip((t - APEX_RAMP) * (1.0 / (1.0 - APEX_RAMP)), 0.0, 1.0)
        out = np.minimum(out, 1.0 - (1.0 - APEX_WALL) * (s * s * (3.0 - 2.0 * s)))
    return out


def truncated_volume(r, lz, c):
    """Volume (mm³) of the ellipsoid of revolution (semi-axes ``r``, ``lz``) beyond a plane ``c`` before its centre.

    ``π r² ((lz + c) - (lz³ + c³) / (3 lz²))``; ``c = 0`` gives the half ellipsoid ``(2/3)π r² lz``. Broadcasts.
    """
    return np.pi * r * r * ((lz + c) - (lz**3 + c**3) / (3.0 * lz * lz))


def _wall_grid(r: float, lz: float, c: float, dr: float = 0.5, dz: float = 1.0):
    """Axisymmetric grid (cell centres) around the LV below its base plane: ``q = sd_cavity / P(z / L)`` of the cells
    outside the cavity, sorted, and their cumulative volumes (mm³). A cell is myocardium for wall thickness ``w`` iff
    ``q < w`` (``lv_epi_sd``), so the myocardial volume is the cumulative volume at ``w``."""
    length = lz + c
    rho = np.arange(0.5 * dr, r + 25.0, dr)
    z = np.arange(0.5 * dz, length + 15.0, dz)
    rho, z = np.meshgrid(rho, z, indexing="ij")
    sd = truncated_sd(rho * rho, z, r, lz, c, np.inf)
    out = sd >= 0.0
    q = sd[out] / wall_profile(z[out] / length)
    order = np.argsort(q)
    return q[order], np.cumsum((2.0 * np.pi * dr * dz) * rho[out][order])


def _wall_thickness(r: np.ndarray, lz: np.ndarray, c: np.ndarray, myo_mm3: float) -> np.ndarray:
    """Mid-ventricular wall thickness ``w`` (same shape as ``r``) such that the myocardium between the cavity
    (``truncated_sd(r, lz, c)``) and the epicardium ``lv_epi_sd`` (the cavity offset by ``w·wall_profile``), below the
    base plane, has volume ``myo_mm3``; counted on an axisymmetric grid (``_wall_grid``)."""
    r, lz, c = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (r, lz, c)))
    w = np.empty(r.shape)
    for i in np.ndindex(r.shape):
        q, vol = _wall_grid(float(r[i]), float(lz[i]), float(c[i]))
        w[i] = np.interp(myo_mm3, vol, q)
    return w


def lv_epi_sd(cav, z, w, length, plane=None):
    """Approximate signed distance (mm) to the LV epicardium from the uncut cavity distance ``cav`` (``truncated_sd``
    with ``plane = inf``): the cavity offset by ``w·wall_profile(z / length)``, cut at the base plane (``z = 0``, or
    ``plane`` = height below the non-flat AV plane). Broadcasts like ``truncated_sd``."""
    epi = cav - w * wall_profile(z * (1.0 / length))
    return np.maximum(epi, -(z if plane is None else plane))


def truncated_sd(rho2, z, r, lz, c, plane=None):
    """Approximate signed distance (mm) to the LV bullet: ellipsoid ``rho²/r² + (z - c)²/lz² = 1`` cut at ``z = 0``.

    ``rho2`` squared distance to the long axis, ``z`` height below the base plane (towards the apex); ``r``, ``lz``,
    ``c`` broadcast against them (e.g. per-frame (T, 1, 1) with points (S, N)). Negative inside. ``plane``: height
    below the (non-flat) cut surface used instead of ``z`` for the cut (``z - av_offset``).
    """
    u = z - c
    inv_r2, inv_l2 = 1.0 / (r * r), 1.0 / (lz * lz)
    f2 = rho2 * inv_r2 + u * u * inv_l2
    grad = np.sqrt(rho2 * (inv_r2 * inv_r2) + u * u * (inv_l2 * inv_l2)) + 1e-12
    return np.maximum((f2 - np.sqrt(f2)) / grad, -(z if plane is None else plane))


def av_offset(x1, x2, p: dict, r_ed: float):
    """Height (mm, towards the apex) of the AV valve plane above the flat base plane at heart-local ``(x1, x2)``.

    A tilt along ``e1`` (the tricuspid annulus, on the RV side, lies apical to the mitral annulus; zero on the LV
    axis) plus a saddle of the mitral annulus (high at the aortic / posterior ends, low at the commissures), both
    zero-mean over the LV base disc so the LV volume is unchanged to first order; clipped to ±8 mm.
    """
    tilt = p.get("av_tilt", 0.0)
    inv_r2 = 1.0 / (r_ed * r_ed)
    # saddle ∝ cos 2θ, confined to the mitral annulus (peak ±mitral_saddle_mm at ρ = r_ed, fading beyond)
    saddle = p.get("mitral_saddle_mm", 0.0) * np.e * inv_r2 * (x2 * x2 - x1 * x1)
    saddle = saddle * np.exp(-(x1 * x1 + x2 * x2) * inv_r2)
    return np.clip(tilt * x1 + saddle, -8.0, 8.0)


def _atrium_section(kappa: float, pear: float) -> tuple[float, float, float, float]:
    """Long-axis section of a unit pear atrium: area, mean, variance along the axis and across it.

    The section is ``|x| <= (1 + pear·u)·sqrt(1 - u²)`` for ``u`` in ``[-kappa, 1]`` (``u`` along the axis, towards
    the roof, in units of the long semi-axis; ``x`` in units of the short one).
    """
    u = np.linspace(-kappa, 1.0, 801)
    s = (1.0 + pear * u) * np.sqrt(np.clip(1.0 - u * u, 0.0, None))
    du = u[1] - u[0]
    integ = lambda y: float(np.sum(0.5 * (y[1:] + y[:-1])) * du)  # noqa: E731  trapezoid
    area = integ(2.0 * s)
    mu = integ(2.0 * s * u) / area
    return area, mu, integ(2.0 * s * u * u) / area - mu * mu, integ(2.0 * s**3 / 3.0) / area


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


RV_P = 1.5  # RV profile exponent: 2 is a half ellipsoid, 1 a cone; 1.5 gives the triangular 4ch RV (DESIGN §6)


def rv_form(x1, x2, z, d, a2r, lr, sep=1.0):
    """Size form ``N = (ρ^p + (z/lr)^p)^(1/p)`` of the RV (``ρ² = (s(x1 - d))² + (x2/a2r)²``, ``z >= 0``), ``|∇N|``.

    The RV of size ``lam`` (radial semi-axis ``lam`` towards the free wall and ``lam/sep`` towards the septum,
    tangential ``a2r·lam``, long ``lr·lam``) is ``N < lam``; ``(N - lam) / |∇N|`` approximates its signed distance.
    ``s`` is 1 on the free-wall side (``x1 > d``) and ``sep`` on the septal side: with ``sep > 1`` the section is an
    egg whose blunt end is pulled in towards the septum, so the crescent (minus the LV) wraps less far round the LV.
    ``x1, x2`` (S, N) and ``z`` (T, S, N) or (K, N).
    """
    u, v = x1 - d, x2 * (1.0 / a2r)
    if sep != 1.0:
        u = np.where(u < 0, u * sep, u)
    rho = np.sqrt(u * u + v * v)
    gu = np.where(x1 < d, sep, 1.0) if sep != 1.0 else 1.0  # |∂u/∂x1|
    grad_rho = np.sqrt(u * u * gu * gu + v * v * (1.0 / (a2r * a2r))) / (rho + 1e-6)  # |∇ρ|
    zeta = np.maximum(z, 0.0) * (1.0 / lr)
    a = rho * np.sqrt(rho)  # ρ^1.5
    a = a + zeta * np.sqrt(zeta)
    n = np.cbrt(a)
    n = n * n  # (ρ^1.5 + ζ^1.5)^(2/3)
    inv = 1.0 / np.sqrt(n + 1e-9)  # ∂N/∂ρ = sqrt(ρ/N), ∂N/∂ζ = sqrt(ζ/N)
    grad = np.sqrt(rho * grad_rho * grad_rho + zeta * (1.0 / (lr * lr))) * inv
    return n, grad


def lv_section(x1, x2, section: np.ndarray):
    """Angular modulation of the LV cavity radius and wall thickness at heart-local ``(x1, x2)`` (S, N): factors
    ``1 + a2·cos(2θ + φ2) + a3·cos(3θ + φ3)`` and ``1 + aw·cos(θ - φw)`` (float32, (S, N)) from ``section`` =
    ``(a2, φ2, a3, φ3, aw, φw)``. Zero-mean round the axis, so areas (volumes, mass) change by ``(a2² + a3²) / 2``
    (< 0.3 %) only. v2.6."""
    a2, p2, a3, p3, aw, pw = (np.float32(v) for v in section)
    theta = np.arctan2(x2, x1)
    r_mod = a2 * np.cos(2 * theta + p2) + a3 * np.cos(3 * theta + p3) + np.float32(1.0)
    w_mod = aw * np.cos(theta - pw) + np.float32(1.0)
    return r_mod.astype(_F), w_mod.astype(_F)


def lv_shapes(p: dict, g: np.ndarray) -> dict:
    """LV bullet parameters (arrays shaped like the ejection fraction-of-stroke ``g``) in heart-local mm.

    Keys: ``r``, ``Lz``, ``c`` (cavity ellipsoid), ``w`` (mid wall thickness), ``b`` (base-plane position: the base
    descends ``base_descent_mm·g`` towards the fixed apex), ``L`` (cavity length base -> apex).
    """
    kappa = p["lv_truncation"]
    shape_f = (1.0 + kappa) - (1.0 + kappa**3) / 3.0  # V = π r² Lz shape_f
    edv = p["lv_edv_ml"] * 1e3
    vol = edv * (1.0 - p["lv_ef"] / 100.0 * g)
    r_ed = (edv * (1.0 + kappa) / (np.pi * p["lv_aspect"] * shape_f)) ** (1.0 / 3.0)
    l_ed = p["lv_aspect"] * r_ed  # cavity length at ED
    length = l_ed - p["base_descent_mm"] * g
    lz = length / (1.0 + kappa)
    r = np.sqrt(vol / (np.pi * lz * shape_f))
    c = kappa * lz
    myo = p["lv_mass_g"] / 1.05 * 1e3
    g = np.asarray(g, dtype=np.float64)
    if np.unique(g).size > 9:  # every frame: w is a smooth function of g, solved at 9 knots and interpolated
        knots = np.linspace(0.0, 1.0, 9)
        lz_k = (l_ed - p["base_descent_mm"] * knots) / (1.0 + kappa)
        r_k = np.sqrt(edv * (1.0 - p["lv_ef"] / 100.0 * knots) / (np.pi * lz_k * shape_f))
        w = np.interp(g, knots, _wall_thickness(r_k, lz_k, kappa * lz_k, myo))
    else:
        w = _wall_thickness(r, lz, c, myo)
    return {"r": r, "Lz": lz, "c": c, "w": w, "b": l_ed - length, "L": length}


def cardiac_shapes(p: dict, n_frames: int) -> dict:
    """Per-frame chamber parameters (arrays of shape (T,)) in heart-local mm, plus the frame interval ``dt_ms``."""
    g, h, dt_ms = cycle_curves(n_frames, p["heart_rate_bpm"])
    lv = lv_shapes(p, g)
    ed = lv_shapes(p, np.zeros(1))
    lv |= {"r_ed": float(ed["r"][0]), "w_ed": float(ed["w"][0]), "L_ed": float(ed["L"][0])}
    # v2.6: SAX section (``lv_section``): oval 2-6 %, three-cornered 0-3 %, wall ±8-18 % round the LV; own stream
    rng = np.random.default_rng([int(p["appearance_seed"]), 24])
    lv["section"] = np.array([rng.uniform(0.02, 0.06), rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.03),
                              rng.uniform(0, 2 * np.pi), rng.uniform(0.08, 0.18), rng.uniform(0, 2 * np.pi)])  # fmt: skip

    # RV: crescent sized on a coarse half-grid (x2 >= 0, symmetric) so it follows the RV volume curve.
    # Every LV quantity is a function of g, so lam(g) is solved at a few g values and interpolated.
    r_epi = lv["r_ed"] + lv["w_ed"]
    d_ratio, a2_ratio, l_ratio = p["rv_shape"]
    p_rv = {"d": d_ratio * r_epi, "a1": 1.0, "a2": a2_ratio, "L": l_ratio}  # shape ratios; size = lam
    sep = float(p.get("rv_septal", 1.0))
    g_knots = np.linspace(0.0, 1.0, 6)
    lv_k = lv_shapes(p, g_knots)
    target = p["rv_edv_ml"] * 1e3 * (1.0 - p["rv_ef"] / 100.0 * g_knots)
    hi_lam = 2.5 * r_epi
    bounds = ((p_rv["d"] - hi_lam, p_rv["d"] + hi_lam, 40), (0.0, hi_lam * p_rv["a2"], 20),
              (0.0, hi_lam * p_rv["L"] + p["base_descent_mm"], 30))  # fmt: skip
    centres = [lo_ + (np.arange(k) + 0.5) * (hi_ - lo_) / k for lo_, hi_, k in bounds]  # cell centres
    x1, x2, x3 = (c.ravel() for c in np.meshgrid(*centres, indexing="ij"))
    cell = 2.0 * np.prod([(hi_ - lo_) / k for lo_, hi_, k in bounds])  # x2 >= 0 half, mirrored
    # a grid point is in the crescent of size lam iff it is below the base, outside the LV epicardium and
    # q < lam, with q its size form (rv_form): the crescent volume is cell × #{q < lam}, so lam is read off the
    # sorted q of the eligible points
    z = x3[None] - lv_k["b"][:, None]  # (knots, N)
    zp = z - av_offset(x1, x2, p, lv["r_ed"])[None]  # height below the (non-flat) AV plane
    col = lambda v: np.asarray(v)[:, None]  # noqa: E731
    cav = truncated_sd(x1 * x1 + x2 * x2, z, col(lv_k["r"]), col(lv_k["Lz"]), col(lv_k["c"]), np.inf)
    epi = lv_epi_sd(cav, z, col(lv_k["w"]), col(lv_k["L"]), zp)
    q = rv_form(x1, x2, z, p_rv["d"], p_rv["a2"], p_rv["L"], sep)[0]
    lam_k = np.empty(g_knots.size)
    for i in range(g_knots.size):
        qs = np.sort(q[i][(zp[i] >= 0) & (epi[i] >= 0)])
        lam_k[i] = qs[min(int(np.ceil(target[i] / cell)), qs.size - 1)]
    lam = np.interp(g, g_knots, lam_k)
    rv = {"d": p_rv["d"], "lam": lam, "a2r": p_rv["a2"], "lr": p_rv["L"], "a1": lam * p_rv["a1"], "a2": lam * p_rv["a2"],
          "L": lam * p_rv["L"], "wall": p["rv_wall_mm"], "sep": sep}  # fmt: skip

    def atrium(v_max, ef, elong, kappa, pear):
        # size so the area-length volume of the long-axis section, 8/(3π)·A²/L with L = 4·sqrt(largest section
        # variance) (kmtr_monai.data.phenotypes), equals the target volume curve
        v = v_max * 1e3 * (1.0 - ef / 100.0 * (1.0 - h))
        area, _, var_u, var_x = _atrium_section(kappa, pear)
        unit = 8.0 / (3.0 * np.pi) * (elong * area) ** 2 / (4.0 * np.sqrt(max(var_u * elong * elong, var_x)))
        a = (v / unit) ** (1.0 / 3.0)
        return a, elong * a

    r_ed = lv["r_ed"]
    k_la, k_ra = p.get("atrial_truncation", (1.0, 1.0))
    pear_la, pear_ra = p.get("atrial_pear", (0.0, 0.0))
    la_a, la_c = atrium(p["la_max_ml"], p["la_ef"], p["atrial_elongation"][0], k_la, pear_la)
    ra_a, ra_c = atrium(p["ra_max_ml"], p["ra_ef"], p["atrial_elongation"][1], k_ra, pear_ra)
    # LA over the posterior LV base, opposite the aortic root (3ch direction); RA over the RV
    a3 = np.deg2rad(p["lax_angles_deg"][1] + 180.0)
    la_x1, la_x2 = 0.2 * r_ed * np.cos(a3), 0.2 * r_ed * np.sin(a3)
    ra_x1, ra_x2 = rv["d"] + 0.75 * float(rv["a1"][0]), 0.0
    # v2.6: the atria share an interatrial septum (v2.5: the RA over the RV's middle, 10-35 mm of mediastinum between
    # the atria): the RA moves towards the LA until their widest sections are 3 mm apart at ED (but its centre stays
    # over the RV, at least 0.6 annulus radii beyond the LV epicardium), and both are cut by a plane between them
    # (``septum``: unit normal (x1, x2) from the LA to the RA, and the plane's distance from the LA centre)
    reach_la, reach_ra = la_a[0] * (1.0 + pear_la), ra_a[0] * (1.0 + pear_ra)
    ra_x1 = max(min(ra_x1, la_x1 + reach_la + reach_ra + 3.0),
                r_ed + lv["w_ed"] + 0.6 * ra_a.max() * np.sqrt(max(1.0 - k_ra * k_ra, 0.0)))  # fmt: skip
    n_sep = np.array([ra_x1 - la_x1, ra_x2 - la_x2])
    dist = float(np.linalg.norm(n_sep))
    septum = (n_sep / dist, float(np.clip(reach_la + 1.5, 0.3 * dist, 0.7 * dist)))
    la_b = lv["b"] + float(av_offset(la_x1, la_x2, p, r_ed))
    ra_b = lv["b"] + float(av_offset(ra_x1, ra_x2, p, r_ed))
    # AV valve leaflets (render.py): hinged at the annulus (the atrial neck radius), closed (slightly tented into the
    # ventricle) in systole, open towards the apex in diastole, half-closed in diastasis, reopened by the atrial kick
    phase = np.arange(n_frames) / n_frames
    f_es = phase[int(np.argmax(g))]
    open_ = np.interp(phase, [0.0, f_es, f_es + 0.04, f_es + 0.15, 0.55 + 0.45 * f_es, 0.87, 0.95, 1.0],
                      [0.0, 0.0, 1.0, 1.0, 0.5, 1.0, 0.0, 0.0])  # fmt: skip
    leaflet_deg = 12.0 + 60.0 * open_
    neck = lambda k, pear: (1.0 - pear * k) * np.sqrt(1.0 - k * k)  # noqa: E731  annulus / atrial short semi-axis
    la = {"x1": la_x1, "x2": la_x2, "x3": la_b - k_la * la_c, "a": la_a, "c": la_c, "pear": pear_la}
    ra = {"x1": ra_x1, "x2": ra_x2, "x3": ra_b - k_ra * ra_c, "a": ra_a, "c": ra_c, "pear": pear_ra}
    if k_la < 1.0:
        la |= {"annulus": la_a * neck(k_la, pear_la), "leaflet_deg": leaflet_deg}
        ra |= {"annulus": ra_a * neck(k_ra, pear_ra), "leaflet_deg": leaflet_deg}
    la["septum"] = septum
    return {"lv": lv, "rv": rv, "la": la, "ra": ra, "dt_ms": dt_ms}

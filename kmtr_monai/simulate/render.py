"""bSSFP-like rendering of the parametric heart-in-torso on the SAX stack and the three LAX planes.

Each view is a set of planes with a NIfTI affine; its pixel grid is sampled at ``SUBSAMPLES`` positions through the
slice thickness (two, at ±thickness/4: the midpoint rule on the two halves of the slice profile). The static torso (fat, chest wall, lungs, liver, spine, aortas) is rendered once per plane; the
heart is evaluated only inside its bounding rectangle, for all frames at once (parameters broadcast over a leading
frame axis). Soft occupancies ``clip(0.5 - sd / pixel, 0, 1)`` give in-plane partial volume; averaging the
through-slice samples gives the slice-profile partial volume. Labels are those of the slice centre (the mean of the two
sample distances, exact for locally planar surfaces). Then a smooth bias field, a tissue texture and Rician noise are applied, all defined in world
coordinates, so every view sees the same field. Written from scratch: MONAI has no phantom renderer.

Long-axis anatomy (v2.1): chambers are cut by the non-flat AV plane (``geometry.av_offset``); the ventricular blood is
painted 1.5 mm past it so the atria open into the ventricles without a seam; the aortic root (``aortic_root``) leaves
the LV base beside the mitral annulus; AV leaflets, the RV moderator band and papillary muscles / trabeculae are
dark structures inside the cavities that keep their blood-pool labels; epicardial fat follows the grooves.

v2.2 (long-axis appearance): the RV crescent wraps the septum only to ~65-75° either side (``geometry.rv_form`` with a
septal-side compression), so 2ch/3ch no longer show RV blood bands beside the LV and the 4ch RV is wider; the LV
trabecular rods are replaced by an irregular trabecular layer lining the endocardium (deeper towards the apex and over
the free wall), which gives the long-axis wall its rough inner border and SAX-like apparent thickness; the LA has an
appendage and four pulmonary veins (``_la_extras``, unlabelled blood); the lungs carry grey vessels and the spine
vertebral bodies with brighter discs.

v2.3 (LV shape and body): the LV is longer and ellipsoidal with a wall that is full thickness over the mid-ventricle
and thins into the annulus and the apex (``geometry.wall_profile``); the AV-groove fat fills the groove instead of
sticking out beyond the ventricles, and the patchy fat over the LV free wall is sparser. The body wall has skin,
subcutaneous fat, muscle of varying thickness (pectorals, paraspinal muscles) and a rib layer (ribs in cross-section
with dark cortex and marrow, costal cartilage, sternum); the lungs fill the rib cage; women have breasts with
fibroglandular strands; the liver has bright vessels and an irregular outline, the stomach gas over fluid, and the
mediastinal / abdominal soft tissue a coarse modulation.

v2.4 (appearance review): papillary muscles grow out of the wall instead of floating mid-cavity; the wall at the mitral
hinge is 0.75 of the mid wall (``geometry.BASE_WALL``); the surface-coil brightening is halved and the fat signal
lowered (fat / myocardium ≈ 2.4); thinner pectorals and fibrous septa in the subcutaneous fat; ribs differ in position,
size and depth; no lung between the ventricles and the sternum (dark slivers outlined the LV in long axis); a narrower
interventricular-groove fat ridge; lung vessels radiate and branch from the hila; lobulated atrial roofs; a thinner RV
free wall (drawn 2.6-3.3 mm).

v2.5 (cine look, issue 15): blood-flow heterogeneity (a smooth ±4-7 % pattern drifting through the blood once per beat,
darker slow flow in the apex and along the trabeculated apical wall, stronger in diastole, a darker RV apex, livelier
atria); the LV trabeculae are separate ridges of random angle, width, height and twist instead of a toothed layer, and
the two papillary muscles differ in angle, size and head height, their heads standing off the wall (no gear-like
endocardium); atrial walls 0.4-2.2 mm, varying over the atria (was an even 2 mm rim); curved pulmonary veins and LA
appendage; a wider, rounded-rectangular chest (``body_wall``: 130 / 120 mm lean half-width for men / women) whose
subcutaneous fat is thinner in front (0.6x) than at the flanks (1.1x) and back (0.85x); spleen, venae cavae and the
posterior vertebral elements; bSSFP artefacts: dark fat-water boundary lines in the body wall and off-resonance
banding (thin dark bands 130-210 mm from the shimmed heart). Every latent draw is unchanged: the new randomness comes
from hashed streams (``appearance_seed`` with 20-23) or is appended to an existing stream.

v2.6 (the heart in the chest, issue 15): the lungs fill the rib cage above the diaphragm and reach the heart (v2.5:
ellipsoids with fixed medial edges, so a wide grey mediastinum surrounded the heart in every view); the mediastinum
is carved out of them: the pericardial sac (``_pericardial_sac``), the anterior mediastinum in front of the RV, the
great vessels in 6 mm of fat and the posterior mediastinum; inside the sac the lungs follow the heart frame by frame,
1.5 mm (the pericardium) off its outer surface. The LV section is no longer a perfect ring (``geometry.lv_section``:
oval, three-cornered, wall thicker on one side; labels and phenotypes move accordingly). The off-resonance bands are
bent by smooth waves instead of drawing circles across the body. Respiratory ghosting: faint copies shifted both ways
along the phase-encoding axis, 0-5 % per subject. New randomness: streams 24 (LV section) and 25 (ghosts), and two
waves appended to stream 23.
"""

from __future__ import annotations

import numpy as np
import torch

from kmtr_monai.simulate.geometry import (av_offset, cardiac_shapes, ellipsoid_sd, heart_frame, lv_section,
                                          rotation_matrix, rv_form, truncated_sd, wall_profile)

_F = np.float32
SUBSAMPLES = (-0.25, 0.25)  # through-slice sample offsets (fraction of the slice thickness): midpoint rule on halves
SAX_LABELS = {"LV": 1, "MYO": 2, "RV": 3}  # UK Biobank seg_sa.nii.gz
LAX_LABELS = {"LA": 1, "RA": 2}  # seg_la_2ch (LA only) and seg_la_4ch
_NOISE_CHUNK = 1 << 18  # normal draws per chunk: a multiple of 16, torch's block, so chunks concatenate to one draw


def _occ(sd, pixel):
    """Soft occupancy in [0, 1] from a signed distance (mm) with a one-pixel ramp (box-filter partial volume)."""
    occ = sd * _F(-1.0 / pixel)
    occ += _F(0.5)
    return np.clip(occ, 0.0, 1.0, out=occ)


def _paint(img, occ, value):
    """In-place ``img = img * (1 - occ) + value * occ`` (``occ`` is overwritten)."""
    occ *= np.subtract(value, img, dtype=_F)
    img += occ


def _paint_static(img, sd, pixel, value):
    """``_paint(img, _occ(sd, pixel), value)`` for a static ``sd`` (S, N) that broadcasts over the frames of ``img``
    (T, S, N): the occupancy is computed once, not per frame (the same values, three frame-wide operations fewer)."""
    diff = np.subtract(value, img, dtype=_F)
    diff *= _occ(sd, pixel)
    img += diff


def _add_rician_noise(img: np.ndarray, sigma: float, gen: torch.Generator) -> np.ndarray:
    """In place ``img = |img + sigma·(n1 + i·n2)|`` for C-contiguous float32 ``img``, with independent standard-normal
    ``n1`` and ``n2`` (the magnitude of a complex Gaussian: Rician). Drawn with ``torch``'s normal generator, about 3x
    faster than NumPy's ziggurat: all of ``n1``, then all of ``n2``, in chunks of ``_NOISE_CHUNK`` values into one
    reused buffer (a paper-preset SAX stack would need 140 MB of fresh noise memory). When ``img.size`` is a multiple
    of 16 (every preset: the matrix is), this is the stream of one ``torch.randn((2, *img.shape))``."""
    x = torch.from_numpy(img).view(-1)
    buf = torch.empty(min(_NOISE_CHUNK, x.numel()))
    for draw in range(2):
        for start in range(0, x.numel(), _NOISE_CHUNK):
            part = x[start:start + _NOISE_CHUNK]
            noise = buf[:part.numel()].normal_(generator=gen).mul_(sigma)
            if draw == 0:
                part.add_(noise)
            else:
                torch.hypot(part, noise, out=part)
    return img


def _rotate_in_plane(ex, ey, deg):
    a = np.deg2rad(deg)
    return np.cos(a) * ex + np.sin(a) * ey, -np.sin(a) * ex + np.cos(a) * ey


def view_planes(p: dict, preset: dict, origin: np.ndarray, axes: np.ndarray) -> dict:
    """Plane geometry per file view: ``{view: dict(origin, ex, ey, normal, spacing, n_slices)}`` (world mm).

    Standard (UK Biobank-like) orientations, each turned in-plane by the subject's ``inplane_rot_deg`` (within ±15°):
    ``sa``: ``sax_slices`` planes perpendicular to the (planned, slightly tilted) LV long axis, index 0 at the base,
    ``slice_spacing_mm`` apart; image +x points from the RV to the LV (RV on the left), +y anterior.
    ``la_2ch``/``la_3ch``/``la_4ch``: single planes through the long axis at the angles ``lax_angles_deg`` about
    ``e3`` from the 4ch direction ``e1``, with planning tilt; image +y points to the apex (atria at the bottom), and
    in 4ch the RV is on the left. Voxel ``(i, j, k)`` is at
    ``origin + i·pixel·ex + j·pixel·ey + k·spacing·normal``.
    """
    e1, e2, e3 = axes.T
    m, px = preset["matrix"], preset["pixel_mm"]
    tilt = np.asarray(p["plane_tilt_deg"])
    half = (m - 1) / 2.0 * px
    planes = {}
    normal = rotation_matrix([tilt[0], tilt[1], 0.0]) @ e3
    ex = -(e1 - (e1 @ normal) * normal)  # RV on the image left
    ex /= np.linalg.norm(ex)
    ex, ey = _rotate_in_plane(ex, np.cross(normal, ex), p["inplane_rot_deg"][0])
    # slice 0 is centred on the long axis sax_start_mm above the ED base plane, plus a field-of-view offset
    centre = origin + e3 * p["sax_start_mm"] + ex * p["fov_shift_mm"][0] + ey * p["fov_shift_mm"][1]
    planes["sa"] = dict(origin=centre - half * (ex + ey), ex=ex, ey=ey, normal=normal,
                        spacing=preset["slice_spacing_mm"], n_slices=preset["sax_slices"])  # fmt: skip
    lax_centre = origin + e3 * 22.0  # between the atria and the apex
    for k, (view, angle) in enumerate(zip(("la_2ch", "la_3ch", "la_4ch"), np.asarray(p["lax_angles_deg"])[[0, 1, 2]])):
        a = np.deg2rad(angle)
        u = np.cos(a) * e1 + np.sin(a) * e2
        normal = rotation_matrix(0.5 * (tilt[2 + 2 * k] * u + tilt[3 + 2 * k] * e3)) @ np.cross(e3, u)
        ey = e3 - (e3 @ normal) * normal
        ey /= np.linalg.norm(ey)
        ex, ey = _rotate_in_plane(np.cross(ey, normal), ey, p["inplane_rot_deg"][1 + k])
        c = lax_centre + ex * p["fov_shift_mm"][2 + 2 * k] + ey * p["fov_shift_mm"][3 + 2 * k]
        planes[view] = dict(origin=c - half * (ex + ey), ex=ex, ey=ey, normal=normal,
                            spacing=preset["slice_thickness_mm"], n_slices=1)  # fmt: skip
    return planes


def affine_of(plane: dict, pixel_mm: float) -> np.ndarray:
    """(4, 4) voxel-to-world (RAS mm) affine of a plane dict from ``view_planes``."""
    aff = np.eye(4)
    aff[:3, 0], aff[:3, 1] = plane["ex"] * pixel_mm, plane["ey"] * pixel_mm
    aff[:3, 2], aff[:3, 3] = plane["normal"] * plane["spacing"], plane["origin"]
    return aff


class _Appearance:
    """World-coordinate bias field and texture (random cosines) shared by all views of one subject."""

    def __init__(self, p: dict):
        rng = np.random.default_rng(p["appearance_seed"])
        self.bias_k = rng.normal(size=(4, 3)) / rng.uniform(250.0, 500.0, (4, 1)) * 2 * np.pi
        self.bias_phase, self.bias_amp = rng.uniform(0, 2 * np.pi, 4), rng.normal(0, 0.5, 4) * p["bias_strength"]
        # anterior and posterior surface-coil arrays: sensitivity falls off with depth from the chest/back surface
        ay0, fat = torso_axes(p)[1], p["subcutaneous_fat_mm"]  # v2.5: at the skin of the new body wall
        self.coil_y = (ay0 + 0.6 * fat - 10.0, -ay0 - 0.85 * fat - 10.0)
        self.coil_w = rng.uniform(0.7, 1.0, 2)
        self.coil_d = p["coil_falloff_mm"]
        self.coil_ref = float(sum(w * np.exp(-abs(y - 12.0) / self.coil_d) for w, y in zip(self.coil_w, self.coil_y)))
        self.tex_k = rng.normal(size=(8, 3))
        self.tex_k *= (2 * np.pi / rng.uniform(5.0, 25.0, (8, 1))) / np.linalg.norm(self.tex_k, axis=1, keepdims=True)
        self.tex_phase, self.tex_amp = rng.uniform(0, 2 * np.pi, 8), p["texture"] / 2.0
        # v2.1: a finer grain (wavelengths 2.5-8 mm) so tissues are not flat; drawn after the v2.0 fields
        fine = rng.normal(size=(12, 3))
        fine *= (2 * np.pi / rng.uniform(2.5, 8.0, (12, 1))) / np.linalg.norm(fine, axis=1, keepdims=True)
        self.tex_k = np.concatenate([self.tex_k, fine])
        self.tex_phase = np.concatenate([self.tex_phase, rng.uniform(0, 2 * np.pi, 12)])
        self.tex_w = np.concatenate([np.full(8, self.tex_amp / np.sqrt(8.0)),
                                     np.full(12, 0.6 * self.tex_amp / np.sqrt(12.0))])
        # v2.5: bSSFP off-resonance banding. The B0 offset grows away from the shimmed heart (quadratic, anisotropic,
        # plus a linear term), and where the phase per TR reaches π the signal drops: thin dark curved bands, first at
        # 130-210 mm from the heart (the body periphery, often outside the field of view); the heart stays within
        # ±0.75π. Own stream: no earlier draw moves.
        rng_b = np.random.default_rng([int(p["appearance_seed"]), 23])
        self.band_iso = heart_frame(p)[0].astype(_F)
        self.band_scale = (rng_b.uniform(0.8, 1.25, 3) * np.sqrt(np.pi) / rng_b.uniform(130.0, 210.0)).astype(_F)
        g = rng_b.normal(size=3)
        self.band_g = (g / np.linalg.norm(g) * rng_b.uniform(0.0, 0.4) * np.pi / 100.0).astype(_F)  # rad per mm
        self.band_ph = float(rng_b.uniform(-0.5, 0.5))
        self.band_w, self.band_depth = float(rng_b.uniform(0.1, 0.2)), float(rng_b.uniform(0.5, 0.9))
        # v2.6: the field is not a clean quadratic (v2.5 drew perfect circles across the body): two smooth waves of
        # 60-140 mm, scaled by the quadratic term (±0.35 of it, so the heart stays shimmed), bend the bands
        k = rng_b.normal(size=(2, 3))
        self.band_k = (k * (2 * np.pi / rng_b.uniform(60.0, 140.0, (2, 1))) / np.linalg.norm(k, axis=1, keepdims=True))
        self.band_k = self.band_k.astype(_F)
        self.band_k_ph = rng_b.uniform(0.0, 2 * np.pi, 2).astype(_F)

    def field(self, plane: dict, n: int, pixel: float) -> tuple[np.ndarray, np.ndarray]:
        """Multiplicative bias × texture × coil × banding on the (n × n) pixel centres of every slice of ``plane``
        (``view_planes``) and the noise scale there, both (Z, n, n) float32. The noise scale is
        ``clip(coil^-0.5, 0.6, 1.6)`` with ``coil`` the surface-coil sensitivity (1 at the heart): the intensity
        normalisation that flattens the coil profile also raises the noise at depth (v2.6; v2.5: white noise of one
        level everywhere). The point of slice ``z``, pixel ``(i, j)`` is ``o_z + i·u + j·v``
        (``u``, ``v`` the pixel steps), so every plane wave is ``cos(a_zi + b_j)`` and a sum of waves is two matrix
        products of (n, W) cos / sin tables (``_plane_waves``): no cosine per pixel (v2.6; the same field as v2.5's
        per-point evaluation up to rounding)."""
        u, v = plane["ex"] * pixel, plane["ey"] * pixel
        o = plane["origin"] + np.arange(plane["n_slices"])[:, None] * plane["spacing"] * plane["normal"]  # (Z, 3)
        idx = np.arange(n, dtype=np.float64)
        waves = lambda k, ph, amp: _plane_waves(o, u, v, n, k, ph, amp)  # noqa: E731  (Z, n, n)
        bias = waves(self.bias_k, self.bias_phase, self.bias_amp)
        tex = waves(self.tex_k, self.tex_phase, self.tex_w)
        tex += _F(1.0)
        tex *= np.exp(bias, out=bias)
        y = (o[:, 1, None, None] + idx[:, None] * u[1] + idx[None, :] * v[1]).astype(_F)  # world y (Z, n, n)
        coil = sum(_F(w / self.coil_ref) * np.exp(-np.abs(y - _F(c)) / _F(self.coil_d)) for w, c in
                   zip(self.coil_w, self.coil_y))  # fmt: skip
        # 1 at the heart, brighter near the coils; v2.4: half the v2.3 excess (0.25 + 0.75·coil made the anterior fat
        # ~1.75x its level at the heart; scanners' intensity normalisation flattens most of the surface-coil profile)
        tex *= _F(0.5) + _F(0.5) * coil
        noise = np.clip(np.reciprocal(np.sqrt(coil, out=coil), out=coil), 0.6, 1.6, out=coil)
        # banding phase: d·g + (1 + 0.175·wobble)·|s ⊙ d|² with d = o_z - iso + i·u + j·v; the quadratic expands to
        # α_z + β_zi + γ_zj + δ·i·j (per-slice tables)
        c = o - self.band_iso  # (Z, 3)
        s2 = np.square(self.band_scale.astype(np.float64))
        quad = (np.sum(s2 * c * c, axis=1)[:, None, None] + (2 * (s2 * c) @ u)[:, None, None] * idx[:, None]
                + (2 * (s2 * c) @ v)[:, None, None] * idx[None, :] + np.sum(s2 * u * u) * idx[:, None] ** 2
                + np.sum(s2 * v * v) * idx[None, :] ** 2 + 2 * np.sum(s2 * u * v) * np.outer(idx, idx)).astype(_F)
        wobble = _plane_waves(c, u, v, n, self.band_k, self.band_k_ph, np.full(2, 0.175))
        wobble += _F(1.0)
        wobble *= quad
        lin = (c @ self.band_g)[:, None, None] + (u @ self.band_g) * idx[:, None] + (v @ self.band_g) * idx[None, :]
        phase = wobble
        phase += lin.astype(_F)
        phase += _F(self.band_ph)
        np.remainder(phase, _F(2 * np.pi), out=phase)
        phase -= _F(np.pi)  # 0 where the phase per TR is π (mod 2π): the band centre
        phase *= _F(1.0 / self.band_w)
        band = np.exp(-np.square(phase, out=phase), out=phase)
        band *= _F(-self.band_depth)
        band += _F(1.0)
        tex *= band
        return tex, noise


def _plane_waves(o: np.ndarray, u: np.ndarray, v: np.ndarray, n: int, k: np.ndarray, phase: np.ndarray,
                 amp: np.ndarray) -> np.ndarray:
    """``Σ_w amp_w·cos(k_w·(o_z + i·u + j·v) + phase_w)`` for slices ``z`` (o: (Z, 3)) and pixels ``i, j < n`` ->
    (Z, n, n) float32, as ``cos(a + b) = cos a cos b - sin a sin b``: two (n, W) @ (W, n) products per slice."""
    idx = np.arange(n, dtype=np.float64)
    a = (o @ k.T + phase)[:, None, :] + idx[None, :, None] * (u @ k.T)  # (Z, n, W)
    b = idx[:, None] * (v @ k.T)  # (n, W)
    amp = np.asarray(amp, np.float64)
    out = (np.cos(a) * amp) @ np.cos(b).T
    out -= (np.sin(a) * amp) @ np.sin(b).T
    return out.astype(_F)


def _capsule_sd(pts, a, direction, radius, length):
    """Signed distance (...) at points (..., 3) to the capsule of ``radius`` round the segment of ``length`` from
    point ``a`` along the unit ``direction``."""
    d = pts - a
    t = np.clip(d @ direction, 0.0, length)
    return np.linalg.norm(d - t[..., None] * direction, axis=-1) - radius


def _near_capsule(pts, xyz, a, direction, radius, length, reach):
    """The world points (..., 3) in the bounding box of a capsule (``_capsule_sd``) grown by ``reach``, as a mask
    (...), and the capsule's signed distance there (M,): beyond the box it is more than ``reach``. ``xyz``: the
    points' three coordinates as contiguous arrays (...) each, for the box test."""
    ends = np.stack([a, a + length * direction])
    reach += radius
    near = np.logical_and.reduce([(c > ends[:, i].min() - reach) & (c < ends[:, i].max() + reach)
                                  for i, c in enumerate(xyz)])  # fmt: skip
    return near, _capsule_sd(pts[near], a, direction, radius, length)


def aortic_root(p: dict, shapes: dict) -> tuple[np.ndarray, np.ndarray]:
    """Heart-local centre of the aortic annulus (3,) on the AV plane, beside the mitral annulus in the 3ch plane
    (the LA is on the other side), and the unit direction (3,) of the aortic root and ascending aorta."""
    r_ed = shapes["lv"]["r_ed"]
    a = np.deg2rad(p["lax_angles_deg"][1])
    x1, x2 = 0.6 * r_ed * np.cos(a), 0.6 * r_ed * np.sin(a)
    start = np.array([x1, x2, float(shapes["lv"]["b"][0]) + float(av_offset(x1, x2, p, r_ed))])
    up = np.array([0.8 * np.cos(a), 0.8 * np.sin(a), -1.0])  # towards the base, leaning away from the LA
    return start, up / np.linalg.norm(up)


def _la_extras(p: dict, shapes: dict) -> list:
    """Left atrial appendage and the four pulmonary veins as tapered capsules ``(start (3,), unit direction (3,),
    length, start radius, end radius, unit bend (3,), curvature)`` in heart-local mm, fixed at their ED position
    (v2.2): the axis point at ``t`` along the direction is offset by ``curvature·t²`` along the bend (v2.5).

    The appendage leaves the anterolateral LA wall just above the AV plane, on the side of the 2ch plane, and runs
    along the AV groove over the LV base; the veins leave the LA roof backwards, two to the right and two to the
    left. Blood without a label: atrial volumes exclude the appendage and the veins, as in clinical tracing.
    """
    la, lv = shapes["la"], shapes["lv"]
    _, axes = heart_frame(p)
    a, c = float(la["a"][0]), float(la["c"][0])
    centre = np.array([la["x1"], la["x2"], float(la["x3"][0])])
    rng = np.random.default_rng([int(p["appearance_seed"]), 17])
    u2 = np.deg2rad(p["lax_angles_deg"][0])
    u2 = np.array([np.cos(u2), np.sin(u2), 0.0])  # 2ch direction (anterior)
    phi = np.deg2rad(p["lax_angles_deg"][0] + rng.uniform(-8.0, 8.0))  # anterolateral: near the 2ch plane
    radial = np.array([np.cos(phi), np.sin(phi), 0.0])
    plane_x3 = float(lv["b"][0]) - rng.uniform(6.0, 10.0)  # above the (ED) AV plane
    start = (centre @ u2) * u2 + 0.5 * a * radial + np.array([0.0, 0.0, plane_x3])
    direction = radial + np.array([0.0, 0.0, rng.uniform(0.05, 0.25)])  # along the groove, beyond the LV base
    caps = [(start, direction / np.linalg.norm(direction), rng.uniform(24.0, 34.0), rng.uniform(7.0, 9.5),
             rng.uniform(3.5, 5.0))]  # fmt: skip
    right, post, sup = axes  # rows: world +x (right), +y (anterior), +z (superior) in heart-local coordinates
    post = -post
    roof = centre - 0.55 * c * np.array([0.0, 0.0, 1.0])  # towards the roof (away from the AV plane)
    for side in (1.0, -1.0):
        for level in (1.0, -1.0):
            direction = 0.8 * side * right + 0.55 * post + 0.2 * level * sup + rng.normal(0.0, 0.08, 3)
            direction /= np.linalg.norm(direction)
            start = roof + 0.35 * a * side * right + 0.3 * a * level * sup
            caps.append((start, direction, rng.uniform(30.0, 45.0), rng.uniform(6.0, 8.0), rng.uniform(5.0, 6.5)))
    # v2.5: curved (v2.4: straight tubes): each axis bends quadratically off its direction, by 5-12 mm over the
    # appendage (which curls round the LV base) and 4-10 mm over a vein; drawn after every v2.4 draw
    out = []
    for i, (start, direction, length, r0, r1) in enumerate(caps):
        bend = rng.normal(size=3)
        bend -= (bend @ direction) * direction
        bend /= np.linalg.norm(bend)
        offset = rng.uniform(5.0, 12.0) if i == 0 else rng.uniform(4.0, 10.0)
        out.append((start, direction, length, r0, r1, bend, offset / length**2))
    return out


def _wave_fields(rng: np.random.Generator, pts: np.ndarray, n: int, wavelength_mm: tuple[float, float],
                 fields: int = 2) -> tuple:
    """Two smooth random fields at ``pts`` (M, 3) mm, each a sum of ``n`` plane waves with random directions,
    wavelengths uniform in ``wavelength_mm`` and random phases: the first ``fields`` of them, (M,) float32 each (the
    draws are those of both). Near the zero set of one a plane cuts curved lines (strands); near the common zeros of
    both, dots and short segments (vessels)."""
    k = rng.normal(size=(2, n, 3))
    k *= (2 * np.pi / rng.uniform(*wavelength_mm, (2, n, 1))) / np.linalg.norm(k, axis=2, keepdims=True)
    ph = rng.uniform(0, 2 * np.pi, (2, n))
    out = []
    for i in range(fields):
        waves = pts @ k[i].T.astype(_F)  # (M, n)
        waves += ph[i].astype(_F)
        np.cos(waves, out=waves)
        total = waves[:, 0] + waves[:, 1]  # summed column by column: a reduction over a length-n axis is slow
        for j in range(2, n):
            total += waves[:, j]
        out.append(total)
    return tuple(out)


def torso_axes(p: dict) -> tuple[float, float]:
    """Half-width and half-depth (mm) of the lean torso (inside the subcutaneous fat), v2.5: 130 mm (men) / 120 mm
    (women) × height / 170 cm wide (v2.4: 118 mm, plus the fat, for both sexes: 236-280 mm chests), 82.6 mm ×
    height / 170 cm deep, centred at y = -10 mm."""
    scale = p["height_cm"] / 170.0
    return (130.0 if p["sex_male"] else 120.0) * scale, 0.7 * 118.0 * scale


def body_wall(x, y, p: dict):
    """Signed distances (mm, negative inside) to the skin and to the lean torso (the fat / muscle boundary) at world
    ``x, y`` (float32 arrays). v2.5 (v2.4: two confocal ellipses, the fat equally thick all round): the lean outline
    is an ellipse (``torso_axes``) pushed out by up to 10 mm anteriorly / 16 mm posteriorly on the diagonals (a
    rounded-rectangular chest, flatter front and back); the subcutaneous fat is 0.6 × ``subcutaneous_fat_mm`` over
    the sternum, 1.1 × at the flanks and 0.85 × over the back (fat gathers at the flanks and back, the front of the
    chest stays thinner, so obese chests no longer show a thick bright band all round)."""
    ax0, ay0 = torso_axes(p)
    yc = y + _F(10.0)
    lean = ellipsoid_sd(x, yc, _F(0.0), _F(ax0), _F(ay0), _F(1.0))
    nx2 = np.square(x * _F(1.0 / ax0))
    ny2 = np.square(yc * _F(1.0 / ay0))
    r2 = nx2 + ny2
    r2 += _F(1e-6)
    nx2 /= r2  # cos² of the (scaled) polar angle
    ny2 /= r2  # sin²
    post = yc < 0
    lean -= (np.where(post, _F(4.0 * 16.0), _F(4.0 * 10.0)) * nx2) * ny2  # sin²(2φ) bulge on the diagonals
    fat = _F(p["subcutaneous_fat_mm"]) * (_F(0.6) + _F(0.5) * nx2 + np.where(post, _F(0.25), _F(0.0)) * ny2)
    return lean - fat, lean


def _mediastinal_tubes(p: dict, origin, axes, aorta, ra, rng: np.random.Generator, spine_y: float) -> list:
    """Ascending aorta and arch, pulmonary trunk, (when ``ra`` is given) the venae cavae, and the oesophagus as
    capsules ``(start (3,), unit direction (3,), radius, length, signal)`` in world mm, painted in this order;
    ``aorta``: (world start, world direction) of the aortic root drawn with the heart, or None (a root placed from the
    3ch direction); ``spine_y``: the y of the vertebral bodies' axis. Draws the caval radii from ``rng``."""
    e1, e2, e3 = axes.T
    caps = []
    if aorta is None:
        u3 = np.cos(np.deg2rad(p["lax_angles_deg"][1])) * e1 + np.sin(np.deg2rad(p["lax_angles_deg"][1])) * e2
        root, up = origin + 0.8 * 26.0 * u3 - 4.0 * e3, -e3 + np.array([0.0, -0.2, 0.9])
        up /= np.linalg.norm(up)
    else:  # ascending aorta continuing the aortic root drawn with the heart; the arch turns back and to the left
        start, up = aorta
        root = start + 18.0 * up
        caps.append((root, up, 13.0, 30.0, 0.95 * p["blood"]))
        root = root + 30.0 * up
        up = up + np.array([0.0, -0.2, 0.9]).astype(up.dtype)
        up /= np.linalg.norm(up)
    caps.append((root, up, 13.0, 75.0, 0.95 * p["blood"]))
    # pulmonary trunk: from the RV outflow (anterior, towards the RV) up, leftwards and back, in front of the aorta
    pa_dir = -e3 + np.array([-0.5, -0.4, 0.6])
    caps.append((origin + 24.0 * e1 - 14.0 * e2 - 6.0 * e3, pa_dir / np.linalg.norm(pa_dir), 12.0, 50.0,
                 0.95 * p["blood"]))  # fmt: skip
    if ra is not None:  # v2.5: venae cavae (slower venous blood), from inside the RA (painted over them) down through
        # the liver and up beside the ascending aorta
        ivc_r, svc_r = rng.uniform(9.0, 12.0), rng.uniform(7.5, 10.0)
        down, up = np.array([0.05, -0.15, -1.0]), np.array([-0.05, -0.2, 1.0])
        caps.append((ra, down / np.linalg.norm(down), ivc_r, 140.0, 0.85 * p["blood"]))
        caps.append((ra, up / np.linalg.norm(up), svc_r, 90.0, 0.9 * p["blood"]))
    # v2.6: the oesophagus, behind the LA and in front of the spine, left of the midline: a muscular tube with a
    # collapsed, partly air-filled lumen
    gullet, axis = np.array([-4.0, spine_y + 33.0, -150.0]), np.array([0.0, 0.05, 1.0]) / np.hypot(0.05, 1.0)
    caps.append((gullet, axis, 8.0, 300.0, p["muscle"]))
    caps.append((gullet, axis, 2.5, 300.0, 0.3 * p["muscle"]))
    return caps


def _static_background(pts: np.ndarray, p: dict, origin, axes, pixel: float, aorta=None, ra=None,
                       sac=None) -> tuple[np.ndarray, np.ndarray]:
    """Torso intensity (before bias/noise) at world points (..., 3): air, skin, fat, breasts (women), chest wall
    (muscle, ribs, sternum), lungs, liver, spleen, stomach, paraspinal muscles, spine with its posterior elements,
    descending and ascending aorta (from ``aorta = (world start, world direction)`` of the aortic root when given) and
    the venae cavae (into the RA at the world point ``ra`` (3,) when given). ``sac`` (like ``pts[..., 0]``): signed
    distance to the pericardial sac (``_pericardial_sac``), which the lungs stay out of (v2.6; without it, as in
    torso-only calls, nothing is carved out for the heart). Returns the image and the lungs' signed distance before the sac cut
    (both (...) float32): the renderer lets the lungs follow the heart inside the sac, frame by frame."""
    x, y, z = (np.ascontiguousarray(pts[..., i]) for i in range(3))  # contiguous: every torso term reads them
    fat_sc = p["subcutaneous_fat_mm"]
    ax0, ay0 = torso_axes(p)
    ax, ay = ax0 + fat_sc, ay0 + 0.3 * fat_sc  # breasts, organ sizes: about the v2.4 skin half-width and depth
    torso, lean = body_wall(x, y, p)
    img = np.zeros(x.shape, _F)
    rng = np.random.default_rng([int(p["appearance_seed"]), 18])  # v2.3 body wall, breast, liver, stomach
    body = torso
    if not p["sex_male"]:  # v2.3: breasts, anterior bulges of fat with fibroglandular strands (grey)
        size = (0.8 + 0.4 * rng.random()) * float(np.clip(p["bmi"] / 26.8, 0.8, 1.5))
        bz = float(origin[2]) - rng.uniform(20.0, 60.0)  # around the level of the ventricles
        for side in (1.0, -1.0):
            bx = side * 0.55 * ax
            by = ay * np.sqrt(1.0 - 0.55**2) - 10.0 - 15.0 * size  # centre under the torso surface
            # supine: flattened, spread sideways
            breast = ellipsoid_sd(x - _F(bx), y - _F(by), z - _F(bz), 80.0 * size, 38.0 * size, 65.0 * size)
            body = np.minimum(body, breast)
    _paint(img, _occ(body, pixel), _F(1.1) * _F(p["muscle"]))  # skin
    _paint(img, _occ(body + 1.8, pixel), p["fat"])
    if not p["sex_male"]:
        # fibroglandular tissue (grey, in the bright breast fat outside the chest wall): curved strands (near-zeros of a
        # smooth random field, so a plane cuts them as lines) and a denser patch of gland where a second field is high
        in_breast = (torso > 4.0) & (body < -4.0)
        f1, f2 = _wave_fields(rng, pts[in_breast], 4, (15.0, 45.0))
        dense = rng.uniform(0.0, 1.0)
        if in_breast.any():
            occ = np.exp(-np.square(f1 * _F(1.0 / 0.3))) * _F(0.8)
            np.maximum(occ, np.clip((f2 * _F(0.5) - _F(1.2) + _F(dense)) * _F(2.0), 0.0, 1.0), out=occ)
            occ *= np.clip((torso[in_breast] - _F(4.0)) * _F(0.25), 0.0, 1.0)
            occ *= np.clip((-body[in_breast] - _F(4.0)) * _F(0.25), 0.0, 1.0)
            img[in_breast] += occ * (_F(1.2 * p["muscle"]) - img[in_breast])
    # v2.4: fibrous septa in the subcutaneous fat (thin grey curved lines, near-zeros of a smooth field; v2.3: uniform)
    in_sc = (torso < -2.0) & (lean > 1.0)
    if in_sc.any():
        (f1,) = _wave_fields(rng, pts[in_sc], 3, (35.0, 80.0), fields=1)
        img[in_sc] *= _F(1.0) - _F(0.3) * np.exp(-np.square(f1 * _F(1.0 / 0.1)))
    # v2.3 chest wall, from the skin inwards: subcutaneous fat, muscle (pectorals thick anteriorly, thin over the
    # sternum; latissimus / trapezius posteriorly; thin laterally), then a 11 mm rib layer: intercostal muscle with
    # the ribs in cross-section (dark cortex, marrow), sloping down anteriorly, costal cartilage and sternum in front
    u = (y + _F(10.0)) * _F(1.0 / ay0)  # -1 posterior .. 1 anterior
    v = x * _F(1.0 / ax0)
    # depth of the rib layer below the skin: subcutaneous fat, 4 mm of muscle, pectorals (anterior, thin over the
    # sternum) or latissimus / trapezius (posterior)
    d_rib = np.clip(np.abs(v) * _F(4.0), 0.0, 1.0)
    # v2.4: pectorals 12 mm (men) / 8 mm (women), 4 mm of other muscle (v2.3: 18.75 / 12.75 and 5 mm)
    d_rib *= np.clip(u, 0.0, 1.0) * _F(12.0 if p["sex_male"] else 8.0) + _F(7.0) * np.clip(-u, 0.0, 1.0)
    d_rib += _F(4.0)
    d_rib -= torso - lean  # + the local fat thickness
    depth = -torso
    _paint(img, _occ(lean, pixel), p["muscle"])
    # v2.5: fat-water boundaries are dark in bSSFP (fat and water partly opposed in phase within one voxel): a ~1.5 mm
    # dark line where the subcutaneous fat meets the muscle and the skin (v2.4: a plain partial-volume blend)
    edge = (torso < 0.0) & (lean > -2.5)
    if edge.any():
        d_in, d_out = lean[edge], torso[edge] + _F(1.8)
        dip = np.exp(-np.square(d_in * _F(1.0 / 0.8))) * _F(0.45)
        dip += np.exp(-np.square(d_out * _F(1.0 / 0.8))) * _F(0.35)
        img[edge] *= _F(1.0) - dip
    inner = torso + d_rib + _F(11.0)  # < 0 inside the rib cage
    # smooth random field (amplitude <= 7.5 mm / 30 %): wobbles the liver and stomach outlines and modulates the
    # mediastinal / abdominal soft tissue (fat, vessels and bowel at a coarse scale), so neither is flat and analytic
    kw = rng.normal(size=(3, 3))
    kw *= (2 * np.pi / rng.uniform(60.0, 120.0, (3, 1))) / np.linalg.norm(kw, axis=1, keepdims=True)
    wobble = np.cos(pts @ kw.T.astype(_F) + rng.uniform(0, 2 * np.pi, 3).astype(_F)) @ np.full(3, 2.5, _F)
    _paint(img, _occ(inner, pixel), _F(0.45 * p["fat"]) * (_F(1.0) + _F(0.04) * wobble))
    spacing, rib_phase = float(rng.uniform(26.0, 32.0)), float(rng.uniform(0.0, 1.0))
    band = (lean < -1.0) & (inner > -1.5)  # muscle and rib layers: ribs and sternum are evaluated there only
    if band.any():
        xb, ub = x[band], u[band]
        s_rib = (z[band] + _F(0.45) * y[band]) * _F(1.0 / spacing) + _F(rib_phase)  # ribs slope down anteriorly
        # v2.4: each rib (index n) has its own offset, width and depth (hashed from n; v2.3: identical, evenly spaced
        # ovals), and its section changes slowly round the chest (ribs twist and narrow towards the cartilage)
        n_rib = np.round(s_rib)
        jitter = [np.sin(n_rib * _F(a) + _F(b)) for a, b in ((12.9898, rib_phase * 7.0), (78.233, 1.3), (39.425, 4.1))]
        twist = _F(1.0) + _F(0.2) * np.cos(np.arctan2(ub, v[band]) * _F(3.0) + n_rib)
        height = s_rib - n_rib - _F(0.12) * jitter[0]
        height *= _F(spacing / 6.5) / ((_F(1.0) + _F(0.2) * jitter[1]) * twist)
        r_rib = depth[band] - d_rib[band] - _F(5.5) - _F(1.5) * jitter[2]  # radial position in the rib layer
        rib = np.sqrt(np.square(height) + np.square(r_rib * _F(1.0 / 3.5)))  # ~13 x 7 mm oval cross-sections
        rib -= _F(1.0)
        rib *= _F(3.5)
        rib = np.maximum(rib, (_F(-140.0 / spacing) - s_rib) * _F(spacing))  # (mm) no ribs below the costal margin
        # none at the posterior midline (the spine and paraspinal muscles); x100: unitless -> roughly mm
        rib = np.maximum(rib, (_F(0.2) - np.maximum(np.abs(v[band]) * _F(2.0), ub)) * _F(100.0))
        cart = np.abs(v[band]) < _F(0.3)  # costal cartilage near the sternum: grey, no cortex
        sub = img[band]
        _paint(sub, _occ(rib, pixel), np.where(cart, _F(1.1 * p["muscle"]), _F(0.05)))  # cortex
        _paint(sub, _occ(rib + _F(1.3), pixel), np.where(cart, _F(1.1 * p["muscle"]), _F(0.5 * p["fat"])))  # marrow
        sternum = np.maximum(np.abs(xb) - _F(16.0), np.abs(r_rib) - _F(5.0))
        sternum = np.maximum(sternum, np.maximum(-ub, -z[band] - _F(110.0)))  # anterior, down to the xiphoid
        _paint(sub, _occ(sternum, pixel), 0.05)
        _paint(sub, _occ(sternum + _F(1.3), pixel), 0.5 * p["fat"])
        img[band] = sub
    rng_o = np.random.default_rng([int(p["appearance_seed"]), 22])  # v2.5: spleen, venae cavae
    s_ax = [float(v) for v in rng_o.uniform(0.8, 1.2) * np.array([28.0, 45.0, 50.0])]
    s_c = np.array([-0.62 * ax0 + rng_o.uniform(-8.0, 8.0), -0.45 * ay0, -110.0])
    spine_y = -ay0 + 45.0 - 10.0
    tubes = _mediastinal_tubes(p, origin, axes, aorta, ra, rng_o, spine_y)
    # v2.4: the anterior mediastinum, no lung between the ventricles and the sternum: an ellipsoid around the
    # ventricles swept forwards to the chest wall (in v2.3 lung ran between them, and the heart, drawn over the lungs,
    # was outlined by one-pixel dark slivers where the lung edge fell just beyond its surface). v2.6: in front of the
    # RV only (centred 35 mm towards it; semi-axes 0.7 / 0.8 / 0.55x the v2.5 ones in x, y, z)
    centre = origin + axes @ np.array([35.0, 0.0, 40.0], _F)
    size = float(p["lv_edv_ml"] / 145.0) ** (1.0 / 3.0)
    front = ellipsoid_sd(x - centre[0], np.minimum(y - centre[1], 0.0), z - centre[2], 32.0 * size, 32.0 * size,
                         28.0 * size)  # fmt: skip
    lungs = None
    # v2.6: the lungs fill the rib cage above the diaphragm and reach the heart (v2.5: ellipsoids with fixed medial
    # edges at x = 8 / -25 mm, so the heart sat in a wide grey mediastinum); each extends 10 mm past the heart's
    # centre, and what keeps them apart is the mediastinum itself: the pericardial sac (``sac``), the anterior
    # mediastinum (``front``), the great vessels in 6 mm of fat, and the posterior mediastinum (oesophagus,
    # descending aorta, spine) behind the heart
    x_heart = float(origin[0])
    for cx, dome in ((70.0, -35.0), (-80.0, -45.0)):  # right hemidiaphragm higher (liver)
        diaphragm = dome - ((x - cx) ** 2 + (y + 5.0) ** 2) / 250.0 - z  # domes, lowest at the costophrenic angles
        medial = (x_heart - 10.0 - x) if cx > 0 else (x - x_heart - 10.0)
        lung = np.maximum(medial, diaphragm)
        lung = np.maximum(lung, inner)  # v2.3: the lungs fill the rib cage up to the chest wall
        lungs = lung if lungs is None else np.minimum(lungs, lung)
    np.maximum(lungs, -front, out=lungs)
    posterior = np.maximum(np.abs(x + _F(6.0)) - _F(30.0), y - _F(spine_y + 40.0))
    np.maximum(lungs, -posterior, out=lungs)
    tubes = [(*_near_capsule(pts, (x, y, z), a, direction, radius, length, 6.0 + pixel), value)
             for a, direction, radius, length, value in tubes]  # fmt: skip
    for near, sd, _ in tubes:  # the great vessels and the oesophagus lie in 6 mm of mediastinal fat, outside the lungs
        lungs[near] = np.maximum(lungs[near], _F(6.0) - sd)
    lungs_free = lungs.copy()  # before the pericardial cut: where the lungs may follow the heart, frame by frame
    if sac is not None:
        np.maximum(lungs, -sac, out=lungs)
    _paint(img, _occ(lungs, pixel), p["lung"])
    # v2.2: pulmonary vessels, grey tubes (near-intersections of the zero sets of two smooth random fields, so a plane
    # cuts them as dots and short curved segments), larger and brighter towards the hila, fading to the periphery
    in_lung = lungs < -1.0
    if in_lung.any():
        rng_v = np.random.default_rng([int(p["appearance_seed"]), 16])
        q = pts[in_lung]
        hilum = np.exp(-np.hypot(q[..., 0] - _F(origin[0]), q[..., 1] - _F(origin[1]) + _F(20.0)) * _F(1.0 / 70.0))
        # v2.4: a tree radiating from each hilum (v2.3: random tubes): the fields are functions of the direction from
        # the hilum, so their common zeros are rays; a finer pair phased in with the distance splits them (branches);
        # the width in field units falls with the distance squared, so the vessels taper from ~6 to ~1.5 mm; a term
        # linear in the offset bends the rays
        hx = np.where(q[..., 0] > _F(origin[0] + 10.0), _F(origin[0] + 45.0), _F(origin[0] - 35.0))
        d = q - np.stack([hx, np.full_like(hx, origin[1] - 25.0), np.full_like(hx, origin[2] + 15.0)], axis=-1)
        dist = np.sqrt(np.einsum("...i,...i->...", d, d)) + _F(1.0)
        d *= (_F(0.25) + _F(60.0) / dist)[..., None]  # on a sphere of radius 60 mm round the hilum, plus a bend
        c1, c2 = _wave_fields(rng_v, d, 3, (18.0, 35.0))
        b1, b2 = _wave_fields(rng_v, d, 3, (9.0, 18.0))
        branch = np.clip((dist - _F(40.0)) * _F(1.0 / 60.0), 0.0, 1.0)
        f1, f2 = c1 + branch * b1, c2 + branch * b2
        width = _F(0.6) * np.square(_F(40.0) / np.maximum(dist, _F(40.0))) + _F(0.05)
        vessel = np.exp(-(f1 * f1 + f2 * f2) / (width * width))
        depth_l = np.clip(-lungs[in_lung] * _F(0.2), 0.0, 1.0)  # no vessels within a few mm of the pleura
        img[in_lung] += vessel * depth_l * (_F(0.12) + _F(0.4) * hilum) * _F(p["blood"])
    # liver under the right hemidiaphragm, inside the rib cage, with a slightly irregular outline (v2.3) and bright
    # hepatic / portal veins (the same two-field construction as the lung vessels, coarser)
    liver = np.maximum(ellipsoid_sd(x - 35.0, y + 5.0, z + 120.0, 125.0, 0.8 * ay, 85.0) + wobble, inner)
    _paint(img, _occ(liver, pixel), p["liver"])
    in_liver = liver < -2.0
    if in_liver.any():
        f1, f2 = _wave_fields(rng, pts[in_liver], 3, (45.0, 90.0))
        vessel = np.exp(-(f1 * f1 + f2 * f2) * _F(1.0 / 0.05))
        img[in_liver] += vessel * np.clip(-liver[in_liver] * _F(0.2), 0.0, 1.0) * _F(0.85 * p["blood"] - p["liver"])
    # v2.5: spleen, posterolateral under the left hemidiaphragm inside the rib cage (T1 ≈ 1,050 ms, T2 ≈ 80 ms:
    # ~1.25x the myocardium's bSSFP signal), drawn before the stomach, which indents it
    near = (np.abs(x - _F(s_c[0])) < s_ax[0] + 6.0) & (np.abs(y - _F(s_c[1])) < s_ax[1] + 6.0)
    near &= np.abs(z - _F(s_c[2])) < s_ax[2] + 6.0  # its box (the wobble moves the outline by <= 3.75 mm)
    if near.any():
        spleen = ellipsoid_sd(x[near] - _F(s_c[0]), y[near] - _F(s_c[1]), z[near] - _F(s_c[2]), *s_ax)
        spleen += _F(0.5) * wobble[near]
        spleen = np.maximum(np.maximum(spleen, inner[near]), -lungs[near])
        sub = img[near]
        _paint(sub, _occ(spleen, pixel), 1.25 * p["myocardium"])
        img[near] = sub
    # stomach under the left hemidiaphragm: soft-tissue wall around gas (anterior, the patient is supine) over fluid
    # (v2.5: evaluated in its box only, the wobble moves the outline by <= 4.5 mm: the same image, less work)
    level = _F(5.0 + rng.uniform(-15.0, 15.0))  # y of the air-fluid level: gas anterior to it
    near = (np.abs(x + _F(70.0)) < 52.0) & (np.abs(y - _F(5.0)) < 42.0) & (np.abs(z + _F(85.0)) < 42.0)
    if near.any():
        xs, ys = x[near], y[near]
        stomach = ellipsoid_sd(xs + 70.0, ys - 5.0, z[near] + 85.0, 45.0, 35.0, 35.0) + _F(0.6) * wobble[near]
        stomach = np.maximum(stomach, inner[near])
        sub = img[near]
        _paint(sub, _occ(stomach, pixel), p["muscle"])
        ys = level - ys  # < 0 anterior to the air-fluid level
        _paint(sub, _occ(np.maximum(stomach + 4.0, -ys), pixel), 0.8 * p["blood"])  # fluid (long T2: bright)
        _paint(sub, _occ(np.maximum(stomach + 4.0, ys), pixel), 0.0)  # gas
        img[near] = sub
    # paraspinal muscles between the spine and the back's subcutaneous fat
    back = -ay0 - 10.0
    para = np.hypot((np.abs(x) - _F(34.0)) * _F(22.0 / 27.0), y - _F(back + 20.0)) - _F(22.0)  # both sides at once
    _paint(img, _occ(np.maximum(para, lean), pixel), p["muscle"])
    # vertebral bodies (fatty marrow, mid-bright) separated by brighter intervertebral discs every ~28 mm
    disc = np.clip(np.cos((z + _F(p.get("fat_phase", 0.0) * 4.0)) * _F(2 * np.pi / 28.0)) * _F(3.0) - _F(2.0), 0.0, 1.0)
    _paint(img, _occ(np.hypot(x, y - spine_y) - 17.0, pixel), 0.5 * p["fat"] + disc * _F(0.35 * p["fat"]))
    # v2.5: posterior elements (v2.4: vertebral bodies only): a neural arch round the canal, transverse processes and
    # a spinous process (marrow in a dark cortex), present over most of each ~28 mm level, evaluated near the spine
    near = (np.abs(x) < 48.0) & (y < spine_y - 8.0) & (y > spine_y - 72.0)
    if near.any():
        xs, ys, zs = x[near], y[near] - _F(spine_y - 26.0), z[near]  # ys: from the canal centre
        level = np.cos((zs + _F(p.get("fat_phase", 0.0) * 4.0)) * _F(2 * np.pi / 28.0) - _F(1.2))
        arch = np.hypot(xs, ys) - _F(11.0)
        spinous = np.maximum(np.maximum(np.abs(xs - _F(0.08) * (ys + _F(20.0))) - _F(3.5), ys + _F(4.0)),
                             _F(-17.0) - ys)  # fmt: skip (ends under the lean back, 19 mm behind the canal)
        transverse = np.maximum(np.abs(ys - _F(1.0) + _F(0.12) * np.abs(xs)) - _F(4.5), np.abs(xs) - _F(38.0))
        post = np.minimum(arch, np.minimum(spinous, transverse))
        np.maximum(post, (_F(-0.3) - level) * _F(12.0), out=post)  # gaps between the levels (facet joints)
        sub = img[near]
        _paint(sub, _occ(post, pixel), 0.05)
        _paint(sub, _occ(post + _F(1.3), pixel), 0.5 * p["fat"])
        _paint(sub, _occ(np.hypot(xs, ys) - _F(6.0), pixel), 0.9 * p["blood"])  # the canal (CSF) stays open
        img[near] = sub
    _paint(img, _occ(np.hypot(x, y - spine_y + 26.0) - 6.0, pixel), 0.9 * p["blood"])
    _paint(img, _occ(np.hypot(x + 22.0, y - spine_y - 22.0) - 11.0, pixel), 0.95 * p["blood"])  # descending aorta
    for near, sd, value in tubes:
        sub = img[near]
        _paint(sub, _occ(sd, pixel), value)
        img[near] = sub
    return img, lungs_free


def _revolution_sd(rho2, z, inv_r2, inv_l2):
    """Approximate signed distance to a half ellipsoid of revolution ``rho²/r² + z²/L² = 1`` cut at ``z = 0``.

    ``rho2`` (S, N) squared distance to the axis, ``z`` (T, S, N) height above the base plane, ``inv_r2``/``inv_l2``
    per-frame 1/r², 1/L² (T, 1, 1) or (T, S, N). Returns (T, S, N) float32 (negative inside).
    """
    z2 = z * z
    f2 = rho2 * inv_r2 + z2 * inv_l2
    grad = np.sqrt(rho2 * (inv_r2 * inv_r2) + z2 * (inv_l2 * inv_l2)) + _F(1e-12)
    f = np.sqrt(f2)
    return np.maximum((f2 - f) / grad, -z)  # at the exact base centre: 0 (on the truncation plane)


def _columns(values: np.ndarray, cols: np.ndarray, shape: tuple) -> np.ndarray:
    """(T, S, N) float32 array equal to ``values`` (T, S, len(cols)) in the columns ``cols`` and +inf elsewhere."""
    out = np.full(shape, np.inf, _F)
    out[..., cols] = values
    return out


def _heart_fields(x1, x2, x3, shapes: dict, p: dict, with_atria: bool, reach: float = np.inf) -> dict:
    """Signed distances (T, S, N) of the chambers at heart-local points (S, N) each.

    Keys: lv (cavity), epi (LV epicardium), rv (RV blood crescent), rv_out (RV free-wall outer surface), z (height
    below the flat base plane, towards the apex), zp (height below the non-flat AV plane), mb (moderator band, or
    None), pap (papillary muscles / trabeculae, or None) and, when ``with_atria``, la, ra and root (aortic root).
    Fields that matter only near a chamber are evaluated only in the columns (points over all frames and sub-samples)
    within ``reach`` mm of it: mb (inside the RV) and pap (read as ``max(pap, lv)``) are +inf where the RV / LV cavity
    is ``reach`` or more away; la, ra and root are at least ``zp - 1.5`` (cut inside the ventricles) and equal to it (a
    lower bound) where the AV plane is ``reach`` or more above.
    """
    lv, rv = shapes["lv"], shapes["rv"]
    col = lambda v: np.asarray(v, _F).reshape(-1, 1, 1)  # noqa: E731  (T,) -> (T, 1, 1)
    rho2 = x1 * x1 + x2 * x2
    z = x3 - col(lv["b"])
    zp = z - av_offset(x1, x2, p, lv["r_ed"]).astype(_F)  # cut by the AV plane: the annuli are not flat
    r, w, lz, c = col(lv["r"]), col(lv["w"]), col(lv["Lz"]), col(lv["c"])
    if p["hypokinesis"] > 0:  # sector that keeps ED radius and thickness
        theta = np.arctan2(x2, x1)
        dth = np.angle(np.exp(1j * (theta - np.deg2rad(p["hypokinesis_angle_deg"]))))
        s = (p["hypokinesis"] * np.exp(-0.5 * (dth / np.deg2rad(p["hypokinesis_width_deg"] / 2.355)) ** 2)).astype(_F)
        r = r + s * (_F(lv["r_ed"]) - r)
        w = w + s * (_F(lv["w_ed"]) - w)
    # v2.6: the LV is not a circle in SAX (v2.5: a perfect ring of even thickness): zero-mean angular harmonics
    # (``geometry.lv_section``) make the cavity slightly oval / three-cornered and the wall thicker on one side; the
    # radius factor divides the static rho (S, N) instead of multiplying r (T, 1, 1) into a (T, S, N) array
    r_mod, w_mod = lv_section(x1, x2, lv["section"])
    rho2 /= np.square(r_mod)
    w = w * w_mod
    above = -zp  # height above the AV plane: the cut of every chamber
    above_open = above - _F(1.5)  # the painted cavities open 1.5 mm into the atria
    cav = truncated_sd(rho2, z, r, lz, c, _F(np.inf))  # uncut cavity ellipsoid (of the modulated section)
    out = {"z": z, "zp": zp, "lv": np.maximum(cav, above), "lv_open": np.maximum(cav, above_open)}
    # v2.3: the cavity offset by w·wall_profile (thin at the annular hinge and the apex); uncut copy for the groove fat
    out["epi_full"] = cav - w * wall_profile(z * (_F(1.0) / col(lv["L"])))  # = lv_epi_sd before the cut
    out["epi"] = np.maximum(out["epi_full"], above)
    n, grad = rv_form(x1, x2, z, _F(rv["d"]), _F(rv["a2r"]), _F(rv["lr"]), _F(rv.get("sep", 1.0)))
    rv_ell = (n - col(rv["lam"])) / grad
    out["rv_full"] = rv_ell - _F(rv["wall"])
    out["rv_out"] = np.maximum(out["rv_full"], above)  # free wall, open at the tricuspid annulus
    outside_lv = -out["epi"]
    out["rv"] = np.maximum(np.maximum(rv_ell, above), outside_lv)
    out["rv_open"] = np.maximum(np.maximum(rv_ell, above_open), outside_lv)  # painted: open at the annulus
    # moderator band: a muscle rod across the RV cavity from the apical septum to the anterior free wall, near the
    # 4ch plane (x2 = 0), drawn inside the RV blood only (labelled RV blood pool, like the trabeculae)
    out["mb"] = None
    zm = _F(p.get("moderator_band_pos", 0.0)) * col(lv["L"])
    if p.get("moderator_band_mm", 0.0) > 0 and float(z.max()) > float(zm.min()) - 10.0:
        cols = np.flatnonzero(out["rv"].min(axis=(0, 1)) < reach)  # columns within reach of the RV cavity
        dz = z[..., cols] - zm - _F(0.25) * (x1[:, cols] - _F(rv["d"]))  # slopes towards the apex at the free wall
        band = np.sqrt(dz * dz + x2[:, cols] * x2[:, cols]) - _F(p["moderator_band_mm"])
        out["mb"] = _columns(np.maximum(band, out["rv"][..., cols]), cols, out["rv"].shape)
    # papillary muscles (two rods opposite the septum) and the trabecular layer (v2.2): dark myocardium inside the
    # cavity, labelled LV blood pool as in UK Biobank
    length = col(lv["L"])
    z_lo, z_hi = float(x3.min()) - float(np.max(lv["b"])), float(x3.max())
    pap_in = z_hi > 0.3 * float(np.min(lv["L"])) and z_lo < 0.8 * lv["L_ed"]
    trab_in = z_hi > 0.2 * float(np.min(lv["L"]))
    pap = None
    cols = np.flatnonzero(out["lv"].min(axis=(0, 1)) < reach)  # columns within reach of the cavity
    xc1, xc2, xc3, zc = x1[:, cols], x2[:, cols], x3[:, cols], z[..., cols]
    rc = r[..., cols] if r.shape[-1] > 1 else r  # (T, S, N) with a hypokinetic sector, else (T, 1, 1)
    if pap_in:
        # rods follow the tapering cavity: their radial position scales with the local cavity radius
        u = (zc - c) / lz
        taper = np.sqrt(np.clip(1.0 - u * u, 0.05, 1.0, out=u), out=u)
        taper *= rc

        def z_band(d, z0, z1):
            return np.maximum(d, np.abs(zc - _F(0.5 * (z0 + z1)) * length) - _F(0.5 * (z1 - z0)) * length)

        # v2.4: each muscle grows out of the wall (its axis 1.1 radii inside the endocardium, so it bulges ~2 radii
        # into the cavity, beyond the trabecular layer) and narrows towards its head at 30 % of the length; the v2.3
        # rods floated at half the cavity radius and read as a dark band down the middle of the 2ch / 3ch cavity
        rad = _F(p["papillary_mm"]) * (_F(0.55) + _F(0.45) * np.clip((zc / length - _F(0.3)) * _F(4.0), 0.0, 1.0))
        # v2.5: the two muscles differ (angle ±12°, size 0.8-1.2, head height), and the heads stand a little off the
        # wall (axis up to 1.5 radii inside the endocardium near the head): v2.4's identical bumps, symmetric about
        # the free wall, made the mid-SAX endocardium look like a regular gear with the trabecular ridges
        rng_p = np.random.default_rng([int(p["appearance_seed"]), 21])
        d_ang, size, head = rng_p.uniform(-12.0, 12.0, 2), rng_p.uniform(0.8, 1.2, 2), rng_p.uniform(0.27, 0.36, 2)
        detach = np.clip((_F(0.5) - zc / length) * _F(5.0), 0.0, 1.0)  # 1 at the head, 0 from half the length
        for i, sign in enumerate((-1.0, 1.0)):
            ang = np.deg2rad(180.0 + sign * 55.0 + p["papillary_angle_deg"] + d_ang[i])
            rad_i = rad * _F(size[i])
            rr = taper - (_F(1.1) + _F(0.4) * detach) * rad_i
            d = np.sqrt((xc1 - rr * _F(np.cos(ang))) ** 2 + (xc2 - rr * _F(np.sin(ang))) ** 2) - rad_i
            d = z_band(d, float(head[i]), 0.80)
            pap = d if pap is None else np.minimum(pap, d)
    if trab_in:
        # trabecular (non-compacted) layer lining the endocardium, growing towards the apex and deepest over the free
        # wall (smooth septum). v2.5: separate ridges (2·trabeculae + 0-4 of them) at random angles, each with its own
        # width (1.2-3.5 mm), height and twist along the long axis, starting and stopping along the length, on a thin
        # uneven layer (v2.4: five cosines of similar angular order summed into a continuous layer with regular teeth,
        # a gear in mid / apical SAX)
        rng = np.random.default_rng([int(p["appearance_seed"]), 15])
        theta = np.arctan2(xc2, xc1)  # (S, n): no frame axis
        n_r = 2 * int(p["trabeculae"]) + int(rng.integers(0, 5))
        th0, twist = rng.uniform(-np.pi, np.pi, n_r), rng.normal(0.0, 0.6, n_r) / lv["L_ed"]
        half_w = rng.uniform(1.2, 3.5, n_r) / (0.7 * lv["r_ed"])  # angular half-width (rad)
        height, k_z, ph_z = rng.uniform(0.35, 1.0, n_r), 2 * np.pi / rng.uniform(20.0, 60.0, n_r), rng.uniform(
            0.0, 2 * np.pi, n_r)  # fmt: skip
        rel = None
        apical = np.clip(xc3 * _F(2.5 / lv["L_ed"]) - _F(0.9), 0.6, 1.4)  # the ridges run on towards the apex
        for i in range(n_r):
            dth = theta - (_F(th0[i]) + _F(twist[i]) * xc3)
            dth += _F(np.pi)
            np.remainder(dth, _F(2 * np.pi), out=dth)
            dth -= _F(np.pi)  # wrapped to [-pi, pi)
            dth *= _F(1.0 / half_w[i])
            prof = np.clip(_F(1.0) - dth * dth, 0.0, 1.0)
            prof *= np.clip(np.cos(xc3 * _F(k_z[i]) + _F(ph_z[i])) + apical, 0.0, 1.0) * _F(height[i])
            rel = prof if rel is None else np.maximum(rel, prof, out=rel)
        k_b = rng.integers(2, 6, 2)
        base = np.cos(_F(k_b[0]) * theta + xc3 * _F(0.15)) + np.cos(_F(k_b[1]) * theta + _F(1.0))
        base *= _F(0.08)
        rel += base
        rel += _F(0.12)  # a thin, uneven layer everywhere
        ramp = np.clip(xc3 * _F(1.0 / (0.35 * lv["L_ed"])) - _F(0.6), 0.0, 1.0)  # from ~20 % of the length
        free = _F(0.3) + _F(0.35) * (_F(1.0) - np.cos(theta))  # septum 0.3, free wall 1
        depth = rel * ramp * free * _F(5.0)  # (S, N) mm
        d = -out["lv"][..., cols] - depth  # < 0 within ``depth`` inside the endocardium
        pap = d if pap is None else np.minimum(pap, d)
    out["pap"] = None if pap is None else _columns(pap, cols, out["lv"].shape)
    if with_atria:  # mitral and tricuspid leaflets: thin hinged sheets at the annuli, open in diastole
        out["leaf"] = None
        for key in ("la", "ra"):
            at = shapes[key]
            if "annulus" not in at:
                continue
            dx, dy = x1 - _F(at["x1"]), x2 - _F(at["x2"])
            rho_a = np.sqrt(dx * dx + dy * dy)  # (S, N) distance to the atrial axis
            ann, ang = col(at["annulus"]), col(np.deg2rad(at["leaflet_deg"]))
            # only points (columns) near the valve in some frame: within the annulus, at most a leaflet below it
            zp_lo, zp_hi = zp.min(axis=0), zp.max(axis=0)  # (S, N) over frames
            near = ((zp_hi > -3.0) & (zp_lo < 0.85 * float(ann.max()) + 3.0) & (rho_a < float(ann.max()) + 3.0))
            cols = np.flatnonzero(near.any(axis=0))
            if cols.size == 0:
                continue
            length = _F(0.85) * ann
            cos_a, sin_a = np.cos(ang), np.sin(ang)
            # meridional half-plane: hinge at (ann, 0), free edge at (ann - length·cos, length·sin) below the plane
            u, v = rho_a[:, cols] - ann, zp[:, :, cols]
            s_ = np.clip(-(u * cos_a) + v * sin_a, _F(0.0), length)  # projection onto the leaflet direction
            du, dv = u + s_ * cos_a, v - s_ * sin_a
            if out["leaf"] is None:
                out["leaf"] = np.full(zp.shape, 1e3, _F)
            leaf = out["leaf"][:, :, cols]
            out["leaf"][:, :, cols] = np.minimum(leaf, np.sqrt(du * du + dv * dv) - _F(0.8))
    if with_atria:
        # cut 1.5 mm inside the ventricles (painted over them): the atrial blood meets the ventricular blood at the
        # annulus without a partial-volume seam (labels exclude the ventricles anyway); the atria are evaluated only in
        # the columns less than ``reach`` below the AV plane, elsewhere the cut stands in
        cut = zp - _F(1.5)
        near = np.flatnonzero(zp.min(axis=(0, 1)) < reach)
        x1n, x2n, x3n, cut_n = x1[:, near], x2[:, near], x3[:, near], cut[:, :, near]
        rng = np.random.default_rng([int(p["appearance_seed"]), 19])
        for key in ("la", "ra"):  # pear-shaped (wider towards the roof), cut by the AV plane
            at = shapes[key]
            dz = x3n - col(at["x3"])
            a = col(at["a"]) * np.clip(_F(1.0) - _F(at["pear"]) * dz / col(at["c"]), _F(0.3), None)
            # v2.4: lobulated roof (v2.3: smooth): the section radius varies ±12 % round the axis, more towards the
            # roof, away from the annulus (zero-mean round the axis, so the volume is kept to first order)
            theta = np.arctan2(x2n - _F(at["x2"]), x1n - _F(at["x1"]))  # (S, n): the lobes do not move
            k, ph = rng.integers(2, 4, 2), rng.uniform(0.0, 2 * np.pi, 2).astype(_F)
            lobes = _F(0.07) * np.cos(_F(k[0]) * theta + ph[0]) + _F(0.05) * np.cos(_F(k[1]) * theta + ph[1])
            lobes *= np.clip(_F(0.5) - (x3n - _F(at["x3"][0])) * _F(1.0 / at["c"][0]), 0.0, 1.0)
            a *= lobes + _F(1.0)
            out[key] = cut.copy()
            out[key][:, :, near] = np.maximum(ellipsoid_sd(x1n - _F(at["x1"]), x2n - _F(at["x2"]), dz, a, a,
                                                           col(at["c"])), cut_n)  # fmt: skip
        # v2.6: the interatrial septum, a plane between the atria (``geometry.cardiac_shapes``), each atrium 1.5 mm off
        normal, offset = shapes["la"]["septum"]
        sep = (x1 - _F(shapes["la"]["x1"])) * _F(normal[0]) + (x2 - _F(shapes["la"]["x2"])) * _F(normal[1])
        sep -= _F(offset)  # (S, N): > 0 on the RA side
        np.maximum(out["la"], sep + _F(1.5), out=out["la"])
        np.maximum(out["ra"], _F(1.5) - sep, out=out["ra"])
        # LA appendage and pulmonary veins (static, unlabelled blood): (S, N), broadcast over frames when painted
        ext = None
        for start, direction, cap_len, r0, r1, bend, curv in _la_extras(p, shapes):
            d = np.stack([x1 - _F(start[0]), x2 - _F(start[1]), x3 - _F(start[2])], axis=-1)
            t = np.clip(d @ direction.astype(_F), 0.0, _F(cap_len))  # nearest point on the axis segment
            d -= t[..., None] * direction.astype(_F)
            d -= (np.square(t) * _F(curv))[..., None] * bend.astype(_F)  # v2.5: the bent axis (small curvature)
            sd = np.sqrt(np.einsum("...i,...i->...", d, d)) - (_F(r0) + _F((r1 - r0) / cap_len) * t)
            ext = sd if ext is None else np.minimum(ext, sd)
        out["la_ext"] = ext
        # aortic root: leaves the LV base beside the mitral annulus, sinus of Valsalva bulge, then the ascending
        # aorta (continued by the static background)
        start, up = aortic_root(p, shapes)
        d = np.stack([x1 - _F(start[0]), x2 - _F(start[1]), x3 - _F(start[2])], axis=-1)
        t = d @ up.astype(_F)
        radial = np.sqrt(np.maximum(np.einsum("...i,...i->...", d, d) - t * t, 0.0))
        rad = _F(p.get("aortic_root_mm", 12.0)) * (_F(1.0) + _F(0.22) * np.exp(-np.square((t - _F(10.0)) / _F(7.0))))
        root = np.maximum(radial - rad, np.maximum(t - _F(60.0), -t - _F(20.0)))  # reaches the ES base too
        out["root"] = np.maximum(root[None], cut)  # opens into the LV at the AV plane
    return out


def _smooth_min(a, b, k: float):
    """Polynomial smooth minimum of two signed distances (float32 arrays): ``min(a, b)`` less up to ``k / 4`` where
    they are within ``k`` mm of each other, so a union fills the creases between nearby shapes."""
    h = np.clip(_F(1.0) - np.abs(a - b) * _F(1.0 / k), 0.0, 1.0)
    return np.minimum(a, b) - np.square(h) * _F(k / 4.0)


def _pericardial_sac(loc: np.ndarray, shapes: dict, p: dict) -> np.ndarray:
    """Signed distance (mm, float32, negative inside) at heart-local points (..., 3) to the pericardial sac: a smooth
    union (``_smooth_min``, 15 mm) of the chambers at their largest (ventricles at ED, atria at ES; ellipsoid
    approximations) and the aortic root, grown by the epicardial fat and 2 mm. The lungs stay out of it in the static
    torso; inside it the renderer lets them follow the heart frame by frame."""
    lv, rv = shapes["lv"], shapes["rv"]
    x1, x2, x3 = loc[..., 0], loc[..., 1], loc[..., 2]
    a2, _, a3, _, aw, _ = lv["section"]  # the widest the modulated section (``geometry.lv_section``) reaches
    r_epi = lv["r_ed"] * (1.0 + a2 + a3) + lv["w_ed"] * (1.0 + aw)
    sac = ellipsoid_sd(x1, x2, x3 - _F(lv["c"][0]), _F(r_epi), _F(r_epi), _F(lv["Lz"][0] + lv["w_ed"]))
    n, grad = rv_form(x1, x2, x3, _F(rv["d"]), _F(rv["a2r"]), _F(rv["lr"]), _F(rv["sep"]))
    sac = _smooth_min(sac, (n - _F(rv["lam"][0])) / grad - _F(rv["wall"]), 15.0)
    np.maximum(sac, -x3 - _F(12.0), out=sac)  # the ventricles end at the AV plane (within 8 mm of the base plane)
    for key in ("la", "ra"):
        at = shapes[key]
        t = int(np.argmax(at["a"]))
        a = _F(at["a"][t] * (1.0 + at["pear"]))
        sac = _smooth_min(sac, ellipsoid_sd(x1 - _F(at["x1"]), x2 - _F(at["x2"]), x3 - _F(at["x3"][t]), a, a,
                                            _F(at["c"][t])), 15.0)  # fmt: skip
    start, up = aortic_root(p, shapes)
    root = _capsule_sd(loc, start.astype(_F), up.astype(_F), _F(1.25 * p.get("aortic_root_mm", 12.0)), 60.0)
    sac = _smooth_min(sac, root, 15.0)
    sac -= _F(1.2 * p["epicardial_fat_mm"] + 2.0)
    return sac


def render_subject(p: dict, preset: dict) -> tuple[dict, float]:
    """Render one subject. Returns ``({view: (image (X, Y, Z, T) float32, seg (X, Y, Z, T) int16 or None,
    affine (4, 4))}, dt_ms)``; ``seg`` is None for ``la_3ch``. Intensities are in arbitrary units (blood ≈ gain)."""
    n_t, m, px, thick = preset["frames"], preset["matrix"], preset["pixel_mm"], preset["slice_thickness_mm"]
    origin, axes = heart_frame(p)
    shapes = cardiac_shapes(p, n_t)
    planes = view_planes(p, preset, origin, axes)
    look = _Appearance(p)
    noise_seed = int(np.random.SeedSequence([p["appearance_seed"], 1]).generate_state(1)[0])
    noise_gen = torch.Generator().manual_seed(noise_seed)
    lv, rv, la, ra = shapes["lv"], shapes["rv"], shapes["la"], shapes["ra"]
    fat_mm = p["epicardial_fat_mm"]
    # local-coordinate bounding box of everything that moves (all frames)
    x3_lo = min(float(np.min(la["x3"] - la["c"])), float(np.min(ra["x3"] - ra["c"]))) - 4.0
    root_start, root_up = aortic_root(p, shapes)
    aorta_world = (origin + axes @ root_start, axes @ root_up)
    ra_world = origin + axes @ np.array([ra["x1"], ra["x2"], float(ra["x3"][0])])
    x3_hi = lv["L_ed"] + lv["w_ed"] + fat_mm + 4.0  # the apex does not move
    margin = fat_mm + 10.0
    r_epi = lv["r_ed"] + lv["w_ed"]
    la_w, ra_w = float(la["a"].max()) * (1 + la["pear"]), float(ra["a"].max()) * (1 + ra["pear"])
    x1_lo = -max(r_epi, -la["x1"] + la_w) - margin
    x1_hi = max(rv["d"] + float(rv["a1"].max()) + rv["wall"], ra["x1"] + ra_w) + margin
    x2_hi = max(r_epi, float(rv["a2"].max()) + rv["wall"], abs(la["x2"]) + la_w, ra_w) + margin
    atria_x3_hi = float(np.max(lv["b"])) + 10.0  # the AV plane dips up to 8 mm below the flat base plane
    reach = 3.5 + px  # farther, the atria / aortic root (cut at zp - 1.5, walls 2 mm) and LV cavity are > a pixel away
    sub = np.asarray(SUBSAMPLES, np.float64) * thick
    # v2.5 blood-flow heterogeneity: a smooth pattern of ±4-7 % that drifts through the blood once per beat (two
    # static fields mixed by the cardiac phase, so it costs a few (T, S, N) products), slower, darker flow in the
    # trabeculated apex and next to its wall (stronger in diastole, washed out in systole), darker RV apex, livelier
    # atria (v2.4: uniform blood with a faint apical ramp)
    rng_f = np.random.default_rng([int(p["appearance_seed"]), 20])
    flow_k = rng_f.normal(size=(3, 3))
    flow_k *= (2 * np.pi / rng_f.uniform(25.0, 60.0, (3, 1))) / np.linalg.norm(flow_k, axis=1, keepdims=True)
    flow_ph, flow_amp = rng_f.uniform(0.0, 2 * np.pi, 3), rng_f.uniform(0.04, 0.07) / np.sqrt(1.5)
    beat = 2 * np.pi * np.arange(n_t) / n_t + rng_f.uniform(0.0, 2 * np.pi)
    beat_c, beat_s = (np.asarray(fn(beat), _F).reshape(-1, 1, 1) for fn in (np.cos, np.sin))
    g_t = np.asarray(lv["b"] / max(p["base_descent_mm"], 1e-6), _F).reshape(-1, 1, 1)  # 0 at ED, 1 at ES
    apex_dark = _F(p["apical_slow_flow"]) * (_F(1.25) - _F(0.5) * g_t)  # (T, 1, 1)
    recess_dark = _F(rng_f.uniform(0.08, 0.16)) * (_F(1.2) - _F(0.4) * g_t)
    # v2.5: the atrial wall is 0.4-2.2 mm, varying smoothly over the atria (v2.4: an even 2 mm dark rim)
    rim_k = rng_f.normal(size=(2, 3))
    rim_k *= (2 * np.pi / rng_f.uniform(20.0, 45.0, (2, 1))) / np.linalg.norm(rim_k, axis=1, keepdims=True)
    rim_ph = rng_f.uniform(0.0, 2 * np.pi, 2)
    rng_g = np.random.default_rng([int(p["appearance_seed"]), 25])
    ghost_amp = float(rng_g.uniform(-0.02, 0.05))  # <= 0 (no ghosts) for 2 subjects in 7
    ghost_amp = max(ghost_amp, 0.0)
    ghost_shift = dict(zip(planes, rng_g.uniform(0.25, 0.45, len(planes))))
    out = {}
    ii, jj = np.meshgrid(np.arange(m, dtype=np.float64), np.arange(m, dtype=np.float64), indexing="ij")
    for view, pl in planes.items():
        nz = pl["n_slices"]
        # world points (Z, S, X, Y, 3)
        base_pts = pl["origin"] + (ii[..., None] * px) * pl["ex"] + (jj[..., None] * px) * pl["ey"]
        k_off = np.arange(nz)[:, None] * pl["spacing"] + sub[None, :]  # (Z, S)
        pts = (base_pts[None, None] + k_off[..., None, None, None] * pl["normal"]).astype(_F)  # float32 from here
        loc = (pts - origin.astype(_F)) @ axes.astype(_F)  # (Z, S, X, Y, 3) heart-local, float32
        inside = (loc[..., 0] > x1_lo) & (loc[..., 0] < x1_hi) & (np.abs(loc[..., 1]) < x2_hi)
        inside &= (loc[..., 2] > x3_lo) & (loc[..., 2] < x3_hi)
        sac = np.full(inside.shape, np.inf, _F)  # the sac lies inside the heart's bounding box
        sac[inside] = _pericardial_sac(loc[inside], shapes, p)
        bg, lungs_free = _static_background(pts, p, origin.astype(_F), axes.astype(_F), px, aorta_world, ra_world,
                                            sac)  # fmt: skip
        img = np.broadcast_to(bg.mean(axis=1)[:, None], (nz, n_t, m, m)).copy()  # (Z, T, X, Y)
        labelled = view != "la_3ch"
        seg = np.zeros((nz, n_t, m, m), np.int16) if labelled else None
        for k in range(nz):  # slices: few; each one vectorised over frames, sub-samples and pixels
            hit = inside[k].any(axis=0)
            if not hit.any():
                continue
            xs, ys = np.flatnonzero(hit.any(1)), np.flatnonzero(hit.any(0))
            sl = (slice(xs[0], xs[-1] + 1), slice(ys[0], ys[-1] + 1))
            q = loc[k][:, sl[0], sl[1]]  # (S, h, w, 3)
            hb, wb = q.shape[1:3]
            x1, x2, x3 = (q[..., c].reshape(len(sub), -1) for c in range(3))
            with_atria = float(x3.min()) < atria_x3_hi
            f = _heart_fields(x1, x2, x3, shapes, p, with_atria, reach)
            tile = np.broadcast_to(bg[k][:, sl[0], sl[1]].reshape(len(sub), -1), f["lv"].shape).copy()  # (T, S, N)
            pts_s = np.stack([x1, x2, x3], axis=-1) @ flow_k.T.astype(_F) + flow_ph.astype(_F)  # (S, N, 3)
            wave_c = np.cos(pts_s).sum(axis=-1) * _F(flow_amp * p["blood"])
            wave_s = np.sin(pts_s, out=pts_s).sum(axis=-1) * _F(flow_amp * p["blood"])
            flow = beat_c * wave_c  # (T, S, N): blood × (1 + the drifting pattern)
            flow -= beat_s * wave_s
            flow += _F(p["blood"])
            # ramps in the static heart-local height (the apex barely moves): (S, N), cheap
            zr = np.clip(x3 * _F(1.0 / lv["L_ed"]), 0.0, 1.0)
            vent = np.minimum(f["epi"], f["rv_out"])
            # epicardial fat: thick in the AV groove, over the RV free wall, in the interventricular grooves and at
            # the apex, thin and patchy over the LV free wall (no uniform bright rim)
            groove = np.abs(f["zp"]) * _F(-4.0 / 12.0)  # atrioventricular groove
            groove += _F(4.0)
            np.maximum(groove, 0.0, out=groove)
            side = f["epi"] - f["rv_out"]  # > 0 where the RV is the nearer ventricle
            over = np.clip(side * _F(0.125) + _F(0.25), 0.0, 0.5)
            # interventricular grooves; v2.4: a narrower, lower ridge (v2.3: 0.6·exp(-(side/5)²) drew a bright strip
            # along the LV wall in the 2ch plane of obese subjects, which grazes the anterior groove)
            over += _F(0.4) * np.exp(-np.square(side * _F(0.3)))
            over += np.clip(f["z"] / _F(lv["L_ed"]) * _F(1.5) - _F(1.0), 0.0, 0.5)  # apical fat pad
            theta = np.arctan2(x2, x1)
            # patches along three twisting stripes (coronary branches); v2.3: about 40 % of the LV free wall, at
            # most 0.25·fat_mm thick (v2.2: a nearly continuous layer that drew a bright line in obese subjects)
            over += _F(0.35) * np.cos(_F(3.0) * theta + x3 * _F(0.12) + _F(p.get("fat_phase", 0.0)))
            over -= _F(0.1)
            np.maximum(over, 0.0, out=over)
            over *= _F(fat_mm)
            fat_sd = vent - over
            # v2.3: the AV-groove fat fills the groove between the atria and the ventricles' continued (uncut) outer
            # surfaces instead of sticking out sideways as "wings" beyond them
            groove = np.subtract(fat_sd, groove, out=groove)
            np.maximum(groove, np.minimum(f["epi_full"], f["rv_full"]), out=groove)
            np.minimum(fat_sd, groove, out=fat_sd)
            # v2.6: inside the pericardial sac the lungs follow the heart frame by frame, 1.5 mm (pericardium) off its
            # outer surface, epicardial fat and atrial walls included; one pixel beyond the sac too, so its edge leaves
            # no seam in the lung
            free = np.maximum(lungs_free[k][:, sl[0], sl[1]], sac[k][:, sl[0], sl[1]] - _F(px)).reshape(len(sub), -1)
            if (free < px).any():
                heart = _F(1.5) - fat_sd
                if with_atria:
                    for key in ("la", "ra"):
                        np.maximum(heart, _F(3.7) - f[key], out=heart)  # atrial walls are at most 2.2 mm
                    np.maximum(heart, _F(3.0) - f["root"], out=heart)
                    np.maximum(heart, _F(3.0) - f["la_ext"], out=heart)
                np.maximum(heart, free, out=heart)
                _paint(tile, _occ(heart, px), p["lung"])
            _paint(tile, _occ(fat_sd, px), p["fat"])
            if with_atria:  # aortic root first: the LA behind it indents it (the LA keeps its full label)
                _paint(tile, _occ(f["root"] - _F(1.5), px), p["myocardium"])  # aortic wall
                _paint(tile, _occ(f["root"], px), p["blood"])
                _paint_static(tile, f["la_ext"] - _F(1.5), px, p["myocardium"])  # (S, N): static
                _paint_static(tile, f["la_ext"], px, p["blood"] * p["atrial_signal"] * 0.9)
                rim = np.stack([x1, x2, x3], axis=-1) @ rim_k.T.astype(_F) + rim_ph.astype(_F)  # (S, N, 2)
                rim = np.cos(rim, out=rim).sum(axis=-1)
                rim *= _F(0.45)
                rim += _F(1.3)
                atr = flow * _F(1.5 * p["atrial_signal"])  # slower atrial inflow; v2.5: swirling (the pattern at 1.5x)
                atr -= _F(0.5 * p["blood"] * p["atrial_signal"])
                for key in ("la", "ra"):
                    _paint(tile, _occ(f[key] - rim, px), p["myocardium"])
                    _paint(tile, _occ(f[key], px), atr)
            _paint(tile, _occ(f["rv_out"], px), p["myocardium"])
            rv_blood = np.clip(zr * _F(-0.2) + _F(1.1), 0.9, 1.0)  # v2.5: darker (trabeculated) RV apex
            _paint(tile, _occ(f["rv_open"], px), flow * rv_blood)
            if f["mb"] is not None:
                _paint(tile, _occ(f["mb"], px), p["myocardium"])
            _paint(tile, _occ(f["epi"], px), p["myocardium"])
            slow = np.square(zr) * apex_dark  # v2.4's apical ramp, now stronger in diastole
            if float(x3.max()) > 0.35 * lv["L_ed"]:  # next to the trabeculated wall from a third of the length down
                near = np.clip(f["lv"] * _F(0.3) + _F(1.0), 0.0, 1.0)  # 1 at the endocardium, 0 from 3.3 mm in
                near *= np.clip(zr * _F(2.5) - _F(0.9), 0.0, 1.0)
                near *= recess_dark
                slow += near
            np.subtract(_F(1.0), slow, out=slow)
            slow *= flow
            _paint(tile, _occ(f["lv_open"], px), slow)
            if f["pap"] is not None:
                _paint(tile, _occ(np.maximum(f["pap"], f["lv"]), px), p["myocardium"])
            if f.get("leaf") is not None:  # inside the ventricular cavities only
                cav = np.minimum(f["lv_open"], f["rv_open"])
                _paint(tile, _occ(np.maximum(f["leaf"], cav), px), _F(0.8) * _F(p["myocardium"]))
            img[k][:, sl[0], sl[1]] = tile.mean(axis=1).reshape(n_t, hb, wb)
            if labelled:  # slice-centre labels: the mean of the two sample distances is the centre distance
                is_in = lambda key: f[key].sum(axis=1) < 0  # noqa: E731  (T, N)
                lab = np.zeros((n_t, hb * wb), np.int16)
                epi, rvo = is_in("epi"), is_in("rv_out")
                if view == "sa":
                    lab[is_in("rv")] = SAX_LABELS["RV"]
                    lab[epi] = SAX_LABELS["MYO"]
                    lab[is_in("lv")] = SAX_LABELS["LV"]
                elif with_atria:
                    free = ~(epi | rvo)
                    ra_in = is_in("ra") & free
                    if view == "la_4ch":
                        lab[ra_in] = LAX_LABELS["RA"]
                    lab[is_in("la") & free & ~ra_in] = LAX_LABELS["LA"]
                seg[k][:, sl[0], sl[1]] = lab.reshape(n_t, hb, wb)
        # bias x texture (world), Rician noise, gain
        field, noise_scale = look.field(pl, m, px)
        img *= field[:, None]
        # v2.6: respiratory ghosting (an imperfect breath-hold): faint copies of the image shifted both ways by a
        # quarter to a half of the field of view along the phase-encoding axis (image y), 0-5 % per subject
        if ghost_amp > 0.0:
            shift = int(round(ghost_shift[view] * m))
            for k in range(nz):  # img[k] += amp/2 · (roll(img[k], shift) + roll(img[k], -shift)), without rolls
                src = img[k] * _F(ghost_amp / 2.0)
                for s in (shift, m - shift):
                    img[k][..., s:] += src[..., :m - s]
                    img[k][..., :s] += src[..., m - s:]
        img /= noise_scale[:, None]  # |img / s + σ·n| · s = |img + σ·s·n|: Rician noise of level σ·s
        _add_rician_noise(img, 1.0 / p["snr_blood"], noise_gen)  # sigma relative to the reference blood signal
        img *= noise_scale[:, None]
        img *= _F(p["gain"])
        to_xyzt = (2, 3, 0, 1)  # (Z, T, X, Y) -> (X, Y, Z, T)
        out[view] = (img.transpose(to_xyzt), None if seg is None else seg.transpose(to_xyzt), affine_of(pl, px))
    return out, shapes["dt_ms"]

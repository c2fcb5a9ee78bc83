"""Population model of the synthetic cohort: body, heart and disease latent parameters of one subject.

Every subject is drawn from its own generator ``np.random.default_rng([seed, index, SALT])``, so a subject does not
depend on how many subjects or workers there are.

Target reference values (healthy UK Biobank participants; Petersen SE et al., "Reference ranges for cardiac
structure and function using cardiovascular magnetic resonance (CMR) in Caucasians from the UK Biobank population
cohort", JCMR 19:18, 2017; and the ukbb_cardiac population figures of Bai W et al., "Automated cardiovascular
magnetic resonance image analysis with fully convolutional networks", JCMR 20:65, 2018). Approximate means ± sd
(men / women):

* LVEDV 166±32 / 124±21 mL, LVEF 61±5 / 64±5 %, LVM 103±21 / 71±13 g (whole cohort ≈ 145±30 mL, 60±6 %, 85±20 g)
* RVEDV 190±37 / 136±24 mL, RVEF 56±6 / 59±6 % (whole cohort ≈ 155±35 mL, 55±6 %)
* LAV max ≈ 70±20 mL, LAEF ≈ 60±8 %; RAV max ≈ 90±25 mL, RAEF ≈ 50±9 %
* heart rate ≈ 68±11 bpm; ventricular size scales with body surface area (Mosteller) and is smaller in women.

Disease model (hidden liability, DESIGN §6): a latent blood-pressure factor ``B`` (age, BMI, unobserved part)
drives both "high blood pressure" and "hypertension" (each adds its own unobserved noise), and raises LV wall
thickness / mass; CAD depends on age, sex and ``B`` plus unobserved noise, lowers EF and usually adds a regional
hypokinetic sector. Each disease is a threshold on a unit-variance Gaussian liability at the normal quantile of its
UK Biobank prevalence (``constants.DISEASE_PREVALENCE``), so the expected prevalence is exact.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

from kmtr_monai.constants import DISEASE_PREVALENCE, DISEASES

GENERATOR_VERSION = "2.6.0"  # render.py describes each version's changes
_SALT = 0x6B4D5452  # "kMTR"
_THRESHOLD = {d: NormalDist().inv_cdf(1.0 - p) for d, p in DISEASE_PREVALENCE.items()}

# Effect sizes of the disease model (tuned with benchmarks/cohort_difficulty.py so phenotype->disease AUC ∈ [0.65, 0.9]).
BP_ON_MASS = 0.07  # relative LV mass per sd of the latent blood-pressure factor
HTN_ON_MASS = 0.06  # extra relative LV mass with hypertension
HBP_ON_MASS = 0.05  # extra relative LV mass with high blood pressure
CAD_EF_DROP = (0.5, 7.5)  # uniform range of absolute LVEF loss (%) with CAD


def eid_of(index: int) -> str:
    """Deterministic subject id: ``"1000001"`` for index 0, ``"1000002"`` for index 1, ..."""
    return str(1_000_001 + int(index))


def _liability(rng: np.random.Generator, *terms: tuple[float, float]) -> float:
    """Unit-variance liability: sum of ``weight * z`` for standardised ``z`` plus independent hidden noise."""
    explained = sum(w * z for w, z in terms)
    var = sum(w * w for w, _ in terms)
    if var >= 1.0:
        raise ValueError(f"liability weights explain variance {var:.3f} >= 1")
    return float(explained + np.sqrt(1.0 - var) * rng.standard_normal())


# bSSFP tissue model at 1.5 T (DESIGN §6): signal ∝ PD · sqrt(T2 / T1), blood also brightened by through-plane inflow.
# (T1 ms, T2 ms, relative proton density); each subject draws T1 and T2 with 8 % / 10 % log-normal spread. v2.4: fat
# proton density 0.80 (v2.3: 0.90 gave a fat / myocardium ratio of 2.73 before coil shading; DESIGN §6: ≈ 2.4).
TISSUES = {"blood": (1500.0, 250.0, 0.95), "myocardium": (1000.0, 50.0, 0.78), "fat": (250.0, 70.0, 0.80),
           "liver": (600.0, 45.0, 0.72), "muscle": (1000.0, 35.0, 0.75)}  # fmt: skip


def _tissue_signals(rng: np.random.Generator) -> dict:
    """Per-subject tissue signal levels ``{tissue: float}`` relative to the reference blood signal (≈ 1), plus the
    drawn relaxation times ``relaxation_ms = {tissue: [T1, T2]}``."""
    ref = np.sqrt(250.0 / 1500.0) * 0.95
    out, relax = {}, {}
    for name, (t1, t2, pd) in TISSUES.items():
        t1, t2 = t1 * float(np.exp(rng.normal(0.0, 0.08))), t2 * float(np.exp(rng.normal(0.0, 0.10)))
        relax[name] = [t1, t2]
        out[name] = pd * float(np.sqrt(t2 / t1)) / ref
    out["blood"] *= float(rng.uniform(1.0, 1.25))  # inflow of unsaturated blood
    return out | {"relaxation_ms": relax}


def sample_subject(seed: int, index: int) -> dict:
    """All latent parameters of subject ``index`` of a cohort with global ``seed``.

    Returns a JSON-serialisable dict of floats/ints: body (sex, age, height_cm, weight_kg, bsa), diseases (0/1 per
    ``constants.DISEASES``), cardiac targets at ED (lv_edv_ml, lv_ef, lv_mass_g, rv_edv_ml, rv_ef, la_max_ml, la_ef,
    ra_max_ml, ra_ef, heart_rate_bpm), shape (lv_aspect, lv_truncation, base_descent_mm, hypokinesis severity/angle/width), pose
    (heart_rotvec_deg, heart_shift_mm), planning jitter (small tilts, in-plane rotations within ±15° of the standard view
    orientation, field-of-view offsets) and appearance (bSSFP tissue levels from T1/T2, SNR, coil fall-off, bias, gain,
    texture).
    """
    rng = np.random.default_rng([int(seed), int(index), _SALT])
    male = int(rng.random() < 0.47)
    age = float(rng.uniform(45.0, 80.0))
    age_z = (age - 62.5) / 10.1
    height = float(rng.normal(176.0, 7.0) if male else rng.normal(163.0, 6.5))
    bmi = float(np.clip(np.exp(rng.normal(np.log(26.8), 0.16)), 17.0, 50.0))
    bmi_z = (np.log(bmi) - np.log(26.8)) / 0.16
    weight = bmi * (height / 100.0) ** 2
    bsa = float(np.sqrt(height * weight / 3600.0))
    bsa_ref = 2.0 if male else 1.72
    sex_z = (male - 0.47) / 0.499

    bp = _liability(rng, (0.45, age_z), (0.30, bmi_z))  # latent blood-pressure factor B
    hbp = int(_liability(rng, (0.85, bp)) > _THRESHOLD["high_blood_pressure"])
    htn = int(_liability(rng, (0.85, bp)) > _THRESHOLD["hypertension"])
    cad = int(_liability(rng, (0.35, age_z), (0.30, sex_z), (0.30, bp)) > _THRESHOLD["CAD"])
    diseases = dict(zip(DISEASES, (cad, hbp, htn)))

    size = (bsa / bsa_ref) * np.exp(rng.normal(0.0, 0.14)) * (1.0 - 0.04 * age_z)
    lv_edv = (166.0 if male else 124.0) * size
    lv_ef = float(np.clip(rng.normal(62.0 if male else 64.5, 4.5), 45.0, 78.0))
    severity, sector = 0.0, 0.0
    if cad:
        lv_ef -= float(rng.uniform(*CAD_EF_DROP))
        severity = float(rng.uniform(0.3, 0.9)) if rng.random() < 0.6 else 0.0
    elif rng.random() < 0.05:  # unobserved non-ischaemic dysfunction: hidden factor that lowers EF without CAD
        lv_ef -= float(rng.uniform(1.0, 9.0))
        severity = float(rng.uniform(0.2, 0.6)) if rng.random() < 0.5 else 0.0
    sector = float(rng.uniform(50.0, 110.0))
    mass_factor = np.exp(rng.normal(0.0, 0.11)) * (1.0 + BP_ON_MASS * bp + HTN_ON_MASS * htn + HBP_ON_MASS * hbp)
    lv_mass = (103.0 if male else 71.0) * (bsa / bsa_ref) ** 0.8 * mass_factor
    rv_edv = lv_edv * float(np.exp(rng.normal(np.log(1.04), 0.07)))
    rv_ef = float(np.clip(rng.normal(57.0, 5.0) - 3.0 * cad, 35.0, 75.0))
    la_max = 70.0 * (bsa / 1.87) * float(np.exp(rng.normal(0.0, 0.22))) * (1.0 + 0.06 * bp)
    la_ef = float(np.clip(rng.normal(60.0, 7.0), 35.0, 80.0))
    ra_max = 90.0 * (bsa / 1.87) * float(np.exp(rng.normal(0.0, 0.24)))
    ra_ef = float(np.clip(rng.normal(50.0, 8.0), 25.0, 75.0))
    hr = float(np.clip(rng.normal(68.0, 10.5), 45.0, 110.0))

    return {
        "index": int(index), "eid": eid_of(index), "sex_male": male, "age": age, "height_cm": height,
        "weight_kg": float(weight), "bmi": bmi, "bsa": bsa, "bp_factor": float(bp), **diseases,
        "lv_edv_ml": float(lv_edv), "lv_ef": lv_ef, "lv_mass_g": float(lv_mass), "rv_edv_ml": float(rv_edv),
        "rv_ef": rv_ef, "la_max_ml": float(la_max), "la_ef": la_ef, "ra_max_ml": float(ra_max), "ra_ef": ra_ef,
        "heart_rate_bpm": hr,
        # cavity length / equatorial radius at ED: v2.3 mean 3.35 (length ≈ 1.7 × width; v2.2 3.0, a squat 1.5)
        "lv_aspect": float(np.clip(rng.normal(3.0, 0.25) + 0.35, 2.85, 4.0)),
        # base plane above the ellipsoid centre, fraction of Lz: v2.3 0.4-0.6 (widest at ~1/3 of the length, the base
        # 0.8-0.92 × the equatorial width; v2.2 0.2-0.4 was widest near the base)
        "lv_truncation": float(rng.uniform(0.2, 0.4) + 0.2),
        "base_descent_mm": float(rng.uniform(10.0, 15.0)),  # base -> apex motion at ES, apex fixed (DESIGN §6)
        "hypokinesis": severity, "hypokinesis_angle_deg": float(rng.uniform(-180.0, 180.0)),
        "hypokinesis_width_deg": sector,
        "heart_rotvec_deg": rng.normal(0.0, 8.0, 3).tolist(), "heart_shift_mm": rng.normal(0.0, 10.0, 3).tolist(),
        "epicardial_fat_mm": float(rng.uniform(0.5, 5.0) * (bmi / 26.8)),
        "subcutaneous_fat_mm": float(np.clip(4.0 + 1.6 * (bmi - 18.0) + rng.normal(0, 3), 3.0, 45.0)),
        "sax_start_mm": float(rng.uniform(-16.0, -6.0)),  # first SAX plane relative to the ED base plane
        "plane_tilt_deg": rng.normal(0.0, 3.0, 8).tolist(),  # planning error of the SAX stack and LAX planes
        # in-plane rotation of each view (sax, 2ch, 3ch, 4ch) about its standard orientation: within ±15° (DESIGN §6)
        "inplane_rot_deg": np.clip(rng.normal(0.0, 6.0, 4), -15.0, 15.0).tolist(),
        "fov_shift_mm": rng.normal(0.0, 10.0, 8).tolist(),  # in-plane field-of-view offsets (sax, 2ch, 3ch, 4ch)
        "lax_angles_deg": [float(rng.normal(-95.0, 5.0)), float(rng.normal(40.0, 5.0)), float(rng.normal(0.0, 3.0))],
        **_tissue_signals(rng),
        "lung": float(rng.uniform(0.02, 0.06)), "snr_blood": float(rng.uniform(18.0, 45.0)),
        "bias_strength": float(rng.uniform(0.05, 0.3)), "coil_falloff_mm": float(rng.uniform(70.0, 140.0)),
        "texture": float(rng.uniform(0.03, 0.08)), "gain": float(np.exp(rng.normal(0.0, 0.3))),
        # RV crescent: centre offset (× LV epicardial radius), tangential and long semi-axes (× radial); free wall mm.
        # v2.2: with the septal-side compression ``rv_septal`` (drawn last) the septal insertions sit ~65-75° from the
        # septum (the v2.1 crescent wrapped ~95-100° and showed as bright bands beside the LV in 2ch and 3ch)
        "rv_shape": [float(rng.uniform(0.5, 0.65)), float(rng.uniform(0.7, 0.85)), float(rng.uniform(1.2, 1.45))],
        "rv_wall_mm": float(rng.uniform(2.6, 3.3)),  # v2.4 (v2.3: 3-4, measured 3.5-4.8 on the rendered fields)
        "papillary_mm": float(rng.uniform(2.5, 5.0)), "papillary_angle_deg": float(rng.normal(0.0, 15.0)),
        "trabeculae": int(rng.integers(4, 9)), "apical_slow_flow": float(rng.uniform(0.0, 0.3)),
        "atrial_signal": float(rng.uniform(0.75, 1.0)),
        "atrial_elongation": [float(rng.uniform(1.0, 1.6)), float(rng.uniform(0.95, 1.45))],
        "appearance_seed": int(rng.integers(0, 2**31 - 1)),
        # v2.1 long-axis anatomy (drawn last, so every earlier draw is unchanged): non-flat AV plane (tricuspid side
        # apical, mm per mm along e1; mitral saddle height), pear-shaped atria cut by it (cut at this fraction of
        # the long semi-axis below the centre; roof widening), aortic root radius, moderator band, epicardial fat
        "av_tilt": float(rng.uniform(0.08, 0.16)), "mitral_saddle_mm": float(rng.uniform(1.5, 4.0)),
        "atrial_truncation": [float(rng.uniform(0.55, 0.8)), float(rng.uniform(0.55, 0.8))],
        "atrial_pear": [float(rng.uniform(0.1, 0.25)), float(rng.uniform(0.05, 0.2))],
        "aortic_root_mm": float(rng.uniform(10.5, 13.5)), "moderator_band_mm": float(rng.uniform(2.0, 3.0)),
        "moderator_band_pos": float(rng.uniform(0.45, 0.6)), "fat_phase": float(rng.uniform(0.0, 2 * np.pi)),
        # v2.2 (drawn after every v2.1 draw): RV section radial semi-axis towards the septum = 1/rv_septal of the one
        # towards the free wall (an egg, so the crescent wraps ~65-75° each side of the septum, not ~85-105°)
        "rv_septal": float(rng.uniform(3.5, 4.5)),
    }  # fmt: skip

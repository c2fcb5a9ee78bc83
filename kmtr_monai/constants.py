"""The data contract shared by every module (DESIGN §2): view order, label maps, phenotype and disease names."""

LAX_VIEWS = ("la_2ch", "la_3ch", "la_4ch")


def sax_views(n: int) -> tuple[str, ...]:
    """Names of ``n`` short-axis views, base to apex: ``sax_0 .. sax_{n-1}``."""
    return tuple(f"sax_{i}" for i in range(n))


def is_lax(view: str) -> bool:
    return view.startswith("la_")


# Unified segmentation labels of the data contract.
LABELS = {"background": 0, "LV": 1, "MYO": 2, "RV": 3, "LA": 4, "RA": 5}
NUM_CLASSES = len(LABELS)

# UK Biobank file label maps -> unified labels (remapped on load).
UKBB_LABEL_MAPS = {
    "sa": {1: LABELS["LV"], 2: LABELS["MYO"], 3: LABELS["RV"]},
    "la_2ch": {1: LABELS["LA"]},
    "la_4ch": {1: LABELS["LA"], 2: LABELS["RA"]},
}
# The 3-chamber view carries no labels: excluded from segmentation loss/metrics via a per-view validity flag.
LABELLED_VIEWS = ("la_2ch", "la_4ch")  # plus every sax_i

# File names of the UK Biobank layout: <root>/<eid>/<file>.
IMAGE_FILES = {"sa": "sa.nii.gz", "la_2ch": "la_2ch.nii.gz", "la_3ch": "la_3ch.nii.gz", "la_4ch": "la_4ch.nii.gz"}
SEG_FILES = {"sa": "seg_sa.nii.gz", "la_2ch": "seg_la_2ch.nii.gz", "la_4ch": "seg_la_4ch.nii.gz"}
PHENOTYPES_CSV = "phenotypes.csv"
DISEASES_CSV = "diseases.csv"

# The paper's 12 regression targets, in order (ukbb_cardiac column names).
PHENOTYPES = (
    "LVEDV (mL)", "LVSV (mL)", "LVEF (%)", "LVM (g)",
    "RVEDV (mL)", "RVESV (mL)", "RVSV (mL)", "RVEF (%)",
    "LASV (mL)", "LAEF (%)", "RASV (mL)", "RAEF (%)",
)  # fmt: skip
# The full ukbb_cardiac set computed by `kmtr phenotypes`.
ALL_PHENOTYPES = (
    "LVEDV (mL)", "LVESV (mL)", "LVSV (mL)", "LVEF (%)", "LVCO (L/min)", "LVM (g)",
    "RVEDV (mL)", "RVESV (mL)", "RVSV (mL)", "RVEF (%)",
    "LAV max (mL)", "LAV min (mL)", "LASV (mL)", "LAEF (%)",
    "RAV max (mL)", "RAV min (mL)", "RASV (mL)", "RAEF (%)",
)  # fmt: skip

# Binary disease targets, in order; column names of diseases.csv. UK Biobank prevalences 7.4%, 25.8%, 20.8%.
DISEASES = ("CAD", "high_blood_pressure", "hypertension")
DISEASE_PREVALENCE = {"CAD": 0.074, "high_blood_pressure": 0.258, "hypertension": 0.208}

MYOCARDIAL_DENSITY_G_PER_ML = 1.05

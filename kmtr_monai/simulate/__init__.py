"""The embedded synthetic cohort (DESIGN §6): population model, 4-D heart geometry, bSSFP rendering, UK Biobank writer.

``simulate_cohort(out, subjects, preset, seed, workers, preview)`` is the entry point of ``kmtr simulate``.
"""

from kmtr_monai.simulate.population import GENERATOR_VERSION, eid_of, sample_subject
from kmtr_monai.simulate.render import render_subject
from kmtr_monai.simulate.writer import simulate_cohort, write_subject

__all__ = ["GENERATOR_VERSION", "eid_of", "render_subject", "sample_subject", "simulate_cohort", "write_subject"]

"""Named sizes shared by the cohort generator, the loader, the networks and the bundles.

``COHORT_PRESETS``: what ``kmtr simulate`` renders on disk (UK Biobank layout).
``DATA_PRESETS``: what the loader cuts from it for a network (views, frames, crop).
``MODEL_PRESETS``: network sizes (n_views = 3 LAX + n_sax).
The bundle presets ``bundles/presets/<name>.json`` carry the same numbers for the configs; a test checks they agree.
"""

COHORT_PRESETS = {
    # in-plane matrix (X, Y), in-plane pixel mm, frames, SAX slices, SAX slice spacing mm, slice thickness mm
    "tiny": dict(matrix=48, pixel_mm=4.0, frames=8, sax_slices=12, slice_spacing_mm=10.0, slice_thickness_mm=8.0),
    "small": dict(matrix=64, pixel_mm=3.0, frames=16, sax_slices=12, slice_spacing_mm=10.0, slice_thickness_mm=8.0),
    "paper": dict(matrix=160, pixel_mm=1.8, frames=50, sax_slices=14, slice_spacing_mm=10.0, slice_thickness_mm=8.0),
}

DATA_PRESETS = {
    # n_sax SAX views after the 3 LAX views; frames subsampled to n_frames; in-plane crop (H = W = crop)
    "tiny": dict(n_sax=2, n_frames=4, crop=32),
    "small": dict(n_sax=2, n_frames=8, crop=48),
    "paper": dict(n_sax=6, n_frames=50, crop=128),
}

MODEL_PRESETS = {
    "tiny": dict(dim=64, depth=2, heads=4, dec_dim=64, dec_depth=1, dec_heads=4, patch=(2, 8, 8)),
    "small": dict(dim=192, depth=4, heads=6, dec_dim=128, dec_depth=2, dec_heads=4, patch=(2, 8, 8)),
    "paper": dict(dim=1024, depth=6, heads=16, dec_dim=512, dec_depth=2, dec_heads=16, patch=(5, 8, 8)),
}

"""Scanner k-space files written from a synthetic subject, for the scanner reader and scanner inference tests.

:func:`internal_input` gives the internal network input ``mask · fft2c(x)`` of a subject (``RandSmoothPhased`` →
``FFT2cd`` → eid-seeded VISTA ``RandKspaceMaskd``, R = 4, as in bundles/common/train.json ``kspace_sim#validate``).
The same x is "acquired" (:func:`acquire`): 8 smooth coils (``SimulateCoils``), 2× readout oversampling (the object
padded to a twice as wide FOV), correlated coil noise of known covariance Ψ; :func:`write_ismrmrd` adds a noise scan
and 12 calibration-only lines. Files are written with the ``ismrmrd`` package and h5py.
"""

from __future__ import annotations

import re

import h5py
import numpy as np
import torch

C, OS, SIGMA, N_NOISE = 8, 2, 2e-3, 8192
CALIB = np.arange(10, 22)  # calibration-only ky lines (frame 0)
PIXEL_MM = 4.0  # in-plane spacing the headers give (the tiny preset's pixel_mm)


def internal_input(root, eid: str, views, n_frames: int = 4, crop: int = 32) -> dict:
    """The internal path for subject ``eid`` of the cohort at ``root``: image x (S, T, H, W) complex, masked k-space
    and mask."""
    from kmtr_monai.data.cohort import LoadCohortSubjectd
    from kmtr_monai.transforms import FFT2cd, RandKspaceMaskd, RandSmoothPhased, ifft2c

    n_sax = sum(v.startswith("sax_") for v in views)
    d = LoadCohortSubjectd(str(root), n_sax=n_sax, n_frames=n_frames, crop=crop, load_seg=False, views=tuple(views))(
        {"eid": eid})  # fmt: skip
    for t in (RandSmoothPhased("image", output_key="kspace_full", seed_key="eid"), FFT2cd("kspace_full"),
              RandKspaceMaskd("kspace_full", output_key="kspace", mask_key="mask", accelerations=(4,),
                              seed_key="eid")):  # fmt: skip
        d = t(d)
    x = ifft2c(torch.as_tensor(d["kspace_full"])).numpy()
    return {"x": x, "kspace": np.asarray(d["kspace"]), "mask": np.asarray(d["mask"]).astype(bool), "eid": eid}


def coil_covariance():
    """The coil noise covariance Ψ (C, C)."""
    rng = np.random.default_rng(5)
    a = np.eye(C) + 0.3 * (rng.standard_normal((C, C)) + 1j * rng.standard_normal((C, C)))
    return SIGMA**2 * (a @ a.conj().T)


def coil_noise(shape, rng):
    """Coil noise (C, *shape) with covariance Ψ."""
    z = (rng.standard_normal((C, *shape)) + 1j * rng.standard_normal((C, *shape))) / np.sqrt(2)
    return np.tensordot(np.linalg.cholesky(coil_covariance()), z, axes=(1, 0))


def acquire(x):
    """Coil k-space (C, S, T, H, 2W) with 2x readout oversampling (object in the central W), and the maps (C, H, 2W)."""
    from kmtr_monai.transforms import SimulateCoils, fft2c

    s, t, h, w = x.shape
    xp = np.zeros((s, t, h, OS * w), np.complex64)
    xp[..., w // 2 : w // 2 + w] = x
    maps = SimulateCoils(C).maps(h, OS * w).numpy()
    return fft2c(torch.from_numpy(maps[:, None, None] * xp)).numpy(), maps


def header_xml(s, t, h, w, channels=C, trajectory="cartesian", recon_x=None, drop=None):
    """An ISMRMRD XML header: (h, w) recon matrix at PIXEL_MM, 2x oversampled readout, 8 mm slices."""
    from ismrmrd import xsd

    lim = xsd.limitType
    enc = xsd.encodingType(
        encodedSpace=xsd.encodingSpaceType(matrixSize=xsd.matrixSizeType(x=OS * w, y=h, z=1),
                                           fieldOfView_mm=xsd.fieldOfViewMm(x=OS * w * PIXEL_MM, y=h * PIXEL_MM,
                                                                            z=8.0)),
        reconSpace=xsd.encodingSpaceType(matrixSize=xsd.matrixSizeType(x=recon_x or w, y=h, z=1),
                                         fieldOfView_mm=xsd.fieldOfViewMm(x=w * PIXEL_MM, y=h * PIXEL_MM, z=8.0)),
        encodingLimits=xsd.encodingLimitsType(kspace_encoding_step_1=lim(minimum=0, maximum=h - 1, center=h // 2),
                                              slice=lim(minimum=0, maximum=s - 1, center=0),
                                              phase=lim(minimum=0, maximum=t - 1, center=0)),
        trajectory=xsd.trajectoryType(trajectory))  # fmt: skip
    system = xsd.acquisitionSystemInformationType(receiverChannels=channels)
    hdr = xsd.ismrmrdHeader(experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=63_500_000),
                            acquisitionSystemInformation=system, encoding=[enc])  # fmt: skip
    xml = xsd.ToXML(hdr)
    for tag in drop or ():
        xml = re.sub(rf"<{tag}>.*?</{tag}>", "", xml, flags=re.S)
    return xml


def write_ismrmrd(path, coil_k, mask, seed=0, noise=True, calib=True, header=None, edit=None, geometry=None):
    """An ISMRMRD file of coil k-space (C, S, T, H, W): imaging lines of ``mask`` (+ noise of covariance Ψ), 12
    calibration-only lines at frame 0, two noise scans; ``edit(acq, kind)`` may alter acquisitions. ``geometry``:
    (position, read_dir, phase_dir, slice_dir) arrays (S, 3) in patient LPS; default axis-aligned slices 10 mm
    apart."""
    import ismrmrd

    rng = np.random.default_rng(seed)
    _, n_s, n_t, h, w = coil_k.shape
    if geometry is None:
        axes = np.eye(3)[None].repeat(n_s, 0)
        geometry = (np.outer(np.arange(n_s), [0.0, 0.0, 10.0]), axes[:, 0], axes[:, 1], axes[:, 2])
    ds = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    ds.write_xml_header(header or header_xml(n_s, n_t, h, w // OS))

    def acq(data, s=0, t=0, line=0, flag=None, kind="imaging"):
        a = ismrmrd.Acquisition.from_array(np.ascontiguousarray(data, dtype=np.complex64))
        a.idx.kspace_encode_step_1, a.idx.slice, a.idx.phase = line, s, t
        a.center_sample = data.shape[1] // 2
        a.sample_time_us = 5.0
        a.position, a.read_dir, a.phase_dir, a.slice_dir = (tuple(float(v) for v in g[s]) for g in geometry)
        if flag is not None:
            a.set_flag(flag)
        if edit is not None:
            a = edit(a, kind)
        ds.append_acquisition(a)

    if noise:
        for n in coil_noise((N_NOISE,), rng).reshape(C, 2, -1).transpose(1, 0, 2):
            acq(n, flag=ismrmrd.ACQ_IS_NOISE_MEASUREMENT, kind="noise")
    for s in range(n_s):
        if calib:
            for line in CALIB:
                acq(coil_k[:, s, 0, line] + coil_noise((w,), rng), s, 0, line, ismrmrd.ACQ_IS_PARALLEL_CALIBRATION,
                    kind="calib")  # fmt: skip
        for t in range(n_t):
            for line in np.flatnonzero(mask[s, t]):
                acq(coil_k[:, s, t, line] + coil_noise((w,), rng), s, t, line)
    ds.close()
    return str(path)


def write_fastmri(path, coil_k, mask, seed=0, with_mask=True):
    """A fastMRI-style file: ``kspace`` (slices, frames, coils, kx, ky) (+ noise), ``ismrmrd_header``, ``mask``."""
    rng = np.random.default_rng(seed)
    _, n_s, n_t, h, w = coil_k.shape
    k = (coil_k + coil_noise(coil_k.shape[1:], rng)) * mask[None, ..., None]
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=k.transpose(1, 2, 0, 4, 3).astype(np.complex64))
        f.create_dataset("ismrmrd_header", data=header_xml(n_s, n_t, h, w // OS).encode())
        if with_mask:
            f.create_dataset("mask", data=mask.astype(np.uint8))
    return str(path)


def write_mat(path, name, arr, compound=True):
    """A MATLAB v7.3-like file: HDF5 with a 512-byte user block starting 'MATLAB 7.3 MAT-file'."""
    with h5py.File(path, "w", userblock_size=512) as f:
        if compound:
            dt = np.dtype([("real", "<f4"), ("imag", "<f4")])
            a = np.empty(arr.shape, dt)
            a["real"], a["imag"] = arr.real, arr.imag
            f.create_dataset(name, data=a)
        else:
            f.create_dataset(name, data=arr)
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .")
    return str(path)

"""Dictionary versions of :mod:`kmtr_monai.transforms.array` (MONAI ``MapTransform``; names end in ``d``).

Each wraps one array transform; random ones draw once per call and apply the same draw to every key, and forward
``set_random_state`` to the wrapped transform so ``Compose(...).set_random_state(seed)`` seeds them. Errors name the
dict key. ``output_key`` (or ``output_keys``) writes results next to the inputs; None transforms in place.

Typical simulation chain (DESIGN §3)::

    Compose([RandSmoothPhased("image", output_key="kspace_full", seed_key="eid"),
             FFT2cd("kspace_full"),
             RandKspaceMaskd("kspace_full", output_key="kspace", mask_key="mask", accelerations=(4,)),
             ZeroFilledd("kspace", output_key="zero_filled")])
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable
from monai.utils import ensure_tuple

from kmtr_monai.transforms import array as A

__all__ = [
    "PackKspaced",
    "ReferenceReconsd",
    "ComplexToChanneld", "ChannelToComplexd", "FFT2cd", "IFFT2cd", "RandSmoothPhased", "RandKspaceMaskd",
    "ApplyKspaceMaskd", "ZeroFilledd", "RandKspaceShiftd", "RandGlobalPhased", "RandViewRotated", "SimulateCoilsd",
    "CoilCombined", "SecondDrawd",
]  # fmt: skip


def _output_keys(keys: tuple, output_key) -> tuple:
    if output_key is None:
        return keys
    out = ensure_tuple(output_key)
    if len(out) != len(keys):
        raise ValueError(f"output_key {output_key!r} must give one name per key in {keys}.")
    return out


def _subject(d: Mapping, seed_key: Hashable | None):
    if seed_key is None:
        return None
    if seed_key not in d:
        raise KeyError(f"seed_key {seed_key!r} is not in the data dict (keys: {sorted(map(str, d))}).")
    return d[seed_key]


def _require(d: Mapping, key: Hashable, what: str):
    if key not in d:
        raise KeyError(f"{what} {key!r} is not in the data dict (keys: {sorted(map(str, d))}).")
    return d[key]


class _Wrapped(MapTransform):
    """A MapTransform applying array transform ``self.t`` to each key (with ``t.name`` = key for error messages)."""

    t: object

    def __init__(self, keys: KeysCollection, output_key=None, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.output_keys = _output_keys(self.keys, output_key)

    def _apply(self, key, *args, **kwargs):
        self.t.name = key
        return self.t(*args, **kwargs)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key, out in self.key_iterator(d, self.output_keys):
            d[out] = self._apply(key, d[key])
        return d


class _RandWrapped(Randomizable, _Wrapped):
    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.t.set_random_state(seed, state)
        return self

    def randomize(self, data=None) -> None:  # draws happen in __call__, where the data shape is known
        pass

    def _apply_keys(self, d: dict, **kwargs) -> bool:
        """``d[out] = t(d[key])`` for every present key, one random draw shared by all; False if none present."""
        first = True
        for key, out in self.key_iterator(d, self.output_keys):
            d[out] = self._apply(key, d[key], randomize=first, **kwargs)
            first = False
        return not first

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        self._apply_keys(d)
        return d


class ComplexToChanneld(_Wrapped):
    """complex (...) -> float32 (2, ...) [real, imag] channel-first, per key."""

    def __init__(self, keys: KeysCollection, dim: int = 0, output_key=None, allow_missing_keys: bool = False):
        super().__init__(keys, output_key, allow_missing_keys)
        self.t = A.ComplexToChannel(dim)


class ChannelToComplexd(_Wrapped):
    """float (2, ...) [real, imag] -> complex64 (...), per key."""

    def __init__(self, keys: KeysCollection, dim: int = 0, output_key=None, allow_missing_keys: bool = False):
        super().__init__(keys, output_key, allow_missing_keys)
        self.t = A.ChannelToComplex(dim)


class FFT2cd(_Wrapped):
    """Centred orthonormal FFT over (H, W), in place unless ``output_key``."""

    def __init__(self, keys: KeysCollection, output_key=None, allow_missing_keys: bool = False):
        super().__init__(keys, output_key, allow_missing_keys)
        self.t = A.FFT2c()


class IFFT2cd(_Wrapped):
    """Inverse centred orthonormal FFT over (H, W), in place unless ``output_key``."""

    def __init__(self, keys: KeysCollection, output_key=None, allow_missing_keys: bool = False):
        super().__init__(keys, output_key, allow_missing_keys)
        self.t = A.IFFT2c()


class RandSmoothPhased(_RandWrapped):
    """image (S, T, H, W) real -> complex image at ``output_key`` (the image is kept); see ``RandSmoothPhase``.

    ``seed_key`` (e.g. "eid") makes the phase map a function of ``d[seed_key]`` and ``global_seed`` only.
    """

    def __init__(self, keys: KeysCollection = "image", output_key="kspace_full", sigma: float = 2.0,
                 magnitude_range=(0.0, 2.0**0.5), seed_key: Hashable | None = None, global_seed: int = 0,
                 allow_missing_keys: bool = False) -> None:  # fmt: skip
        super().__init__(keys, output_key, allow_missing_keys)
        self.t = A.RandSmoothPhase(sigma=sigma, magnitude_range=magnitude_range, global_seed=global_seed)
        self.seed_key = seed_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        self._apply_keys(d, subject_id=_subject(d, self.seed_key))
        return d


class RandKspaceMaskd(_RandWrapped):
    """Undersample ``keys`` (complex k-space (..., S, T, H, W)) with per-view ky-t masks; see ``RandKspaceMask``.

    Writes the masked k-space to ``output_key``, the (S, T, H) float32 mask to ``mask_key`` and R to
    ``acceleration_key``. With ``seed_key`` the masks depend only on ``d[seed_key]`` and ``global_seed``.
    """

    def __init__(self, keys: KeysCollection = "kspace_full", output_key="kspace", mask_key: str = "mask",
                 pattern: str = "vista", accelerations: Sequence[int] = (4,), mask_options: dict | None = None,
                 seed_key: Hashable | None = None, global_seed: int = 0, mask_pool: int | None = 256,
                 acceleration_key: str | None = "acceleration", allow_missing_keys: bool = False) -> None:  # fmt: skip
        super().__init__(keys, output_key, allow_missing_keys)
        self.t = A.RandKspaceMask(pattern, accelerations, mask_options, mask_pool=mask_pool, global_seed=global_seed)
        self.mask_key, self.seed_key, self.acceleration_key = mask_key, seed_key, acceleration_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        sid = _subject(d, self.seed_key)
        first = True
        for key, out in self.key_iterator(d, self.output_keys):
            d[out], mask = self._apply(key, d[key], subject_id=sid, randomize=first)
            if first:
                d[self.mask_key] = mask
                if self.acceleration_key is not None:
                    d[self.acceleration_key] = self.t.acceleration
            first = False
        return d


class ApplyKspaceMaskd(_Wrapped):
    """``d[out] = d[mask_key][..., None] * d[key]`` for complex k-space keys."""

    def __init__(self, keys: KeysCollection, mask_key: str = "mask", output_key=None, allow_missing_keys: bool = False):
        super().__init__(keys, output_key, allow_missing_keys)
        self.t = A.ApplyKspaceMask()
        self.mask_key = mask_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key, out in self.key_iterator(d, self.output_keys):
            d[out] = self._apply(key, d[key], _require(d, self.mask_key, "mask_key"))
        return d


class ZeroFilledd(_Wrapped):
    """``d[output_key] = |ifft2c(d[key])|`` float32 (after applying ``d[mask_key]`` when ``mask_key`` is set)."""

    def __init__(self, keys: KeysCollection = "kspace", output_key="zero_filled", mask_key: str | None = None,
                 allow_missing_keys: bool = False) -> None:  # fmt: skip
        super().__init__(keys, output_key, allow_missing_keys)
        self.t = A.ZeroFilled()
        self.mask_key = mask_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        mask = None if self.mask_key is None else _require(d, self.mask_key, "mask_key")
        for key, out in self.key_iterator(d, self.output_keys):
            d[out] = self._apply(key, d[key], mask)
        return d


class ReferenceReconsd(MapTransform):
    """The classic reconstructions a k-space model is compared with, from the undersampled k-space alone.

    ``d[key]`` complex (S, T, H, W) undersampled k-space and ``d[mask_key]`` (S, T, H) →
    ``d["zero_filled"]`` = |ifft2c(kspace)| and ``d["view_shared"]`` = |ifft2c(view_share(kspace, mask))| (each missing
    line from the nearest frame that sampled it), float32 (S, T, H, W) magnitudes on the scale of the image.
    """

    def __init__(self, keys: KeysCollection = "kspace", mask_key: str = "mask") -> None:
        super().__init__(keys)
        self.mask_key = mask_key

    def __call__(self, data: Mapping) -> dict:
        import torch

        from kmtr_monai.transforms.fft import ifft2c
        from kmtr_monai.view_sharing import view_share

        d = dict(data)
        mask = torch.as_tensor(_require(d, self.mask_key, "mask_key")).bool()
        for key in self.key_iterator(d):
            k = torch.as_tensor(d[key])
            if not k.is_complex() or k.ndim != 4 or tuple(mask.shape) != tuple(k.shape[:3]):
                raise ValueError(f"{key!r}: expected complex (S, T, H, W) k-space with {self.mask_key!r} (S, T, H); "
                                 f"got {k.dtype} {tuple(k.shape)} and {tuple(mask.shape)}")  # fmt: skip
            shared = view_share(torch.view_as_real(k).permute(4, 0, 1, 2, 3)[None], mask[None])[0]
            shared = torch.complex(shared[0], shared[1])
            d["zero_filled"] = ifft2c(k).abs().float()
            d["view_shared"] = ifft2c(shared).abs().float()
        return d


class PackKspaced(MapTransform):
    """One network input tensor from k-space and mask: ``d[output_key]`` (3, S, T, H, W) = [real, imag, mask broadcast
    along the readout W], from ``d[key]`` (2, S, T, H, W) real channels (after :class:`ComplexToChanneld`) and
    ``d[mask_key]`` (S, T, H). :class:`kmtr_monai.networks.downstream.TaskModel` takes it as its only input.
    """

    def __init__(self, keys: KeysCollection = "kspace", mask_key: str = "mask", output_key: str = "image") -> None:
        super().__init__(keys)
        self.mask_key, self.output_key = mask_key, output_key

    def __call__(self, data: Mapping) -> dict:
        import torch

        d = dict(data)
        mask = torch.as_tensor(_require(d, self.mask_key, "mask_key"), dtype=torch.float32)
        for key in self.key_iterator(d):
            k = torch.as_tensor(d[key])
            if k.is_complex() or k.ndim != 5 or k.shape[0] != 2 or tuple(mask.shape) != tuple(k.shape[1:4]):
                raise ValueError(f"{key!r}: expected real (2, S, T, H, W) k-space channels with {self.mask_key!r} "
                                 f"(S, T, H); got {k.dtype} {tuple(k.shape)} and {tuple(mask.shape)}")  # fmt: skip
            d[self.output_key] = torch.cat([k.float(), mask[None, ..., None].expand_as(k[:1]).float()], 0)
        return d


class RandKspaceShiftd(_RandWrapped):
    """Exact random integer in-plane shift of k-space ``keys`` (phase ramp) and the same roll of ``image_keys``.

    One draw per call is shared by all keys, so ``ifft2c(d[kspace])`` stays aligned with ``d["image"]``/``d["seg"]``.
    """

    def __init__(self, keys: KeysCollection, image_keys: KeysCollection = (), max_shift: int = 4,
                 per_view: bool = True, prob: float = 1.0, allow_missing_keys: bool = False) -> None:  # fmt: skip
        super().__init__(keys, None, allow_missing_keys)
        self.t = A.RandKspaceShift(max_shift=max_shift, per_view=per_view, prob=prob)
        self.image_keys = ensure_tuple(image_keys)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        if not self._apply_keys(d):  # no k-space key present: draw from the first image key's view count
            present = [k for k in self.image_keys if k in d]
            if not present:
                return d
            self.t.randomize(np.shape(d[present[0]])[-4])
        for key in self.image_keys:
            if key in d:
                d[key] = self.t.roll_image(d[key], name=key)
            elif not self.allow_missing_keys:
                raise KeyError(f"image key {key!r} is not in the data dict (keys: {sorted(map(str, d))}).")
        return d


class RandGlobalPhased(_RandWrapped):
    """Random constant phase per view, the same draw for every key (complex (..., S, T, H, W))."""

    def __init__(self, keys: KeysCollection, prob: float = 1.0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, None, allow_missing_keys)
        self.t = A.RandGlobalPhase(prob=prob)


class RandViewRotated(_RandWrapped):
    """Random in-plane rotation, one angle per view, the same draw for every key (real (S, T, H, W) images).

    Two instances on two keys rotate them independently: the ``align`` bundle does so for the image seen by the image
    encoder and the image its k-space is simulated from, so a subject's pose is not shared between the two inputs.
    """

    def __init__(self, keys: KeysCollection, max_angle_deg: float = 180.0, prob: float = 1.0,
                 allow_missing_keys: bool = False) -> None:  # fmt: skip
        super().__init__(keys, None, allow_missing_keys)
        self.t = A.RandViewRotate(max_angle_deg=max_angle_deg, prob=prob)


class SimulateCoilsd(_Wrapped):
    """Complex image (S, T, H, W) -> coil images or k-space (C, S, T, H, W) at ``output_key``.

    The sensitivity maps (C, H, W) go to ``maps_key`` (for ``CoilCombined``).
    """

    def __init__(self, keys: KeysCollection, output_key=None, maps_key: str = "sens_maps", n_coils: int = 8,
                 to_kspace: bool = False, radius: float = 1.5, width: float = 1.0,
                 allow_missing_keys: bool = False) -> None:  # fmt: skip
        super().__init__(keys, output_key, allow_missing_keys)
        self.t = A.SimulateCoils(n_coils=n_coils, radius=radius, width=width, to_kspace=to_kspace)
        self.maps_key = maps_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key, out in self.key_iterator(d, self.output_keys):
            d[out] = self._apply(key, d[key])
            h, w = np.shape(d[key])[-2:]
            dev = getattr(d[key], "device", None)
            maps = self.t.maps(h, w, dev)
            d[self.maps_key] = maps.cpu().numpy() if isinstance(d[key], np.ndarray) else maps
        return d


class CoilCombined(_Wrapped):
    """Coil k-space (C, ..., H, W) -> combined image: "sense" with ``d[maps_key]`` (complex) or "rss" (float32)."""

    def __init__(self, keys: KeysCollection, maps_key: str = "sens_maps", output_key=None, mode: str = "sense",
                 allow_missing_keys: bool = False) -> None:  # fmt: skip
        super().__init__(keys, output_key, allow_missing_keys)
        self.t = A.CoilCombine(mode)
        self.maps_key = maps_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        maps = _require(d, self.maps_key, "maps_key") if self.t.mode == "sense" else None
        for key, out in self.key_iterator(d, self.output_keys):
            d[out] = self._apply(key, d[key], maps)
        return d


class SecondDrawd(Randomizable, MapTransform):
    """A second, independent draw of a random transform chain for the same subject, stored under new keys.

    Runs ``transforms`` (e.g. the bundle's ``kspace_sim#train``: smooth phase, FFT, shift, global phase, ky-t mask)
    again on a copy of the data dict and stores its ``keys`` (e.g. ``kspace``, ``mask``) as ``key + suffix``
    (``kspace_b``, ``mask_b``); nothing else of the copy is kept, so the first draw is untouched. The transforms are
    the same objects as the first chain (a config reference, not a repeated block): their random state has moved on,
    so the mask, phase map, shift and global phase are drawn afresh. For a seeded chain (``seed_key``, validation)
    both draws are equal, so use it in training only. Its own randomness is that of ``transforms``.
    """

    def __init__(self, transforms, keys: KeysCollection = ("kspace", "mask"), suffix: str = "_b") -> None:
        from monai.transforms import Compose

        MapTransform.__init__(self, keys)
        if not suffix:
            raise ValueError("suffix must be a non-empty string, or the second draw would overwrite the first")
        self.chain = transforms if isinstance(transforms, Compose) else Compose(list(ensure_tuple(transforms)))
        self.suffix = str(suffix)

    def randomize(self, data=None) -> None:  # the draws happen inside ``transforms``
        pass

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        second = self.chain(dict(data))
        for key in self.keys:
            d[f"{key}{self.suffix}"] = _require(second, key, "SecondDrawd key")
        return d

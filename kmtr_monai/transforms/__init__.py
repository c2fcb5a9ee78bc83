"""k-space transforms (DESIGN §2, §3, §12.4): centred FFT, synthetic phase, ky-t masks, zero-filling, exact k-space
augmentations and synthetic coils, as MONAI array (``fft``/``array``) and dictionary (``dictionary``) transforms."""

from kmtr_monai.transforms.array import (
    ApplyKspaceMask,
    ChannelToComplex,
    CoilCombine,
    ComplexToChannel,
    FFT2c,
    IFFT2c,
    RandGlobalPhase,
    RandKspaceMask,
    RandKspaceShift,
    RandSmoothPhase,
    RandViewRotate,
    SimulateCoils,
    ZeroFilled,
    cached_make_mask,
    subject_random_state,
)
from kmtr_monai.transforms.dictionary import (
    ApplyKspaceMaskd,
    ChannelToComplexd,
    CoilCombined,
    ComplexToChanneld,
    FFT2cd,
    IFFT2cd,
    PackKspaced,
    RandGlobalPhased,
    RandKspaceMaskd,
    RandKspaceShiftd,
    RandSmoothPhased,
    RandViewRotated,
    ReferenceReconsd,
    SecondDrawd,
    SimulateCoilsd,
    ZeroFilledd,
)
from kmtr_monai.transforms.fft import fft1c, fft2c, ifft1c, ifft2c

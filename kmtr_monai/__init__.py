"""kmtr-monai: k-space Multi-Task Representation (k-MTR) for cardiac MRI, built on MONAI."""

__version__ = "0.1.0"

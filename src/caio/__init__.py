"""caio: contrast-agnostic instance optimization for deformable brain MRI registration."""

__version__ = "0.1.0"

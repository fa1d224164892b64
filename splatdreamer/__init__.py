"""splatdreamer: text to 3D Gaussian splats with Variational Score Distillation (ProlificDreamer)."""

__version__ = "0.1.0"

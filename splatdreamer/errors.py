"""Errors a user can cause. Each message says what went wrong and what to do about it."""


class SplatdreamerError(Exception):
    """Base class for every error splatdreamer raises on bad input or an unfit machine."""


class ConfigError(SplatdreamerError, ValueError):
    """A configuration value is out of range or inconsistent."""


class BackendUnavailableError(SplatdreamerError, RuntimeError):
    """A requested device or rendering backend cannot run on this machine."""


class PlyFormatError(SplatdreamerError, ValueError):
    """A `.ply` file is missing, truncated, malformed or not in the 3DGS layout."""


class PriorLoadError(SplatdreamerError, OSError):
    """A diffusion prior cannot be found or loaded."""


class NonFiniteError(SplatdreamerError, FloatingPointError):
    """Gaussians or a loss became NaN or infinite during generation."""


class RunFolderError(SplatdreamerError, OSError):
    """A run folder cannot be used: it is a file, not writable, not a splatdreamer run, or in use."""


class CheckpointError(SplatdreamerError, ValueError):
    """A run's checkpoint is missing, damaged, hostile or from another configuration."""

"""User-facing errors.

Every error a user can cause (bad config, unknown model, empty corpus, ...) is raised as a
:class:`SpectralError` subclass whose message is one readable line; the CLI prints it without a
traceback and exits with status 2.
"""

from __future__ import annotations


class SpectralError(Exception):
    """Base class of errors caused by input (config, model, corpus, paths), not by a bug."""


class ConfigError(SpectralError):
    """A malformed, unknown or out-of-range configuration value."""


class ModelLoadError(SpectralError):
    """A model that cannot be found or loaded; the message lists what was tried."""


class CorpusError(SpectralError):
    """A corpus that is missing, empty, undecodable or too short for one window."""


class RunDirError(SpectralError):
    """An output directory that cannot be used (holds another run, not writable, ...)."""


class ResumeRefused(RunDirError):
    """An interrupted run whose saved state cannot serve this one (another config, battery revision, weights or
    corpus): it must be started again."""


class NumericsError(SpectralError):
    """NaN or inf in captured activations (names the first site and window where it appeared)."""


class RunCancelled(SpectralError):
    """A run stopped on purpose (a front end's Cancel); the manifest says ``failed`` (cancelled)."""

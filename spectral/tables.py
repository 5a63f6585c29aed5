"""Labelled result types of the probes and statistics (instead of positional arrays).

Each names what it holds: ``st.window_table().column("sum_norm")``, ``lens.table().column("final", "correct")``,
``cosines.matrix(0.95).ci_low``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WindowTable:
    """Per-window scalar sums of one site (:data:`spectral.stats.WINDOW_COLUMNS`), sorted by window."""

    index: np.ndarray  # (W,) window indices
    rows: np.ndarray  # (W, columns)
    columns: tuple[str, ...] = ()

    def column(self, name: str) -> np.ndarray:
        """(W,) one column by name."""
        return self.rows[:, self.columns.index(name)]


@dataclass(frozen=True)
class LensTable:
    """Per-window sums of the logit-lens probe, sorted by window: lens rows (W, sites, LENS_COLUMNS) and the
    margin's band parts (W, sites, 2 (K + 1): K bands and the bias part, then the rotated-h null's)."""

    index: np.ndarray
    rows: np.ndarray
    margins: np.ndarray
    sites: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()

    def site(self, name: str) -> np.ndarray:
        """(W, columns) the lens rows of one site."""
        return self.rows[:, self.sites.index(name), :]

    def column(self, site: str, name: str) -> np.ndarray:
        """(W,) one lens column of one site."""
        return self.rows[:, self.sites.index(site), self.columns.index(name)]


@dataclass(frozen=True)
class DepthTable:
    """Per-window power along the depth axis (W, F), sorted by window."""

    index: np.ndarray
    rows: np.ndarray


@dataclass(frozen=True)
class CosineMatrix:
    """Mean cosine between the sites' residual streams for the same token, (sites, sites) each."""

    value: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    sites: tuple[str, ...] = ()

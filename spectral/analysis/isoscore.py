"""IsoScore (Rudman, Gillman, Rayne & Eickhoff 2022, "IsoScore: Measuring the Uniformity of Embedding
Space Utilization") from a covariance spectrum.

The published algorithm, for a point cloud X of N points in R^n:

1. (input) X;
2. PCA-reorient X: centre it and rotate it onto its principal axes;
3. take the variance vector of the reoriented points (the diagonal of their covariance), which is
   the vector of eigenvalues λ of the covariance of X;
4. normalise it to norm √n:  λ̂ = √n · λ / ‖λ‖;
5. isotropy defect δ = ‖λ̂ − 1‖ / √(2(n − √n)), 1 = (1, …, 1) the isotropic variance vector;
6. dimensions used k = (n − δ²(n − √n))² / n, fraction used φ = k / n;
7. IsoScore ι = (n·φ − 1) / (n − 1) ∈ [0, 1].

Reference implementation: github.com/bcbi-edu/p_eickhoff_isoscore, ``IsoScore.py`` (sklearn
``PCA.fit_transform`` for step 2, which centres; ``np.cov`` for step 3) and the PyPI package
``IsoScore`` 2.0.1, ``IsoScore/IsoScore.py`` (``torch.cov`` then ``svdvals`` of the covariance, the
same quantity). Both use the *sample* covariance (divisor N − 1) of *centred* points. Here the
population covariance (divisor N, :func:`spectral.analysis.spectrum.pca_spectrum`; the moment-level
score is :func:`spectral.analysis.spectrum.isoscore`) is used: the two
differ by the scalar N/(N − 1), which step 4 cancels exactly, so the score is the same.

Algebraically ‖λ̂ − 1‖² = 2n − 2Σλ̂, so n − δ²(n − √n) = Σλ̂ and k = (Σλ)²/Σλ², the participation
ratio: ι = (PR − 1)/(n − 1). With k of n axes carrying equal variance and the rest none, ι = (k − 1)/(n − 1).
The steps are computed as published; the identity is checked in the tests.

Deviations (round-off and degenerate inputs only): eigenvalues below 0 (round-off) are clipped to 0
(the PyPI version takes singular values, i.e. absolute values); the result is clipped to [0, 1]
(changes it by round-off only); n < 2 or a zero spectrum gives NaN (the reference divides by 0).
"""

from __future__ import annotations

import math

import numpy as np


def isoscore_from_eigenvalues(ev: np.ndarray) -> float:
    """IsoScore of a covariance spectrum ``ev`` (any order; length = ambient dimension n)."""
    lam = np.clip(np.asarray(ev, dtype=np.float64).ravel(), 0.0, None)  # step 3: variance vector
    n = lam.size
    norm = float(np.linalg.norm(lam))
    if n < 2 or not math.isfinite(norm) or norm == 0.0:
        return float("nan")
    sqrt_n = math.sqrt(n)
    lam_hat = lam * sqrt_n / norm  # step 4
    defect = float(np.linalg.norm(lam_hat - 1.0)) / math.sqrt(2.0 * (n - sqrt_n))  # step 5
    k = (n - defect**2 * (n - sqrt_n)) ** 2 / n  # step 6: number of dimensions used
    phi = k / n  # fraction of dimensions used
    score = (n * phi - 1.0) / (n - 1.0)  # step 7
    return float(min(1.0, max(0.0, score)))

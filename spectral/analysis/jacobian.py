"""Band transfer of each sub-layer's *actual* map: Jacobian-vector products by forward-mode AD.

ARCHITECTURE.md's ``band transfer`` row. For a sub-layer f (attention or MLP, with its input norm and,
where the family has one, its output norm) linearised at the tokens' own inputs x, a probe tangent v
lying in W_U band i gives the output tangent J_f(x) v; its energy per band j, summed over probes and
positions, is E_ij. The off-diagonal share Σ_{i≠j} E_ij / Σ E_ij says how much the map moves energy
across bands. The probes are standard Gaussian vectors restricted to band i (so band i receives
d_i / d of an isotropic probe's energy): an isotropic map (E_ij ∝ d_i d_j) then has the exact chance
level 1 − Σ_j (d_j / d)² (:func:`spectral.predictions.channels.isotropic_offdiag`).

One forward pass of the model, with dual numbers (``torch.autograd.forward_ad``), serves every layer:
a hook on each sub-layer's input replaces the incoming tangent by a fresh probe (the primal is
unchanged, so the clean forward is untouched) and a hook on its output reads J v. K copies of each
window carry the K bands' probes. Attention's tangent is set at every position at once, so J v
includes what attention moves between positions: the map of the whole sub-layer. The result is
checked against central finite differences (tests/test_jacobian.py). The forward pass itself is
:mod:`spectral.jacobian`'s (the capture layer); this module holds the result and its statistics.

Intervals: positions are cut into ``groups`` contiguous groups (over the windows used); the
off-diagonal share's CI is a delete-one-group jackknife.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spectral.analysis.intervals import Estimate, delete_one


@dataclass(frozen=True)
class BandTransfer:
    """E[sub][layer]: (groups, K_in, K_out) output energy of band-i probes in band j, per position group."""

    energy: dict[str, dict[int, np.ndarray]]  # sub = "attn_out" | "mlp_out"
    band_sizes: tuple[int, ...]

    def offdiag(self, sub: str, layer: int | None = None, keep: np.ndarray | None = None) -> float:
        """Off-diagonal share of ``sub`` at ``layer`` (None: the mean over layers), on the groups ``keep``."""
        layers = sorted(self.energy[sub]) if layer is None else [layer]
        vals = []
        for lay in layers:
            E = self.energy[sub][lay]
            E = (E if keep is None else E[keep]).sum(0)
            tot = float(E.sum())
            vals.append(float((tot - np.trace(E)) / tot) if tot > 0 else float("nan"))
        return float(np.mean(vals))

    def interval(self, sub: str, level: float, layer: int | None = None, minus: str | None = None) -> Estimate:
        """The off-diagonal share (minus ``minus``'s, paired on the same groups) with a jackknife CI."""

        def f(keep: np.ndarray | None) -> float:
            v = self.offdiag(sub, layer, keep)
            return v - self.offdiag(minus, layer, keep) if minus else v

        G = next(iter(self.energy[sub].values())).shape[0]

        def without(g: int | None) -> float:
            keep = None if g is None else np.arange(G) != g
            return f(keep)

        return delete_one(without, range(G), level)[0]

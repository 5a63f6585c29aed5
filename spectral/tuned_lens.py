"""An approximate tuned lens (Belrose et al. 2023) fitted in closed form from streamed moments.

The published tuned lens trains one affine translator per layer, h ↦ h + A h + b, by minimising the KL from
the model's output to ``unembed(norm(translated h))`` over ~65 M tokens (≈ 550 h on two CPU cores for
SmolLM2-135M). Here each translator is the least-squares affine map from the layer's residual to the last
layer's residual, ridge-regularised toward the identity (the logit lens):

    A = (C_xx + λI)⁻¹ (C_xy + λI),  λ = ridge · tr(C_xx)/d,   ŷ = (x − x̄) A + ȳ,

from the cross moments a run streams on its *fit* windows (even place in the run, :class:`spectral.joint.JointProbe`).
It is scored on *held-out* windows (odd index): forward KL(model's output ‖ lens), the lens's entropy and its
next-token accuracy, on the logit lens's own sampled positions, so the two lenses are compared on the same tokens.
It is an approximation of the tuned lens, not the tuned lens: every output says so, with its fit token count.

Saved beside the run as ``tuned_lens.safetensors`` (per site ``A.<site>`` (d, d) and ``b.<site>`` (d), metadata:
model, target site, fit tokens, ridge, method) and reusable with :meth:`TunedLens.load`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from spectral.joint import JointProbe
from spectral.models import LoadedModel
from spectral.vocab import Reference, scan

METHOD = "closed-form least squares to the last layer's residual (approximate tuned lens, no KL training)"
TUNED_COLUMNS = ("count", "kl_sum", "entropy_sum", "correct")


@dataclass
class TunedLens:
    """Per-site affine translators ``h ↦ h @ A + b`` onto the last layer's residual (see the module docstring)."""

    A: dict[str, torch.Tensor]
    b: dict[str, torch.Tensor]
    target: str
    n_fit: int
    ridge: float
    model: str = ""
    method: str = METHOD
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(self.A)

    def translate(self, site: str, h: torch.Tensor) -> torch.Tensor:
        """The translated residual (the last layer's residual as the lens predicts it), in float32."""
        A, b = self.A[site].to(h.device, torch.float32), self.b[site].to(h.device, torch.float32)
        return h.float() @ A + b

    def save(self, path: Path) -> None:
        from safetensors.torch import save

        from spectral.runs import atomic_write_bytes

        tensors = {f"A.{s}": a.float().contiguous() for s, a in self.A.items()}
        tensors.update({f"b.{s}": v.float().contiguous() for s, v in self.b.items()})
        meta = {"target": self.target, "n_fit_tokens": str(self.n_fit), "ridge": repr(self.ridge),
                "model": self.model, "method": self.method, "sites": json.dumps(list(self.A))}  # fmt: skip
        atomic_write_bytes(Path(path), save(tensors, metadata=meta))

    @classmethod
    def load(cls, path: str | Path) -> TunedLens:
        """A tuned lens saved by a run (``RUN/tuned_lens.safetensors``)."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            sites = json.loads(meta["sites"])
            A = {s: f.get_tensor(f"A.{s}") for s in sites}
            b = {s: f.get_tensor(f"b.{s}") for s in sites}
        return cls(A, b, meta["target"], int(meta["n_fit_tokens"]), float(meta["ridge"]), meta.get("model", ""),
                   meta.get("method", METHOD), meta)  # fmt: skip


def fit_tuned_lens(probe: JointProbe, ridge: float, model: str = "") -> TunedLens | None:
    """Translators from the probe's fit sums (None without fit tokens)."""
    if probe.fit_released:
        raise RuntimeError("the joint probe's fit sums were released after an earlier fit")
    n = float(probe.fit_n)
    if n < 2 or not probe.tuned:
        return None
    c_y = probe.centers[probe.target]
    mu_y = probe.fit_x[probe.target] / n  # mean of y − c_y over the fit tokens
    A, b = {}, {}
    for s in probe.fit_xx:
        c_x = probe.centers[s]
        mu_x = probe.fit_x[s] / n
        cxx = probe.fit_xx[s] / n - torch.outer(mu_x, mu_x)
        cxy = probe.fit_xy[s] / n - torch.outer(mu_x, mu_y)
        d = cxx.shape[0]
        lam = ridge * float(torch.trace(cxx)) / d
        eye = torch.eye(d, dtype=torch.float64)
        a = torch.linalg.solve(cxx + lam * eye, cxy + lam * eye)
        A[s] = a
        b[s] = c_y + mu_y - (c_x + mu_x) @ a  # ŷ = x A + b
    return TunedLens(A, b, probe.target, int(n), ridge, model)


@torch.no_grad()
def score(
    lens: TunedLens, model: LoadedModel, rows: torch.Tensor, target: torch.Tensor, windows: np.ndarray,
    chain: tuple[str, ...],
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per held-out window and site, sums of :data:`TUNED_COLUMNS` for the tuned lens: (window ids (W,),
    table (W, sites, columns)). ``rows`` (tokens, chain, d) are the raw residuals of the chain's sites, the
    last one the model's own final residual (the reference distribution)."""
    uniq, inv = np.unique(windows, return_inverse=True)
    S = len(lens.sites)
    out = np.zeros((len(uniq), S, len(TUNED_COLUMNS)))
    if rows.shape[0] == 0 or S == 0:
        return uniq, out
    W, bias = model.unembedding()
    W = W.float().to(model.device)
    bias = None if bias is None else bias.float().to(model.device)
    norm = model.final_norm() or (lambda x: x)
    dtype = next(model.hf_model.parameters()).dtype
    dev = model.device

    def normed(h: torch.Tensor) -> torch.Tensor:
        return norm(h.to(dev, dtype)).float()

    n = rows.shape[0]
    ref = normed(rows[:, chain.index(lens.target)])
    F = torch.cat([normed(lens.translate(s, rows[:, chain.index(s)].to(dev))) for s in lens.sites])
    of = torch.arange(n, device=dev).repeat(S)
    tgt = target.to(dev).repeat(S)
    res = scan(F, W, bias, tgt, ref=Reference(ref, of))
    assert res.kl is not None and res.entropy is not None
    cols = torch.stack(
        [
            torch.ones(n * S, dtype=torch.float64),
            res.kl.cpu(),
            res.entropy.cpu(),
            (res.top1.cpu() == tgt.cpu()).double(),
        ],
        1,
    ).reshape(S, n, len(TUNED_COLUMNS))
    idx = torch.from_numpy(inv).long()
    for i in range(S):
        t = torch.zeros(len(uniq), len(TUNED_COLUMNS), dtype=torch.float64)
        t.index_add_(0, idx, cols[i])
        out[:, i] = t.numpy()
    return uniq, out

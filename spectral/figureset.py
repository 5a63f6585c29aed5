"""The figures a run makes, each with the CSV of the data behind it (saved by the runner)."""

import csv
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go

from spectral import plotting
from spectral.analysis import spectrum
from spectral.analysis.battery import Measurement
from spectral.analysis.metrics import MetricTable
from spectral.plotting import Curve, Matrix
from spectral.tables import CosineMatrix


def _rows_csv(table: MetricTable, keep) -> str:
    return MetricTable(tuple(r for r in table.rows if keep(r))).to_csv()


def _curves_csv(curves: list[Curve], x_name: str, y_name: str) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["condition", "site", x_name, y_name])
    for c in curves:
        for x, y in zip(c.x, c.y, strict=True):
            w.writerow([c.condition, c.site, f"{x:.6g}", f"{y:.6g}"])
    return buf.getvalue()


def _matrices_csv(mats: list[Matrix]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["condition", "label", "row", "col", "value"])
    for m in mats:
        for (i, j), v in np.ndenumerate(m.values):
            w.writerow([m.condition, m.label, i, j, f"{v:.6g}"])
    return buf.getvalue()


LENS_PANELS = (
    ("resid_post", "logit_lens_acc", "next-token accuracy"),
    ("resid_post", "modulation_lens_acc", "accuracy, carrier removed"),
    ("resid_post", "logit_lens_rank", "mean rank of true next token"),
)

CAPTIONS = {
    "verdicts": "Each decided prediction on the scale of its decision: the effect (trained statistic − its null) "
    "with its interval, the marker's colour and shape giving the outcome (green ▲ supported, blue ◆ inconclusive, "
    "vermilion ▼ contradicted); solid line: the null (0), dashed: the margin δ. Supported: the whole interval "
    "lies above δ; contradicted: below it (both also after Holm's correction); inconclusive: across it, the "
    "test cannot reach δ (no power), or clear of it but not significant after Holm (the panel says which). The "
    "statistic, its null and the Holm-adjusted p are in verdicts.csv and the report's Verdicts section.",
    "norm_profile": "Mean residual norm ‖h‖ of resid_post per layer (log scale), trained model against its controls.",
    "carrier_anisotropy": "Carrier energy ρ = Σ⟨h, μ̂⟩²/Σ‖h‖² and anisotropy (mean pairwise cosine) per layer.",
    "carrier_robustness": "Carrier energy after scaling dimensions to unit std, removing the top rogue dimensions, "
    "removing sink tokens, and all three together.",
    "sequence_spectrum": "Sequence-axis power P(f) of resid_post (|rfft|² along positions, summed over windows and "
    "dimensions), normalised per layer; colour = depth.",
    "pca_spectrum": "Eigenvalues of the centred covariance of resid_post, normalised, per layer.",
    "band_energy": "Share of Σ‖h‖² in each band of W_U's left singular vectors (band 0 = largest singular values).",
    "band_transfer": "Band transfer of attention and MLP writes: ‖U_iᵀ A U_j‖² of the least-squares map A from the "
    "stream read to the write, mean over layers, normalised.",
    "logit_lens": "Logit lens (final norm + W_U) per layer: next-token accuracy, accuracy with the carrier direction "
    "removed, and mean rank of the true next token.",
    "lens_kl": "Lens quality per layer as tuned-lens reports it: forward KL(model's output ‖ lens) in nats (log "
    "scale) and the lens's entropy, for the logit lens (the lens's sampled positions of every window) and the "
    "approximate tuned lens (closed-form affine translators fitted on the even windows, scored on held-out odd "
    "windows; not the KL-trained tuned lens). Tuned-lens KL below the logit lens's = a better lens.",
    "massive": "Massive activations per resid_post layer over every token of the run (Sun et al. 2024): the largest "
    "|h_i| overall, at position 0 and elsewhere, the RMS and the median |h_i| (log scale); and the top-1/2/3 |h_i| "
    "over the median (Sun et al.'s working cut for a massive activation: 100×). Extremes: no interval.",
    "layer_linearity": "Layer-to-layer linearity (LLM-Microscope, Razzhigaev et al. 2024): 1 − ‖X̃A − Ỹ‖² of the "
    "least-squares linear map from layer l−1 to layer l (centred and scaled; uncentred; of the update y − x), an "
    "in-sample fit (upward bias ≈ d/N); and its anisotropy λ_max/Σλ of the centred covariance, with a jackknife "
    "interval over window buckets.",
    "layer_cosine": "Layer × layer cosine of resid_post: mean over tokens of cos(h_l, h_m) for the same token "
    "(jackknife CIs over window buckets in the CSV).",
    "interventions": "ΔNLL (nats per token) when a W_U band is projected out of resid_post at each layer.",
    "layer_drift": "Direction kept while the norm grows: mean cosine of each token with itself one layer earlier, "
    "mean norm ratio, and the carrier drift cos(μ̂_l, μ̂_(l-1)), per layer.",
    "rank_lowpass": "Effective rank and participation ratio of the centred covariance, and the sequence spectrum's "
    "DC share and low-frequency (AC) share, per layer.",
}

# The figure registry: every figure a run can hold, by the tab the app shows it in, in order. Built by
# build_figures (the runner saves each as figures/NAME.{json,csv,png,...} with CAPTIONS[NAME]); the app's
# Explore page and the experiments load the saved JSON by these names (spectral.api.Result.figure).
FIGURE_TABS: dict[str, tuple[str, ...]] = {
    "Verdicts": ("verdicts",),
    "Norms & carrier": ("norm_profile", "carrier_anisotropy", "carrier_robustness", "layer_drift", "layer_cosine"),
    "Spectra": ("rank_lowpass", "pca_spectrum", "sequence_spectrum"),
    "W_U bands": ("band_energy", "band_transfer", "interventions"),
    "Logit lens": ("logit_lens", "lens_kl"),
    "Outliers & linearity": ("massive", "layer_linearity"),
}
FIGURES: tuple[str, ...] = tuple(n for names in FIGURE_TABS.values() for n in names)
DRIFT_PANELS = (
    ("resid_post", "layer_cos", "layer cosine"),
    ("resid_post", "norm_ratio", "norm ratio"),
    ("resid_post", "carrier_drift", "carrier drift"),
)
RANK_PANELS = (
    ("resid_post", "eff_rank", "effective rank"),
    ("resid_post", "participation_ratio", "participation ratio"),
    ("resid_post", "seq_dc_share", "DC share"),
    ("resid_post", "seq_ac_lowfreq_share", "low-freq. share"),
)


@dataclass(frozen=True)
class FigureData:
    """What the figures need from one condition's statistics beyond metrics.csv (small: the d x d
    moments can be dropped once this is taken, so a run holds one condition's moments at a time)."""

    condition: str
    spectra: list[Curve]
    pcas: list[Curve]
    transfer: list[Matrix]
    cosine: CosineMatrix | None


def figure_data(m: Measurement, K: int, level: float = 0.95) -> FigureData:
    """Sequence and PCA spectra of resid_post, mean band-transfer matrices and the layer x layer cosine."""
    spectra, pcas, mats = [], [], []
    if m.condition != "permuted":
        for s in m.bank.sites:
            if not s.startswith("resid_post."):
                continue
            tot = m.bank[s].total()
            if m.bank[s].spectrum is not None:
                p = spectrum.power_spectrum(tot)
                spectra.append(Curve(m.condition, s, np.arange(p.size, dtype=float), p / p.sum()))
            if m.condition != "shuffled":
                share = spectrum.pca_spectrum(tot)
                share = share / share.sum()
                keep = share > 1e-9  # drop directions that are zero up to round-off (e.g. LayerNorm's mean)
                pcas.append(Curve(m.condition, s, np.arange(1, share.size + 1, dtype=float)[keep], share[keep]))
    if (m.condition == "trained" or m.condition.startswith("random_init")) and K in m.bands:
        for kind, label in (("attn_out", "attention writes"), ("mlp_out", "MLP writes")):
            Ts = [
                spectrum.band_transfer(m.bank[s].total(), m.bank[m.bank.inputs[s]].total(), m.bands[K])
                for s in m.bank.sites
                if s.startswith(kind + ".") and m.bank[s].cross is not None
            ]
            if Ts:
                mats.append(Matrix(m.condition, label, np.mean(Ts, axis=0)))
    cosine = m.cosines.matrix(level) if m.cosines is not None else None
    return FigureData(m.condition, spectra, pcas, mats, cosine)


def build_figures(
    table: MetricTable,
    measurements: list[FigureData],
    K: int,
    title: str,
    level: float = 0.95,
    verdicts: list[Any] | None = None,
) -> tuple[dict[str, go.Figure], dict[str, str], dict[str, str]]:
    figs: dict[str, go.Figure] = {}
    data: dict[str, str] = {}
    if verdicts:
        from spectral.predictions import verdicts_csv

        figs["verdicts"] = plotting.verdict_panels(verdicts, f"Predictions against their nulls — {title}", level)
        data["verdicts"] = verdicts_csv(verdicts)
    resid = lambda r, names: r.site.startswith("resid_post.") and r.metric in names  # noqa: E731
    figs["norm_profile"] = plotting.norm_profile(table, f"Residual norm by layer — {title}", level=level)
    data["norm_profile"] = _rows_csv(table, lambda r: resid(r, ("norm_mean",)))
    figs["carrier_anisotropy"] = plotting.carrier_and_anisotropy(table, f"Carrier and anisotropy — {title}", level)
    data["carrier_anisotropy"] = _rows_csv(table, lambda r: resid(r, ("carrier_energy", "anisotropy")))

    k = next(
        (
            r.metric[len("carrier_energy_norogue") :]
            for r in table.rows
            if r.metric.startswith("carrier_energy_norogue")
        ),
        None,
    )
    if k is not None:
        figs["carrier_robustness"] = plotting.layer_panels(
            table,
            (
                ("resid_post", "carrier_energy", "ρ as measured"),
                ("resid_post", "carrier_energy_zscored", "dims scaled to unit std"),
                ("resid_post", f"carrier_energy_norogue{k}", f"top {k} rogue dims removed"),
                ("resid_post", "carrier_energy_nosink", "sink tokens removed"),
                ("resid_post", "carrier_energy_robust", "all three"),
            ),
            f"Carrier energy under robustness checks — {title}",
            level,
        )
        data["carrier_robustness"] = _rows_csv(table, lambda r: r.metric.startswith("carrier_energy"))

    for name, panels, fig_title in (
        ("layer_drift", DRIFT_PANELS, "Layer cosine, norm ratio, carrier drift"),
        ("rank_lowpass", RANK_PANELS, "Effective rank and sequence low-pass"),
    ):
        metrics = {p[1] for p in panels}
        if any(r.metric in metrics and r.site.startswith("resid_post.") for r in table.rows):
            figs[name] = plotting.layer_panels(table, panels, f"{fig_title} — {title}", level)
            data[name] = _rows_csv(table, lambda r, metrics=metrics: resid(r, tuple(metrics)))

    spectra = [c for fd in measurements for c in fd.spectra]
    pcas = [c for fd in measurements for c in fd.pcas]
    if spectra:
        figs["sequence_spectrum"] = plotting.curves_by_layer(
            spectra, f"Sequence-axis power P(f) — {title}", "frequency (cycles / window)", "P(f) / Σ P"
        )
        data["sequence_spectrum"] = _curves_csv(spectra, "frequency", "power_share")
    if pcas:  # the run's measurements (in memory): a run read back from disk has none
        figs["pca_spectrum"] = plotting.curves_by_layer(
            pcas, f"PCA spectrum of the centred covariance — {title}", "component", "λ / Σλ", log_x=True
        )
        data["pca_spectrum"] = _curves_csv(pcas, "component", "eigenvalue_share")

    if any(r.metric == f"band_energy_k{K}_b0" for r in table.rows):
        figs["band_energy"] = plotting.metric_heatmap(
            table, f"band_energy_k{K}_b", K, "resid_post", f"Energy per W_U band (K={K}) — {title}", "energy share"
        )
        data["band_energy"] = _rows_csv(table, lambda r: r.metric.startswith(f"band_energy_k{K}_b"))
        mats = [mat for fd in measurements for mat in fd.transfer]
        if mats:
            figs["band_transfer"] = plotting.matrices(
                mats, f"Band transfer (mean over layers, K={K}) — {title}", "input band", "output band", "share of ‖A‖²"
            )
            data["band_transfer"] = _matrices_csv(mats)
    if any(r.metric == "logit_lens_acc" for r in table.rows):
        figs["logit_lens"] = plotting.layer_panels(
            table,
            LENS_PANELS,
            f"Logit lens — {title}",
            level,
        )
        data["logit_lens"] = _rows_csv(table, lambda r: "lens" in r.metric)
    if any(r.metric == "logit_lens_kl" for r in table.rows):
        figs["lens_kl"] = plotting.styled_panels(
            table,
            (
                ("KL(output ‖ lens), nats", (("logit_lens_kl", "logit lens"),
                                              ("tuned_lens_kl", "tuned lens (approx.)")), True),
                ("lens entropy, nats", (("logit_lens_entropy", "logit lens"),
                                        ("tuned_lens_entropy", "tuned lens (approx.)")), False),
            ),
            f"Lens KL and entropy by layer — {title}",
            level,
        )  # fmt: skip
        data["lens_kl"] = _rows_csv(table, lambda r: r.metric.startswith(("logit_lens_kl", "logit_lens_entropy",
                                                                            "tuned_lens_")))  # fmt: skip
    if any(r.metric == "act_max_abs" and r.site.startswith("resid_post.") for r in table.rows):
        figs["massive"] = plotting.styled_panels(
            table,
            (
                ("|h_i| over every token", (("act_max_abs", "largest |h_i|"), ("act_max_abs_pos0", "at position 0"),
                                            ("act_max_abs_rest", "at positions ≥ 1"), ("act_rms", "RMS"),
                                            ("act_median_abs", "median |h_i|")), True),
                ("top-k |h_i| / median", (("act_top1_ratio", "top 1"), ("act_top2_ratio", "top 2"),
                                          ("act_top3_ratio", "top 3")), True),
            ),
            f"Massive activations by layer — {title}",
        )  # fmt: skip
        data["massive"] = _rows_csv(table, lambda r: r.metric.startswith("act_"))
    if any(r.metric == "layer_linearity" for r in table.rows):
        figs["layer_linearity"] = plotting.styled_panels(
            table,
            (
                ("linearity of layer l−1 → l", (("layer_linearity", "centred"),
                                                ("layer_linearity_uncentred", "uncentred"),
                                                ("layer_linearity_update", "update y − x")), False),
                ("λ_max / Σλ (centred)", (("pc1_variance_share", "λ_max / Σλ"),), False),
            ),
            f"Layer linearity and anisotropy — {title}",
            level,
        )  # fmt: skip
        data["layer_linearity"] = _rows_csv(table, lambda r: r.metric.startswith(("layer_linearity", "pc1_var")))
    if any(r.metric.startswith(f"dnll_band_k{K}") for r in table.rows):
        figs["interventions"] = plotting.metric_heatmap(
            table,
            f"dnll_band_k{K}_b",
            K,
            "resid_post",
            f"ΔNLL when a W_U band is projected out — {title}",
            "ΔNLL (nats)",
        )
        data["interventions"] = _rows_csv(table, lambda r: r.metric.startswith("dnll_"))
    cos_mats, cos_rows = [], ["condition,label,row,col,value,ci_low,ci_high"]
    for fd in measurements:
        if fd.cosine is None:
            continue
        value, lo, hi = fd.cosine.value, fd.cosine.ci_low, fd.cosine.ci_high
        cos_mats.append(Matrix(fd.condition, "mean cos(h_l, h_m)", value))
        cos_rows += [
            f"{fd.condition},mean cos(h_l h_m),{i},{j},{v:.6g},{lo[i, j]:.6g},{hi[i, j]:.6g}"
            for (i, j), v in np.ndenumerate(value)
        ]
    if cos_mats:
        figs["layer_cosine"] = plotting.matrices(
            cos_mats, f"Layer × layer cosine (resid_post) — {title}", "layer m", "layer l", "mean cos"
        )
        data["layer_cosine"] = "\n".join(cos_rows) + "\n"
    assert set(figs) <= set(FIGURES), set(figs) - set(FIGURES)  # the registry names every figure
    return figs, data, {name: CAPTIONS[name] for name in figs}

"""Run directory -> ``report.md``: what was run, the numbers per layer, the figures.

The report is rebuilt from ``manifest.json`` and ``metrics.csv`` alone, so ``spectral report
RUN`` regenerates it for any finished run.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import re
from pathlib import Path
from typing import Any

from spectral.analysis.metrics import MetricTable, degenerate_sites
from spectral.errors import RunDirError
from spectral.predictions import PREDICTIONS, read_verdicts
from spectral.runs import atomic_write_text, read_manifest

LAYER_METRICS = (
    "norm_mean",
    "norm_ratio",
    "layer_cos",
    "anisotropy",
    "centered_anisotropy",
    "carrier_energy",
    "carrier_drift",
    "eff_rank",
    "seq_ac_lowfreq_share",
)


def _iv(v: float, lo: float, hi: float) -> str:
    """A value with its interval, or the value alone when the interval is unknown or a point."""
    if math.isnan(lo) or math.isnan(hi) or lo == hi:
        return fmt(v)
    return f"{fmt(v)} [{fmt(lo)}, {fmt(hi)}]"


def fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    a = abs(v)
    if a != 0 and (a >= 1e4 or a < 1e-3):
        return f"{v:.3e}"
    return f"{v:.4g}" if a >= 100 else f"{v:.4f}"


def _ci(row: Any) -> str:
    if row is None:
        return "–"
    if math.isnan(row.ci_low):
        return fmt(row.value)
    return f"{fmt(row.value)} [{fmt(row.ci_low)}, {fmt(row.ci_high)}]"


def layer_table(table: MetricTable, condition: str, n_layers: int) -> list[str]:
    head = "| site | " + " | ".join(LAYER_METRICS) + " |"
    lines = [head, "|" + "---|" * (len(LAYER_METRICS) + 1)]
    sites = ["embed", "resid_pre.0"] + [f"resid_post.{i}" for i in range(n_layers)] + ["final"]
    for site in sites:
        cells = [fmt(r.value) if (r := table.get(condition, site, m)) else "–" for m in LAYER_METRICS]
        if all(c == "–" for c in cells):
            continue
        lines.append(f"| {site} | " + " | ".join(cells) + " |")
    return lines


def _inline(text: str, base: Path) -> str:
    text = html.escape(text, quote=False)

    def image(m: re.Match[str]) -> str:
        path = base / m.group(2)
        if path.is_file():
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            return f'<img alt="{m.group(1)}" src="data:image/png;base64,{data}" style="max-width:100%">'
        return f"[missing figure {m.group(2)}]"

    text = re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", image, text)
    text = re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r'<a href="\2">\1</a>', text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
    text = re.sub(r"(?<![\w*])\*([^*]+)\*(?![\w*])", r"<i>\1</i>", text)
    text = re.sub(r"(?<!\w)_([^_]+)_(?!\w)", r"<i>\1</i>", text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def markdown_to_html(md: str, base: Path, title: str) -> str:
    """The small markdown subset our reports use -> one self-contained HTML page (PNGs embedded)."""
    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>body{{font-family:Arial,Helvetica,sans-serif;max-width:1100px;"
        "margin:2em auto;line-height:1.45;color:#222}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 7px}th{background:#f3f3f3}code{background:#f5f5f5}</style>"
        "</head><body>",
    ]
    lines = md.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                if not re.fullmatch(r"\|(-+\|)+", lines[i].replace(" ", "")):
                    rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            out.append("<table>")
            for j, row in enumerate(rows):
                tag = "th" if j == 0 else "td"
                out.append("<tr>" + "".join(f"<{tag}>{_inline(c, base)}</{tag}>" for c in row) + "</tr>")
            out.append("</table>")
            continue
        m = re.match(r"(#+) (.*)", line)
        if m:
            out.append(f"<h{len(m.group(1))}>{_inline(m.group(2), base)}</h{len(m.group(1))}>")
        elif line.startswith("- "):
            out.append(f"<ul><li>{_inline(line[2:], base)}</li></ul>")
        elif line.strip():
            out.append(f"<p>{_inline(line, base)}</p>")
        i += 1
    out.append("</body></html>")
    return "\n".join(out)


def _gguf_lines(g: dict | None) -> list[str]:
    """Provenance of weights dequantized from a GGUF file (the numbers are about the quantized model)."""
    if not g:
        return []
    types = ", ".join(f"{k} {v}" for k, v in sorted((g.get("tensor_types") or {}).items()))
    return [
        f"- Weights **dequantized to fp32 from a {g.get('quant_type')} GGUF** (4/5/6/8-bit blocks: {types}; "
        f"GGUF sha256 `{g.get('sha256')}`): they are perturbed relative to the original bf16 model, so every "
        f"number here is about the quantized model. Licence: {g.get('licence', 'see the source')}; credit: "
        f"{g.get('credit', '-')}.",
    ]


def build_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.md`` from the manifest and metrics; returns its path."""
    man = read_manifest(run_dir)
    metrics = run_dir / "metrics.csv"
    if not metrics.is_file():
        status = man.get("status", "?")
        how = " (spectral run --resume RUN continues it)" if status in ("running", "failed") else ""
        raise RunDirError(
            f"run {run_dir} is not complete (status {status}: {man.get('reason', 'in progress or killed')}); "
            f"no metrics to report yet{how}"
        )
    table = MetricTable.from_csv(metrics.read_text(encoding="utf-8"))
    cfg, arch, corpus = man["config"], man["arch"], man["corpus"]
    n_layers = int(arch["n_layers"])
    lines = [
        f"# spectral run: {man['model_label']} on {corpus['name']}",
        "",
        f"Status: **{man['status']}**." + ("" if man["status"] == "complete" else " Numbers below may be partial."),
        "",
        "## What was run",
        f"- Model: `{cfg['model']['name']}` ({arch['architecture']}, {n_layers} layers, d_model {arch['d_model']}, "
        f"vocabulary {arch['d_vocab']}, context {arch['n_ctx']}); weights sha256 `{man.get('weights_sha256')}`.",
        *_gguf_lines(man.get("gguf")),
        f"- Normalisation: **{arch['norm_placement']}-LN** (measured: block 0 "
        f"{'satisfies' if arch['norm_placement'] == 'pre' else 'breaks'} resid_post = resid_pre + attn_out + mlp_out)"
        + (
            ". In a post-LN model every block ends in a LayerNorm, so residual norm growth is architecturally"
            " impossible: flat norms here say nothing about the hypothesis."
            if arch["norm_placement"] == "post"
            else "."
        ),
        f"- Unembedding in the checkpoint: {'yes' if arch['has_unembedding'] else 'no'}.",
        f"- Corpus: `{corpus['name']}` ({corpus['n_documents']} documents, {corpus['n_tokens']} tokens, sha256 "
        f"`{corpus['sha256'][:16]}…`); {corpus['n_windows']} windows of {cfg['corpus']['seq_len']} tokens "
        f"({cfg['corpus']['sampling']}) out of {corpus['n_available']}, "
        f"{'with' if corpus['has_bos'] else 'without'} a BOS/CLS token in front.",
        f"- Statistics use {corpus['n_stat_tokens']} tokens per condition: padding and position 0 "
        f"(BOS/first token, an attention sink) are {'excluded' if cfg['capture']['exclude_first'] else 'included'}.",
        f"- Conditions: trained, {', '.join(cfg['controls']) or 'no controls'} (random weights from the model's own "
        f"config, seed {cfg['seed']}).",
        f"- Intervals ({cfg['analysis']['ci_level']:.0%}): per-window statistics (norm_mean, layer_cos, norm_ratio, "
        f"growth_rate) by percentile bootstrap over windows ({cfg['analysis']['n_boot']} resamples, seed "
        f"{cfg['seed']}); moment statistics (quantiles, anisotropy, carrier, eff_rank, spectra) by delete-one "
        f"jackknife over {cfg['capture']['moment_buckets']} buckets of windows (the run's windows split into "
        f"{cfg['capture']['moment_buckets']} contiguous near-equal blocks), Student-t interval; self-similarity by "
        "bootstrap over token "
        "types, head-subspace overlap by bootstrap over head pairs against 100 draws of random subspaces, "
        "attention/tail-band Spearman by bootstrap over windows. Centred anisotropy is centred on the site "
        f"mean over the calibration set (the first {cfg['capture'].get('calibration_windows', 4)} windows of the "
        f"run); sinks are tokens with ‖h‖ above {cfg['analysis'].get('sink_factor', 10)}× the site's median norm "
        "there.",
        f"- Position samples (seeded per window, the same at every layer): the logit lens, the carrier-removed "
        f"lens and the band margin read {_positions(cfg['analysis'].get('lens_positions', 0))} per window; "
        f"the attention/tail-band Spearman keeps {_positions(cfg['analysis'].get('sink_positions', 0))}; "
        f"interventions edit {cfg['analysis'].get('intervention_layers', 0) or 'all'} layers on the first "
        f"{cfg['analysis'].get('intervention_windows', 0)} windows of the trained model (not of the controls).",
        "",
        "## Headline numbers",
    ]
    for cond, info in (man.get("nonfinite") or {}).items():
        lines.insert(
            -2,
            f"- **{cond}: {len(info['excluded_windows'])} windows excluded for NaN/inf activations** "
            f"(windows {info['excluded_windows'][:10]}{'…' if len(info['excluded_windows']) > 10 else ''}; "
            f"tokens per site {info['tokens_per_site']}).",
        )
    for cond in table.conditions():
        if bad := degenerate_sites(table, cond):
            lines.insert(
                -2,
                f"- **{cond}: degenerate moments at {len(bad)} site(s)**: "
                + ", ".join(f"{s} ({why})" for s, why in bad.items())
                + " (zero: every token exactly zero; constant: no variance): their direction- and variance-based "
                "metrics are NaN (–).",
            )
    for cond in table.conditions():
        g = table.get(cond, "resid_post", "growth_rate")
        lines.append(
            f"- **{cond}**: growth rate g = {_ci(g)} per layer (fit of log mean ‖h‖ over resid_post "
            f"layers ≥ {cfg['analysis']['growth_first_layer']})."
        )
    vpath = run_dir / "verdicts.csv"
    level = float(cfg["analysis"]["ci_level"])
    if vpath.is_file():
        lines += [
            "",
            "## Verdicts",
            "",
            f"Each prediction compares its statistic on the trained model with a null (R: the random-weight "
            f"ensemble, W: the weight-permuted twin, or the in-run / exact null it names); effect = trained − null "
            f"with its {level:.0%} interval; supported when the interval lies above the margin δ and the "
            f"one-sided p-value survives Holm's correction across the run's predictions (α "
            f"{cfg['verdicts'].get('alpha', 0.05)}), contradicted when it lies below δ and the one-sided p-value of "
            '"effect ≥ δ" survives Holm too, inconclusive when it straddles δ or the test has no power (the '
            "largest effect it can reach on this run lies within the interval's width of δ). Each note starts with "
            "the rule applied to the deciding statistic and names its null; the other sub-tests follow, each "
            'labelled "sub-test" with its own null and its own outcome word (not the prediction\'s). '
            "Layer averages carry the average of the per-layer interval bounds.",
            "",
            f"| prediction | outcome | statistic | trained [{level:.0%} CI] | null [interval] | effect [CI] | δ | "
            "p (Holm) | note |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for v in read_verdicts(vpath.read_text(encoding="utf-8")):
            lines.append(
                f"| {v.prediction} | **{v.outcome}** | {v.statistic} | {_iv(v.value, v.ci_low, v.ci_high)} | "
                f"{_iv(v.null, v.null_ci_low, v.null_ci_high)} | {_iv(v.effect, v.effect_ci_low, v.effect_ci_high)} | "
                f"{fmt(v.margin)} | {fmt(v.p_holm)} | {v.note} |"
            )
        spath = run_dir / "sensitivity.csv"
        if spath.is_file():
            rows = list(csv.reader(io.StringIO(spath.read_text(encoding="utf-8"))))
            n_flip = sum(r[-1] == "yes" for r in rows[1:])
            lines += [
                "",
                f"**Robustness** ({n_flip} of {len(rows) - 1} outcomes flip): the same metrics decided with other "
                "middle layers and K; the rogue-dimension share is one setting per run (`[analysis] rogue_k`).",
                "",
                "| " + " | ".join(rows[0]) + " |",
                "|" + "---|" * len(rows[0]),
                *("| " + " | ".join(r) + " |" for r in rows[1:]),
            ]
        lines += ["", "What each prediction tests:", ""]
        lines += [f"- **{p.key}**: {p.explanation}" for p in PREDICTIONS]
    figs = man.get("figures", {})
    for cond in table.conditions():
        lines += ["", f"## Per layer: {cond}", "", *layer_table(table, cond, n_layers)]
    lines += ["", "## Figures"]
    for name, files in figs.items():
        png = next((f for f in files if f.endswith(".png")), None)
        caption = run_dir / f"figures/{name}.txt"
        lines.append("")
        if png:
            lines.append(f"![{name}]({png})")
        if caption.is_file():
            lines.append(f"*Figure {name}.* {caption.read_text(encoding='utf-8').strip()}")
        lines.append("Files: " + ", ".join(f"[{Path(f).suffix[1:]}]({f})" for f in files))
    if man.get("png_note"):
        lines.append(f"\n_{man.get('png_note')}_")
    if not figs:
        lines.append("(no figures)")
    lines += [
        "",
        "## Reproduce",
        f"`{man.get('command', 'spectral run --config ' + str(run_dir / 'manifest.json'))}`",
        "",
        f"Timings (s): {', '.join(f'{k} {v:.1f}' for k, v in man.get('timings', {}).items())}.",
        "",
    ]
    out = run_dir / "report.md"
    text = "\n".join(lines)
    atomic_write_text(out, text)
    atomic_write_text(run_dir / "report.html", markdown_to_html(text, run_dir, f"spectral: {man['model_label']}"))
    return out


def _positions(k: int) -> str:
    return "every position" if not k else f"{k} sampled positions"

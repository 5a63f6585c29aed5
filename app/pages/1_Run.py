"""Run page: choose a model, a corpus and the controls, start ``spectral.runner.run_experiment``;
the result is a normal run directory (open it on the Explore page)."""

import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
import streamlit as st  # noqa: E402

from spectral.config import AnalysisSpec, CaptureSpec, CorpusSpec, ExperimentConfig, ModelSpec  # noqa: E402
from spectral.runs import slug  # noqa: E402

common.page_header("Start a run", "Model + corpus → streamed statistics → metrics, figures, verdicts, report.")
st.caption(
    "The fields start at `spectral run`'s defaults (the same config). That default job — SmolLM2-135M, 32 windows "
    "× 128 tokens, all sites, the nulls R and W and the controls S and P — took about 9 minutes on 2 CPU cores "
    "(benchmarks/RESULTS.md); fewer windows, sites or nulls cost proportionally less."
)

CORPUS_KINDS = ["built-in", "path", "pasted text", "upload"]

st.subheader("Model")
choice = common.model_picker("model", st.query_params.get("model"))
model_name, tokenizer = choice.name, choice.tokenizer
device = st.selectbox("device", ["cpu", "cuda", "mps"], key="device")
s1, s2 = st.columns(2)
allow_pickle = s1.checkbox(
    "allow pickle weights (.bin / .pt)",
    key="allow_pickle",
    help="Only for checkpoints without safetensors. Unpickling runs arbitrary code: trusted files only.",
)
trust_remote_code = s2.checkbox(
    "trust remote code",
    key="trust_remote_code",
    help="Lets a hub model's own Python code run on this machine: trusted repositories only.",
)
if allow_pickle or trust_remote_code:
    st.warning(
        "Unsafe loading is on: "
        + " and ".join(
            t
            for t, on in (
                ("pickle weights may run code when they are loaded", allow_pickle),
                ("the model's own code will run", trust_remote_code),
            )
            if on
        )
        + ". Use it only for models you trust."
    )

st.subheader("Corpus")
ckind = st.radio("corpus source", CORPUS_KINDS, horizontal=True, key="corpus_kind")
corpus_path = corpus_text = None
if ckind == "path":
    corpus_path = st.text_input(".txt file, directory of .txt, or .jsonl", key="corpus_path")
elif ckind == "pasted text":
    corpus_text = st.text_area("text", height=150, key="corpus_text")
elif ckind == "upload":
    up = st.file_uploader(f"text file (≤ {common.UPLOAD_LIMIT_MB} MB)", type=["txt", "jsonl"], key="corpus_upload")
    if up is not None:
        if up.size > common.UPLOAD_LIMIT_MB * 2**20:
            st.error(f"{up.name} is {up.size / 2**20:.1f} MB; the limit is {common.UPLOAD_LIMIT_MB} MB")
        else:
            corpus_text = up.getvalue().decode("utf-8", errors="replace")

c1, c2, c3 = st.columns(3)
seq_len = c1.number_input("window length (tokens)", 1, 100_000, CorpusSpec().seq_len, key="seq_len")
max_seqs = c2.number_input("number of windows", 1, 1_000_000, CorpusSpec().max_seqs, key="max_seqs")
seed = c3.number_input("seed", 0, 2**31 - 1, ExperimentConfig().seed, key="seed")
sites = st.text_input("sites (comma-separated names or patterns)", value="all", key="sites")
st.write("nulls and controls")
cc = st.columns(3)  # three a row: five side by side cut their labels short ("random weights (R ens…")
controls = tuple(
    c
    for col, c, label in zip(
        [cc[i % 3] for i in range(5)],
        ("random_init", "random_scaled", "permuted_weights", "shuffled", "permuted"),
        (
            "random weights (R ensemble)",
            "R rescaled to the trained norms",
            "permuted weights (W ensemble)",
            "shuffled tokens (S)",
            "permuted positions (P)",
        ),
        strict=True,
    )  # fmt: skip
    if col.checkbox(label, value=c in ExperimentConfig().controls, key=f"ctl_{c}")
)
c4, c5, c6 = st.columns(3)
n_boot = c4.number_input("bootstrap resamples", 10, 100_000, AnalysisSpec().n_boot, key="n_boot")
interventions = c5.number_input(
    "intervention windows (ΔNLL; 0 = skip)",
    0,
    100_000,
    AnalysisSpec().intervention_windows,
    key="intervention_windows",
    help="windows for the carrier / band ablations (prediction 4 and the ΔNLL metrics); each costs forward passes",
)
formats = tuple(c6.multiselect("static figure formats (kaleido)", ["png", "pdf", "svg"], default=[], key="formats"))
default_out = str(common.RUNS_DIR / f"app-{slug(str(model_name or 'model'))[-40:]}-{time.strftime('%Y%m%d-%H%M%S')}")
out = st.text_input("run directory (within the allowed roots)", value=default_out, key="out")
overwrite = st.checkbox("overwrite an earlier run in this directory", key="overwrite")

b1, b2 = st.columns(2)
start = b1.button(
    "Start run", type="primary", key="start", disabled=choice.pip_command is not None, help=choice.blocked
)
cancel = b2.button(
    "Cancel",
    key="cancel",
    disabled=not start,  # enabled only while a job runs (this script run); the click is kept by its callback
    on_click=lambda: st.session_state.__setitem__("cancel_clicked", True),
    help="Stops the running job after its current batch (enabled while one runs).",
)
cancel = bool(st.session_state.pop("cancel_clicked", False) or cancel)


def build_config(stack: contextlib.ExitStack) -> ExperimentConfig:
    """The run's configuration; pasted or uploaded text becomes a temporary corpus file that lives until
    ``stack`` closes (after the run)."""
    if model_name is None:
        raise common.AppPathError(choice.blocked or "no model given")
    name = common.checked_model_name(model_name)
    tok = str(common.safe_path(tokenizer)) if tokenizer else None
    if ckind == "built-in":
        source = "builtin"
    elif ckind == "path":
        source = str(common.safe_path(corpus_path or ""))
    else:
        source = str(stack.enter_context(common.pasted_corpus(corpus_text or "")))
    run_dir = common.safe_path(out, must_exist=False)
    return ExperimentConfig(
        model=ModelSpec(
            name=name, tokenizer=tok, device=device, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code
        ),
        corpus=CorpusSpec(source=source, seq_len=int(seq_len), max_seqs=int(max_seqs)),
        capture=CaptureSpec(sites=tuple(s.strip() for s in sites.split(",") if s.strip())),
        analysis=AnalysisSpec(n_boot=int(n_boot), intervention_windows=int(interventions)),
        controls=controls,  # type: ignore[arg-type]  # checked against the Literal in __post_init__
        seed=int(seed),
        formats=formats,  # type: ignore[arg-type]
        out=str(run_dir),
    )


if start:
    from streamlit.runtime.scriptrunner_utils.exceptions import ScriptControlException

    from spectral.errors import RunCancelled
    from spectral.runner import run_experiment

    stopped: list[BaseException] = []
    with common.errors_shown("Run failed: "), contextlib.ExitStack() as stack:  # the stack removes the temp corpus
        cfg = build_config(stack)
        bar = st.progress(0.0, text="loading model and corpus…")
        lines: list[str] = []
        t0 = time.perf_counter()
        with st.status(f"Running → {cfg.out}", expanded=True) as status:

            def stopped_by_streamlit(exc: BaseException, where: str) -> RunCancelled:
                """Cancel (or any widget) made Streamlit stop this script: cancel the run cleanly."""
                stopped.append(exc)  # no st.* call from here on: a pending stop makes each one raise again
                return RunCancelled(f"cancelled from the app ({where})")

            def log(msg: str) -> None:
                lines.append(msg)
                try:
                    st.write(msg)
                except ScriptControlException as exc:
                    raise stopped_by_streamlit(exc, "while logging") from None

            conds = ["trained", *cfg.controls]

            def on_batch(cond: str, done: int, total: int) -> None:
                # an ensemble member (random_init.s1, permuted_weights.s2) counts as its control
                base = cond.split(".")[0]
                frac = ((conds.index(base) if base in conds else 0) + done / total) / len(conds)
                try:
                    bar.progress(min(frac, 1.0), text=f"{cond}: batch {done}/{total}")
                except ScriptControlException as exc:
                    raise stopped_by_streamlit(exc, f"{cond}, batch {done}/{total}") from None

            st.session_state["cancelled_run"] = str(cfg.out)  # shown by the rerun that Cancel causes
            try:
                result = run_experiment(
                    cfg,
                    overwrite=overwrite,
                    progress=False,
                    log=log,
                    command="spectral app (Run page)",
                    on_batch=on_batch,
                )
            except RunCancelled:
                if stopped:  # let Streamlit carry out the stop / rerun it asked for
                    raise stopped[0] from None
                raise
            bar.progress(1.0, text=f"done in {time.perf_counter() - t0:.1f} s")
            status.update(label=f"Run complete: {result.run_dir}", state="complete")
        st.session_state.pop("cancelled_run", None)
        st.session_state["run_dir"] = str(result.run_dir)
        st.session_state["last_run"] = str(result.run_dir)
        counts = common.run_outcomes(Path(result.run_dir))
        verdicts = "no verdicts.csv" if counts is None else f"verdicts: {common.outcome_summary(counts)}"
        st.success(
            f"Run directory: `{result.run_dir}` — {len(result.metrics.rows)} metric rows; {verdicts}. "
            "Open it on the Explore, Verdicts or Compare pages."
        )
        if counts is not None:
            common.outcome_metrics(counts)
elif cancel and st.session_state.get("cancelled_run"):
    from spectral.runs import read_manifest

    where = Path(st.session_state["cancelled_run"])
    with common.errors_shown():
        man = read_manifest(where)
        with st.spinner("Stopping the run after its current batch…"):
            for _ in range(240):  # the stopped script finishes its batch on its own thread
                if man.get("status") != "running":
                    break
                time.sleep(0.5)
                man = read_manifest(where)
        if man.get("status") == "running":
            st.warning(f"`{where}` is still running; it stops after its current batch.")
        elif "cancelled" not in str(man.get("reason", "")):
            st.info("No run in progress to cancel.")
        else:
            st.warning(
                f"Run cancelled: `{where}` is marked {man.get('status')} ({man.get('reason', '')}); "
                "start it again to redo it."
            )
elif st.session_state.get("last_run"):
    st.info(f"Last run: `{st.session_state['last_run']}` (selected on the other pages).")

"""genlab training monitor: `streamlit run apps/monitor.py [-- --runs DIR]`.

Watches run directories while core.train writes them: a table of runs, live curves (losses per network, learning
rate, images/s, each evaluation metric), several runs overlaid with their configs compared, the logged sample grids
on a slider, and a health panel (class coverage for mode collapse, D-vs-G balance, non-finite values, stalls).
It only reads files (core.runs); only the opt-in launcher imports the family registry (core.families). Starting
runs from the page is off unless GENLAB_MONITOR_LAUNCH=1, so a public deployment cannot be made to run jobs.
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from core import runs

ROOT = Path(__file__).resolve().parents[1]


def cli_runs_dir() -> str:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--runs", default=os.environ.get("GENLAB_RUNS", "runs"))
    return parser.parse_known_args(sys.argv[1:])[0].runs


@st.cache_resource
def reader(path: str) -> runs.MetricsReader:
    """One incremental reader per metrics file, shared across refreshes: each refresh parses only new lines."""
    return runs.MetricsReader(Path(path))


def load(run_dir: Path) -> tuple[runs.Run, pd.DataFrame]:
    metrics = reader(str(run_dir / runs.METRICS_FILE))
    df = metrics.frame()
    return runs.summarize(run_dir, metrics.records), df



def chart(data: pd.DataFrame, x: str, log: bool, title: str, height: int) -> alt.Chart:
    y = alt.Y("value:Q", title=title, scale=alt.Scale(type="log") if log else alt.Scale(zero=False))
    return (alt.Chart(data, height=height).mark_line(point=len(data) < 40)
            .encode(x=alt.X(f"{x}:Q", title="step" if x == "step" else "wall seconds"), y=y,
                    color=alt.Color("series:N", title=None), tooltip=[x, "series", "value"]))


def draw(charts: dict[str, list[str]], loaded: dict, x: str, smoothing: float, log: bool, columns: int,
         height: int) -> None:
    """One chart per entry of `charts` (title -> columns), each column of each run a line, in a grid."""
    cols = st.columns(columns)
    for i, (title, names) in enumerate(charts.items()):
        parts = []
        for run_name, (_, df) in loaded.items():
            for column in names:
                part = runs.series(df, column, x, smoothing if runs.smoothed(column) else 0.0)
                label = column.split("/", 1)[-1] if len(loaded) == 1 else f"{run_name} · {column.split('/', 1)[-1]}"
                parts.append(part.rename(columns={column: "value"}).assign(series=label))
        data = pd.concat(parts) if parts else pd.DataFrame()
        with cols[i % columns]:
            if data.empty:
                st.caption(f"{title}: nothing yet")
            else:
                st.altair_chart(chart(data, x, log and bool((data["value"] > 0).all()), title, height),
                                width="stretch")


def curves(selected: list[Path], x: str, smoothing: float, log: bool) -> None:
    loaded = {d.name: load(d) for d in selected}
    plan = runs.chart_plan({name: df for name, (_, df) in loaded.items()})
    if not (plan.training or plan.evaluation or len(plan.single)):
        st.info("No metrics logged yet: the first line appears after --log-every steps.")
        return
    st.markdown(" · ".join(f"`{name}` step **{run.step}** ({run.status})" for name, (run, _) in loaded.items()))
    draw(plan.training, loaded, x, smoothing, log, columns=2, height=220)
    if plan.evaluation:
        st.markdown("**evaluation**")
        draw(plan.evaluation, loaded, x, smoothing, log, columns=3, height=180)
    if len(plan.single):
        st.markdown("**one point so far** (a chart appears at the second)")
        st.dataframe(plan.single, hide_index=True, width="content", height=35 * (len(plan.single) + 1) + 3)


def health_panel(selected: list[Path]) -> None:
    for run_dir in selected:
        run, df = load(run_dir)
        st.markdown(f"**{run.name}** · {run.status}")
        for level, message in runs.health(df, run, reader(str(run_dir / runs.METRICS_FILE)).nonfinite):
            getattr(st, level)(message)
        if "eval/classes_covered" in df:
            coverage = runs.series(df, "eval/classes_covered", "step")
            st.altair_chart(alt.Chart(coverage, height=200, title="classes covered").mark_line(point=True)
                            .encode(x="step:Q", y=alt.Y("eval/classes_covered:Q", title="classes",
                                                        scale=alt.Scale(domain=[0, 10]))), width="stretch")


def sample_timeline(run_dir: Path) -> None:
    grids = runs.sample_grids(run_dir)
    if not grids:
        st.info(f"{run_dir.name}: no sample grids yet (written at each evaluation).")
        return
    steps = [s for s, _ in grids]
    step = st.select_slider("sample grid at step", steps, value=steps[-1], key=f"timeline-{run_dir.name}") \
        if len(steps) > 1 else steps[0]
    path = dict(grids)[step]
    try:
        image = runs.grid_for_display(path)          # whole-factor nearest-neighbour, shown at its own size
        st.image(image, caption=f"{run_dir.name}, step {step}", width=image.width, output_format="PNG")
    except OSError as exc:                            # UnidentifiedImageError included
        st.warning(f"{path.name} could not be read ({type(exc).__name__}); it may still be being written.")


def launcher(runs_dir: Path) -> None:
    if os.environ.get("GENLAB_MONITOR_LAUNCH") != "1":
        st.caption("Starting runs from this page is off (set GENLAB_MONITOR_LAUNCH=1 on a machine you own).")
        return
    from core.data import BUILT_IN_DATASETS   # here, not at the top: the read-only monitor never loads torch
    from core.families import FAMILIES
    with st.form("launch"):
        family = st.selectbox("family", list(FAMILIES))
        dataset = st.selectbox("dataset", BUILT_IN_DATASETS, index=BUILT_IN_DATASETS.index("digits"))
        steps = st.number_input("max steps", 10, 100_000, 200)
        stamp = st.session_state.setdefault("launch_stamp", time.strftime("%H%M%S"))   # a default that changed
        name = st.text_input("run name", f"{family}-{stamp}")          # each second would reset the typed name
        submitted = st.form_submit_button("start")
    if submitted:
        runs.inside(runs_dir, name)                                      # the run must stay in the runs directory
        command = [sys.executable, "-m", "core.train", family, "--dataset", dataset, "--max-steps", str(int(steps)),
                   "--runs-dir", str(runs_dir), "--run-name", name, "--eval-every", str(max(1, int(steps) // 4))]
        st.session_state["process"] = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                                                       stderr=subprocess.DEVNULL)
        st.session_state["process_name"] = name
    process = st.session_state.get("process")
    if process is not None:
        state = "running" if process.poll() is None else f"exited with {process.returncode}"
        st.write(f"`{st.session_state['process_name']}`: {state}")
        if process.poll() is None and st.button("stop"):
            process.terminate()
            process.wait(timeout=30)
            st.rerun()


def main() -> None:
    st.set_page_config(page_title="genlab monitor", layout="wide")
    st.title("genlab training monitor")
    st.markdown("<style>[data-testid=stImage] img {image-rendering: pixelated}</style>",   # no smoothing on a
                unsafe_allow_html=True)                                                  # high-DPI screen either
    with st.sidebar:
        runs_dir = Path(st.text_input("runs directory", cli_runs_dir()))
        refresh = st.slider("refresh every (s)", 1, 30, 5)
        smoothing = st.slider("smoothing (EMA)", 0.0, 0.99, 0.6)
        log = st.toggle("log scale")
        x = st.radio("x axis", ("step", "wall_seconds"), format_func=lambda v: v.replace("_", " "), horizontal=True)
    try:
        found = runs.discover(runs_dir)
    except FileNotFoundError as exc:
        st.error(f"{exc}. Train something (python -m core.train ...) or choose another directory in the sidebar.")
        return
    if not found:
        st.warning(f"No runs in {runs_dir} yet.")
        launcher(runs_dir)
        return

    @st.fragment(run_every=refresh)
    def table() -> None:
        rows = [load(d)[0] for d in found]
        st.dataframe(pd.DataFrame([{"run": r.name, "family": r.family, "dataset": r.dataset, "status": r.status,
                                    "step": r.step, "of": r.total_steps, "elapsed (s)": r.elapsed,
                                    "images/s": r.images_per_s, "best": r.best} for r in rows]),
                     hide_index=True, width="stretch")
    table()
    names = [d.name for d in found]
    chosen = st.multiselect("runs to show (several overlay)", names, default=names[:1])
    selected = [runs.inside(runs_dir, name) for name in chosen]
    if not selected:
        return
    tab_curves, tab_health, tab_samples, tab_configs, tab_launch = st.tabs(
        ["curves", "health", "samples", "configs", "launch"])
    with tab_curves:
        st.fragment(run_every=refresh)(curves)(selected, x, smoothing, log)
        for run_dir in selected:
            _, df = load(run_dir)
            path = str(run_dir / runs.METRICS_FILE)          # built on click (deferred): 100k rows take a second
            st.download_button(f"metrics of {run_dir.name} as CSV", lambda path=path: reader(path).frame().to_csv(
                index=False), f"{run_dir.name}.csv", "text/csv", key=f"csv-{run_dir.name}")
        st.caption("Each chart's ⋯ menu saves it as PNG or SVG.")
    with tab_health:
        st.fragment(run_every=refresh)(health_panel)(selected)
    with tab_samples:
        for run_dir in selected:
            st.fragment(run_every=refresh)(sample_timeline)(run_dir)
    with tab_configs:
        table_ = runs.config_table([load(d)[0] for d in selected]).sort_values("differs", ascending=False, kind="stable")
        st.caption(f"{int(table_['differs'].sum())} of {len(table_)} options differ (listed first, highlighted)")
        st.dataframe(table_.style.apply(lambda row: ["background-color: #fff3b0" if row["differs"] else ""] * len(row),
                                        axis=1), width="stretch", height=min(36 * (len(table_) + 1), 900))
    with tab_launch:
        launcher(runs_dir)


main()

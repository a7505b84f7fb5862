"""Reading run directories while training writes them: what the Streamlit monitor (apps/monitor.py) shows.

A run directory (see core.train) holds config.json, metrics.jsonl (one JSON object per line, appended), status.json
(running / finished / failed, with the pid and host of the training process; rewritten atomically) and
samples/step-*.png. Everything here only reads those files: no model is imported. The metrics reader is
incremental (it remembers its byte offset and keeps a half-written last line for the next read), so a refresh costs
only what was appended since the previous one.
"""
from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

RUN_CONFIG, METRICS_FILE, STATUS_FILE = "config.json", "metrics.jsonl", "status.json"   # a run directory's files
SAMPLES = "samples"          # ... and its folder of sample grids
STALL_SECONDS = 300          # a "running" run with no write for this long (and 20 logging intervals) is stalled
OFF_MANIFOLD_WARNING = 0.05  # a share of samples off the real manifold worth a warning (real images: about 1%)
BEST_METRICS = ("fid", "neg_elbo", "accuracy", "a2b_domain_accuracy", "mse")
FIGURE_NAMES = {               # what each figure of a card or a run is called, for people
    "fid": "FID", "off_manifold": "off-manifold share", "precision": "precision", "recall": "recall",
    "copies": "copies", "fid_penultimate": "FID (penultimate, earlier cards)", "kid": "KID",
    "classes_covered": "classes", "smallest_class_share": "smallest class share", "kl_to_uniform": "KL to uniform",
    "conditional_accuracy": "conditional accuracy", "neg_elbo": "−ELBO (nats)", "neg_iwae": "IWAE bound (nats)",
    "mse": "MSE", "accuracy": "test accuracy", "fgsm_accuracy_eps0.1": "FGSM accuracy at ε = 0.1",
    "a2b_domain_accuracy": "A→B domain accuracy", "b2a_domain_accuracy": "B→A domain accuracy",
    "a2b_fid": "A→B FID", "b2a_fid": "B→A FID", "bits_per_dim": "test bits/dim", "samples": "samples measured"}
SHARE_WORDS = ("accuracy", "precision", "recall", "share", "off_manifold", "copies")   # eval figures in [0, 1]
GRID_WIDTH = 400             # about how wide the monitor shows a sample grid, in pixels
HIGHER_IS_BETTER = ("accuracy", "conditional_accuracy", "classes_covered", "precision", "recall",
                    "a2b_domain_accuracy", "b2a_domain_accuracy")


@dataclass
class MetricsReader:
    """Incremental reader of one metrics.jsonl: `read()` returns all records so far, parsing only new bytes."""
    path: Path
    offset: int = 0
    pending: bytes = b""
    records: list[dict] = field(default_factory=list)
    skipped: int = 0             # lines that were complete but not JSON objects (never raised)
    nonfinite: list[tuple[int, str]] = field(default_factory=list)     # (step, key) of logged NaN / inf values
    _frame: pd.DataFrame | None = None
    _framed: int = 0

    def frame(self) -> pd.DataFrame:
        """The records as a DataFrame, extended with only the rows added since the last call."""
        self.read()
        if self._frame is None or self._framed > len(self.records):
            self._frame, self._framed = frame([]), 0
        if self._framed < len(self.records):
            new = frame(self.records[self._framed:], start_time=self.records[0].get("time"))
            self._frame = new if self._framed == 0 else pd.concat([self._frame, new], ignore_index=True)
            self._framed = len(self.records)
        return self._frame

    def read(self) -> list[dict]:
        try:
            size = self.path.stat().st_size
            if size < self.offset:                       # the file was replaced: start over
                self.offset, self.pending, self.records = 0, b"", []
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except OSError:
            return self.records
        self.offset += len(chunk)
        lines = (self.pending + chunk).split(b"\n")
        self.pending = lines.pop()                      # no newline yet: possibly half-written, keep for later
        lines = [line for line in lines if line.strip()]
        try:                                            # one parse for the whole chunk (5x faster than per line)
            parsed = json.loads(b"[" + b",".join(lines) + b"]")
        except ValueError:                              # some line is not JSON: parse them one by one
            parsed = None
        for i, line in enumerate(lines):
            if parsed is not None:
                record = parsed[i]
                self._add(record)
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                self.skipped += 1
                continue
            self._add(record)
        return self.records

    def _add(self, record) -> None:
        if not (isinstance(record, dict) and "step" in record):
            self.skipped += 1
            return
        self.records.append(record)
        if any(isinstance(v, float) and not math.isfinite(v) for v in record.values()):
            self.nonfinite += [(record["step"], k) for k, v in record.items()
                               if isinstance(v, float) and not math.isfinite(v)]


@dataclass
class Run:
    name: str
    path: Path
    family: str = "?"
    dataset: str = "?"
    status: str = "empty"
    step: int = 0
    total_steps: int | None = None
    elapsed: float | None = None
    images_per_s: float | None = None
    best: str = ""
    last_write: float | None = None
    error: str = ""
    config: dict = field(default_factory=dict)


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def discover(runs_dir: str | Path) -> list[Path]:
    """Run directories under runs_dir (those with a config.json, metrics.jsonl or status.json), newest first."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"runs directory {root} does not exist")
    found = [p for p in root.iterdir() if p.is_dir() and any((p / f).exists() for f in
                                                               (RUN_CONFIG, METRICS_FILE, STATUS_FILE))]
    return sorted(found, key=lambda p: last_write(p) or 0, reverse=True)


def last_write(run_dir: Path) -> float | None:
    times = [f.stat().st_mtime for f in (run_dir / METRICS_FILE, run_dir / STATUS_FILE) if f.exists()]
    return max(times) if times else None


def summarize(run_dir: Path, records: list[dict], now: float | None = None) -> Run:
    """One row of the runs table: family, dataset, status, progress, time, throughput and best metric."""
    now = time.time() if now is None else now
    config, status = read_json(run_dir / RUN_CONFIG), read_json(run_dir / STATUS_FILE)
    run = Run(run_dir.name, run_dir, config.get("family", "?"), config.get("train", {}).get("dataset", "?"),
              config=config, last_write=last_write(run_dir))
    logs = [r for r in records if "images_per_s" in r]
    run.step = max([r["step"] for r in records] + [status.get("step", 0)])
    run.total_steps = status.get("total_steps")
    run.elapsed = logs[-1].get("elapsed") if logs else None
    run.images_per_s = logs[-1].get("images_per_s") if logs else None
    state = status.get("status")
    if state == "finished":
        run.status = "finished"
    elif state == "failed":
        run.status, run.error = "crashed", status.get("error", "")
    elif state == "running" and process_gone(status):
        run.status, run.error = "stopped", stopped_error(run, status)
    elif state == "running" or records:
        times = [r["time"] for r in logs if "time" in r]
        interval = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 0
        quiet = now - (run.last_write or now)
        run.status = "stalled" if quiet > max(STALL_SECONDS, 20 * interval) else "running"
    best = best_metric(records)
    run.best = f"{best[0]} {best[1]:.4g} @ {best[2]}" if best else ""
    return run


def stopped_error(run: Run, status: dict) -> str:
    """What happened to a stopped run and what to do: resume from its last checkpoint, or train again."""
    ended = (f"the training process (pid {status['pid']} on {status['host']}) ended without finishing, at step "
             f"{run.step} of {run.total_steps or '?'} (killed, or out of memory)")
    saved = sorted(p for p in (run.path / "checkpoints").glob("step-*") if (p / "training_state.json").is_file())
    if saved:
        return (f"{ended}; resume it from its last checkpoint ({saved[-1].name}) with: "
                f"python -m core.train {run.family} --resume {run.path}")
    return (f"{ended}; it saved no checkpoint to resume from (one every --checkpoint-every steps): train it again"
            + (f" with: {run.config['command']}" if run.config.get("command") else ""))


def process_gone(status: dict) -> bool:
    """Whether the training process a status.json names (core.train writes its pid and host) has ended. Only its
    own host can tell: on another host, for an older run without a pid, or off POSIX (where os.kill would end the
    process) this says False and the quiet-time rule of `summarize` decides. A pid reused by a newer process reads
    as alive, which falls back to that rule too."""
    pid = status.get("pid")
    if not isinstance(pid, int) or pid <= 0 or status.get("host") != socket.gethostname() or os.name != "posix":
        return False
    try:
        os.kill(pid, 0)                      # signal 0 sends nothing: it only asks whether the process exists
    except ProcessLookupError:
        return True
    except OSError:                          # PermissionError: it exists, under another user
        return False
    try:                                     # a killed child its parent has not reaped yet is a zombie (Linux)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return False


def best_metric(records: list[dict]) -> tuple[str, float, int] | None:
    for name in BEST_METRICS:
        values = [(r[f"eval/{name}"], r["step"]) for r in records if finite(r.get(f"eval/{name}"))]
        if values:
            pick = max if name in HIGHER_IS_BETTER else min
            value, step = pick(values, key=lambda v: v[0])
            return name, value, step
    return None


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def frame(records: list[dict], start_time: float | None = None) -> pd.DataFrame:
    """Records as one table: step, time, elapsed, losses, lr, images/s and eval/... columns; wall_seconds counts
    from start_time (default: the first record's time)."""
    if not records:
        return pd.DataFrame({"step": pd.Series(dtype="int64")})
    df = pd.DataFrame.from_records(records)
    if "time" in df:
        df["wall_seconds"] = df["time"] - (start_time if start_time is not None else df["time"].min())
    return df


def series(df: pd.DataFrame, column: str, x: str = "step", smoothing: float = 0.0,
           max_points: int = 2000) -> pd.DataFrame:
    """(x, value) of one column without its missing rows, EMA-smoothed (weight `smoothing` on the past, as
    TensorBoard's slider), then thinned to at most max_points for drawing (100k logged steps draw like 2k)."""
    if column not in df or x not in df:
        return pd.DataFrame({x: [], column: []})
    part = df[[x, column]].dropna()
    part = part[np.isfinite(part[column].to_numpy(dtype=float))]
    if smoothing > 0 and len(part):
        part = part.assign(**{column: part[column].ewm(alpha=1 - smoothing, adjust=True).mean()})
    if len(part) > max_points:
        stride = math.ceil(len(part) / max_points)
        part = pd.concat([part.iloc[::stride], part.iloc[[-1]]]).drop_duplicates()
    return part


@dataclass
class ChartPlan:
    """What the curves tab draws for a set of runs: charts as title -> columns, and a table of one-point figures."""
    training: dict[str, list[str]]       # losses (one line per network), lr, images/s, other training figures
    evaluation: dict[str, list[str]]     # eval/ figures, those of one unit in one chart (`eval_chart`)
    single: pd.DataFrame                 # [run,] name, value, step of each figure with a single point so far


def chart_plan(frames: dict[str, pd.DataFrame]) -> ChartPlan:
    """The charts for these runs (run name -> metrics frame). A figure with two or more finite points in some run
    is a line; one with a single point everywhere (a fresh run's evaluation: 15 figures for a GAN) is a row of
    the table instead, as a one-point chart spends 220 px on one number."""
    points: dict[str, int] = {}
    for df in frames.values():
        for column in charted_columns(df):
            points[column] = max(points.get(column, 0), len(series(df, column)))
    rows = []
    for run_name, df in frames.items():
        for column in charted_columns(df):
            part = series(df, column)
            if points[column] == 1 and len(part):
                rows.append({"run": run_name, "name": column, "value": float(part[column].iloc[-1]),
                             "step": int(part["step"].iloc[-1])})
    lines = [c for c, n in points.items() if n > 1]
    training = {"losses": [c for c in lines if c.startswith("loss/")]}
    training.update({c: [c] for c in lines if not c.startswith(("loss/", "eval/"))})
    evaluation: dict[str, list[str]] = {}
    for column in (c for c in lines if c.startswith("eval/")):
        evaluation.setdefault(eval_chart(column), []).append(column)
    single = pd.DataFrame(rows, columns=["run", "name", "value", "step"])
    return ChartPlan({k: v for k, v in training.items() if v}, evaluation,
                     single if len(frames) > 1 else single.drop(columns="run"))


def charted_columns(df: pd.DataFrame) -> list[str]:
    """The figures worth drawing: losses, lr, images/s, other training figures (accuracy/train) and evaluations."""
    skip = ("step", "epoch", "time", "elapsed", "wall_seconds", "data_share")
    return [c for c in df.columns if c not in skip and not c.removesuffix("_penultimate").endswith("_std")]


def eval_chart(column: str) -> str:
    """The chart an evaluation figure is drawn in: figures of one unit share one (FID beside its penultimate and
    A→B / B→A variants; every share in [0, 1]: precision, recall, accuracies, off-manifold, copies); others get
    their own."""
    name = column.removeprefix("eval/").removesuffix("_penultimate").removeprefix("a2b_").removeprefix("b2a_")
    if any(word in name for word in SHARE_WORDS):
        return "shares (0 to 1)"
    return FIGURE_NAMES.get(name, column)


def smoothed(column: str) -> bool:
    """Whether the smoothing slider applies: per-window training figures are noisy; lr and evaluations are not."""
    return column != "lr" and not column.startswith("eval/")


def health(df: pd.DataFrame, run: Run, nonfinite: list[tuple[int, str]] = ()) -> list[tuple[str, str]]:
    """(level, message) warnings: mode collapse (class coverage dropping or low), samples off the real manifold, a
    discriminator that wins outright, non-finite values, a crash, a stalled run."""
    notes = []
    coverage = df["eval/classes_covered"].dropna() if "eval/classes_covered" in df else pd.Series(dtype=float)
    if len(coverage):
        peak, last = coverage.max(), coverage.iloc[-1]
        if last < peak:
            notes.append(("warning", f"mode collapse: class coverage fell from {peak:.0f} to {last:.0f} classes"))
        elif last < expected_classes(run):
            notes.append(("warning", f"mode collapse: the samples cover only {last:.0f} of "
                                     f"{expected_classes(run)} classes"))
        else:
            notes.append(("success", f"class coverage: {last:.0f} classes at the last evaluation"))
    off = df["eval/off_manifold"].dropna() if "eval/off_manifold" in df else pd.Series(dtype=float)
    if len(off):                         # core.metrics: about 1% of real images fall below the realism threshold
        level = "warning" if off.iloc[-1] > OFF_MANIFOLD_WARNING else "success"
        notes.append((level, f"off-manifold share: {100 * off.iloc[-1]:.1f}% of the samples at the last evaluation "
                             f"(real images: about 1%)"))
    d, g = (df[c].dropna() if c in df else pd.Series(dtype=float) for c in ("loss/discriminator", "loss/generator"))
    if len(d) >= 5 and len(g) >= 5:
        recent_d, recent_g = d.iloc[-max(5, len(d) // 10):].mean(), g.iloc[-max(5, len(g) // 10):].mean()
        if abs(recent_d) < 0.05 and recent_g > 3:
            notes.append(("warning", f"D vs G: the discriminator wins outright (D loss {recent_d:.3g}, "
                                     f"G loss {recent_g:.3g}): the generator gets no useful gradient"))
        else:
            notes.append(("info", f"D vs G balance: recent D loss {recent_d:.3g}, G loss {recent_g:.3g}"))
    if nonfinite:
        keys = sorted({k for _, k in nonfinite})
        notes.append(("error", f"non-finite values logged in {', '.join(keys)} (first at step {nonfinite[0][0]})"))
    if run.status == "crashed":
        notes.append(("error", f"the run crashed: {run.error or 'see its log'}"))
    if run.status == "stopped":
        notes.append(("error", f"stopped: {run.error}"))
    if run.status == "stalled":
        notes.append(("warning", f"stalled: nothing written for {time.time() - (run.last_write or 0):.0f} s"))
    return notes


def expected_classes(run: Run) -> int:
    """Classes the run's data has: its --classes subset, else 10 (Fashion-MNIST, MNIST, digits)."""
    chosen = run.config.get("train", {}).get("classes")
    return len(str(chosen).split(",")) if chosen else 10


def flatten(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_table(runs: list[Run]) -> pd.DataFrame:
    """Configs side by side (one column per run), with a `differs` column for highlighting."""
    flat = {run.name: flatten({k: run.config.get(k) for k in ("family", "model", "train")}) for run in runs}
    keys = sorted({k for f in flat.values() for k in f if not k.endswith("_class_name")})
    table = pd.DataFrame({name: [str(f.get(k, "")) for k in keys] for name, f in flat.items()}, index=keys)
    table["differs"] = table.nunique(axis=1) > 1
    return table


def sample_grids(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of the logged sample grids, in step order (files named step-NNNNNNN.png)."""
    grids = []
    for path in sorted((run_dir / SAMPLES).glob("step-*.png")):
        try:
            grids.append((int(path.stem.split("-")[1]), path))
        except (IndexError, ValueError):
            continue
    return grids


def grid_for_display(path: Path, width: int = GRID_WIDTH) -> Image.Image:
    """A sample grid enlarged by a whole factor k (about `width` px wide) with nearest neighbour: each pixel becomes
    an exact k x k block, as the sampler shows its pictures. (A browser stretching a 242 px grid to 400 px
    smooths 28 px digits into blur.) Raises OSError for a file that cannot be read, e.g. one still being written."""
    with Image.open(path) as image:
        image.load()
        factor = max(1, round(width / image.width))
        return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def inside(root: str | Path, candidate: str | Path) -> Path:
    """`candidate` resolved, if it lies inside `root`; a path from the UI must not leave the runs directory."""
    root, path = Path(root).resolve(), (Path(root) / candidate).resolve()
    if path != root and root not in path.parents:
        raise ValueError(f"{candidate} is outside the runs directory {root}")
    return path

"""The click commands. Each one validates, then calls ordinary gruxp API."""

from __future__ import annotations

import csv
import importlib.util
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import click
import numpy as np

import gruxp
from gruxp import checkpoint, losses, optim
from gruxp.distributed import ClusterError
from gruxp.training import NonFiniteLossError, optimizer_from_checkpoint, stream_windows

from . import corpus as corpus_mod
from . import lm
from .backends import BACKENDS, describe, load

STRUCTURE = ("cell", "hidden", "layers", "embed", "dropout", "zoneout")
POSITIVE_INT = click.IntRange(min=1)


class FiniteFloat(click.FloatRange):
    """A float range that also refuses nan and ±inf (``nan`` passes every comparison-based range:
    ``--time-budget nan`` would otherwise train forever)."""

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


POSITIVE_FLOAT = FiniteFloat(min=0.0, min_open=True)


class CellChoice(click.Choice):
    """``--cell``: the cells declared in :mod:`gruxp.cells` when the command runs (a cell registered
    by another module is a choice too)."""

    def __init__(self) -> None:
        super().__init__([])

    @property
    def choices(self) -> tuple[str, ...]:
        from gruxp import cells

        return tuple(cells.names())

    @choices.setter
    def choices(self, value: Any) -> None:  # click's constructor assigns it; the registry decides
        pass


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(gruxp.__version__, prog_name="gruxp")
def cli() -> None:
    """gruxp: a GRU written once against the array API standard.

    Start with `gruxp train` (a character-level language model on the Python standard library's
    sources: a 240 s training budget, about 4 minutes in all), then `gruxp sample gruxp-run/checkpoint.npz`.
    """


def _explicit(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)


class _Progress:
    """tqdm over steps (or over seconds with a time budget)."""

    def __init__(self, *, steps: int | None, budget: float | None, start_step: int) -> None:
        from tqdm import tqdm

        self.by_time = steps is None
        total = budget if self.by_time else steps
        initial = 0 if self.by_time else start_step
        unit = "s" if self.by_time else "step"
        fmt = "{l_bar}{bar}| {n:.0f}/{total:.0f}{unit} [{elapsed}<{remaining}{postfix}]" if self.by_time else None
        self.bar = tqdm(
            total=total,
            initial=initial,
            unit=unit,
            dynamic_ncols=True,
            file=sys.stderr,
            mininterval=0.5,
            bar_format=fmt,
            disable=None,
        )
        self.started = time.perf_counter()

    def advance(self, **postfix: str) -> None:
        if self.by_time:
            self.bar.n = min(self.bar.total, time.perf_counter() - self.started)
        else:
            self.bar.n += 1
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(0)

    def write(self, text: str) -> None:
        self.bar.write(text, file=sys.stdout)

    def close(self) -> None:
        self.bar.close()


def _write_metrics(path: Path, row: dict, *, fresh: bool) -> None:
    new = fresh or not path.exists()
    with path.open("w" if fresh else "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _plot(metrics: Path, png: Path, *, baseline: float | None, ylabel: str, baseline_label: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    with metrics.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return False
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, [float(r["train"]) for r in rows], label="train", color="#1f77b4")
    ax.plot(steps, [float(r["valid"]) for r in rows], label="validation", color="#d62728", marker="o", markersize=3)
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", label=f"{baseline_label} {baseline:.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = png.with_name(png.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(png)
    return True


ENCODING_OPTION = click.option(
    "--encoding",
    type=str,
    default=None,
    help="The text's encoding (default: UTF-8, or what a byte-order mark names), e.g. latin-1, cp1252, utf-16.",
)
MAX_BYTES_OPTION = click.option(
    "--max-bytes",
    type=POSITIVE_INT,
    default=corpus_mod.MAX_FILE_BYTES,
    show_default=True,
    help="Read at most this many bytes of a file (cut on a character boundary, and said so).",
)


@cli.command()
@click.option("--data", type=str, default=None, help="A text file or folder (default: the Python standard library's sources).")
@ENCODING_OPTION
@MAX_BYTES_OPTION
@click.option(
    "--task",
    type=click.Choice(["lm", "adding", "copy"]),
    default="lm",
    show_default=True,
    help="lm: character language model; adding / copy: the synthetic memory benchmarks.",
)
@click.option("--backend", type=click.Choice(list(BACKENDS)), default="numpy", show_default=True)
@click.option("--device", type=str, default=None, help="e.g. cuda:0 (torch), gpu (jax), 0 (cupy), device1 (array_api_strict).")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option(
    "--cell",
    type=CellChoice(),
    default="gru",
    show_default=True,
    help="The recurrent cell: any declared in gruxp.cells (the choices above).",
)
@click.option("--hidden", type=POSITIVE_INT, default=256, show_default=True)
@click.option("--layers", type=POSITIVE_INT, default=2, show_default=True)
@click.option("--embed", type=POSITIVE_INT, default=64, show_default=True, help="Embedding size (lm and copy).")
@click.option("--dropout", type=FiniteFloat(0.0, 1.0, max_open=True), default=0.0, show_default=True)
@click.option(
    "--zoneout",
    type=FiniteFloat(0.0, 1.0, max_open=True),
    default=0.0,
    show_default=True,
    help="Zoneout rate (a cell with zoneout).",
)
@click.option(
    "--seq-len", type=POSITIVE_INT, default=None, help="Window length (lm, default 64) or sequence length T (tasks, default 50)."
)
@click.option("--batch", type=POSITIVE_INT, default=32, show_default=True)
@click.option("--lr", type=POSITIVE_FLOAT, default=3e-3, show_default=True)
@click.option("--clip", type=POSITIVE_FLOAT, default=1.0, show_default=True, help="Gradient clipping by global norm.")
@click.option("--steps", type=POSITIVE_INT, default=None, help="Train until this step (default: use the time budget).")
@click.option(
    "--time-budget", type=POSITIVE_FLOAT, default=None, help="Seconds of training (default 240 when --steps is not given)."
)
@click.option("--eval-every", type=POSITIVE_INT, default=250, show_default=True)
@click.option("--sample-every", type=POSITIVE_INT, default=500, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="gruxp-run", show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.npz.")
@click.option(
    "--scheduler",
    type=str,
    default=None,
    metavar="ADDRESS",
    help="Train data-parallel on the Dask cluster of this scheduler (e.g. tcp://10.0.0.5:8786; --task lm).",
)
@click.option(
    "--shards",
    type=POSITIVE_INT,
    default=None,
    help="With --scheduler: split each batch's rows into this many shards (default: one per worker at the start). "
    "The result depends on the shards, never on the workers.",
)
@click.option(
    "--timeout",
    type=POSITIVE_FLOAT,
    default=60.0,
    show_default=True,
    help="With --scheduler: seconds to wait for the cluster at a time; a step that fails three times stops the run.",
)
@click.pass_context
def train(ctx: click.Context, **opts: Any) -> None:
    """Train a model, with a live progress bar, checkpoints, a metrics CSV and a loss curve."""
    if opts["steps"] is None and opts["time_budget"] is None:
        opts["time_budget"] = 240.0
    opts["eval_every_explicit"] = _explicit(ctx, "eval_every")
    opts["sample_every_explicit"] = _explicit(ctx, "sample_every")
    out = Path(opts["out"])
    ckpt_path = out / "checkpoint.npz"
    if ckpt_path.exists() and not opts["resume"]:
        raise click.UsageError(f"{ckpt_path} exists: pass --resume to continue it, or choose another --out")
    if opts["resume"] and not ckpt_path.exists():
        raise click.UsageError(f"nothing to resume: {ckpt_path} does not exist")
    _refuse_what_would_not_apply(ctx, opts)
    xp, device = load(opts["backend"], opts["device"], opts["dtype"])
    if opts["task"] == "lm":
        _train_lm(ctx, opts, xp, device, out, ckpt_path)
    else:
        _train_task(ctx, opts, xp, device, out, ckpt_path)


LM_ONLY = ("data", "encoding", "max_bytes", "sample_every", "scheduler")  # the language model's text, samples, cluster
CLUSTER_ONLY = ("shards", "timeout")  # the options of --scheduler
FIXED_ON_RESUME = (*STRUCTURE, "seq_len", "batch", "lr", "dtype", "clip")  # the checkpoint's model and optimizer


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _refuse_what_would_not_apply(ctx: click.Context, opts: dict) -> None:
    """Every option given is applied, or refused here with the reason: none is accepted and ignored."""
    task = opts["task"]
    if task != "lm":
        for name in LM_ONLY:
            if _explicit(ctx, name):
                raise click.UsageError(f"{_flag(name)} is an option of --task lm (the language model), not of --task {task}")
    if opts["scheduler"] is None:
        for name in CLUSTER_ONLY:
            if _explicit(ctx, name):
                raise click.UsageError(f"{_flag(name)} is an option of --scheduler (training on a Dask cluster)")
    elif opts["backend"] != "numpy":
        raise click.UsageError(
            f"--scheduler trains on the cluster's NumPy workers; --backend {opts['backend']} is not offered there (use numpy)"
        )
    if task == "adding" and _explicit(ctx, "embed"):
        raise click.UsageError("--embed is not an option of --task adding: its two input channels feed the cell directly")
    if opts["resume"] and _explicit(ctx, "seed"):
        raise click.UsageError("--seed is not an option of --resume: a resumed run continues the checkpoint's random state")
    if opts["resume"]:
        return  # the structure options are the checkpoint's: _resume_setup refuses any that differ
    if opts["zoneout"] and "zoneout" not in gruxp.cells.get(opts["cell"]).options:
        having = [spec.name for spec in gruxp.cells.specs() if "zoneout" in spec.options]
        raise click.UsageError(f"--zoneout is an option of --cell {' or '.join(having)}; got --cell {opts['cell']}")
    if opts["dropout"] and opts["layers"] < 2:
        raise click.UsageError(
            "--dropout acts between recurrent layers (as nn.GRU's does): "
            f"it needs --layers 2 or more; got --layers {opts['layers']}"
        )


def _resume_setup(ctx, opts, ckpt_path, task, xp, device):
    ckpt = checkpoint.load(ckpt_path)
    at = ckpt.meta["step"]
    if opts["steps"] is not None and at >= opts["steps"]:
        raise click.UsageError(
            f"{ckpt_path} is already at step {at}: --steps {opts['steps']} leaves nothing to do "
            f"(--steps counts from the start of training; pass more than {at})"
        )
    extra = ckpt.meta.get("extra", {})
    if extra.get("task") != task:
        raise checkpoint.CheckpointError(f"{ckpt_path} was saved by task {extra.get('task')!r}, not {task!r}")
    saved = {"cell": "gru", "zoneout": 0.0, **extra.get("options", {})}  # runs from before --cell were GRUs
    for name in FIXED_ON_RESUME:
        if _explicit(ctx, name) and name in saved and saved[name] != opts[name]:
            raise click.UsageError(
                f"{_flag(name)} {opts[name]} differs from the checkpoint's {saved[name]}; "
                f"a resumed run keeps its model and optimizer"
            )
    for name in FIXED_ON_RESUME:
        if name in saved:
            opts[name] = saved[name]
    model = checkpoint.build_model(ckpt, xp=xp, device=device)
    print(f"resuming {ckpt_path} from step {at}" + (f", training to step {opts['steps']}" if opts["steps"] else ""))
    return ckpt, extra, model


def _train_lm(ctx, opts, xp, device, out, ckpt_path) -> None:
    opts["seq_len"] = opts["seq_len"] or 64
    model, optimizer, text, data, saved = _lm_model_and_text(ctx, opts, ckpt_path, xp, device)
    B, T = opts["batch"], opts["seq_len"]
    if text.train.size < B * T + 1:
        raise corpus_mod.CorpusError(
            f"the training text has {text.train.size} characters; --batch {B} × --seq-len {T} needs at least {B * T + 1}"
        )
    if text.valid.size < 2:
        raise corpus_mod.CorpusError("the corpus is too short to hold out a validation part")
    cluster, batches = None, None
    cluster_record: dict = {}
    trainer: gruxp.Trainer
    if opts["scheduler"] is not None:
        from . import cluster as cluster_mod

        cluster = cluster_mod.connect(opts["scheduler"], timeout=opts["timeout"])
        try:
            trainer, cluster_record = cluster_mod.trainer(
                cluster, model, optimizer, text.train, opts, ckpt_path, saved.get("cluster", {}), ctx
            )
        except BaseException:
            cluster_mod.close(cluster)
            raise
    else:
        trainer = gruxp.Trainer(
            model, losses.cross_entropy, optimizer, clip_norm=opts["clip"], stateful=True, checkpoint=ckpt_path, seed=opts["seed"]
        )
        batches = stream_windows(text.train, batch_size=B, window=T, xp=xp, device=device)
    if opts["resume"]:
        trainer.resume(ckpt_path)
    baseline = text.unigram_bits()
    extra = {
        "task": "lm",
        "vocab": text.vocab,
        "data": data,
        "reading": {"encoding": opts["encoding"], "max_bytes": opts["max_bytes"]},
        "corpus": text.source,
        "unigram_bits": baseline,
        "options": {k: opts[k] for k in FIXED_ON_RESUME},
    }
    if cluster is not None:
        extra["cluster"] = cluster_record
    _describe_lm(opts, model, text, baseline)
    if cluster is not None:
        print(cluster_mod.describe(trainer, cluster_record))
    try:
        _loop(
            trainer,
            batches,
            opts,
            out,
            out / "metrics.csv",
            extra,
            baseline=baseline,
            unit=Unit("chars", "chars_s", "chars_per_s", B * T),
            evaluate=lambda: lm.bits_per_char(lm.evaluate(model, text.valid, seq_len=T, batch=B, max_chars=100_000)),
            to_metric=lm.bits_per_char,
            metric_name="bits/char",
            sampler=lambda: lm.sample(
                model, text.vocab, length=240, temperature=0.8, prime="def ", rng=np.random.default_rng(trainer.step)
            ),
        )
    finally:
        if cluster is not None:
            cluster_mod.close(cluster)


def _lm_model_and_text(ctx, opts, ckpt_path, xp, device) -> tuple:
    """``(model, optimizer, text, data, saved)``: a new model and optimizer and the corpus read, or, with
    ``--resume``, the checkpoint's, its text read again as it was (unless told otherwise) and what the
    checkpoint saved beside them (``saved``: empty for a new run)."""
    if not opts["resume"]:
        text = corpus_mod.build(opts["data"], encoding=opts["encoding"], max_bytes=opts["max_bytes"])
        model = lm.build_model(len(text.vocab), **_model_options(opts, xp, device))
        return model, optim.AdamW(lr=opts["lr"], weight_decay=0.01), text, opts["data"], {}
    ckpt, saved, model = _resume_setup(ctx, opts, ckpt_path, "lm", xp, device)
    data = opts["data"] if _explicit(ctx, "data") else saved.get("data")
    for name in ("encoding", "max_bytes"):
        if not _explicit(ctx, name) and name in saved.get("reading", {}):
            opts[name] = saved["reading"][name]
    text = corpus_mod.build(data, vocab=saved["vocab"], encoding=opts["encoding"], max_bytes=opts["max_bytes"])
    return model, optimizer_from_checkpoint(ckpt), text, data, saved


def _model_options(opts: dict, xp: Any, device: Any) -> dict[str, Any]:
    """What a new run's model is built from (the language model's and the tasks' alike)."""
    names = ("hidden", "layers", "embed", "dropout", "dtype", "seed", "cell", "zoneout")
    return {name: opts[name] for name in names} | {"xp": xp, "device": device}


def _describe_lm(opts: dict, model: Any, text: Any, baseline: float) -> None:
    n_params = sum(int(np.prod(v.shape)) for v in model.params.values())
    print(
        f"corpus: {text.source}: {text.train.size:,} training and {text.valid.size:,} validation characters, "
        f"vocabulary {len(text.vocab)}; read as {'; '.join(text.notes)}"
    )
    print(
        f"model: embedding {opts['embed']} → {type(model.layers['gru']).__name__} {opts['layers']}×{opts['hidden']} → linear, "
        f"{n_params:,} parameters, "
        f"{opts['backend']} {opts['dtype']}; batch {opts['batch']} × window {opts['seq_len']}, AdamW lr {opts['lr']}"
    )
    print(f"unigram baseline: {baseline:.3f} bits/char on the validation text")


RECENT = 20  # the training figure beside each validation score: the mean loss of the last 20 steps


class Unit(NamedTuple):
    """What the throughput counts: characters (language model) or sequences (synthetic tasks)."""

    name: str
    short: str  # in the progress bar
    column: str  # in metrics.csv
    per_step: int


class _StopRequest:
    """SIGINT (Ctrl-C) and SIGTERM set a flag that the loop checks between steps.

    No KeyboardInterrupt is ever raised into the middle of a step, an evaluation or a plot (where
    a library callback may swallow it: matplotlib printed "Exception ignored in ..." and training
    went on), so "Ctrl-C saves and exits 0" holds every time, and SIGTERM saves the same way.
    """

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                number = getattr(signal, name)
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def _last_seconds(metrics: Path) -> float:
    """The training time metrics.csv had reached (0 where it is missing or holds no rows)."""
    try:
        rows = list(csv.DictReader(metrics.read_text().splitlines()))
        return float(rows[-1]["seconds"]) if rows else 0.0
    except (OSError, KeyError, ValueError):
        return 0.0


def _loop(trainer, batches, opts, out, metrics, extra, *, baseline, unit, evaluate, to_metric, metric_name, sampler) -> None:
    """The shared training loop: progress, evaluation, samples, checkpoints, metrics, plot, signals."""
    run = _Run(trainer, opts, out, metrics, baseline=baseline, unit=unit, evaluate=evaluate, to_metric=to_metric,
               metric_name=metric_name, sampler=sampler)  # fmt: skip
    first_step = trainer.step
    with _StopRequest() as stop:
        try:
            while stop.received is None and not run.finished():
                run.step(batches)
                if stop.received is None:
                    run.evaluate_and_sample(extra)
        except KeyboardInterrupt:  # outside the main thread no handler is installed
            stop.received = "SIGINT"
        except ClusterError as exc:  # the cluster kept failing: keep what was trained, say how to go on
            run.progress.close()
            path = trainer.save(extra=extra)
            raise click.ClickException(
                f"{exc}. Checkpoint {path} saved at step {trainer.step}: continue with --resume --scheduler ADDRESS"
            ) from exc
        except NonFiniteLossError:
            run.progress.close()
            if run.created and not any(out.iterdir()):
                out.rmdir()  # it failed before anything was saved
            raise
        run.progress.close()
        elapsed = time.perf_counter() - run.started
        trainer.save(extra=extra)  # first: whatever follows may take a while
        if run.window_losses:  # steps since the last evaluation: evaluate at the end, interrupted or not
            run.record(final=True)
    run.report(stop.received, first_step, elapsed)


class _Run:
    """One run of the training loop: its clocks, its window of recent losses, what it writes."""

    def __init__(self, trainer, opts, out, metrics, *, baseline, unit, evaluate, to_metric, metric_name, sampler) -> None:
        self.trainer, self.opts, self.out, self.metrics = trainer, opts, out, metrics
        self.baseline, self.unit, self.evaluate, self.to_metric = baseline, unit, evaluate, to_metric
        self.metric_name, self.sampler = metric_name, sampler
        self.steps, self.budget = opts["steps"], opts["time_budget"]
        self.fresh = not opts["resume"]
        self.created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)  # only now: a run refused earlier leaves no folder behind
        self.progress = _Progress(steps=self.steps, budget=self.budget if self.steps is None else None, start_step=trainer.step)
        self.window_losses: list[float] = []
        self.started = self.window_start = time.perf_counter()
        self.window_items = self.total_items = 0
        self.earlier = 0.0 if self.fresh else _last_seconds(metrics)  # metrics.csv's clock goes on across --resume
        self.last_valid: float | None = None
        # With a time budget and no explicit periods, evaluate (and sample) by the clock as well, about 8
        # (and 4) times per run, so a slow or loaded machine still gets a curve, not one point.
        by_clock = self.steps is None
        self.eval_seconds = self.budget / 8 if by_clock and not opts.get("eval_every_explicit") else math.inf
        self.sample_seconds = self.budget / 4 if by_clock and not opts.get("sample_every_explicit") else math.inf
        self.last_eval = self.last_sample = time.perf_counter()

    def finished(self) -> bool:
        if self.steps is not None:
            return self.trainer.step >= self.steps
        return time.perf_counter() - self.started >= self.budget

    def step(self, batches) -> None:
        trainer = self.trainer
        # a cluster's trainer reads its windows on the workers (batches is None)
        result = trainer.train_step() if batches is None else trainer.train_step(gruxp.Batch(*batches(trainer.step, trainer.rng)))
        self.window_losses.append(result["loss"])
        self.window_items += self.unit.per_step
        self.total_items += self.unit.per_step
        speed = self.total_items / (time.perf_counter() - self.started)
        self.progress.advance(
            loss=f"{self.to_metric(result['loss']):.3f} {self.metric_name}",
            **{self.unit.short: f"{speed:,.0f}"},
            step=str(trainer.step),
        )

    def evaluate_and_sample(self, extra: dict) -> None:
        """Every ``--eval-every`` steps (or by the clock): save and evaluate; every ``--sample-every``: sample."""
        now, step = time.perf_counter(), self.trainer.step
        if step % self.opts["eval_every"] == 0 or now - self.last_eval >= self.eval_seconds:
            self.trainer.save(extra=extra)
            self.record()
            self.last_eval = time.perf_counter()
        if self.sampler is not None and (step % self.opts["sample_every"] == 0 or now - self.last_sample >= self.sample_seconds):
            self.last_sample = now
            self.progress.write(f"--- sample at step {step} ---\n{self.sampler()}\n---")

    def record(self, final: bool = False) -> None:
        """Evaluate, append a row to metrics.csv, redraw the plot, and start a new window."""
        self.last_valid = valid = self.evaluate()
        recent = self.window_losses[-RECENT:]  # the mean since the last evaluation would lag far behind
        train_metric = self.to_metric(float(np.mean(recent)))
        speed = self.window_items / max(time.perf_counter() - self.window_start, 1e-9)
        row = {
            "step": self.trainer.step,
            "seconds": round(self.earlier + time.perf_counter() - self.started, 2),
            "train": round(train_metric, 5),
            "valid": round(valid, 5),
            self.unit.column: round(speed, 1),
        }
        _write_metrics(self.metrics, row, fresh=self.fresh)
        self.fresh = False
        _plot(
            self.metrics,
            self.out / "loss.png",
            baseline=self.baseline,
            ylabel=self.metric_name,
            baseline_label="unigram baseline" if self.sampler is not None else "memoryless baseline",
        )
        name = self.metric_name
        self.progress.write(
            f"step {self.trainer.step}: train {train_metric:.3f} {name} (mean of the last {len(recent)} "
            f"steps), validation {valid:.3f} {name} (baseline {self.baseline:.3f}){' [final]' if final else ''}"
        )
        self.window_losses, self.window_items, self.window_start = [], 0, time.perf_counter()

    def report(self, stopped_by: str | None, first_step: int, elapsed: float) -> None:
        trainer, name = self.trainer, self.metric_name
        resumed = f" (resumed at step {first_step})" if self.opts["resume"] else ""
        if stopped_by is not None:
            print(f"interrupted by {stopped_by} at step {trainer.step}{resumed}: checkpoint saved to {trainer.checkpoint}")
            return
        if self.last_valid is None:  # nothing was trained (a stop before the first step)
            print(f"done: no steps taken; checkpoint {trainer.checkpoint} is at step {trainer.step}")
            return
        if self.sampler is not None:
            print(f"--- sample ---\n{self.sampler()}\n---")
        print(
            f"done: {trainer.step - first_step} steps{resumed}, now at step {trainer.step}, in {elapsed:.0f} s, "
            f"{self.total_items / max(elapsed, 1e-9):,.0f} {self.unit.name}/s; "
            f"validation {self.last_valid:.3f} {name} vs baseline {self.baseline:.3f}; "
            f"checkpoint {trainer.checkpoint}, metrics {self.metrics}"
            + (f", plot {self.out / 'loss.png'}" if (self.out / "loss.png").exists() else "")
        )


def _train_task(ctx, opts, xp, device, out, ckpt_path) -> None:
    from . import tasks

    opts["seq_len"] = opts["seq_len"] or 50
    if opts["steps"] is None and not _explicit(ctx, "time_budget"):
        opts["time_budget"] = 120.0
    task = tasks.TASKS[opts["task"]]
    if opts["resume"]:
        ckpt, extra, model = _resume_setup(ctx, opts, ckpt_path, opts["task"], xp, device)
        optimizer = optimizer_from_checkpoint(ckpt)
    else:
        model = task.build(**_model_options(opts, xp, device))
        optimizer = optim.Adam(lr=opts["lr"])
    T, B = opts["seq_len"], opts["batch"]
    trainer = gruxp.Trainer(model, task.loss, optimizer, clip_norm=opts["clip"], checkpoint=ckpt_path, seed=opts["seed"])
    if opts["resume"]:
        trainer.resume(ckpt_path)
    put = lambda a: xp.asarray(a, device=device) if a.dtype.kind in "iu" else xp.asarray(a, dtype=model.dtype, device=device)  # noqa: E731
    batches = lambda step, rng: tuple(put(a) for a in task.batch(rng, B, T))  # noqa: E731
    test = tuple(put(a) for a in task.batch(np.random.default_rng(10_000 + opts["seed"]), 500, T))
    baseline = task.baseline(T)
    # what was applied: the adding task has no embedding
    options = {k: opts[k] for k in FIXED_ON_RESUME if not (k == "embed" and opts["task"] == "adding")}
    extra = {"task": opts["task"], "options": options}
    print(f"task: {task.title} with T={T}; baseline (a memoryless model): {baseline:.4f} {task.metric}")

    def evaluate() -> float:
        model.eval()
        try:
            y, _ = model(test[0])
            return float(task.loss(y, test[1])[0])
        finally:
            model.train()

    _loop(
        trainer,
        batches,
        opts,
        out,
        out / "metrics.csv",
        extra,
        baseline=baseline,
        unit=Unit("sequences", "seq_s", "sequences_per_s", B),
        evaluate=evaluate,
        to_metric=lambda v: v,
        metric_name=task.metric,
        sampler=None,
    )


DEFAULT_CHECKPOINT = "gruxp-run/checkpoint.npz"  # where `gruxp train` saves by default


@cli.command("sample")
@click.argument("checkpoint_path", metavar="[CHECKPOINT]", type=click.Path(dir_okay=False), default=DEFAULT_CHECKPOINT)
@click.option("--temperature", type=POSITIVE_FLOAT, default=0.8, show_default=True)
@click.option("--length", type=POSITIVE_INT, default=500, show_default=True)
@click.option("--prime", type=str, default="def ", show_default=True, help="Text to start from.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--backend", type=click.Choice(list(BACKENDS)), default="numpy", show_default=True)
@click.option("--device", type=str, default=None)
def sample_cmd(
    checkpoint_path: str, temperature: float, length: int, prime: str, seed: int, backend: str, device: str | None
) -> None:
    """Generate text from a language-model checkpoint (default: the default run's, gruxp-run/checkpoint.npz)."""
    if checkpoint_path == DEFAULT_CHECKPOINT and not Path(checkpoint_path).exists():
        raise click.UsageError(f"no checkpoint named, and none at {DEFAULT_CHECKPOINT}: run `gruxp train` first, or name one")
    model, extra = _load_lm(checkpoint_path, backend, device)
    start = time.perf_counter()
    text = lm.sample(model, extra["vocab"], length=length, temperature=temperature, prime=prime, rng=np.random.default_rng(seed))
    seconds = time.perf_counter() - start
    click.echo(prime + text)
    # on stderr: stdout stays the text alone, to pipe
    click.echo(f"sampled {length:,} characters in {seconds:.2f} s: {length / max(seconds, 1e-9):,.0f} chars/s", err=True)


@cli.command("eval")
@click.argument("checkpoint_path", metavar="CHECKPOINT", type=click.Path(dir_okay=False))
@click.option("--data", type=str, required=True, help="A text file or folder to score.")
@ENCODING_OPTION
@MAX_BYTES_OPTION
@click.option("--backend", type=click.Choice(list(BACKENDS)), default="numpy", show_default=True)
@click.option("--device", type=str, default=None)
def eval_cmd(checkpoint_path: str, data: str, encoding: str | None, max_bytes: int, backend: str, device: str | None) -> None:
    """Loss and bits per character of a language-model checkpoint on a text."""
    model, extra = _load_lm(checkpoint_path, backend, device)
    # scored as it is: no split, nothing added
    text, source = corpus_mod.read_whole(data, encoding=corpus_mod.check_encoding(encoding), max_bytes=max_bytes)
    if len(text) < 2:
        raise corpus_mod.CorpusError(f"{data!r} holds fewer than 2 characters")
    ids = corpus_mod.encode_text(text, extra["vocab"])
    seq_len = extra.get("options", {}).get("seq_len", 64)
    nats = lm.evaluate(model, ids, seq_len=seq_len, batch=32, max_chars=len(ids))
    unknown = int(np.sum(ids == len(extra["vocab"]) - 1)) if extra["vocab"][-1] == corpus_mod.UNKNOWN else 0
    click.echo(
        f"{source}: {len(ids):,} characters ({unknown:,} outside the vocabulary): "
        f"loss {nats:.4f} nats/char, {lm.bits_per_char(nats):.4f} bits/char"
    )


def _load_lm(path: str, backend: str, device: str | None):
    ckpt = checkpoint.load(path)
    extra = ckpt.meta.get("extra", {})
    if extra.get("task") != "lm" or "vocab" not in extra:
        raise checkpoint.CheckpointError(
            f"{path} holds a model of task {extra.get('task', 'none (not from gruxp train)')!r}, "
            "not a language model from 'gruxp train'"
        )
    xp, dev = load(backend, device, ckpt.meta["dtype"])
    return checkpoint.build_model(ckpt, xp=xp, device=dev), extra


@cli.command()
@click.option(
    "--plan",
    "plan_shape",
    type=POSITIVE_INT,
    nargs=4,
    default=None,
    metavar="B T I H",
    help="Print the CPU route's plan for a call of this shape (batch, steps, inputs, hidden) and why.",
)
@click.option("--layers", type=POSITIVE_INT, default=1, show_default=True, help="With --plan: the number of layers.")
@click.option("--bidirectional", is_flag=True, help="With --plan: a bidirectional GRU.")
@click.option("--cell", type=CellChoice(), default="gru", show_default=True, help="With --plan: the cell.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True, help="With --plan.")
@click.option(
    "--cpus",
    type=POSITIVE_INT,
    default=None,
    help="With --plan: plan for a machine of this many CPUs (all usable) instead of this one.",
)
def info(
    plan_shape: tuple[int, int, int, int] | None, layers: int, bidirectional: bool, cell: str, dtype: str, cpus: int | None
) -> None:
    """Versions, the backends of the matrix and their devices, NumPy's BLAS and gruxp's; or, with
    --plan, what the CPU route will run for a call of that shape."""
    if plan_shape is not None:
        _print_plan(plan_shape, layers=layers, bidirectional=bidirectional, cell=cell, dtype=dtype, cpus=cpus)
        return
    from gruxp.benchmarking import blas_info, describe_pool

    click.echo(f"gruxp {gruxp.__version__} (Python {sys.version.split()[0]}, NumPy {np.__version__})")
    for name in BACKENDS:
        click.echo(describe(name))
    for pool in blas_info():
        if pool.get("internal_api") in ("openblas", "mkl", "blis", None) or "note" in pool:
            click.echo(f"numpy BLAS: {describe_pool(pool)}")
    click.echo(f"CPU step: {_cpu_step()}")


def _cpu_step() -> str:
    """Which fuser and BLAS run NumPy's GRU step here (see README, "Speed on the CPU")."""
    from gruxp._native.blas import library
    from gruxp._native.plan import RULES

    config = gruxp.get_config()
    if not config["fast_routes"]:
        return "generic code (fast_routes=False, GRUXP_FAST_ROUTES=0)"
    lib = library()
    blas = (
        f"gruxp's own OpenBLAS {lib.version} ({lib.kernel} kernel, one thread a call)"
        if lib
        else "NumPy's matmul (gruxp's OpenBLAS not installed: pip install scipy-openblas64, or gruxp's fast extra)"
    )
    if importlib.util.find_spec("numba") is None or config["fuser"] == "numpy":
        return f"NumPy buffers, not fused (pip install numba, or the fast extra, for the fused step); {blas}"
    import numba

    loop = "the whole loop compiled" if lib else "a Python loop over compiled steps"
    return f"fused by numba {numba.__version__}, {loop} (for T·B·H² ≥ {RULES.numba_min_work:,}); {blas}"


def _print_plan(
    shape: tuple[int, int, int, int], *, layers: int, bidirectional: bool, cell: str, dtype: str, cpus: int | None
) -> None:
    from dataclasses import replace

    from gruxp._native import cpu_plan
    from gruxp._native.machine import this_machine
    from gruxp._native.plan import describe

    B, T, I, H = shape
    machine = this_machine() if cpus is None else replace(this_machine(), cpus=cpus, usable=cpus)
    where = f"this machine ({machine.cpus} CPUs, {machine.usable} usable now)" if cpus is None else f"a machine of {cpus} CPUs"
    direction = "bidirectional" if bidirectional else "unidirectional"
    name = gruxp.cells.get(cell).model.__name__
    click.echo(f"CPU plan for a {name}, B={B}, T={T}, I={I}, H={H}, {layers} layer(s), {direction}, {dtype}, on {where}:")
    for layer, plan in enumerate(
        cpu_plan(T, B, I, H, num_layers=layers, bidirectional=bidirectional, cell=cell, dtype=dtype, machine=machine)
    ):
        click.echo(f"layer {layer}: {'fused loop' if plan.route == 'fused' else 'generic code'}")
        click.echo(describe(plan))


@cli.command()
@click.option(
    "--backends", default="numpy", show_default=True, help="Comma-separated: numpy, torch, jax, array_api_strict, cupy."
)
@click.option("--batch", type=POSITIVE_INT, default=32, show_default=True)
@click.option("--seq-len", type=POSITIVE_INT, default=100, show_default=True)
@click.option("--hidden", type=POSITIVE_INT, default=256, show_default=True, help="Hidden size, also the input size.")
@click.option("--layers", type=POSITIVE_INT, default=1, show_default=True)
@click.option("--rounds", type=POSITIVE_INT, default=5, show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
def bench(backends: str, batch: int, seq_len: int, hidden: int, layers: int, rounds: int, dtype: str) -> None:
    """Time forward and forward+backward per step, with the ratio to torch.nn.GRU in the same run."""
    from . import bench as bench_mod

    names = [b.strip() for b in backends.split(",") if b.strip()]
    if not names:
        raise click.UsageError(f"--backends names no backend; choose from {', '.join(BACKENDS)}")
    for name in names:
        if name not in BACKENDS:
            raise click.UsageError(f"unknown backend {name!r} in --backends; choose from {', '.join(BACKENDS)}")
    bench_mod.run(names, batch=batch, seq_len=seq_len, hidden=hidden, layers=layers, rounds=rounds, dtype=dtype)

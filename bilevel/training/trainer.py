"""`meta_train`: the outer loop (paper Algorithm 1), the library's stateful shell.

Each outer step t = 1, ..., steps:

    tasks  ~ problem.sample_tasks(tasks_per_step, task generator)
    g      = hypergradient(problem, h, tasks)           (sharded over processes)
    g      <- g min(1, clip / ||g||)                     (optional)
    h      <- outer optimizer step with g; scheduler step (optional)
    every eval_every steps: mean of problem.eval_metrics on held-out tasks at h

A stateful estimator (single-loop: soba, amigo, bome, f2sa; bilevel.estimators.stateful)
gets the state its previous step returned (one slot per task of the step; the first step
starts it) and its direction is g; the state is part of the run's state, in every
checkpoint, so a resumed run continues it bit for bit.

Only this module holds state, writes files (through `RunDirectory` and `checkpoint`)
and prints; everything it calls is a pure function of tensors.
"""

import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from bilevel import devices
from bilevel.errors import DivergenceError, InvalidInputError, RunDirectoryError, RunWriteError
from bilevel.hypergradient import check_hyper, check_problem, hypergradient
from bilevel.info import INNER_GRAD_RATIO, LOSS_KEY, per_task_name
from bilevel.problem import BilevelProblem
from bilevel.training import checkpoint, distributed
from bilevel.training import warm_start as warm_starts
from bilevel.training.callbacks import Callback
from bilevel.training.metrics import evaluate_held_out, held_out_tasks, non_finite, run_generator
from bilevel.training.optimizers import global_norm
from bilevel.training.rundir import RunDirectory, check_settings, settings_digest
from bilevel.training.spec import RunSpec
from bilevel.tree import fingerprint, tree_flatten, tree_leaves, tree_map, tree_unflatten

# Quantities checked for NaN / Inf at every step (as `Info.scalars` names them), and how the
# error names them.
WATCHED = {"loss": "the loss", "grad_norm": "the hypergradient's norm",
           "inner_grad_norm_mean": "an inner solution's gradient norm",
           "inner_grad_norm_max": "an inner solution's gradient norm"}


@dataclasses.dataclass(frozen=True)
class MetaTrainResult:
    """h: the final hyperparameters; history: one record per step (as in metrics.jsonl);
    run_dir: the run directory (None without `out`); summary: as in summary.json."""

    h: dict
    history: list
    run_dir: Path | None
    summary: dict


def meta_train(problem: BilevelProblem, spec: RunSpec | None = None, *,
               out: str | os.PathLike | None = None, resume: bool = False,
               callbacks: Sequence[Callback] = (), **options) -> MetaTrainResult:
    """Meta-train h = problem.init_hyper() as `spec` says (a `RunSpec`), or as the keyword
    `options` say, which build one: `meta_train(problem, solver=..., method=..., steps=...,
    tasks_per_step=...)`, with evaluation as `eval_every` and `eval_tasks` (both 0: never);
    every other keyword is a `RunSpec` field (`bilevel.training.spec`, which says what each
    one means).

    out: run directory (settings.json, metrics.jsonl, summary.json, plots, checkpoint.pt);
    resume: continue the run in `out` from its checkpoint, bit for bit on CPU (the options
        of `bilevel.training.spec.RESUMABLE` may change, no other);
    callbacks: `Callback`s told of every completed step and evaluation (after its
        checkpoint); one that raises stops the run, its last step kept.

    Raises DivergenceError when a loss, an inner gradient norm or the hypergradient is not
    finite, or grows past spec.divergence_factor (the last good checkpoint is kept); warns
    once when the inner solves are far from converged for an estimator that assumes they
    are; KeyboardInterrupt (Ctrl-C) checkpoints the last completed step and re-raises.
    """
    if spec is None:
        spec = RunSpec.from_keywords(**options)
    elif options:
        raise InvalidInputError(f"meta_train takes a spec or keyword options, not both; got "
                                f"spec and {', '.join(sorted(options))}")
    elif not isinstance(spec, RunSpec):
        raise InvalidInputError(f"spec must be a bilevel.RunSpec, got {spec!r}")
    run = _Run(problem, spec, out=out, resume=resume, callbacks=callbacks)
    interrupts, stack = _Interrupts(), contextlib.ExitStack()
    bar = None
    try:
        stack.enter_context(devices.torch_threads(spec.threads))
        run.start()
        bar = _progress_bar(spec.progress and run.processes.is_main, spec.steps, run.step)
        with interrupts:
            while run.step < spec.steps:
                record = run.train_step(interrupts)
                if bar is not None:
                    bar.set_postfix_str(_postfix(record), refresh=False)
                    bar.update(1)
                run.tell(record)
        # Leave together: a gloo process that tears down its group while another still
        # writes its last checkpoint can abort at exit.
        distributed.barrier(run.processes)
    except DivergenceError as error:
        run.finish("diverged", str(error))
        raise
    except KeyboardInterrupt:
        run.interrupted(torn=interrupts.torn)
        raise
    finally:
        if bar is not None:
            bar.close()
        if run.files is not None:
            run.files.close()
        distributed.stop(run.processes)
        stack.close()
    return run.finish("completed")


class _Run:
    """The state of one run: h's leaf tensors, the outer optimizer and scheduler, the
    generators, the history; and the files of the main process."""

    def __init__(self, problem, spec: RunSpec, *, out, resume: bool,
                 callbacks: Sequence[Callback]):
        check_problem(problem)
        self.problem, self.spec, self.callbacks = problem, spec, tuple(callbacks)
        if out is None and (resume or spec.checkpoint_every is not None):
            raise InvalidInputError(
                "resume and checkpoint_every need a run directory: pass out=DIR")
        self.resume = resume
        self.warm = (None if spec.warm_start is None
                     else warm_starts.WarmStarts(spec.warm_start, problem, compile=spec.compile))
        if self.warm is not None and spec.method.stateful:
            raise InvalidInputError(f"warm_start cannot be used with {spec.method.name!r}, which "
                                    "carries its own inner variables across steps")
        # A stateful estimator's state (single-loop methods): one slot per task of the step.
        self.estimator_state: Mapping | None = None
        self.warned_unconverged = False
        self.out = None if out is None else Path(out)
        self.processes = distributed.Processes()
        self.files: RunDirectory | None = None
        self.step, self.elapsed = 0, 0.0
        self.history: list[dict] = []
        # Inner gradient evaluations so far: of the hypergradients, of the held-out solves.
        self.evals_total = self.held_out_evals_total = 0
        self.saved_step: int | None = None  # the step of the checkpoint on disk

    # Setting up -----------------------------------------------------------------------

    def start(self) -> None:
        """Set the run up, in this order: torch's global seed, h, the process group, the
        held-out tasks, the task generator, the run directory (locked), h and state from a
        checkpoint (resume), the outer optimizer, the record of the run; then the callbacks'
        `on_start`."""
        spec = self.spec
        torch.manual_seed(spec.seed)  # a resumed run restores the state saved instead
        h = self.problem.init_hyper(run_generator(spec.seed, 0))
        check_hyper(h, name=f"{type(self.problem).__name__}.init_hyper()")
        leaves, self.treespec = tree_flatten(h)
        if spec.hyper_penalty is not None:
            self.penalized = spec.hyper_penalty.mask(h)
        self.device = leaves[0].device
        self.processes = distributed.start(self.device)
        for what, used in (("warm_start", self.warm is not None),
                           (f"method {spec.method.name!r} (stateful)", spec.method.stateful)):
            if used and self.processes.world_size > 1:
                raise InvalidInputError(f"{what} runs in one process only, got "
                                        f"{self.processes.world_size} processes (torchrun)")
        self.eval_shard = None
        if spec.eval is not None:
            batch = held_out_tasks(self.problem, spec.eval.tasks, spec.seed)
            self.eval_shard, _ = distributed.shard(batch, spec.eval.tasks, self.processes,
                                                   "eval_tasks")
        self.generators = {"tasks": run_generator(spec.seed, 1)}
        self.dtype = leaves[0].dtype
        # What identifies the problem: its class and init_hyper here, its first batch of
        # tasks in the checkpoint (`_check_first_tasks`).
        self.problem_record = {
            "class": f"{type(self.problem).__module__}.{type(self.problem).__qualname__}",
            "init_hyper": fingerprint(h)}
        self.first_tasks: str | None = None
        self.digest = settings_digest(self.settings(self.dtype))  # kept in every checkpoint
        if self.out is not None and self.processes.is_main:
            self.files = RunDirectory(self.out, resume=self.resume)
        saved = self._checkpoint() if self.resume else None
        if saved is not None:
            leaves = _matching_leaves(saved["h"], self.treespec, leaves, self.out)
        self.params = [leaf.detach().clone().requires_grad_(True) for leaf in leaves]
        self.optimizer, self.scheduler = spec.outer.build(self.params)
        if saved is not None:
            self._restore(saved)
        self.rng = checkpoint.rng_states(self.generators)
        self.clock = time.perf_counter()
        if self.files is not None:
            self.files.write_settings(self.settings(self.dtype), resume=self.resume)
            self.files.restart_metrics(self.history)
        if self.processes.is_main:
            for callback in self.callbacks:
                callback.on_start(self.out, self.step)

    def _checkpoint(self) -> dict | None:
        """The checkpoint to resume from, checked to be this run's (its settings digest and
        its step against its history); None for a run killed before its first checkpoint
        (settings.json written, no checkpoint.pt), which starts again from step 0."""
        assert self.out is not None, "resume without out=DIR"  # refused in __init__
        if not (self.out / checkpoint.FILENAME).exists() and (self.out / "settings.json").exists():
            return None
        saved = checkpoint.load(self.out)
        check_settings(self.out, self.settings(self.dtype))  # names the keys that differ
        if saved.get("settings_digest") != self.digest:
            raise RunDirectoryError(f"resume: {self.out / checkpoint.FILENAME} is not a checkpoint "
                                    "of this run (its settings differ, or it records none)")
        history = saved.get("history", [])
        if saved.get("step") != len(history) or (history and history[-1]["step"] != len(history)):
            raise RunDirectoryError(f"resume: {self.out / checkpoint.FILENAME} is inconsistent: "
                                    f"step {saved.get('step')!r} after {len(history)} logged steps")
        self._check_first_tasks(saved.get("first_tasks"))
        if saved["step"] > self.spec.steps:
            raise RunDirectoryError(f"resume: the run in {self.out} has done {saved['step']} "
                                    f"steps, more than steps={self.spec.steps}; resume with "
                                    f"steps >= {saved['step']}")
        return saved

    def _check_first_tasks(self, recorded: str | None) -> None:
        """The problem draws the first batch of tasks that the checkpoint's run drew (its
        fingerprint): the same problem, with the same data and arguments."""
        if recorded is None:
            return
        with torch.random.fork_rng(devices=[]):
            batch = self.problem.sample_tasks(self.spec.tasks_per_step,
                                              run_generator(self.spec.seed, 1))
        if fingerprint(batch) != recorded:
            raise RunDirectoryError(
                f"resume: {type(self.problem).__name__}'s tasks differ from those the run in "
                f"{self.out} was trained on (its first batch of tasks, drawn from the run's "
                "seed, is another): another problem, or its data or arguments changed")

    def _restore(self, saved: dict) -> None:
        """The optimizer, scheduler, generators, step, history and totals of a checkpoint."""
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(saved["scheduler"])
        checkpoint.set_rng_states(self.generators, saved["rng"])
        self.step, self.history = saved["step"], saved["history"]
        self.evals_total, self.elapsed = saved["inner_grad_evals_total"], saved["time"]
        self.held_out_evals_total = saved.get("held_out_inner_grad_evals_total", 0)
        self.first_tasks = saved.get("first_tasks")
        if self.warm is not None:
            self.warm.restore(saved["warm_start"], self.device)
        self.estimator_state = self._saved_estimator_state(saved.get("estimator_state"))
        self.saved_step = self.step

    def _saved_estimator_state(self, state) -> dict | None:
        """A checkpoint's estimator state on the run's device, its slots checked against
        the tasks of a step (its shapes are checked at the next step, against the problem)."""
        if not self.spec.method.stateful or state is None:
            return None
        slots = {leaf.shape[0] if leaf.ndim else None for leaf in tree_leaves(state)}
        if slots != {self.spec.tasks_per_step}:
            raise RunDirectoryError(
                f"resume: the state of {self.spec.method.name!r} in {self.out} has "
                f"{sorted(slots, key=str)} task slots, but a step has "
                f"tasks_per_step={self.spec.tasks_per_step} tasks")
        return tree_map(lambda t: t.to(self.device), state)

    def settings(self, dtype) -> dict:
        """The record of the run: the problem, the spec's options, and where it runs."""
        return {"problem": self.problem_record, **self.spec.record(),
                "world_size": self.processes.world_size, "device": str(self.device),
                "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__}

    # One step ------------------------------------------------------------------------

    def h(self) -> dict:
        return tree_unflatten([p.detach() for p in self.params], self.treespec)

    def train_step(self, interrupts: "_Interrupts") -> dict:
        t = self.step + 1
        spec = self.spec
        batch = self.problem.sample_tasks(spec.tasks_per_step, self.generators["tasks"])
        if t == 1:
            self.first_tasks = fingerprint(batch)
        tasks, n_local = distributed.shard(batch, spec.tasks_per_step, self.processes,
                                           "tasks_per_step")
        problem, solver, warm, warm_entries = self.problem, spec.solver, None, []
        if self.warm is not None:
            (problem, tasks, solver), warm, stats, steps = self.warm.prepare(
                self.h(), tasks, spec.solver, t)
            warm_entries = warm_starts.scalars(stats, steps * n_local, self.device)
        # "keep": a non-finite task stops the run below, as a DivergenceError.
        grad, info = hypergradient(problem, self.h(), tasks, solver=solver,
                                   method=spec.method, on_non_finite="keep",
                                   compile=spec.compile, state=self.estimator_state)
        grads = tree_flatten(distributed.mean_over_tasks(grad, n_local, spec.tasks_per_step,
                                                         self.processes))[0]
        entries = []
        if spec.hyper_penalty is not None:
            value, extra = spec.hyper_penalty.value_and_grad(self.params, self.penalized)
            grads = [g + e for g, e in zip(grads, extra, strict=True)]
            entries.append(("hyper_penalty", value, "same"))
        norm = global_norm(grads)
        entries.append(("grad_norm", norm.detach().to(torch.float64), "same"))
        entries += info.scalars(self.device) + warm_entries
        scalars = distributed.combine(entries, n_local, spec.tasks_per_step, self.processes)
        if self.warm is not None:  # the step's cost: the warm solves' and the estimator's
            for key in ("inner_grad_evals", "grad_evals"):
                scalars[key] += scalars["warm_start_inner_grad_evals"]
        self._check(t, scalars, WATCHED, spent=scalars)
        self._check_growth(t, scalars)
        self._warn_if_unconverged(scalars)
        with interrupts.deferred():
            lr = self.optimizer.param_groups[0]["lr"]
            coefficient = spec.outer.clip_coefficient(norm)
            for param, g in zip(self.params, grads, strict=True):
                param.grad = g if coefficient is None else g * coefficient
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            self.evals_total += scalars.get("inner_grad_evals", 0)
            record = {"step": t, "loss": scalars.pop("loss")}
            record |= {"grad_norm": scalars.pop("grad_norm"), "lr": lr,
                       "inner_grad_evals_total": self.evals_total}
            if spec.eval is not None and (t % spec.eval.every == 0 or t == spec.steps):
                means, cost = evaluate_held_out(self.problem, self.h(), self.eval_shard,
                                                spec.solver, spec.eval.tasks, self.processes,
                                                compile=spec.compile)
                self._check(t, means, {k: f"the held-out {k[5:]}" for k in means}, spent=scalars
                            | {"held_out_inner_grad_evals": cost.inner_grad_evals})
                self.held_out_evals_total += cost.inner_grad_evals
                record |= means | {"held_out_inner_grad_evals": cost.inner_grad_evals}
            record["total_inner_grad_evals"] = self.evals_total + self.held_out_evals_total
            record |= {"time": self.elapsed + time.perf_counter() - self.clock} | scalars
            self.step = t
            self.history.append(record)
            if self.warm is not None:
                self.warm.commit(warm)
            if info.state is not None:
                self.estimator_state = info.state
            self.rng = checkpoint.rng_states(self.generators)
            if self.files is not None:
                try:
                    self.files.log(record)
                except RunWriteError as error:
                    raise self._stopped(error) from None
                every = spec.checkpoint_every
                if t == spec.steps or (every and t % every == 0):
                    self.save()
        return record

    def tell(self, record: dict) -> None:
        """Each callback's hooks for the step just done; one that raises stops the run
        (recorded as stopped, the step kept)."""
        if not self.callbacks or not self.processes.is_main:
            return
        h, evaluated = self.h(), any(key.startswith("eval_") for key in record)
        try:
            for callback in self.callbacks:
                callback.on_step(record, h)
                if evaluated:
                    callback.on_evaluation(record, h)
        except Exception as error:
            if self.files is not None and self.saved_step != self.step:
                self.save()
            self.finish("stopped", f"a callback stopped the run after step {self.step}: "
                                   f"{type(error).__name__}: {error}")
            raise

    def _check(self, t: int, values: dict, watched: dict, spent: dict) -> None:
        """A DivergenceError at step t if one of `watched` in `values` is not finite; `spent`:
        the step's work so far (DivergenceError.spent)."""
        bad = non_finite(values, watched)
        if bad is not None:
            raise DivergenceError(t, f"{watched[bad]} ({bad})", self._kept(), spent=spent)

    def _check_growth(self, t: int, values: dict) -> None:
        """Blow-ups that stay finite (float64 can reach 1e+300): an inner solve whose gradient
        norm grew past divergence_factor times its first, or a loss that did against the
        run's first."""
        ratio = values.get(per_task_name(INNER_GRAD_RATIO, "max"))
        factor = self.spec.divergence_factor
        if ratio is not None and ratio > factor:
            raise DivergenceError(t, "an inner solve", self._kept(), spent=values, problem=(
                f"blew up: its gradient norm grew {ratio:.3g}-fold over the solve (more than "
                f"divergence_factor={factor:g}); lower the solver's lr"))
        first, loss = (self.history[0]["loss"] if self.history else None), values.get("loss")
        if first and loss is not None and abs(loss) > factor * abs(first):
            raise DivergenceError(t, "the loss", self._kept(), spent=values, problem=(
                f"blew up: {loss:.3g} against {first:.3g} at step 1 (more than "
                f"divergence_factor={factor:g} times); lower the outer lr"))

    def _warn_if_unconverged(self, values: dict) -> None:
        """Once per run: the estimator's result assumes converged inner solves (fo-bmaml,
        fo-bmaml-jvp, imaml, exact), but the solves cut the gradient norm less than 10-fold
        (warm-started: the warm solves, against the first step's cold start)."""
        metric = per_task_name(warm_starts.GRAD_RATIO, "mean")
        if metric not in values:
            metric = per_task_name(INNER_GRAD_RATIO, "mean")
        ratio = values.get(metric)
        assumes = self.spec.method.assumes_converged_inner
        if self.warned_unconverged or not assumes or ratio is None or ratio <= 0.1:
            return
        self.warned_unconverged = True
        warnings.warn(f"the inner solves are far from converged (final / first gradient norm "
                      f"{ratio:.2g} on average), but {self.spec.method.name!r} assumes converged "
                      "inner solutions: its hypergradient is biased; give the solver more steps or "
                      f"a larger lr (metrics: {metric})", stacklevel=4)

    def _kept(self) -> str:
        if self.out is None:
            return ""
        if self.saved_step is None:
            return f"; no checkpoint in {self.out} yet"
        return f"; the last good checkpoint (step {self.saved_step}) is kept in {self.out}"

    # Saving and stopping -------------------------------------------------------------

    def state(self) -> dict:
        return {
            "step": self.step,
            "h": tree_unflatten([p.detach().cpu() for p in self.params], self.treespec),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "rng": self.rng,
            "history": self.history,
            "inner_grad_evals_total": self.evals_total,
            "held_out_inner_grad_evals_total": self.held_out_evals_total,
            "time": self.elapsed + time.perf_counter() - self.clock,
            "settings_digest": self.digest,
            "first_tasks": self.first_tasks,
        } | ({} if self.warm is None else {"warm_start": self.warm.state()}) | (
            {} if self.estimator_state is None else
            {"estimator_state": tree_map(lambda t: t.detach().cpu(), self.estimator_state)})

    def save(self) -> None:
        assert self.out is not None, "save() without out=DIR"  # called only with files
        try:
            checkpoint.save(self.out, self.state())
        except RunWriteError as error:
            raise self._stopped(error) from None
        self.saved_step = self.step

    def _stopped(self, error: RunWriteError) -> RunWriteError:
        """A failed write (a full disk) as the error that stops the run: the step it stopped
        after, and the last good checkpoint, which is kept."""
        return RunWriteError(f"stopped after step {self.step}: {error}{self._kept()}")

    def interrupted(self, torn: bool) -> None:
        """Ctrl-C: checkpoint the last completed step, unless the interrupt tore a step
        (a second Ctrl-C during an update), and say how to resume."""
        if not self.processes.is_main:
            return
        if self.files is None:
            reason = " (no out=DIR)" if self.out is None else ""
            print(f"\ninterrupted after step {self.step}; nothing saved{reason}", file=sys.stderr)
            return
        if torn:
            message = (f"interrupted twice during step {self.step + 1}'s update, which is "
                       f"incomplete: not saved{self._kept()}")
        else:
            self.save()
            message = f"interrupted; checkpoint of step {self.step} written to {self.out}"
        self.finish("interrupted", message)
        config = self.files.path / "config.yaml"  # a run of `bilevel run`
        how = (f"bilevel run {config} --resume" if config.is_file() else
               f"meta_train(..., out={str(self.out)!r}, resume=True)")
        print(f"\n{message}\nresume with {how} (same settings; steps may grow)",
              file=sys.stderr)

    def finish(self, status: str, message: str | None = None) -> MetaTrainResult:
        summary = {"status": status, "message": message, "steps_completed": self.step,
                   "seed": self.spec.seed, "inner_grad_evals_total": self.evals_total,
                   "held_out_inner_grad_evals_total": self.held_out_evals_total,
                   "total_inner_grad_evals": self.evals_total + self.held_out_evals_total,
                   "last": self.history[-1] if self.history else None}
        key = f"eval_{LOSS_KEY}"
        evaluated = [r for r in self.history if key in r]
        if evaluated:
            best = min(evaluated, key=lambda r: r[key])
            summary["best_eval"] = {"step": best["step"], key: best[key]}
        if self.files is not None:
            self.files.finish(summary, self.history)
        h = tree_unflatten([p.detach().clone() for p in self.params], self.treespec)
        return MetaTrainResult(h, self.history, self.out, summary)


def _matching_leaves(saved_h, spec, fresh, out) -> list:
    """The checkpoint's h leaves, checked against the structure of problem.init_hyper()."""
    leaves, saved_spec = tree_flatten(saved_h)
    shapes = [tuple(leaf.shape) for leaf in leaves]
    expected = [tuple(leaf.shape) for leaf in fresh]
    if saved_spec != spec or shapes != expected:
        raise RunDirectoryError(f"resume: the hyperparameters in {out} do not match the problem's "
                           f"(keys/shapes {saved_h!r:.200} vs init_hyper's)")
    return [leaf.to(device=f.device, dtype=f.dtype) for leaf, f in zip(leaves, fresh,
                                                                        strict=True)]


def _progress_bar(show: bool, steps: int, initial: int):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=steps, initial=initial, desc="meta-train", unit="step", file=sys.stderr)


def _postfix(record: dict) -> str:
    loss = record.get("loss")
    text = f"|g|={record['grad_norm']:.3g}"
    return text if loss is None else f"loss={loss:.4g} {text}"


class _Interrupts:
    """While active, Ctrl-C (SIGINT) in a `deferred()` block is held until the block ends,
    so that a step is either wholly done or not begun; a second Ctrl-C there interrupts at
    once and marks the state `torn`. Elsewhere Ctrl-C interrupts at once (the step under
    way had changed nothing yet)."""

    def __init__(self):
        self.deferring = self.pending = self.torn = False
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum, frame):
        if self.deferring and not self.pending:
            self.pending = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self):
        self.deferring = True
        try:
            yield
        except KeyboardInterrupt:
            self.torn = True
            raise
        finally:
            self.deferring = False
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

"""`meta_train`: the outer loop (paper Algorithm 1), the library's stateful shell.

Each outer step t = 1, ..., steps:

    tasks  ~ problem.sample_tasks(tasks_per_step, task generator)
    g      = hypergradient(problem, h, tasks)           (sharded over processes)
    g      <- g min(1, clip / ||g||)                     (optional)
    h      <- outer optimizer step with g; scheduler step (optional)
    every eval_every steps: mean of problem.eval_metrics on held-out tasks at h

Only this module holds state, writes files (through `RunDirectory` and `checkpoint`)
and prints; everything it calls is a pure function of tensors.
"""

import contextlib
import dataclasses
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from bilevel import checks, compiled, devices
from bilevel.errors import DivergenceError, InvalidInputError, RunDirectoryError
from bilevel.estimators import estimators
from bilevel.hypergradient import check_hyper, check_problem, hypergradient
from bilevel.info import LOSS_KEY
from bilevel.registry import name_and_options
from bilevel.solvers import as_solver, solver_name
from bilevel.training import checkpoint, distributed
from bilevel.training import warm_start as warm_starts
from bilevel.training.hyper_penalty import HyperPenalty
from bilevel.training.metrics import evaluate_held_out, held_out_tasks, non_finite, run_generator
from bilevel.training.optimizers import OuterOptimizer, global_norm
from bilevel.training.rundir import RunDirectory, check_settings, settings_digest

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


def meta_train(problem, *, solver, method="fo-bmaml", outer="adam", steps: int,
               tasks_per_step: int, eval_every: int = 0, eval_tasks: int = 0, seed: int = 0,
               out=None, checkpoint_every: int | None = None, resume: bool = False,
               progress: bool = True, divergence_factor: float = 1e3,
               compile: bool | str = False, threads: int | None = None, warm_start=None,
               hyper_penalty=None) -> MetaTrainResult:
    """Meta-train h = problem.init_hyper() for `steps` outer steps.

    solver: the inner solver (`bilevel.solvers.InnerSolver`), or {"name": ..., **options};
    method: an estimator name or {"name": ..., **options};
    outer: an outer optimizer name or {"name": ..., **options, "clip": max norm,
        "schedule": {"name": ..., **options}} (`bilevel.training.optimizers`);
    eval_every, eval_tasks: evaluate on eval_tasks held-out tasks (drawn once) every
        eval_every steps and at the last step (both 0: never);
    seed: seeds the task, held-out and init generators and torch's global generator;
    out: run directory (settings.json, metrics.jsonl, summary.json, plots, checkpoint.pt);
    checkpoint_every: also checkpoint every this many steps (always at the end, with out);
    resume: continue the run in `out` from its checkpoint, bit for bit on CPU;
    divergence_factor: a blow-up that stays finite stops the run too: an inner solve whose
        final gradient norm exceeds its first by this factor, or a loss this many times the
        run's first (in absolute value);
    compile: run the hypergradients and held-out solves compiled (True, or "strict": no
        eager fallback), as `hypergradient(compile=...)`; close to eager (within float
        round-off) but not bit for bit, so it is part of the run's settings;
    threads: torch's CPU threads during the run (restored after); None: the environment
        variable BILEVEL_THREADS, else 1 (`bilevel.devices.threads`): the batched work of
        small problems runs fastest on one thread;
    warm_start: None (every step's solves start at problem.inner_init), or
        {"steps": k, "estimator_steps": k'} (`bilevel.training.warm_start.WarmStart`): for
        problems whose tasks are the same every step, each step continues the previous
        step's inner solutions for k steps and starts the estimator's solves there, with k'
        steps (default k); kept in checkpoints, counted in inner_grad_evals;
    hyper_penalty: None, or {"weight": w, "leaves": [dotted paths into h]}
        (`bilevel.training.hyper_penalty.HyperPenalty`): minimise F(h) + w/2 sum over those
        leaves of ||leaf - mean(leaf)||^2 (a remedy for overfitting the validation set).

    Raises DivergenceError when a loss, an inner gradient norm or the hypergradient is not
    finite, or grows past divergence_factor (the last good checkpoint is kept); warns once
    when the inner solves are far from converged for an estimator that assumes they are;
    KeyboardInterrupt (Ctrl-C) checkpoints the last completed step and re-raises.
    """
    run = _Run(problem, solver=solver, method=method, outer=outer, steps=steps,
               tasks_per_step=tasks_per_step, eval_every=eval_every, eval_tasks=eval_tasks,
               seed=seed, out=out, checkpoint_every=checkpoint_every, resume=resume,
               divergence_factor=divergence_factor, compile=compile, warm_start=warm_start,
               hyper_penalty=hyper_penalty)
    interrupts, stack = _Interrupts(), contextlib.ExitStack()
    bar = None
    try:
        stack.enter_context(devices.torch_threads(threads))
        run.start()
        bar = _progress_bar(progress and run.processes.is_main, steps, run.step)
        with interrupts:
            while run.step < steps:
                record = run.train_step(interrupts)
                if bar is not None:
                    bar.set_postfix_str(_postfix(record), refresh=False)
                    bar.update(1)
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
        distributed.stop(run.processes)
        stack.close()
    return run.finish("completed")


class _Run:
    """The state of one run: h's leaf tensors, the outer optimizer and scheduler, the
    generators, the history; and the files of the main process."""

    def __init__(self, problem, *, solver, method, outer, steps, tasks_per_step, eval_every,
                 eval_tasks, seed, out, checkpoint_every, resume, divergence_factor, compile,
                 warm_start, hyper_penalty):
        check_problem(problem)
        self.problem, self.solver = problem, as_solver(solver)
        self.method, self.method_options = _method(method)
        self.outer = OuterOptimizer.parse(outer)
        self.steps = checks.integer("steps", steps, minimum=1)
        self.tasks_per_step = checks.integer("tasks_per_step", tasks_per_step, minimum=1)
        self.eval_every = checks.integer("eval_every", eval_every)
        self.eval_tasks = checks.integer("eval_tasks", eval_tasks)
        if (self.eval_every == 0) != (self.eval_tasks == 0):
            raise InvalidInputError(f"eval_every and eval_tasks must be both 0 (no evaluation) "
                                    f"or both >= 1, got eval_every={eval_every!r}, "
                                    f"eval_tasks={eval_tasks!r}")
        self.seed = checks.integer("seed", seed)
        if checkpoint_every is not None:
            checks.integer("checkpoint_every", checkpoint_every, minimum=1)
        if out is None and (resume or checkpoint_every is not None):
            raise InvalidInputError(
                "resume and checkpoint_every need a run directory: pass out=DIR")
        self.checkpoint_every, self.resume = checkpoint_every, resume
        self.divergence_factor = checks.positive("divergence_factor", divergence_factor)
        self.compile = compiled.Compilation.of(compile)
        self.warm_start = warm_starts.WarmStart.parse(warm_start)
        self.warm = (None if self.warm_start is None
                     else warm_starts.WarmStarts(self.warm_start, problem, compile=self.compile))
        self.hyper_penalty = HyperPenalty.parse(hyper_penalty)
        self.warned_unconverged = False
        self.out = None if out is None else Path(out)
        self.processes = distributed.Processes()
        self.files = None
        self.step, self.history, self.elapsed = 0, [], 0.0
        # Inner gradient evaluations so far: of the hypergradients, of the held-out solves.
        self.evals_total = self.held_out_evals_total = 0
        self.saved_step = None  # the step of the checkpoint on disk

    # Setting up -----------------------------------------------------------------------

    def start(self) -> None:
        """Set the run up, in this order: torch's global seed, h, the process group, the
        held-out tasks, the task generator, h and state from a checkpoint (resume), the outer
        optimizer, the run directory."""
        torch.manual_seed(self.seed)  # a resumed run restores the state saved instead
        h = self.problem.init_hyper(run_generator(self.seed, 0))
        check_hyper(h, name=f"{type(self.problem).__name__}.init_hyper()")
        leaves, self.spec = tree_flatten(h)
        if self.hyper_penalty is not None:
            self.penalized = self.hyper_penalty.mask(h)
        self.device = leaves[0].device
        self.processes = distributed.start(self.device)
        if self.warm is not None and self.processes.world_size > 1:
            raise InvalidInputError(f"warm_start runs in one process only, got "
                                    f"{self.processes.world_size} processes (torchrun)")
        self.eval_shard = None
        if self.eval_tasks:
            batch = held_out_tasks(self.problem, self.eval_tasks, self.seed)
            self.eval_shard, _ = distributed.shard(batch, self.eval_tasks, self.processes,
                                                   "eval_tasks")
        self.generators = {"tasks": run_generator(self.seed, 1)}
        self.dtype = leaves[0].dtype
        self.digest = settings_digest(self.settings(self.dtype))  # kept in every checkpoint
        saved = self._checkpoint() if self.resume else None
        if saved is not None:
            leaves = _matching_leaves(saved["h"], self.spec, leaves, self.out)
        self.params = [leaf.detach().clone().requires_grad_(True) for leaf in leaves]
        self.optimizer, self.scheduler = self.outer.build(self.params)
        if saved is not None:
            self._restore(saved)
        self.rng = checkpoint.rng_states(self.generators)
        self.clock = time.perf_counter()
        if self.out is not None and self.processes.is_main:
            self._open_run_directory(self.dtype)

    def _checkpoint(self) -> dict | None:
        """The checkpoint to resume from, checked to be this run's (its settings digest and
        its step against its history); None for a run killed before its first checkpoint
        (settings.json written, no checkpoint.pt), which starts again from step 0."""
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
        return saved

    def _restore(self, saved: dict) -> None:
        """The optimizer, scheduler, generators, step, history and totals of a checkpoint."""
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(saved["scheduler"])
        checkpoint.set_rng_states(self.generators, saved["rng"])
        self.step, self.history = saved["step"], saved["history"]
        self.evals_total, self.elapsed = saved["inner_grad_evals_total"], saved["time"]
        self.held_out_evals_total = saved.get("held_out_inner_grad_evals_total", 0)
        if self.warm is not None:
            self.warm.restore(saved["warm_start"], self.device)
        self.saved_step = self.step

    def _open_run_directory(self, dtype) -> None:
        self.files = RunDirectory(self.out, resume=self.resume)
        self.files.write_settings(self.settings(dtype), resume=self.resume)
        self.files.restart_metrics(self.history)

    def settings(self, dtype) -> dict:
        solver = {"name": solver_name(self.solver)}
        if dataclasses.is_dataclass(self.solver):
            solver |= dataclasses.asdict(self.solver)
        estimator = estimators.build(self.method, self.method_options, argument="method")
        settings = {
            "problem": f"{type(self.problem).__module__}.{type(self.problem).__qualname__}",
            "solver": solver,
            "method": {"name": self.method, **dataclasses.asdict(estimator)},
            "outer": self.outer.as_dict(),
            "steps": self.steps, "tasks_per_step": self.tasks_per_step,
            "eval_every": self.eval_every, "eval_tasks": self.eval_tasks, "seed": self.seed,
            "checkpoint_every": self.checkpoint_every, "world_size": self.processes.world_size,
            "divergence_factor": self.divergence_factor, "compile": self.compile.mode,
            "device": str(self.device), "dtype": str(dtype).removeprefix("torch."),
            "torch": torch.__version__,
        }
        # Absent when not used: the settings of older runs keep their digest.
        if self.warm_start is not None:
            settings["warm_start"] = self.warm_start.as_dict()
        if self.hyper_penalty is not None:
            settings["hyper_penalty"] = self.hyper_penalty.as_dict()
        return settings

    # One step ------------------------------------------------------------------------

    def h(self) -> dict:
        return tree_unflatten([p.detach() for p in self.params], self.spec)

    def train_step(self, interrupts: "_Interrupts") -> dict:
        t = self.step + 1
        batch = self.problem.sample_tasks(self.tasks_per_step, self.generators["tasks"])
        tasks, n_local = distributed.shard(batch, self.tasks_per_step, self.processes,
                                           "tasks_per_step")
        problem, solver, warm, warm_entries = self.problem, self.solver, None, []
        if self.warm is not None:
            (problem, tasks, solver), warm, stats, steps = self.warm.prepare(
                self.h(), tasks, self.solver, t)
            warm_entries = warm_starts.scalars(stats, steps * n_local, self.device)
        # "keep": a non-finite task stops the run below, as a DivergenceError.
        grad, info = hypergradient(problem, self.h(), tasks, solver=solver,
                                   method=self.method, on_non_finite="keep",
                                   compile=self.compile, **self.method_options)
        grads = tree_flatten(distributed.mean_over_tasks(grad, n_local, self.tasks_per_step,
                                                         self.processes))[0]
        entries = []
        if self.hyper_penalty is not None:
            value, extra = self.hyper_penalty.value_and_grad(self.params, self.penalized)
            grads = [g + e for g, e in zip(grads, extra, strict=True)]
            entries.append(("hyper_penalty", value, "same"))
        norm = global_norm(grads)
        entries.append(("grad_norm", norm.detach().to(torch.float64), "same"))
        entries += info.scalars(self.device) + warm_entries
        scalars = distributed.combine(entries, n_local, self.tasks_per_step, self.processes)
        if self.warm is not None:  # the step's cost: the warm solves' and the estimator's
            for key in ("inner_grad_evals", "grad_evals"):
                scalars[key] += scalars["warm_start_inner_grad_evals"]
        self._check(t, scalars, WATCHED)
        self._check_growth(t, scalars)
        self._warn_if_unconverged(scalars)
        with interrupts.deferred():
            lr = self.optimizer.param_groups[0]["lr"]
            coefficient = self.outer.clip_coefficient(norm)
            for param, g in zip(self.params, grads, strict=True):
                param.grad = g if coefficient is None else g * coefficient
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            self.evals_total += scalars.get("inner_grad_evals", 0)
            record = {"step": t, "loss": scalars.pop("loss")}
            record |= {"grad_norm": scalars.pop("grad_norm"), "lr": lr,
                       "inner_grad_evals_total": self.evals_total}
            if self.eval_every and (t % self.eval_every == 0 or t == self.steps):
                means, cost = evaluate_held_out(self.problem, self.h(), self.eval_shard,
                                                self.solver, self.eval_tasks, self.processes,
                                                compile=self.compile)
                self._check(t, means, {k: f"the held-out {k[5:]}" for k in means})
                self.held_out_evals_total += cost.inner_grad_evals
                record |= means | {"held_out_inner_grad_evals": cost.inner_grad_evals}
            record["total_inner_grad_evals"] = self.evals_total + self.held_out_evals_total
            record |= {"time": self.elapsed + time.perf_counter() - self.clock} | scalars
            self.step = t
            self.history.append(record)
            if self.warm is not None:
                self.warm.commit(warm)
            self.rng = checkpoint.rng_states(self.generators)
            if self.files is not None:
                self.files.log(record)
                if t == self.steps or (self.checkpoint_every and t % self.checkpoint_every == 0):
                    self.save()
        return record

    def _check(self, t: int, values: dict, watched: dict) -> None:
        bad = non_finite(values, watched)
        if bad is not None:
            raise DivergenceError(t, f"{watched[bad]} ({bad})", self._kept())

    def _check_growth(self, t: int, values: dict) -> None:
        """Blow-ups that stay finite (float64 can reach 1e+300): an inner solve whose gradient
        norm grew past divergence_factor times its first, or a loss that did against the
        run's first."""
        ratio, factor = values.get("inner_grad_ratio_max"), self.divergence_factor
        if ratio is not None and ratio > factor:
            raise DivergenceError(t, "an inner solve", self._kept(), problem=(
                f"blew up: its gradient norm grew {ratio:.3g}-fold over the solve (more than "
                f"divergence_factor={factor:g}); lower the solver's lr"))
        first, loss = (self.history[0]["loss"] if self.history else None), values.get("loss")
        if first and loss is not None and abs(loss) > factor * abs(first):
            raise DivergenceError(t, "the loss", self._kept(), problem=(
                f"blew up: {loss:.3g} against {first:.3g} at step 1 (more than "
                f"divergence_factor={factor:g} times); lower the outer lr"))

    def _warn_if_unconverged(self, values: dict) -> None:
        """Once per run: the estimator's result assumes converged inner solves (fo-bmaml,
        fo-bmaml-jvp, imaml, exact), but the solves cut the gradient norm less than 10-fold
        (warm-started: the warm solves, against the first step's cold start)."""
        metric = ("warm_start_grad_ratio_mean" if "warm_start_grad_ratio_mean" in values
                  else "inner_grad_ratio_mean")
        ratio = values.get(metric)
        assumes = getattr(estimators.get(self.method), "assumes_converged_inner", False)
        if self.warned_unconverged or not assumes or ratio is None or ratio <= 0.1:
            return
        self.warned_unconverged = True
        warnings.warn(f"the inner solves are far from converged (final / first gradient norm "
                      f"{ratio:.2g} on average), but {self.method!r} assumes converged inner "
                      "solutions: its hypergradient is biased; give the solver more steps or a "
                      f"larger lr (metrics: {metric})", stacklevel=4)

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
            "h": tree_unflatten([p.detach().cpu() for p in self.params], self.spec),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "rng": self.rng,
            "history": self.history,
            "inner_grad_evals_total": self.evals_total,
            "held_out_inner_grad_evals_total": self.held_out_evals_total,
            "time": self.elapsed + time.perf_counter() - self.clock,
            "settings_digest": self.digest,
        } | ({} if self.warm is None else {"warm_start": self.warm.state()})

    def save(self) -> None:
        checkpoint.save(self.out, self.state())
        self.saved_step = self.step

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
        print(f"\n{message}\nresume with meta_train(..., out={str(self.out)!r}, resume=True) "
              "(same settings; steps may grow)", file=sys.stderr)

    def finish(self, status: str, message: str | None = None) -> MetaTrainResult:
        summary = {"status": status, "message": message, "steps_completed": self.step,
                   "seed": self.seed, "inner_grad_evals_total": self.evals_total,
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
        h = tree_unflatten([p.detach().clone() for p in self.params], self.spec)
        return MetaTrainResult(h, self.history, self.out, summary)


def _method(method) -> tuple[str, dict]:
    name, options = name_and_options(method, "method")
    estimators.build(name, options, argument="method")  # unknown names and options fail now
    return name, options


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

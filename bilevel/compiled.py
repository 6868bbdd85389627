"""The compiled path: the estimators' batched functions through `torch.compile`, opt-in.

Compilation is a value, `Compilation(mode, cuda_graphs, backend)`, passed down explicitly
to everything that batches per-task work: `hypergradient(..., compile=True)` builds one
(`Compilation.of`) and hands it to the estimator, which hands it to `batch`,
`bilevel.inner.solve_batch`, `at_inner_solutions` or `average_over_tasks`. Nothing
process-wide decides it: `EAGER` (mode False) runs `torch.func.vmap` and nothing else.

`batch(fn, in_dims, compilation)` returns `vmap(fn, in_dims)`, compiled by `torch.compile`
when `compilation.mode` is True or "strict": once per function and its captured values
(problem, solver, estimator options), its in_dims and the compilation's backend and
CUDA-graph setting (a bounded memo); a new batch of the same shapes, dtype and device
reuses it. A stepwise solver (`InnerSolver.step`) compiles as one batched step run K times
(`bilevel.inner.solve_batch`), so the compile time does not grow with the number of inner
steps; a solve that only `run` defines, and MAML's reverse pass through the solve, compile
unrolled.

On CUDA, compiled functions also replay CUDA graphs (TorchInductor's "reduce-overhead"
mode: one launch for all of a function's kernels, where a small problem's step is bound by
launches); each call begins a new step of torch's CUDA graph trees and clones what the graph
returns, so that a later replay cannot overwrite a result still in use.
`Compilation(True, cuda_graphs=False)` turns the graphs off.

Where `torch.compile` cannot trace a function (a Python branch on a tensor in a user's
loss, an operator it does not support), mode True runs that function eagerly after one
warning naming the reason; mode "strict" raises `CompileError` instead.
"""

import dataclasses
import functools
import warnings
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch.func import vmap
from torch.utils._pytree import tree_iter, tree_map

from bilevel.errors import BilevelError, InvalidInputError

MODES = (False, True, "strict")
CACHE_SIZE = 64  # compiled functions kept (least recently used dropped)

_cache: OrderedDict = OrderedDict()  # a memo: what is compiled is the caller's Compilation


class CompileError(BilevelError):
    """`compile="strict"` and torch.compile could not compile a function of the estimator."""


def _is_mode(value) -> bool:
    return any(value is mode or value == mode and isinstance(value, str) for mode in MODES)


@dataclasses.dataclass(frozen=True)
class Compilation:
    """How per-task work runs: eagerly (mode False), compiled by `torch.compile` with an
    eager fallback after a warning for what cannot be compiled (True), or compiled with
    `CompileError` instead of a fallback ("strict").

    cuda_graphs: with the inductor backend, compiled functions of CUDA inputs replay CUDA
        graphs. backend: torch.compile's backend ("aot_eager" traces without generating
        code: for tests)."""

    mode: bool | str = False
    cuda_graphs: bool = True
    backend: str = "inductor"

    def __post_init__(self):
        if not _is_mode(self.mode):
            raise InvalidInputError(
                f"Compilation.mode must be False, True or 'strict', got {self.mode!r}")
        if not isinstance(self.cuda_graphs, bool):
            raise InvalidInputError(
                f"Compilation.cuda_graphs must be True or False, got {self.cuda_graphs!r}")
        if not isinstance(self.backend, str) or not self.backend:
            raise InvalidInputError(
                f"Compilation.backend must be a torch.compile backend's name, got "
                f"{self.backend!r}")

    @classmethod
    def of(cls, value, argument: str = "compile") -> "Compilation":
        """`value` if a Compilation, else Compilation(mode=value) for False, True or
        "strict"; anything else is an InvalidInputError naming `argument`."""
        if isinstance(value, Compilation):
            return value
        if not _is_mode(value):
            raise InvalidInputError(f"{argument} must be False, True or 'strict' (or a "
                                    f"bilevel.compiled.Compilation), got {value!r}")
        return cls(mode=value)

    @property
    def active(self) -> bool:
        return bool(self.mode)

    @property
    def strict(self) -> bool:
        return self.mode == "strict"

    def eager_instead(self, what: str, reason: str) -> "Compilation":
        """This compilation for something known not to compile: eager after a warning when
        compiling was asked for, CompileError when strictly."""
        if not self.active:
            return self
        if self.strict:
            raise CompileError(f"{what} cannot be compiled: {reason}; pass compile=True to run "
                               "it eagerly")
        warnings.warn(f"bilevel: {what} runs eagerly: {reason}", RuntimeWarning, stacklevel=3)
        return dataclasses.replace(self, mode=False)


EAGER = Compilation()


def batch(fn, in_dims, compilation: Compilation, name: str | None = None):
    """vmap(fn, in_dims), compiled as `compilation` says: memoised by `fn`'s code and the
    values it captures (which must be hashable: pass tensors as arguments), in_dims, and the
    compilation's backend and CUDA-graph setting. `name`: what warnings and errors call it
    (default `describe(fn)`)."""
    batched = vmap(fn, in_dims=in_dims)
    if not compilation.active:
        return batched
    key = (compilation.backend, compilation.cuda_graphs, _function_key(fn), _hashable(in_dims))
    if key not in _cache:
        _cache[key] = _Compiled(batched, name or describe(fn), compilation)
        if len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    _cache.move_to_end(key)
    return functools.partial(_cache[key], compilation.strict)


class _Compiled:
    """A compiled function that turns eager, with one warning, if compiling fails; called
    as (strict, *args)."""

    failure: str | None  # why compiling failed; None until it does

    def __init__(self, fn, name: str, compilation: Compilation):
        self.eager, self.name, self.failure = fn, name, None
        self.backend, self.cuda_graphs = compilation.backend, compilation.cuda_graphs
        # The compiled fn by whether it replays CUDA graphs, made when first needed.
        self.by_graphs: dict[bool, Callable] = {}

    def __call__(self, strict: bool, *args):
        if self.failure is None:
            try:
                # Our memo decides what is compiled; dynamo's limit of recompilations per code
                # object (8) would count every estimator's functions together (they share
                # vmap's code) and silently run the rest eagerly. Raised for this call only.
                with torch._dynamo.config.patch(recompile_limit=max(
                        torch._dynamo.config.recompile_limit, CACHE_SIZE)):
                    if self._replays_cuda_graphs(args):
                        torch.compiler.cudagraph_mark_step_begin()
                        return tree_map(torch.Tensor.clone, self._compiled(graphs=True)(*args))
                    return self._compiled(graphs=False)(*args)
            except torch._dynamo.exc.TorchDynamoException as error:
                self.failure = _reason(error)
                if not strict:
                    warnings.warn(f"bilevel: torch.compile cannot compile {self.name} "
                                  f"({self.failure}); running it eagerly", RuntimeWarning,
                                  stacklevel=2)
        if strict:  # now, or at an earlier call with compile=True
            raise CompileError(
                f"torch.compile cannot compile {self.name}: {self.failure}; fix it, or pass "
                "compile=True to run what cannot be compiled eagerly")
        return self.eager(*args)

    def _compiled(self, graphs: bool):
        if graphs not in self.by_graphs:
            self.by_graphs[graphs] = torch.compile(
                self.eager, fullgraph=True, dynamic=False, backend=self.backend,
                mode="reduce-overhead" if graphs else None)
        return self.by_graphs[graphs]

    def _replays_cuda_graphs(self, args) -> bool:
        if not self.cuda_graphs or self.backend != "inductor":
            return False
        first = _first_tensor(args)
        return first is not None and first.is_cuda


def _first_tensor(tree):
    """The first tensor leaf of a pytree, found lazily (flattening the sinusoid's arguments
    whole costs ~20 us per call, this 2-5 us)."""
    return next((leaf for leaf in tree_iter(tree) if isinstance(leaf, torch.Tensor)), None)


def describe(fn) -> str:
    """What a warning calls fn: its qualified name (and a partial's keywords)."""
    if isinstance(fn, functools.partial):
        keywords = ", ".join(f"{key}={value!r}" for key, value in fn.keywords.items())
        return f"{describe(fn.func)}({keywords})"
    return getattr(fn, "__qualname__", repr(fn))


def _reason(error: Exception) -> str:
    """The first two lines of a compiler error (what failed, and dynamo's explanation)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()][:2]
    return f"{type(error).__name__}: {' '.join(lines)}"[:400]


def _function_key(fn):
    """What determines fn's computation: its code and the values it captures (functions
    captured are keyed the same way), or fn itself for other callables."""
    if isinstance(fn, functools.partial):
        return (_function_key(fn.func), _hashable(fn.args),
                _hashable(tuple(sorted(fn.keywords.items()))))
    code = getattr(fn, "__code__", None)
    if code is None:
        return _hashable(fn)
    cells = tuple(_value_key(cell.cell_contents) for cell in fn.__closure__ or ())
    return code, cells, _hashable(getattr(fn, "__self__", None))


def _value_key(value):
    if callable(value) and (hasattr(value, "__code__") or isinstance(value, functools.partial)):
        return _function_key(value)
    return _hashable(value)


def _hashable(value):
    if isinstance(value, torch.Tensor):
        raise TypeError("bilevel.compiled.batch: a function that captures a tensor would "
                        "compile again at every call; pass the tensor as an argument")
    if isinstance(value, tuple | list):
        return tuple(_hashable(v) for v in value)
    try:
        hash(value)  # a problem without value equality counts by identity
    except TypeError:  # unhashable (a mutable dataclass, say): by identity too; the cached
        return ("id", id(value))  # function's closure keeps it alive, so the id is its own
    return value

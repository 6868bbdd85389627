"""The compiled path: the estimators' batched functions through `torch.compile`, opt-in.

`hypergradient(..., compile=True)`, `meta_train(compile=True)` and the run config's
`compile: true` run the estimator inside `compiling(mode)`. There `batch(fn, in_dims)`,
which the estimators call for their per-task work (`torch.func.vmap` when not compiling),
returns `vmap(fn, in_dims)` compiled by TorchInductor, once per function and its captured
values (problem, solver, estimator options): a new batch of the same shapes, dtype and
device reuses it. A stepwise solver (`InnerSolver.step`) compiles as one batched step run
K times (`bilevel.inner.solve_batch`), so the compile time does not grow with the number
of inner steps; a solve that only `run` defines, and MAML's reverse pass through the
solve, compile unrolled.

On CUDA, compiled functions also replay CUDA graphs (TorchInductor's "reduce-overhead"
mode: one launch for all of a function's kernels, where a small problem's step is bound by
launches); each call begins a new step of torch's CUDA graph trees and clones what the graph
returns, so that a later replay cannot overwrite a result still in use. `CUDA_GRAPHS =
False` turns the graphs off.

Where `torch.compile` cannot trace a function (a Python branch on a tensor in a user's
loss, an operator it does not support), `compile=True` runs that function eagerly after
one warning naming the reason; `compile="strict"` raises `CompileError` instead.
"""

import contextlib
import contextvars
import functools
import warnings
from collections import OrderedDict

import torch
from torch.func import vmap
from torch.utils._pytree import tree_iter, tree_map

from bilevel.errors import BilevelError, InvalidInputError

MODES = (False, True, "strict")
BACKEND = "inductor"  # torch.compile's backend ("aot_eager" traces without generating code)
CACHE_SIZE = 64  # compiled functions kept (least recently used dropped)
CUDA_GRAPHS = True  # with the inductor backend, CUDA inputs replay CUDA graphs

_mode = contextvars.ContextVar("bilevel_compile", default=False)
_cache: OrderedDict = OrderedDict()


class CompileError(BilevelError):
    """`compile="strict"` and torch.compile could not compile a function of the estimator."""


def check_mode(compile) -> bool | str:
    if not any(compile is mode or compile == mode and isinstance(compile, str)
               for mode in MODES):
        raise InvalidInputError(f"compile must be False, True or 'strict', got {compile!r}")
    return compile


@contextlib.contextmanager
def compiling(mode: bool | str):
    """Inside: `batch` compiles (mode True or "strict"), or not (False)."""
    token = _mode.set(check_mode(mode))
    try:
        yield
    finally:
        _mode.reset(token)


def active() -> bool:
    return bool(_mode.get())


def eager_instead(mode: bool | str, what: str, reason: str) -> bool | str:
    """The compile mode for something known not to compile: False (run eagerly) after a
    warning when compiling was asked for, CompileError when strictly."""
    if not mode:
        return mode
    if mode == "strict":
        raise CompileError(f"{what} cannot be compiled: {reason}; pass compile=True to run "
                           "it eagerly")
    warnings.warn(f"bilevel: {what} runs eagerly: {reason}", RuntimeWarning, stacklevel=3)
    return False


def batch(fn, in_dims=0):
    """vmap(fn, in_dims), compiled inside `compiling(True)`: cached by `fn`'s code and the
    values it captures (which must be hashable: pass tensors as arguments)."""
    batched = vmap(fn, in_dims=in_dims)
    if not active():
        return batched
    key = (_function_key(fn), _hashable(in_dims))
    if key not in _cache:
        _cache[key] = _Compiled(batched, _name(fn))
        if len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    _cache.move_to_end(key)
    return _cache[key]


class _Compiled:
    """A compiled function that turns eager, with one warning, if compiling fails."""

    def __init__(self, fn, name: str):
        self.eager, self.name, self.failure = fn, name, None
        self.by_graphs = {}  # compiled fn by whether it replays CUDA graphs, made when first needed
        # Our cache decides what is compiled; dynamo's limit of recompilations per code
        # object (8) would count every estimator's functions together (they share vmap's
        # code) and silently run the rest eagerly.
        dynamo_config = torch._dynamo.config
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, CACHE_SIZE)

    def __call__(self, *args):
        if self.failure is None:
            try:
                if _replays_cuda_graphs(args):
                    torch.compiler.cudagraph_mark_step_begin()
                    return tree_map(torch.Tensor.clone, self._compiled(graphs=True)(*args))
                return self._compiled(graphs=False)(*args)
            except torch._dynamo.exc.TorchDynamoException as error:
                self.failure = _reason(error)
                if _mode.get() != "strict":
                    warnings.warn(f"bilevel: torch.compile cannot compile {self.name} "
                                  f"({self.failure}); running it eagerly", RuntimeWarning,
                                  stacklevel=2)
        if _mode.get() == "strict":  # now, or at an earlier call with compile=True
            raise CompileError(
                f"torch.compile cannot compile {self.name}: {self.failure}; fix it, or pass "
                "compile=True to run what cannot be compiled eagerly")
        return self.eager(*args)

    def _compiled(self, graphs: bool):
        if graphs not in self.by_graphs:
            mode = {"mode": "reduce-overhead"} if graphs else {}
            self.by_graphs[graphs] = torch.compile(self.eager, fullgraph=True, dynamic=False,
                                                   backend=BACKEND, **mode)
        return self.by_graphs[graphs]


def _replays_cuda_graphs(args) -> bool:
    if not CUDA_GRAPHS or BACKEND != "inductor":
        return False
    first = _first_tensor(args)
    return first is not None and first.is_cuda


def _first_tensor(tree):
    """The first tensor leaf of a pytree, found lazily (flattening the sinusoid's arguments
    whole costs ~20 us per call, this 2-5 us)."""
    return next((leaf for leaf in tree_iter(tree) if isinstance(leaf, torch.Tensor)), None)


def _name(fn) -> str:
    """What a warning calls fn: its qualified name (and a partial's keywords)."""
    if isinstance(fn, functools.partial):
        keywords = ", ".join(f"{key}={value!r}" for key, value in fn.keywords.items())
        return f"{_name(fn.func)}({keywords})"
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

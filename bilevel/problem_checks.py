"""Checks of a user's input and problem code, run by `bilevel.hypergradient` before it
batches over tasks, so that a mistake is an `InvalidInputError` naming the argument, the
leaf or the method, never a functorch traceback or a silently wrong result.

    check_values(h, tasks)      every floating leaf finite; one floating dtype in h and in
                                the floating task data (integer leaves, e.g. labels, pass)
    check_hyper(h)              a non-empty dict of floating-point tensors
    check_problem_code(...)     h shaped like problem.init_hyper() (`check_hyper_shapes`);
                                train_loss, val_loss, inner_init, lam called once on task 0
                                outside vmap, then differentiated and vmapped over 2 tasks;
                                every leaf of h a loss's value depends on has a gradient
                                (`_check_reads_hyper`); cached per problem and per structure
                                of (h, tasks)

Layering: imports errors and tree helpers only, never the estimators.
"""

import warnings
import weakref

import torch
from torch.func import grad, vmap

from bilevel.errors import InvalidInputError
from bilevel.problem import BilevelProblem
from bilevel.tree import (
    keystr,
    tree_flatten,
    tree_leaves,
    tree_leaves_with_path,
    tree_map,
    tree_unflatten,
)

# Problems already checked, each with the signatures (structure, shapes, dtypes) of the
# (h, task) it was checked on: meta_train calls hypergradient every step with the same.
_checked: weakref.WeakKeyDictionary[BilevelProblem, set] = weakref.WeakKeyDictionary()
_warned_unregularized: weakref.WeakSet[BilevelProblem] = weakref.WeakSet()
# Each problem's init_hyper(), with torch.Size leaves in place of its tensors.
_expected_hyper: weakref.WeakKeyDictionary[BilevelProblem, dict] = weakref.WeakKeyDictionary()

# Fragments of torch.func's messages, and what each means for a problem's author.
_KNOWN_FAULTS = (
    ("data-dependent control flow",
     "uses a tensor's value in Python control flow (`if loss > 0:`, `while`, `bool(t)`), which "
     "cannot run batched over tasks under torch.func.vmap; use torch.where(cond, a, b)"),
    (".item()",
     "calls .item() (or float()/int()) on a tensor, which cannot run batched over tasks under "
     "torch.func.vmap; keep the value a tensor"),
    ("in-place operation",
     "writes into a tensor in place (x += ..., x.mul_(...), x[i] = ...); torch.func "
     "differentiates only pure functions: write x = x + ... instead"),
    ("inplace",
     "writes into a tensor in place (x += ..., x.mul_(...), x[i] = ...), which cannot run "
     "batched over tasks under torch.func.vmap: write x = x + ... instead"),
)
# Fragments of torch's messages when one operation mixes dtypes, e.g. integer task data in
# floating-point arithmetic: "expected scalar type Float but found Long", "... must have the
# same dtype, but got Double, Long", "result type Float can't be cast to ... Long".
_DTYPE_FAULTS = ("same dtype", "scalar type", "can't be cast to the desired output type")


def all_finite(leaves) -> bool:
    """Whether every tensor in `leaves` is finite: one fused max-abs per tensor (NaN and
    Inf propagate through it) and one host sync, without a mask as large as the data."""
    if not leaves:
        return True
    return bool(torch.isfinite(torch.stack(torch._foreach_norm(leaves, float("inf")))).all())


def check_hyper(h, name: str = "h"):
    """h: a non-empty dict of floating-point tensors; `name` says where it came from."""
    _check_floating_dict(
        h, lambda: f"{name} must be a non-empty dict of tensors, got {type(h).__name__} "
                   f"{h!r:.60}",
        lambda where, leaf: f"{name}{where} must be a floating-point tensor, got {leaf!r}")


def _check_floating_dict(tree, empty, bad_leaf) -> None:
    """`tree` a non-empty dict whose leaves are floating-point tensors, else an
    InvalidInputError: empty(), or bad_leaf(key path, leaf). The messages are built only on
    failure (the repr of a dict of tensors costs more than the check)."""
    if not isinstance(tree, dict) or not tree:
        raise InvalidInputError(empty())
    for path, leaf in tree_leaves_with_path(tree):
        if not isinstance(leaf, torch.Tensor) or not leaf.is_floating_point():
            raise InvalidInputError(bad_leaf(keystr(path), leaf))


def check_values(h, tasks, finite: bool = True) -> None:
    """h's leaves and the floating task leaves of one dtype; with `finite`, every floating
    leaf finite (one fused reduction when all is well; the leaf is named on failure)."""
    hyper = tree_leaves(h)
    data = [leaf for leaf in tree_leaves(tasks) if leaf.is_floating_point()]
    dtype = hyper[0].dtype
    if any(leaf.dtype != dtype for leaf in hyper):
        listed = ", ".join(f"{name}: {leaf.dtype}" for name, leaf in _named(h, "h"))
        raise InvalidInputError(f"h: every leaf must have one floating dtype, got {listed}")
    if any(leaf.dtype != dtype for leaf in data):
        name, leaf = next((n, t) for n, t in _named(tasks, "tasks")
                          if t.is_floating_point() and t.dtype != dtype)
        raise InvalidInputError(
            f"{name} has dtype {leaf.dtype}, but h is {dtype}: floating task data must "
            f"have h's dtype (convert with .to({dtype})); integer leaves such as labels "
            "may stay integer")
    if not finite or all_finite(hyper + data):
        return
    for name, leaf in [*_named(h, "h"), *_named(tasks, "tasks")]:
        bad = ~torch.isfinite(leaf)
        if bad.any():
            first = tuple(bad.nonzero()[0].tolist())
            raise InvalidInputError(
                f"{name} must be finite, got {int(bad.sum())} NaN/Inf value(s) of "
                f"{leaf.numel()} (first at index {first}: {leaf[first].item()})")


def _named(tree, root: str):
    return [(f"{root}{keystr(path)}", leaf) for path, leaf in tree_leaves_with_path(tree)]


def check_task_count(n_tasks: int) -> None:
    if n_tasks == 0:
        raise InvalidInputError(
            "tasks must hold at least one task, got a batch with leading dimension 0")


def warn_if_unregularized(problem, h: dict, method: str, assumes_converged_inner: bool) -> None:
    """Once per problem: an implicit estimator on a problem with no regulariser, whose
    phi*(h) does not depend on theta, returns a zero gradient for theta (h has one; a
    problem whose h enters its inner loss directly, with no theta, has nothing to warn of)."""
    if (not assumes_converged_inner or problem.regularization != "none" or "theta" not in h
            or problem in _warned_unregularized):
        return
    _warned_unregularized.add(problem)
    warnings.warn(
        f"method {method!r} differentiates the inner solution implicitly, but the problem has "
        "regularization='none': its inner problem is not strongly convex and phi*(h) does not "
        "depend on theta, so the gradient for theta is zero; use an estimator that follows the "
        "solver (maml, fomaml, reptile) or a regulariser ('proximal')", stacklevel=3)


def _signature(h, tasks):
    def describe(tree, skip_leading):
        leaves, spec = tree_flatten(tree)
        shapes = tuple((tuple(t.shape[1:] if skip_leading else t.shape), t.dtype) for t in leaves)
        return spec, shapes

    return describe(h, False), describe(tasks, True)


def check_problem_code(problem, h, tasks) -> None:
    """Check h against init_hyper (`check_hyper_shapes`), then call the problem's methods on
    task 0 and on a batch of (up to) 2 tasks, once per problem and signature of (h, tasks);
    raise InvalidInputError naming the leaf or the method."""
    try:
        key = _signature(h, tasks)
        seen = _checked.setdefault(problem, set())
    except TypeError:  # an unhashable or un-weak-referenceable problem: check every call
        key, seen = None, set()
    if key is not None and key in seen:
        return
    check_hyper_shapes(problem, h)
    integers = [name for name, leaf in _named(tasks, "tasks") if not leaf.is_floating_point()]
    task0 = tree_map(lambda t: t[0].clone(), tasks)
    h0 = tree_map(torch.clone, h)
    phi = _call(problem, "inner_init", (h0, task0), h0, task0, integers=integers)
    _check_phi(phi)
    for name in ("train_loss", "val_loss"):
        _check_scalar(name, _call(problem, name, (phi, h0, task0), h0, task0, phi, integers))
    _check_lam(problem, h0, phi)
    _check_reads_hyper(problem, h0, phi, task0)
    _translate("train_loss", lambda: grad(problem.train_loss)(phi, h0, task0), integers)
    pair = tree_map(lambda t: t[:2], tasks)
    for name in ("inner_init", "train_loss", "val_loss"):
        _translate(name, lambda name=name: vmap(_batched(problem, name, h))(pair), integers)
    _translate("train_loss", lambda: vmap(_batched(problem, "inner_objective", h, grad))(pair),
               integers)
    seen.add(key)


def check_hyper_shapes(problem, h) -> None:
    """h holds the keys and leaf shapes of `problem.init_hyper()` (dtype and device may
    differ): a missing, extra or misshapen leaf is an InvalidInputError naming it and what
    the problem expects. init_hyper is called once per problem, with a seeded generator of
    its own and the global random state restored, and only its shapes are kept.

    One exception: with the default `lam` (exp(h["log_lam"]), which reads a scalar, one
    value per tensor or one per coordinate alike), h["log_lam"] may take any of those forms
    whatever init_hyper's is; its fit to phi is `_check_lam`'s.
    """
    expected = _expected_hyper.get(problem) if _weakrefable(problem) else None
    if expected is None:
        with torch.random.fork_rng(devices=[]):
            fresh = problem.init_hyper(torch.Generator().manual_seed(0))
        name = f"{type(problem).__name__}.init_hyper()"
        check_hyper(fresh, name=name)
        expected = tree_map(lambda leaf: leaf.shape, fresh)
        if _weakrefable(problem):
            _expected_hyper[problem] = expected
    free = ("log_lam",) if type(problem).lam is BilevelProblem.lam else ()
    _compare_hyper(h, expected, "h", type(problem).__name__, free)


def _weakrefable(problem) -> bool:
    try:
        weakref.ref(problem)
        hash(problem)
    except TypeError:
        return False
    return True


def _compare_hyper(got, expected, where: str, owner: str, free=()) -> None:
    """Walk h (`got`) beside init_hyper's shapes (`expected`: torch.Size leaves); raise at
    the first misfit. Keys in `free` (top level only) need only be present."""
    source = f"{owner}.init_hyper()"
    if isinstance(expected, torch.Size):
        if not isinstance(got, torch.Tensor) or got.shape != expected:
            found = (f"has shape {tuple(got.shape)}" if isinstance(got, torch.Tensor)
                     else f"is {_describe(got)}")
            raise InvalidInputError(
                f"{where} {found}, but the problem expects a tensor of shape {tuple(expected)} "
                f"(as {source} gives)")
    elif isinstance(expected, dict):
        if not isinstance(got, dict):
            raise InvalidInputError(
                f"{where} is {_describe(got)}, but the problem expects a dict with "
                f"keys {sorted(expected)} there (as {source} gives)")
        for key in expected:
            if key not in got:
                raise InvalidInputError(
                    f"{where} has no key {key!r}: the problem expects {where}[{key!r}] "
                    f"({_describe(expected[key])}, as {source} gives); {where} has keys "
                    f"{sorted(got)}")
        for key in got:
            if key not in expected:
                raise InvalidInputError(
                    f"{where}[{key!r}] is not a hyperparameter of this problem ({source} "
                    f"has keys {sorted(expected)} there): remove it")
        for key in expected:
            if key not in free:
                _compare_hyper(got[key], expected[key], f"{where}[{key!r}]", owner)
    else:  # a list or tuple of leaves
        if type(got) is not type(expected) or len(got) != len(expected):
            raise InvalidInputError(
                f"{where} is {_describe(got)}, but the problem expects {_describe(expected)} "
                f"(as {source} gives)")
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            _compare_hyper(a, b, f"{where}[{i}]", owner)


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        value = value.shape
    if isinstance(value, torch.Size):
        return f"a tensor of shape {tuple(value)}"
    if isinstance(value, dict):
        return f"a dict with keys {sorted(value)}"
    if isinstance(value, list | tuple):
        return f"a {type(value).__name__} of {len(value)} entries"
    return f"{type(value).__name__} {value!r:.40}"


def _batched(problem, name, h, transform=None):
    """problem.<name> at inner_init(h, task), for one task, to be vmapped (inner_init's
    own result for name="inner_init"); `transform` (grad) is applied to it."""
    def one_task(task):
        start = problem.inner_init(h, task)
        if name == "inner_init":
            return start
        method = getattr(problem, name)
        return (transform(method) if transform else method)(start, h, task)

    return one_task


def _call(problem, name, args, h, task, phi=None, integers=()):
    """problem.<name>(*args), checking that it left h, the task data and phi unchanged;
    `integers`: the names of the integer task leaves (see `_translate`)."""
    watched = {"phi": phi if phi is not None else {}, "h": h, "tasks": task}
    before = {(arg, keystr(p)): leaf._version for arg, tree in watched.items()
              for p, leaf in tree_leaves_with_path(tree)}
    result = _translate(name, lambda: getattr(problem, name)(*args), integers)
    for arg, tree in watched.items():
        for path, leaf in tree_leaves_with_path(tree):
            if leaf._version != before[(arg, keystr(path))]:
                where = f"{arg}[task]{keystr(path)}" if arg == "tasks" else f"{arg}{keystr(path)}"
                raise InvalidInputError(
                    f"{name} modified {where} in place (x += ..., x.mul_(...), x[i] = ...); "
                    "a problem's methods must be pure functions of their arguments: write "
                    "x = x + ... (a new tensor) instead")
    return result


def _translate(name: str, thunk, integers=()):
    """thunk(), with torch.func's errors that a problem's author can fix turned into an
    InvalidInputError naming the method; any other error is re-raised untouched. A dtype
    mismatch names `integers`, the integer task leaves, the likely cause."""
    try:
        return thunk()
    except RuntimeError as error:
        message = str(error)
        torch_said = f"(torch said: {message.splitlines()[0]})"
        for fragment, meaning in _KNOWN_FAULTS:
            if fragment in message:
                raise InvalidInputError(f"problem.{name} {meaning} {torch_said}") from error
        if any(fragment in message for fragment in _DTYPE_FAULTS):
            cause = (f"integer task data ({', '.join(integers)}) in floating-point arithmetic?"
                     if integers else "tensors of different dtypes in one operation.")
            raise InvalidInputError(
                f"problem.{name} mixes dtypes {torch_said}: {cause} Task data that enters "
                "the losses' arithmetic must have h's floating dtype (convert it with "
                ".to(dtype)); integer leaves may only index or label") from error
        raise


def _check_phi(phi) -> None:
    _check_floating_dict(
        phi, lambda: f"problem.inner_init must return a non-empty dict of tensors (phi), got "
                     f"{phi!r:.80}",
        lambda where, leaf: f"problem.inner_init returned phi{where} = {leaf!r:.80}; expected "
                            "a floating-point tensor")


def _check_scalar(name: str, value) -> None:
    if not isinstance(value, torch.Tensor) or value.ndim != 0:
        got = (f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor)
               else f"{type(value).__name__} {value!r:.60}")
        raise InvalidInputError(
            f"problem.{name} must return a scalar tensor (shape ()), the loss of one task; got "
            f"{got}. Reduce it, e.g. with .mean() or .sum()")
    if not value.is_floating_point():
        raise InvalidInputError(
            f"problem.{name} must return a floating-point scalar, got dtype {value.dtype}")


def _check_lam(problem, h, phi) -> None:
    """A per-tensor or per-coordinate lam: each leaf broadcasts to phi's leaf (a scalar, one
    value per row, or its very shape), not the other way round."""
    if problem.regularizer(phi, h) is None:
        return
    lam = _translate("lam", lambda: problem.lam(h))
    if isinstance(lam, torch.Tensor) or not isinstance(lam, dict):
        return  # a scalar, or a misfit that weighted_sum names
    lam_leaves = dict((keystr(p), leaf) for p, leaf in tree_leaves_with_path(lam))
    for path, leaf in tree_leaves_with_path(phi):
        weight = lam_leaves.get(keystr(path))
        if isinstance(weight, torch.Tensor) and not _broadcasts(weight.shape, leaf.shape):
            raise InvalidInputError(
                f"lam(h){keystr(path)} has shape {tuple(weight.shape)}, but phi{keystr(path)} "
                f"has shape {tuple(leaf.shape)}: a per-coordinate lam must be shaped like phi "
                "or broadcast to it (a scalar per tensor, or e.g. one value per row)")


# The losses that read h, as functions of (problem, phi, h, task).
_LOSSES_OF_H = {
    "train_loss": lambda problem, phi, h, task: problem.train_loss(phi, h, task),
    "val_loss": lambda problem, phi, h, task: problem.val_loss(phi, h, task),
    "inner_objective (train_loss + lam(h) * regularizer)":
        lambda problem, phi, h, task: problem.inner_objective(phi, h, task),
}


def _check_reads_hyper(problem, h, phi, task) -> None:
    """No leaf of h is read outside autograd (.item(), float(), a Python `if` on its value):
    a leaf whose gradient in one of train_loss, val_loss and the inner objective is exactly
    0, while a perturbation of it (a small step; its sign flipped) changes that loss's value,
    is an InvalidInputError naming the loss and the leaf, since every estimator would
    silently drop that dependence from its hypergradient. A leaf a loss does not read (its
    perturbations change nothing) passes. phi is moved off inner_init(h) first, where the
    proximal term's gradient in theta, lam (theta - phi), is exactly 0."""
    g = torch.Generator().manual_seed(0)
    point = tree_map(lambda t: t.detach() + 0.1 * torch.randn(
        t.shape, generator=g, dtype=t.dtype).to(t.device), phi)
    leaves, spec = tree_flatten(h)
    leaves = [leaf.detach() for leaf in leaves]
    paths = [keystr(path) for path, _ in tree_leaves_with_path(h)]
    for name, loss in _LOSSES_OF_H.items():
        def evaluate(hyper_leaves, loss=loss):
            return loss(problem, point, tree_unflatten(hyper_leaves, spec), task)

        with torch.enable_grad():
            free = [leaf.clone().requires_grad_(True) for leaf in leaves]
            value = evaluate(free)
            grads = (torch.autograd.grad(value, free, allow_unused=True) if value.requires_grad
                     else [None] * len(free))
        if not bool(torch.isfinite(value)):
            continue  # the probes compare values
        zero = {i for i, d in enumerate(grads) if d is None or not bool(d.any())}
        read = _read_leaf(evaluate, value.detach(), leaves, zero)
        if read is not None:
            raise InvalidInputError(
                f"problem.{name} reads h{paths[read]} outside autograd (.item(), float(), or a "
                "Python `if` on its value): its gradient there is exactly 0, yet changing "
                f"h{paths[read]} changes the loss, so every estimator would drop that dependence "
                "from the hypergradient; keep it a tensor in the arithmetic (torch.where(cond, "
                "a, b) for a condition)")


def _read_leaf(evaluate, value, leaves, zero: set) -> int | None:
    """The first index in `zero` whose leaf, moved by a small step or sign-flipped, changes
    evaluate(leaves) from `value`; None if none does. All of `zero` is moved at once first,
    so that a problem without the fault pays one evaluation per move, not one per leaf."""
    def changes(group, move) -> bool:
        moved = [move(leaf) if k in group else leaf for k, leaf in enumerate(leaves)]
        with torch.no_grad():
            return not torch.equal(evaluate(moved), value)

    for move in (lambda t: t + 1e-3 * (1 + t.abs()), torch.neg):
        if zero and changes(zero, move):
            found = next((k for k in sorted(zero) if changes({k}, move)), None)
            if found is not None:
                return found
    return None


def _broadcasts(shape, target) -> bool:
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False

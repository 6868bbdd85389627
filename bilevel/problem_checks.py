"""Checks of a user's input and problem code, run by `bilevel.hypergradient` before it
batches over tasks, so that a mistake is an `InvalidInputError` naming the argument, the
leaf or the method, never a functorch traceback or a silently wrong result.

    check_values(h, tasks)      every floating leaf finite; one floating dtype in h and in
                                the floating task data (integer leaves, e.g. labels, pass)
    check_problem_code(...)     train_loss, val_loss, inner_init, lam called once on task 0
                                outside vmap, then differentiated and vmapped over 2 tasks;
                                cached per problem and per structure of (h, tasks)

Layering: imports errors and tree helpers only, never the estimators.
"""

import warnings
import weakref

import torch
from torch.func import grad, vmap
from torch.utils._pytree import keystr, tree_flatten, tree_leaves, tree_leaves_with_path, tree_map

from bilevel.errors import InvalidInputError

# Problems already checked, each with the signatures (structure, shapes, dtypes) of the
# (h, task) it was checked on: meta_train calls hypergradient every step with the same.
_checked = weakref.WeakKeyDictionary()
_warned_unregularized = weakref.WeakSet()

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


def all_finite(leaves) -> bool:
    """Whether every tensor in `leaves` is finite: one fused max-abs per tensor (NaN and
    Inf propagate through it) and one host sync, without a mask as large as the data."""
    if not leaves:
        return True
    return bool(torch.isfinite(torch.stack(torch._foreach_norm(leaves, float("inf")))).all())


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


def warn_if_unregularized(problem, method: str, assumes_converged_inner: bool) -> None:
    """Once per problem: an implicit estimator on a problem with no regulariser, whose
    phi*(h) does not depend on theta, returns a zero gradient for theta."""
    if (not assumes_converged_inner or getattr(problem, "regularization", None) != "none"
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
    """Call the problem's methods on task 0 and on a batch of (up to) 2 tasks, once per
    problem and signature of (h, tasks); raise InvalidInputError naming the method."""
    try:
        key = _signature(h, tasks)
        seen = _checked.setdefault(problem, set())
    except TypeError:  # an unhashable or un-weak-referenceable problem: check every call
        key, seen = None, set()
    if key is not None and key in seen:
        return
    task0 = tree_map(lambda t: t[0].clone(), tasks)
    h0 = tree_map(torch.clone, h)
    phi = _call(problem, "inner_init", (h0, task0), h0, task0)
    _check_phi(phi)
    for name in ("train_loss", "val_loss"):
        _check_scalar(name, _call(problem, name, (phi, h0, task0), h0, task0, phi))
    _check_lam(problem, h0, phi)
    _translate("train_loss", lambda: grad(problem.train_loss)(phi, h0, task0))
    pair = tree_map(lambda t: t[:2], tasks)
    for name in ("inner_init", "train_loss", "val_loss"):
        _translate(name, lambda name=name: vmap(_batched(problem, name, h))(pair))
    _translate("train_loss", lambda: vmap(_batched(problem, "inner_objective", h, grad))(pair))
    seen.add(key)


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


def _call(problem, name, args, h, task, phi=None):
    """problem.<name>(*args), checking that it left h, the task data and phi unchanged."""
    watched = {"phi": phi if phi is not None else {}, "h": h, "tasks": task}
    before = {(arg, keystr(p)): leaf._version for arg, tree in watched.items()
              for p, leaf in tree_leaves_with_path(tree)}
    result = _translate(name, lambda: getattr(problem, name)(*args))
    for arg, tree in watched.items():
        for path, leaf in tree_leaves_with_path(tree):
            if leaf._version != before[(arg, keystr(path))]:
                where = f"{arg}[task]{keystr(path)}" if arg == "tasks" else f"{arg}{keystr(path)}"
                raise InvalidInputError(
                    f"{name} modified {where} in place (x += ..., x.mul_(...), x[i] = ...); "
                    "a problem's methods must be pure functions of their arguments: write "
                    "x = x + ... (a new tensor) instead")
    return result


def _translate(name: str, thunk):
    """thunk(), with torch.func's errors that a problem's author can fix turned into an
    InvalidInputError naming the method; any other error is re-raised untouched."""
    try:
        return thunk()
    except RuntimeError as error:
        message = str(error)
        for fragment, meaning in _KNOWN_FAULTS:
            if fragment in message:
                raise InvalidInputError(
                    f"problem.{name} {meaning} (torch said: {message.splitlines()[0]})"
                ) from error
        raise


def _check_phi(phi) -> None:
    if not isinstance(phi, dict) or not phi:
        raise InvalidInputError(
            f"problem.inner_init must return a non-empty dict of tensors (phi), got {phi!r:.80}")
    for path, leaf in tree_leaves_with_path(phi):
        if not isinstance(leaf, torch.Tensor) or not leaf.is_floating_point():
            raise InvalidInputError(
                f"problem.inner_init returned phi{keystr(path)} = {leaf!r:.80}; expected a "
                "floating-point tensor")


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


def _broadcasts(shape, target) -> bool:
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False

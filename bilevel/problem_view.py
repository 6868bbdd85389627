"""`ProblemView`: a problem seen with some leaves of h fixed, or with its inner solves
started elsewhere; the one wrapper of a problem (warm starts, `compare`'s fixed leaves).

Its forwarding is generic: every public member of `BilevelProblem` is forwarded to the
wrapped problem's own, derived from `BilevelProblem` when a view class is made, so that a
member added there is forwarded without editing the view. Arguments are mapped by their
parameter's name:

    h       h with the fixed leaves merged back (`ProblemView.full`)
    task    the task's "task" when solves are started elsewhere, the task itself otherwise
    tasks   likewise, for a batch

The members whose result the view changes are written out: `init_hyper` (h without the
fixed leaves), `inner_init` (the task's "start"), `meta_gradient` (without the fixed
leaves). Any other attribute (`regularization`, a problem's own methods) is the wrapped
problem's.
"""

import abc
import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch

from bilevel.errors import InvalidInputError
from bilevel.problem import BilevelProblem


def _method_forwarder(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    parameters = tuple(inspect.signature(method).parameters)[1:]  # without self

    def forward(self, *args, **kwargs):
        mapped = tuple(self._argument(p, a) for p, a in zip(parameters, args, strict=False))
        kwargs = {key: self._argument(key, value) for key, value in kwargs.items()}
        return getattr(self.problem, name)(*mapped, *args[len(parameters):], **kwargs)

    # updated=(): not the method's __dict__, whose __isabstractmethod__ would make it abstract.
    return functools.update_wrapper(forward, method, updated=())


def _attribute_forwarder(name: str) -> property:
    def read(self: "ProblemView") -> Any:
        return getattr(self.problem, name)

    return property(read, doc=f"The wrapped problem's {name}.")


class ProblemView(BilevelProblem):
    """`problem` with two optional changes.

    fixed: {path (a tuple of keys into h): tensor}: those leaves of h are fixed, and the
        view's hyperparameters are the others: every method sees h = learned + fixed, so
        hypergradients, training and evaluation are exactly the problem's at that h.
    start: True: the view's tasks are {"task": a task of `problem`, "start": phi}, and each
        task's inner solves start at its "start" (warm starts across outer steps).
    """

    def __init__(self, problem: BilevelProblem, *,
                 fixed: dict[tuple, torch.Tensor] | None = None, start: bool = False):
        if not isinstance(problem, BilevelProblem):
            raise InvalidInputError(f"problem must be a bilevel.BilevelProblem, got "
                                    f"{type(problem).__name__}")
        for path, value in (fixed or {}).items():
            if (not isinstance(path, tuple) or not path
                    or not all(isinstance(key, str) for key in path)
                    or not isinstance(value, torch.Tensor)):
                raise InvalidInputError(
                    f"fixed must map paths into h (tuples of keys) to tensors, got {path!r}: "
                    f"{type(value).__name__}")
        self.problem, self.fixed, self.start = problem, dict(fixed or {}), start

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _forward_problem_members(cls)

    def __getattr__(self, name: str):
        try:
            problem = self.__dict__["problem"]
        except KeyError:  # not yet initialised (a copy being made)
            raise AttributeError(name) from None
        return getattr(problem, name)

    def full(self, h: dict) -> dict:
        """The wrapped problem's h: `h` with the fixed leaves merged back."""
        return _merge(h, self.fixed) if self.fixed else h

    def learned(self, h: dict) -> dict:
        """The view's h: the wrapped problem's `h` without the fixed leaves."""
        return _split(h, set(self.fixed)) if self.fixed else h

    def inner_task(self, task):
        """The wrapped problem's task (or batch of tasks) of the view's `task`."""
        return task["task"] if self.start else task

    # The abstract members, forwarded like the others but named here: a type checker does not
    # run `_forward_problem_members`, and would take the view for an abstract class.
    sample_tasks = _method_forwarder("sample_tasks", BilevelProblem.sample_tasks)
    train_loss = _method_forwarder("train_loss", BilevelProblem.train_loss)
    val_loss = _method_forwarder("val_loss", BilevelProblem.val_loss)

    def init_hyper(self, generator: torch.Generator | None = None) -> dict:
        return self.learned(self.problem.init_hyper(generator))

    def inner_init(self, h: dict, task) -> dict:
        if self.start:
            return task["start"]
        return self.problem.inner_init(self.full(h), task)

    def meta_gradient(self, h: dict, tasks) -> dict | None:
        grad = self.problem.meta_gradient(self.full(h), self.inner_task(tasks))
        return None if grad is None else self.learned(grad)

    def _argument(self, parameter: str, value):
        if parameter == "h":
            return self.full(value)
        if parameter in ("task", "tasks"):
            return self.inner_task(value)
        return value


def _forward_problem_members(cls: type) -> None:
    """Give `cls` a forwarder for each public member of BilevelProblem that it does not
    define itself: methods call the wrapped problem's, their arguments mapped by
    `ProblemView._argument`; other attributes (`regularization`) read the problem's."""
    for name, member in vars(BilevelProblem).items():
        if name.startswith("_") or getattr(cls, name) is not member:
            continue
        if inspect.isfunction(member):
            setattr(cls, name, _method_forwarder(name, member))
        else:
            setattr(cls, name, _attribute_forwarder(name))
    abc.update_abstractmethods(cls)


_forward_problem_members(ProblemView)


def _split(h: dict, fixed: set[tuple]) -> dict:
    """h without the leaves at the paths in `fixed` (and without subtrees left empty)."""
    kept = {}
    for key, child in h.items():
        if isinstance(child, dict):
            child = _split(child, {p[1:] for p in fixed if p[:1] == (key,)})
            if child:
                kept[key] = child
        elif (key,) not in fixed:
            kept[key] = child
    return kept


def _merge(learned: dict, fixed: dict[tuple, torch.Tensor]) -> dict:
    """`learned` with each fixed leaf put back at its path (new dicts; inputs untouched)."""
    h = dict(learned)
    for path, value in fixed.items():
        node = h
        for key in path[:-1]:
            node[key] = dict(node.get(key, {}))
            node = node[key]
        node[path[-1]] = value
    return h

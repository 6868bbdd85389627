"""`ProblemView`: every member of BilevelProblem forwarded to the wrapped problem, with h's
fixed leaves merged back and a started task's "task" passed on; a member added to
BilevelProblem is forwarded without editing the view."""

import pytest
import torch
from torch.func import vmap

import bilevel
from bilevel.problem import BilevelProblem
from bilevel.problem_view import ProblemView
from bilevel.tree import relative_error
from problems.quadratic import Quadratic
from tests.conftest import seeded

SOLVER = bilevel.solvers.GD(lr=0.02, steps=3000)


def setting():
    """A quadratic; the view fixes log_lam at a value other than init_hyper's."""
    problem = Quadratic(dim=4, kappa=10.0, lam=1.0, n_tasks=3, distinct_val=True)
    h = problem.init_hyper(seeded(1)) | {"log_lam": torch.tensor(0.3, dtype=torch.float64)}
    view = ProblemView(problem, fixed={("log_lam",): h["log_lam"]}, start=True)
    return problem, h, problem.all_tasks(), view


def test_every_member_of_bilevel_problem_is_the_wrapped_problems():
    problem, h, tasks, view = setting()
    learned = view.init_hyper(seeded(1))
    assert list(learned) == ["theta"] and view.full(learned)["log_lam"] is h["log_lam"]
    task = {key: value[0] for key, value in tasks.items()}
    start = {"w": torch.arange(4.0, dtype=torch.float64)}
    started = {"task": task, "start": start}
    assert view.inner_init(learned, started) is start
    phi = {"w": torch.ones(4, dtype=torch.float64)}
    for name in ("train_loss", "val_loss", "inner_objective"):
        assert getattr(view, name)(phi, learned, started) == getattr(problem, name)(phi, h, task)
    assert view.penalty(phi, learned) == problem.penalty(phi, h)
    assert view.eval_metrics(phi, h=learned, task=started) == problem.eval_metrics(phi, h, task)
    torch.testing.assert_close(view.lam(learned), problem.lam(h), rtol=0, atol=0)
    torch.testing.assert_close(view.regularizer(phi, learned), problem.regularizer(phi, h))
    assert view.sample_tasks(2, seeded(0))["A"].shape == (2, 4, 4)
    # Other attributes, and the optional hooks a problem does not define, are the problem's.
    assert view.regularization == problem.regularization and view.dim == 4
    assert view.test_tasks() is None and view.report(learned, SOLVER) is None
    members = {name for name in vars(BilevelProblem) if not name.startswith("_")}
    assert members <= set(vars(ProblemView))


def test_a_started_view_with_fixed_leaves_has_the_problems_hypergradient():
    """Solves started at phi* (implicit differentiation there, one step) and the learned
    leaves' hypergradient: the closed form's."""
    problem, h, tasks, view = setting()
    learned = view.learned(h)
    phi = vmap(problem.solution, in_dims=(None, 0))(h, tasks)
    grad, _ = bilevel.hypergradient(view, learned, {"task": tasks, "start": phi},
                                    solver=SOLVER.with_steps(1), method="exact")
    expected = problem.meta_gradient(h, tasks)
    assert list(grad) == ["theta"]
    assert relative_error(grad["theta"], expected["theta"]) < 1e-10
    closed = view.meta_gradient(learned, {"task": tasks, "start": phi})
    assert list(closed) == ["theta"]
    torch.testing.assert_close(closed["theta"], expected["theta"], rtol=0, atol=0)


def test_a_member_added_to_bilevel_problem_is_forwarded_by_a_view(monkeypatch):
    """A hook added to BilevelProblem (here by monkeypatch) is forwarded by a view class made
    after it (`ProblemView.__init_subclass__` derives the forwarding), its h and task
    mapped like every other member's."""

    def weighted_val_loss(self, phi, h, task, weight=1.0):
        """A new optional hook, with a default."""
        return weight * self.val_loss(phi, h, task)

    monkeypatch.setattr(BilevelProblem, "weighted_val_loss", weighted_val_loss, raising=False)

    class Doubled(Quadratic):
        def weighted_val_loss(self, phi, h, task, weight=1.0):
            return 2 * weight * self.val_loss(phi, h, task) + h["log_lam"]

    class View(ProblemView):
        pass

    problem = Doubled(dim=4, kappa=10.0, lam=1.0, n_tasks=3)
    h = problem.init_hyper(seeded(1)) | {"log_lam": torch.tensor(0.3, dtype=torch.float64)}
    view = View(problem, fixed={("log_lam",): h["log_lam"]}, start=True)
    task = {key: value[1] for key, value in problem.all_tasks().items()}
    phi = {"w": torch.ones(4, dtype=torch.float64)}
    seen = view.weighted_val_loss(phi, view.learned(h), {"task": task, "start": phi}, weight=3.0)
    assert seen == problem.weighted_val_loss(phi, h, task, weight=3.0)
    assert seen != weighted_val_loss(problem, phi, h, task, 3.0)  # the subclass's, not the default


def test_a_view_of_something_else_or_with_malformed_fixed_leaves_is_refused():
    problem, h, _, _ = setting()
    with pytest.raises(bilevel.InvalidInputError, match="problem must be a bilevel"):
        ProblemView({}, start=True)
    with pytest.raises(bilevel.InvalidInputError, match="fixed must map paths into h .* got "
                                                        "'log_lam': Tensor"):
        ProblemView(problem, fixed={"log_lam": h["log_lam"]})

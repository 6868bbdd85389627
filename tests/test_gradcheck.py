"""bilevel.gradcheck, its table, and `bilevel gradcheck` on the command line."""

from pathlib import Path

import pytest

import bilevel
from bilevel.cli import main
from problems.quadratic import Quadratic
from tests.conftest import seeded

QUADRATIC = Path(__file__).resolve().parents[1] / "examples" / "quadratic.yaml"

SOLVER = bilevel.solvers.GD(lr=2 / 13, steps=120)  # converged on the problem below


@pytest.fixture
def setting():
    problem = Quadratic(dim=4, kappa=10.0, lam=1.0, n_tasks=3, distinct_val=True)
    return problem, problem.init_hyper(seeded(0)), problem.all_tasks()


def test_rows_report_error_and_cost(setting):
    problem, h, tasks = setting
    rows = bilevel.gradcheck(problem, h, tasks, solver=SOLVER,
                             methods=["exact", "imaml", "fomaml"],
                             reference=problem.meta_gradient(h, tasks),
                             options={"imaml": {"cg_steps": 6}}, repeats=2)
    by_method = {row["method"]: row for row in rows}
    assert list(by_method) == ["exact", "imaml", "fomaml"]
    assert by_method["exact"]["rel_error"] < 1e-12 and by_method["imaml"]["rel_error"] < 1e-12
    assert by_method["fomaml"]["rel_error"] > 0.1
    assert by_method["imaml"]["hvps"] == 3 * 6 and by_method["fomaml"]["hvps"] == 0
    assert by_method["exact"]["hvps"] == 3 * 4  # a dense 4 x 4 Hessian per task
    assert by_method["imaml"]["options"] == {"cg_steps": 6}
    for row in rows:
        assert row["inner_grad_evals"] == 3 * 120 and row["inner_grad_norm"] < 1e-12
        assert 0 < row["time_s"] < 60 and row["peak_memory_mib"] is None  # CPU
    table = bilevel.gradcheck_table(rows).splitlines()
    assert len(table) == 2 + 3 and table[0].split()[:3] == ["method", "rel.", "error"]
    assert table[3].split()[0] == "imaml" and table[4].split()[3] == "0"  # fomaml: no HVPs


def test_default_reference_is_exact_and_every_method_runs(setting):
    problem, h, tasks = setting
    solver = bilevel.solvers.GD(lr=1 / 11, steps=10)
    rows = bilevel.gradcheck(problem, h, tasks, solver=solver, repeats=1)
    assert [row["method"] for row in rows] == bilevel.estimators.estimators.names()
    errors = {row["method"]: row["rel_error"] for row in rows}
    assert errors["exact"] == 0 and errors["imaml"] < 1e-12  # same phi_K, CG exact in dim 4
    assert errors["maml"] > 1e-3  # 10 steps: the K-step gradient differs


@pytest.mark.parametrize("arguments, message", [
    ({"methods": ["newton"]}, "unknown method 'newton'"),
    ({"methods": ["maml"], "options": {"imaml": {"cg_steps": 3}}},
     "options: given for imaml, which is not among the methods checked (maml)"),
    ({"reference": {"theta": 1.0}}, "reference must be shaped like h"),
    ({"repeats": 0}, "repeats must be an integer >= 1, got 0"),
])
def test_invalid_arguments(setting, arguments, message):
    problem, h, tasks = setting
    with pytest.raises(bilevel.BilevelError) as error:
        bilevel.gradcheck(problem, h, tasks, solver=SOLVER, **arguments)
    assert message in str(error.value)


def test_command_line(capsys):
    status = main(["gradcheck", str(QUADRATIC), "--set", "problem.dim=3", "--set",
                   "tasks_per_step=2", "--set", "solver.steps=200", "--methods", "exact,reptile",
                   "--repeats", "1", "--reference", "closed-form"])
    out = capsys.readouterr().out.splitlines()
    assert status == 0 and out[0].startswith(f"{QUADRATIC}: 2 tasks, solver")
    exact, reptile = out[3].split(), out[4].split()
    assert exact[0] == "exact" and float(exact[1]) < 1e-10 and exact[2] == "400"
    assert reptile[0] == "reptile" and float(reptile[1]) > 1e-2


def test_command_line_errors_are_one_message(capsys):
    assert main(["gradcheck", str(QUADRATIC), "--set", "problem.kappa=0.5"]) == 2
    captured = capsys.readouterr()
    assert captured.err == (f"bilevel gradcheck: error: {QUADRATIC}:4:37: problem.kappa: "
                            "kappa must be >= 1, got 0.5\n")
    assert captured.out == ""
    with pytest.raises(SystemExit) as exit_:
        main(["gradcheck", str(QUADRATIC), "--repeats", "x"])
    assert exit_.value.code == 2 and "invalid int value: 'x'" in capsys.readouterr().err


BREAST_CANCER = QUADRATIC.parent / "breast_cancer.yaml"
QUICK = ["--set", "solver.steps=20", "--repeats", "1"]


def test_by_default_the_methods_that_do_not_apply_are_skipped_and_named(capsys):
    # The README's own example tunes lam only (theta: fixed): h has no 'theta'.
    assert main(["gradcheck", str(BREAST_CANCER), *QUICK]) == 0
    out = capsys.readouterr().out.splitlines()
    measured = [line.split()[0] for line in out[3:] if not line.startswith("skipped")]
    skipped = [line for line in out if line.startswith("skipped")]
    assert "exact" in measured and "fo-bmaml" in measured and "fomaml" not in measured
    assert [line.split()[1] for line in skipped] == ["fomaml:", "reptile:"]
    assert all("h has no key 'theta'" in line for line in skipped)
    assert len(measured) + len(skipped) == len(bilevel.estimators.estimators.names())


def test_a_method_asked_for_that_does_not_apply_is_an_error(capsys):
    assert main(["gradcheck", str(BREAST_CANCER), *QUICK, "--methods", "exact,fomaml"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "fomaml" in error and "no key 'theta'" in error


def test_progress_wraps_the_methods(setting):
    problem, h, tasks = setting
    seen = []

    def progress(names):
        seen.extend(names)
        return names

    rows = bilevel.gradcheck(problem, h, tasks, solver=SOLVER, methods=["maml", "exact"],
                             repeats=1, progress=progress)
    assert seen == ["maml", "exact"] and [row["method"] for row in rows] == seen

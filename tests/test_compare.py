"""`bilevel compare`: the search block, the cost model, fixed leaves of h, both sides on one
budget, resuming, the samplers and the hybrid. Small budgets on a small logreg problem."""

import json

import optuna
import pytest
import torch

from bilevel import hypergradient
from bilevel.cli import main
from bilevel.compare import compare
from bilevel.compare.cost import step_cost
from bilevel.compare.space import fixed_values, parameter_names
from bilevel.compare.study import sampler as optuna_sampler
from bilevel.config import ConfigError, from_dict
from bilevel.problem import problems
from bilevel.problem_view import ProblemView
from bilevel.solvers import Nesterov

BUDGET = 600


def config(**changes):
    data = {"problem": {"name": "logreg", "n_train": 200, "n_val": 200},
            "solver": {"name": "nesterov", "lr": 0.1, "steps": 20},
            "method": {"name": "fo-bmaml", "scheme": "symmetric"},
            "outer": {"name": "adam", "lr": 0.3}, "steps": 4, "tasks_per_step": 1,
            "eval": {"every": 1, "tasks": 1}, "dtype": "float64", "progress": False,
            "search": {"budget": {"inner_grad_evals": BUDGET},
                       "space": {"log_lam": {"low": -8, "high": 2}}}}
    search = changes.pop("search", {})
    return from_dict(data | changes | {"search": data["search"] | search})


@pytest.mark.parametrize("search, where", [
    ({"budget": {"inner_grad_evals": 10, "seconds": 1}}, "search.budget"),
    ({"budget": {}}, "search.budget"),
    ({"space": {"log_lam": {"low": 2, "high": -8}}}, "search.space.log_lam"),
    ({"space": {"log_lam": {"low": 0, "high": 1, "scale": "log"}}}, "search.space.log_lam"),
    ({"sampler": "tp"}, "search.sampler"),
    ({"space": {}}, "search"),
])
def test_search_block_errors_name_the_key(search, where):
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        config(search=search)


def test_compare_needs_a_search_block_and_paths_of_h(tmp_path):
    plain = from_dict({k: v for k, v in config().resolved.items() if k != "search"})
    with pytest.raises(ConfigError, match="search: `bilevel compare` needs a `search` block"):
        compare(plain, out=tmp_path / "a")
    with pytest.raises(ConfigError, match=r"search\.space\.log_lamb: 'log_lamb' is not a path"):
        compare(config(search={"space": {"log_lamb": {"low": 0, "high": 1}}}),
                out=tmp_path / "b")
    wrong = {"config": {"solver.steps": {"choices": [10, -1]}}}
    with pytest.raises(ConfigError, match=r"search\.config\.solver\.steps: the value -1"):
        compare(config(search=wrong), out=tmp_path / "c")


def test_cost_counts_gradients_and_hvps():
    assert step_cost({"inner_grad_evals": 10, "hvps": 5}) == 15
    assert step_cost({"inner_grad_evals": 10}) == step_cost({"inner_grad_evals": 10,
                                                             "hvps": None}) == 10


def test_partly_fixed_problem_has_the_full_problems_hypergradient():
    problem = problems.get("logreg")(n_train=100, n_val=100, per_feature=True,
                                     dtype=torch.float64)
    solver, h = Nesterov(lr=0.1, steps=30), problem.init_hyper()
    h["log_lam"]["b"] = torch.tensor(-1.0, dtype=torch.float64)
    partly = ProblemView(problem, fixed={("log_lam", "b"): h["log_lam"]["b"]})
    learned = partly.init_hyper()
    assert set(learned["log_lam"]) == {"W"}
    tasks = problem.sample_tasks(1)
    full, _ = hypergradient(problem, h, tasks, solver=solver, method="exact")
    part, _ = hypergradient(partly, learned, tasks, solver=solver, method="exact")
    torch.testing.assert_close(part["log_lam"]["W"], full["log_lam"]["W"])


def test_per_coordinate_and_broadcast_values():
    h = {"log_lam": {"W": torch.zeros(3), "b": torch.zeros(())}}
    space = {"log_lam.W": {"low": 0, "high": 1, "per_coordinate": True},
             "log_lam.b": {"low": 0, "high": 1, "per_coordinate": False}}
    names = parameter_names(h, space)
    assert list(names) == ["log_lam.W[0]", "log_lam.W[1]", "log_lam.W[2]", "log_lam.b"]
    fixed = fixed_values(h, space, dict(zip(names, [0.1, 0.2, 0.3, 0.5], strict=True)))
    torch.testing.assert_close(fixed[("log_lam", "W")], torch.tensor([0.1, 0.2, 0.3]))
    assert fixed[("log_lam", "b")].item() == 0.5


def test_both_sides_on_one_budget_then_resume(tmp_path):
    record = compare(config(), out=tmp_path)
    for name in ("compare.json", "compare.md", "compare.png", "study.db", "config.yaml"):
        assert (tmp_path / name).is_file(), name
    table = {row["side"]: row for row in record["table"]}
    assert set(table) == {"bilevel", "optuna-tpe"}
    for row in table.values():
        assert 0 < row["cost"] <= BUDGET and row["best_val_loss"] < 2.31  # log(10)
        assert 0 < row["test_accuracy"] <= 1 and row["test_loss"] > 0
    assert min(row["cost_to_1pct"] or BUDGET + 1 for row in table.values()) <= BUDGET
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["curves"]["bilevel"]["cost"] == sorted(saved["curves"]["bilevel"]["cost"])
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    trials = optuna.load_study(study_name="compare", storage=storage).trials
    assert len(trials) >= BUDGET // 20 and all(t.user_attrs["cost"] == 20 for t in trials)
    again = compare(config(), out=tmp_path)  # resumes: the budget is spent, no new trial
    assert len(optuna.load_study(study_name="compare", storage=storage).trials) == len(trials)
    assert again["table"] == record["table"]  # the bilevel side resumed its finished run
    with pytest.raises(Exception, match="holds a comparison of another config"):
        compare(config(seed=1), out=tmp_path)


@pytest.mark.parametrize("sampler", ["random", "gp", "cmaes", "sep-cmaes"])
def test_samplers(tmp_path, sampler):
    if "cmaes" in sampler:
        pytest.importorskip("cmaes", reason="CMA-ES needs the cmaes package")
    search = {"sampler": sampler, "budget": {"inner_grad_evals": 200}}
    record = compare(config(search=search), out=tmp_path, only="optuna")
    (row,) = record["table"]
    assert row["side"] == f"optuna-{sampler}" and row["cost"] == 200


@pytest.mark.parametrize("sampler, tag", [("sep-cmaes", "sepcma:"), ("cmaes", "cma:")])
def test_sep_cmaes_is_separable_cma_es(sampler, tag):
    """sep-cmaes samples with Optuna's separable CMA-ES (a diagonal covariance), cmaes with
    the full one: their trials carry their own generation tags (after the first trial, which
    Optuna samples independently, the search space not yet known)."""
    pytest.importorskip("cmaes", reason="CMA-ES needs the cmaes package")
    study = optuna.create_study(sampler=optuna_sampler(sampler, 0))
    study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2 + t.suggest_float("y", -1, 1) ** 2,
                   n_trials=3)
    generation = [f"{tag}generation"]
    assert [list(t.system_attrs) for t in study.trials] == [[], generation, generation]


def test_hybrid_trials_meta_train_and_report(tmp_path):
    """Optuna picks the inner solver's steps; each trial meta-trains log_lam and reports
    its validation losses to the (median) pruner."""
    search = {"space": {}, "pruner": "median", "budget": {"inner_grad_evals": 500},
              "config": {"solver.steps": {"low": 5, "high": 30, "type": "int"}}}
    record = compare(config(search=search, steps=2), out=tmp_path, only="optuna")
    study = optuna.load_study(study_name="compare", storage=f"sqlite:///{tmp_path}/study.db")
    finished = [t for t in study.trials if t.state.is_finished()]
    assert finished and all(t.intermediate_values for t in finished)
    assert all(5 <= t.params["solver.steps"] <= 30 for t in finished)
    complete = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
    assert all(t.value == t.intermediate_values[2] for t in complete)
    assert (tmp_path / "trials" / str(complete[0].number) / "checkpoint.pt").is_file()
    assert record["table"][0]["test_loss"] > 0  # the best trial's learned log_lam, reloaded


def test_cli_compare_errors_are_one_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("problem: {name: logreg}\nsolver: {name: gd, lr: 0.1, steps: 5}\n"
                    "steps: 1\ntasks_per_step: 1\n")
    assert main(["compare", str(path), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("bilevel compare: error: ") and "search" in error
    assert len(error.strip().splitlines()) == 1


def test_seconds_budget_and_journal_storage(tmp_path):
    search = {"budget": {"seconds": 1.0}}
    record = compare(config(search=search), out=tmp_path,
                     storage=f"journal:{tmp_path / 'journal.log'}")
    assert (tmp_path / "journal.log").is_file() and not (tmp_path / "study.db").exists()
    for row in record["table"]:
        assert row["seconds"] <= 1.0
    assert record["unit"] == "seconds"


def test_a_warm_started_bilevel_side_counts_its_solves_and_buys_more_steps(tmp_path):
    """Per step, cold: 20 + 2 x 20 + a validation of 20 = 60, 5 steps on 300; warm-started
    (5 steps): 20 + 2 x 5 + 20 on the first step, 5 + 2 x 5 + 20 after: 8 steps."""
    search = {"budget": {"inner_grad_evals": 300}}
    record = compare(config(warm_start={"steps": 5}, search=search, divergence_factor=50.0),
                     out=tmp_path, only="bilevel")
    settings = json.loads((tmp_path / "bilevel" / "settings.json").read_text())
    assert settings["divergence_factor"] == 50.0  # the config's, not meta_train's default
    history = [json.loads(line) for line in
               (tmp_path / "bilevel" / "metrics.jsonl").read_text().splitlines()]
    assert [r["inner_grad_evals"] for r in history] == [30] + [15] * 7
    saved = json.loads((tmp_path / "compare.json").read_text())["curves"]["bilevel"]
    assert saved["cost"] == [50 + 35 * k for k in range(8)]
    assert record["table"][0]["cost"] == 295

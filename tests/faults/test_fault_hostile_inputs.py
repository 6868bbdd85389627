"""Inputs a hostile user gives `bilevel` (issue 22): each is one line on stderr and exit
status 2 before any work, never a hang, a crash or a raw traceback; nearby inputs that are
fine stay accepted. Classes: inputs that block or explode; raw tracebacks on unusual input;
non-finite or degenerate data at load; misleading messages."""

import csv
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from bilevel import checks, devices
from bilevel.blocks.sources import CsvFile, NpzFile
from bilevel.cli import main
from bilevel.compare.study import sampler_seed, storage
from bilevel.config import load_config
from bilevel.config.yamlfile import MAX_NODES
from bilevel.errors import InvalidInputError
from bilevel.training.optimizers import OuterOptimizer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CSV = EXAMPLES / "data" / "breast_cancer.csv"


def one_line_error(capsys, *argv) -> str:
    """The message of `bilevel argv...`, which must fail with status 2 in one line."""
    assert main(list(argv)) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def table_config(tmp_path, data: str, source_extra: str = "", split: str =
                 "{kind: holdout, train: 0.4, val: 0.3, seed: 0}", name: str = "csv") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"problem:\n  source: {{name: {name}, path: {data}, kind: classification, "
                    f"split: {split}{source_extra}}}\n  model: linear\n  loss: cross-entropy\n"
                    "solver: {name: gd, lr: 0.1, steps: 5}\nsteps: 2\ntasks_per_step: 1\n"
                    "dtype: float64\n")
    return path


def write_rows(path: Path, rows, **options) -> Path:
    with path.open("w", newline="", encoding=options.pop("encoding", "utf-8")) as file:
        csv.writer(file, **options).writerows(rows)
    return path


def breast_cancer_rows():
    with CSV.open(newline="") as file:
        return list(csv.reader(file))


# Inputs that block or explode -------------------------------------------------------------

LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]\n"
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True))


def test_a_billion_laughs_file_is_refused_at_once(tmp_path, capsys):
    path = tmp_path / "laughs.yaml"
    path.write_text(LAUGHS)  # 9^9 = 387 million values once expanded
    assert "expands to more than 100,000 values" in one_line_error(capsys, "validate", str(path))
    laughs = "[&a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]" + "".join(
        f", &{b} [{', '.join([f'*{a}'] * 10)}]" for a, b in zip("abcdefgh", "bcdefghi",
                                                                 strict=True)) + "]"
    message = one_line_error(capsys, "validate", str(EXAMPLES / "quadratic.yaml"), "--set",
                             f"problem.args={laughs}")  # the same in one --set value
    assert "--set value" in message and "expands to more than 100,000 values" in message


def test_aliases_within_the_limit_stay_accepted(tmp_path):
    text = (EXAMPLES / "quadratic.yaml").read_text()
    path = tmp_path / "aliased.yaml"
    path.write_text(text.replace("steps: 30", "steps: &n 30\nseed: *n"))
    assert load_config(path).resolved["seed"] == 30
    wide = tmp_path / "wide.yaml"
    wide.write_text("x: [" + ", ".join(["1"] * MAX_NODES) + "]\n")
    with pytest.raises(InvalidInputError, match="expands to more than"):
        load_config(wide)


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_fifos_devices_and_folders_are_refused_as_data_and_config(tmp_path, capsys, kind):
    special = {"device": Path("/dev/null"), "directory": tmp_path / "folder"}.get(
        kind, tmp_path / "pipe.csv")
    if kind == "fifo":
        os.mkfifo(special)  # reading it would block for ever
    elif kind == "directory":
        special.mkdir()
    message = one_line_error(capsys, "validate", str(table_config(tmp_path, str(special))))
    assert f"{special} is a" in message and "not a regular file" in message
    assert "not a regular file" in one_line_error(capsys, "validate", str(special))


@pytest.mark.parametrize(("override", "fragment"), [
    ("steps=1e12", "steps: Input should be less than or equal to 1000000000"),
    ("steps=100000000000000000000000000000000000", "steps:"),
    ("tasks_per_step=1000000000000", "tasks_per_step: Input should be less than or equal to"),
    ("eval={every: 1, tasks: 1e30}", "eval.tasks"),
    ("problem.dim=1000000000000", "problem: the task pool (n_tasks x dim x dim) needs"),
    ("problem.n_tasks=100000000000", "GiB of memory of cpu"),
])
def test_absurd_sizes_are_refused_before_any_work(capsys, override, fragment):
    message = one_line_error(capsys, "validate", str(EXAMPLES / "quadratic.yaml"),
                             "--set", override)
    assert fragment in message


@pytest.mark.parametrize(("example", "override"), [
    ("breast_cancer.yaml", "problem.model={name: mlp, widths: [1000000000000]}"),
    ("digits_anil.yaml", "problem.source.split.test_tasks=1000000000000"),
])
def test_any_size_of_a_problem_that_cannot_be_allocated(capsys, example, override):
    message = one_line_error(capsys, "validate", str(EXAMPLES / example), "--set", override)
    assert "problem: building the problem needs more memory than cpu has" in message


def test_the_largest_documented_sizes_stay_accepted():
    assert checks.integer("steps", checks.MAX_STEPS, maximum=checks.MAX_STEPS) == 10**9
    with pytest.raises(InvalidInputError, match="steps must be at most 1,000,000,000"):
        checks.integer("steps", checks.MAX_STEPS + 1, maximum=checks.MAX_STEPS)
    devices.check_memory("a small pool", 2**20, "cpu")


def test_threads_far_beyond_the_machine_are_refused(capsys):
    message = one_line_error(capsys, "validate", str(EXAMPLES / "quadratic.yaml"), "--set",
                             "threads=100000")  # torch segfaults on this many
    cores = os.cpu_count()
    assert f"threads must be at most 4 x this machine's {cores} CPU cores" in message
    assert devices.threads(4 * cores) == 4 * cores
    with pytest.raises(InvalidInputError, match="at most"):
        devices.threads(4 * cores + 1)


# Raw tracebacks -> one line ----------------------------------------------------------------


def test_a_csv_not_in_utf8_is_named(tmp_path, capsys):
    rows = breast_cancer_rows()
    rows[0][0] = "rayon_moyen_é"
    path = write_rows(tmp_path / "latin.csv", rows, encoding="latin-1")
    assert "is not UTF-8 text" in one_line_error(
        capsys, "validate", str(table_config(tmp_path, str(path))))
    config = tmp_path / "config-latin.yaml"
    config.write_bytes((EXAMPLES / "quadratic.yaml").read_bytes() + "# é\n".encode("latin-1"))
    assert "not UTF-8 text" in one_line_error(capsys, "validate", str(config))
    bom = write_rows(tmp_path / "bom.csv", breast_cancer_rows(), encoding="utf-8-sig")
    x, _ = CsvFile(str(bom), target="mean_radius").read(bom)  # a BOM stays accepted
    assert x.shape == (569, 30)


def test_odd_delimiters_are_named(tmp_path, capsys):
    path = write_rows(tmp_path / "semi.csv", breast_cancer_rows(), delimiter=";")
    message = one_line_error(capsys, "validate", str(table_config(tmp_path, str(path))))
    assert "looks separated by ';': set the source's delimiter" in message
    for delimiter in ("';;'", "''", "'a'", '"\\n"'):
        message = one_line_error(capsys, "validate", str(table_config(
            tmp_path, str(path), f", delimiter: {delimiter}")))
        assert "delimiter must be one character" in message
    CsvFile(str(path), delimiter=";").read(path)  # the right one stays accepted


@pytest.mark.parametrize(("x", "fragment"), [
    (np.array([[1, 2], [3, 4]], dtype=object), "cannot be read (Object arrays"),
    (np.array([["a", "b"], ["c", "d"]]), "holds <U1 values, not numbers"),
    (np.array([[1 + 1j, 2], [3, 4]]), "holds complex128 values"),
])
def test_npz_with_object_string_or_complex_arrays(tmp_path, capsys, x, fragment):
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=np.array([0, 1]))
    message = one_line_error(capsys, "validate", str(table_config(
        tmp_path, str(path), name="npz", split="{kind: holdout, train: 1, val: 1}")))
    assert fragment in message


@pytest.mark.parametrize("module", [".problems.ridge:Ridge", "..ridge:Ridge", "problems/ridge:R"])
def test_a_relative_or_malformed_python_module_path(tmp_path, capsys, module):
    message = one_line_error(capsys, "validate", str(EXAMPLES / "ridge_python.yaml"), "--set",
                             f"problem.python={module}")
    assert "python must be package.module:ClassName" in message
    if module.startswith("."):
        assert "relative module path" in message


@pytest.mark.parametrize("schedule", ["{name: step, step_size: 0}",
                                      "{name: cyclic, base_lr: 0.01, max_lr: 0.1, "
                                      "step_size_up: 0}"])
def test_a_schedule_with_a_zero_step_size(capsys, schedule):
    message = one_line_error(capsys, "validate", str(EXAMPLES / "ridge_python.yaml"), "--set",
                             f"outer.schedule={schedule}")
    assert "outer.schedule: schedule" in message and "by zero" in message


def test_a_schedule_that_steps_stays_accepted():
    OuterOptimizer.parse({"name": "adam", "schedule": {"name": "step", "step_size": 1}}).check()


@pytest.mark.parametrize(("override", "fragment"), [
    ("seed=18446744073709551616", "seed: Input should be less than or equal to "
                                  "18446744073709551615"),
    ("problem.seed=18446744073709551616", "problem.seed: seed must be an integer in [0, 2^64"),
])
def test_seeds_beyond_64_bits(capsys, override, fragment):
    assert fragment in one_line_error(capsys, "validate", str(EXAMPLES / "quadratic.yaml"),
                                      "--set", override)


@pytest.mark.parametrize(("space", "fragment"), [
    ("{low: 0.5, high: 0.7, type: int}", "type int needs an integer in [low, high]"),
    ("{low: -.inf, high: 1}", "low: Input should be a finite number, got -inf"),
    ("{low: 1, high: .inf}", "high: Input should be a finite number, got inf"),
])
def test_search_ranges_without_an_integer_or_with_an_infinite_bound(capsys, space, fragment):
    message = one_line_error(capsys, "validate", str(EXAMPLES / "compare_logreg.yaml"), "--set",
                             f"search.space.log_lam={space}")
    assert f"search.space.log_lam.{fragment}" in message or fragment in message


def test_workers_and_seeds_outside_the_samplers_seed_range(tmp_path, capsys):
    config = str(EXAMPLES / "compare_logreg.yaml")
    out = str(tmp_path / "cmp")
    assert "worker must be an integer >= 0, got -1" in one_line_error(
        capsys, "compare", config, "--out", out, "--worker", "-1")
    assert "worker must be at most 4,293,918 with seed 0" in one_line_error(
        capsys, "compare", config, "--out", out, "--worker", "10000000")
    assert not (tmp_path / "cmp").exists()  # before any work
    assert sampler_seed(0, 4_293_918) == 4_293_918_000
    with pytest.raises(InvalidInputError, match="seed must be below"):
        sampler_seed(2**40, 0)


def test_journal_storages_in_a_missing_or_read_only_folder(tmp_path, monkeypatch):
    with pytest.raises(InvalidInputError, match="the folder .*missing does not exist"):
        storage(f"journal:{tmp_path / 'missing' / 'j.log'}", tmp_path)
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # root may write anywhere
    with pytest.raises(InvalidInputError, match="cannot write in the folder"):
        storage(f"journal:{tmp_path / 'j.log'}", tmp_path)
    monkeypatch.undo()
    storage(f"journal:{tmp_path / 'j.log'}", tmp_path)  # a writable folder stays accepted


# Non-finite or degenerate data at load -------------------------------------------------------


@pytest.mark.parametrize(("row", "value"), [(10, "nan"), (500, "inf"), (568, "-inf")])
def test_nan_and_inf_cells_are_named_by_file_line_and_column(tmp_path, capsys, row, value):
    """Row 500 and 568 fall in the test split (the last 30%) as often as not: checked too."""
    rows = breast_cancer_rows()
    rows[row][3] = value
    path = write_rows(tmp_path / "data.csv", rows)
    message = one_line_error(capsys, "validate", str(table_config(tmp_path, str(path))))
    assert f"{path}: line {row + 1}, column {rows[0][3]!r} holds {value}" in message


def test_cells_beyond_the_runs_dtype_are_named_and_accepted_in_float64(tmp_path, capsys):
    """1e308 is a finite float64 but infinite in float32: refused at load for a float32 run,
    naming the file, row and column, and accepted for a float64 one."""
    rows = breast_cancer_rows()
    rows[7][2] = "1e308"
    path = write_rows(tmp_path / "data.csv", rows)
    config = str(table_config(tmp_path, str(path)))
    message = one_line_error(capsys, "validate", config, "--set", "dtype=float32")
    assert f"{path}: row 6, column 'feature 2' holds 1e+308" in message
    assert "beyond float32's largest number (3.4e+38)" in message
    assert main(["validate", config]) == 0  # float64


def test_nan_cells_of_an_npz_are_named_by_array_row_and_column(tmp_path):
    path = tmp_path / "data.npz"
    x = np.ones((4, 3))
    x[2, 1] = math.nan
    np.savez(path, x=x, y=np.array([0, 1, 0, 1]))
    with pytest.raises(InvalidInputError, match=r"row 2, column \"x\[:, 1\]\" holds nan|"
                                                r"row 2, column 'x\[:, 1\]' holds nan"):
        NpzFile(str(path)).read(path)


def test_a_one_class_target_is_refused(tmp_path, capsys):
    rows = breast_cancer_rows()
    target = rows[0].index("diagnosis")
    for row in rows[1:]:
        row[target] = "1"
    path = write_rows(tmp_path / "data.csv", rows)
    message = one_line_error(capsys, "validate", str(table_config(tmp_path, str(path))))
    assert "the target has a single class (1) in all 569 rows: nothing to classify" in message


def test_zero_feature_columns_and_zero_training_rows(tmp_path, capsys):
    rows = breast_cancer_rows()
    target = rows[0].index("diagnosis")
    path = write_rows(tmp_path / "target.csv", [[row[target]] for row in rows])
    assert "0 feature columns" in one_line_error(
        capsys, "validate", str(table_config(tmp_path, str(path))))
    message = one_line_error(capsys, "validate", str(table_config(
        tmp_path, str(CSV), split="{kind: holdout, train: 0.0001, val: 0.3}")))
    assert "split train: 0.0001 of the 569 rows is no row" in message


def test_repeated_few_shot_classes_are_refused(capsys):
    config = str(EXAMPLES / "digits_anil.yaml")
    message = one_line_error(capsys, "validate", config, "--set",
                             "problem.source.split.classes=[0, 1, 2, 3, 3]")
    assert "each class once, but [3] repeat(s)" in message
    message = one_line_error(capsys, "validate", config, "--set",
                             "problem.source.split.test_classes=[5, 6, 7, 8]")
    assert "classes and test_classes share [5]" in message


# Misleading messages -------------------------------------------------------------------------


@pytest.mark.parametrize("outer", ["{name: adam, lr: .inf}", "{name: sgd, lr: .inf}",
                                   "{name: clipped-gd, lr: .nan}"])
def test_an_infinite_outer_lr_is_named_not_a_comparison_error(capsys, outer):
    message = one_line_error(capsys, "validate", str(EXAMPLES / "ridge_python.yaml"), "--set",
                             f"outer={outer}")
    assert "outer.lr: lr must be a finite number" in message
    assert "not supported between" not in message


def test_nan_data_and_zero_rows_are_not_reported_as_a_divergence(tmp_path, capsys):
    rows = breast_cancer_rows()
    rows[2][0] = "nan"
    path = write_rows(tmp_path / "data.csv", rows)
    message = one_line_error(capsys, "run", str(table_config(tmp_path, str(path))), "--out",
                             str(tmp_path / "run"))
    assert "holds nan" in message and "diverged" not in message
    header_only = write_rows(tmp_path / "empty.csv", rows[:1])
    message = one_line_error(capsys, "run", str(table_config(tmp_path, str(header_only))),
                             "--out", str(tmp_path / "run2"))
    assert "at least one data row" in message and "diverged" not in message


def test_examples_data_stays_accepted(tmp_path):
    shutil.copy(CSV, tmp_path / "data.csv")
    x, y = CsvFile(str(tmp_path / "data.csv"), target="diagnosis").read(tmp_path / "data.csv")
    assert x.shape == (569, 30) and set(np.unique(y)) == {0.0, 1.0}

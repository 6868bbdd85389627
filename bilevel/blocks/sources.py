"""Task sources: where the tasks of a composed problem come from.

A source is a frozen dataclass of its options, registered by name; `source.load(dtype,
device)` returns `Tasks`, which samples batches of tasks

    {"x": (n, support, inputs), "y": (n, support[, outputs]),      training set of each task
     "xq": (n, query, inputs),  "yq": (n, query[, outputs])}       validation set of each task

(classification targets are int64 labels 0..classes-1). Table sources (scikit-learn's
bundled datasets, the user's .csv or .npz file) read a table of features and targets and
split it, as their `split` option says:

    {kind: holdout, train: 0.5, val: 0.25, test: null, seed: 0, standardize: true,
     corruption: 0}
        one task: train rows for the inner problem, val rows for the outer one, test rows
        (default: the rest) a test set that no task sees (counts, or fractions of the rows);
        a fraction `corruption` of the training labels replaced by another class, at random
        (`bilevel.blocks.corruption`; classification only);
    {kind: few-shot, ways: 5, shots: 1, queries: 15, classes: [0, 1, ...]}
        N-way K-shot classification tasks over `classes` (default all), labels permuted.

Packages add sources through the "bilevel.sources" entry-point group (problems/ adds the
sinusoid family).
"""

import abc
import csv
import dataclasses
import functools
import math
from pathlib import Path

import numpy as np
import torch

from bilevel import checks
from bilevel.blocks.corruption import corrupt_labels
from bilevel.errors import InvalidInputError
from bilevel.registry import Registry

sources = Registry("task source", entry_points="bilevel.sources")
KINDS = ("classification", "regression")
SKLEARN = ("digits", "breast_cancer", "wine", "iris", "diabetes")
# The meaning of every table source's `split` option.
SPLIT = ("how rows become tasks: {kind: holdout, train, val, test, seed, standardize, "
         "corruption} (one task; the default) or {kind: few-shot, ways, shots, queries, "
         "classes, test_classes, test_tasks, standardize}")


@dataclasses.dataclass(frozen=True)
class Tasks:
    """What a loaded source gives a problem: a task sampler and the shapes of its data.

    kind: "classification" or "regression"; inputs: features per example (or, for examples
    that are images, their shape (height, width): only a `cnn` takes them); outputs: classes
    (classification) or target dimension (regression); sample(n, generator) -> a batch;
    test: a batch of test tasks, or None: for holdout splits one task whose query set is
    the test rows; for few-shot splits with test_classes (or a data set's own held-out
    rows), tasks over those classes (rows).
    train_rows: the size of the one training set that every task shares (holdout splits),
    None where tasks differ (few-shot); corrupted: (train_rows,) bool, the training rows
    whose labels a holdout split corrupted, or None.
    """

    kind: str
    inputs: int
    outputs: int
    sample: object
    test: dict | None = None
    train_rows: int | None = None
    corrupted: torch.Tensor | None = None


def _check_kind(kind: str, y: np.ndarray, where: str) -> str:
    if kind == "auto":
        whole = np.all(np.mod(y, 1) == 0) and y.ndim == 1
        kind = "classification" if whole and len(np.unique(y)) <= 50 else "regression"
    return checks.one_of("kind", kind, KINDS)


def finite_cells(table: np.ndarray, where: str, columns, first_row: int = 0,
                 row_name: str = "row", dtype: torch.dtype | None = None) -> None:
    """An InvalidInputError naming the first NaN or infinite cell of `table` (rows, columns)
    by its column (`columns`: the names) and row (counted from `first_row`); with `dtype`,
    also the first cell beyond the dtype's largest number (it would become infinite)."""
    cells = table.reshape(len(table), -1)
    limit = math.inf if dtype is None else torch.finfo(dtype).max
    bad = np.argwhere(~(np.isfinite(cells) & (np.abs(cells) <= limit)))
    if len(bad):
        row, column = bad[0]
        value = cells[row, column]
        beyond = (f"beyond {str(dtype).removeprefix('torch.')}'s largest number "
                  f"({limit:.3g})" if np.isfinite(value) else "not finite")
        raise InvalidInputError(f"{where}: {row_name} {row + first_row}, column "
                                f"{columns[column]!r} holds {value} ({len(bad)} "
                                f"cell(s) not finite or too large in all: this one {beyond}); "
                                "the data must be finite numbers")


def table_tasks(x: np.ndarray, y: np.ndarray, kind: str, split: dict, dtype, device,
                where: str, test: tuple | None = None) -> Tasks:
    """`Tasks` from a table: x (rows, features), y (rows,) or (rows, outputs); `test`: the
    (x, y) rows that the data set itself holds out, which then are the test set (no task
    drawn from x, y sees them). Refused when empty, without a feature column, with a NaN or
    infinite cell, or a single class."""
    if len(x) == 0 or x.shape[1] == 0:
        raise InvalidInputError(f"{where}: the table has {len(x)} rows and {x.shape[1]} feature "
                                "columns; it needs at least one of each")
    finite_cells(x, where, [f"feature {j}" for j in range(x.shape[1])], dtype=dtype)
    finite_cells(y, where, ["target"] * (1 if y.ndim == 1 else y.shape[1]), dtype=dtype)
    kind = _check_kind(kind, y, where)
    rows = len(y)
    if test is not None:
        x, y = np.concatenate([x, test[0]]), np.concatenate([y, test[1]])
    if kind == "classification":
        classes, y = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise InvalidInputError(f"{where}: the target has a single class "
                                    f"({classes[0]:g}) in all {len(y)} rows: nothing to "
                                    "classify")
        target = torch.as_tensor(y.reshape(-1), dtype=torch.int64, device=device)
        outputs = int(target.max()) + 1
    else:
        target = torch.as_tensor(y, dtype=dtype, device=device)
        outputs = 1 if y.ndim == 1 else y.shape[1]
    features = torch.as_tensor(x, dtype=dtype, device=device)
    held_out = None if test is None else (features[rows:], target[rows:])
    features, target = features[:rows], target[:rows]
    split = dict(split)
    shape = split.pop("kind", "holdout")
    if shape == "holdout":
        return Holdout(**_options(Holdout, split, where)).tasks(
            features, target, kind, outputs, held_out)
    if shape == "few-shot":
        if kind != "classification":
            raise InvalidInputError(f"split: kind few-shot needs classification targets ({where})")
        return FewShot(**_options(FewShot, split, where)).tasks(
            features, target, outputs, held_out)
    raise InvalidInputError(f"split: kind must be 'holdout' or 'few-shot', got {shape!r} ({where})")


def _options(cls, options: dict, where: str) -> dict:
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise InvalidInputError(f"split: unknown option(s) {', '.join(unknown)} ({where}); valid "
                                f"options are kind, {', '.join(sorted(valid))}")
    return options


def _count(name: str, value, rows: int) -> int:
    if isinstance(value, float) and 0 < value < 1:
        count = int(round(value * rows))
        if count < 1:
            raise InvalidInputError(f"{name}: {value} of the {rows} rows is no row; it needs "
                                    "at least one")
        return count
    return checks.integer(name, value, minimum=1)


def standardize_statistics(reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column mean and std of `reference`; std 1 for a constant column (only centred)."""
    mean, std = reference.mean(0), reference.std(0)
    return mean, torch.where(std > 0, std, torch.ones_like(std))


def standardize(reference: torch.Tensor, *arrays: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(x - mean) / std per column with the statistics of `reference` (no leak from the
    others)."""
    mean, std = standardize_statistics(reference)
    return tuple((x - mean) / std for x in (reference, *arrays))


def random_split(n_examples: int, sizes, generator) -> list[torch.Tensor]:
    """Disjoint random index sets of the given sizes, drawn from range(n_examples)."""
    order = torch.randperm(n_examples, generator=generator)
    return list(torch.split(order[: sum(sizes)], list(sizes)))


@dataclasses.dataclass(frozen=True)
class Holdout:
    """One task: `train` rows (count or fraction) to fit, `val` rows to judge, `test` rows
    (default: the rest) to report on, or, where the data set holds out its own, those rows
    (and the rest unused); a fraction `corruption` of the training labels corrupted (drawn
    with `seed`, after the split)."""

    train: float | int = 0.5
    val: float | int = 0.25
    test: float | int | None = None
    seed: int = 0
    standardize: bool = True
    corruption: float = 0.0

    def tasks(self, x, y, kind, outputs, held_out=None) -> Tasks:
        rows = len(y)
        n_train = _count("split train", self.train, rows)
        n_val = _count("split val", self.val, rows)
        rest = max(rows - n_train - n_val, 0)
        n_test = rest if self.test is None else _count("split test", self.test, rows)
        if n_train + n_val + n_test > rows:
            raise InvalidInputError(f"split: train + val + test = {n_train + n_val + n_test} "
                                    f"rows, but the table has only {rows}")
        generator = torch.Generator().manual_seed(checks.seed("split seed", self.seed))
        sizes = (n_train, n_val, 0 if held_out is not None else n_test)
        train, val, test = (part.to(x.device) for part in random_split(rows, sizes, generator))
        test_x, test_y = (x[test], y[test]) if held_out is None else held_out
        parts: tuple[torch.Tensor, ...] = (x[train], x[val], test_x)
        if self.standardize:
            parts = standardize(*parts)
        y_train, corrupted = y[train], None
        if self.corruption != 0:
            if kind != "classification":
                raise InvalidInputError(f"split: corruption replaces class labels, but the "
                                        f"targets are {kind} ones; set corruption: 0")
            y_train, corrupted = corrupt_labels(y_train, self.corruption, outputs, generator)
        task = {"x": parts[0], "y": y_train, "xq": parts[1], "yq": y[val]}

        def sample(n, generator=None):
            checks.integer("n", n, minimum=1)
            return {k: v.expand(n, *v.shape) for k, v in task.items()}

        test_task = None
        if len(test_y):
            test_task = {"x": parts[0][None], "y": y_train[None], "xq": parts[2][None],
                         "yq": test_y[None]}
        return Tasks(kind, x.shape[1], outputs, sample, test_task, n_train, corrupted)


@dataclasses.dataclass(frozen=True)
class FewShot:
    """N-way (`ways`) K-shot (`shots`) tasks with `queries` query rows per class, over
    `classes` (default all); with `test_classes`, `test_tasks` tasks over those unseen
    classes (drawn once, seed 0) are the test set. Where the data set holds out its own test
    rows, the test tasks are drawn from those, over `test_classes` (default: `classes`)."""

    ways: int = 5
    shots: int = 1
    queries: int = 15
    classes: list | None = None
    test_classes: list | None = None
    test_tasks: int = 500
    standardize: bool = True

    def tasks(self, x, y, outputs, held_out=None) -> Tasks:
        ways = checks.integer("split ways", self.ways, minimum=2)
        shots = checks.integer("split shots", self.shots, minimum=1)
        queries = checks.integer("split queries", self.queries, minimum=1)
        classes = list(range(outputs)) if self.classes is None else list(self.classes)
        groups = [self._rows(x, y, classes, outputs, "classes")]
        if self.test_classes is not None or held_out is not None:
            test_classes = classes if self.test_classes is None else list(self.test_classes)
            test_x, test_y = (x, y) if held_out is None else held_out
            groups.append(self._rows(test_x, test_y, test_classes, outputs, "test_classes"))
        if self.standardize:  # with the statistics of the training classes' rows
            mean, std = standardize_statistics(torch.cat(groups[0]))
            groups = [[(r - mean) / std for r in rows] for rows in groups]
        sample = few_shot_sampler(groups[0], ways, shots, queries)
        test = None
        if len(groups) > 1:
            count = checks.integer("split test_tasks", self.test_tasks, minimum=1)
            test_sample = few_shot_sampler(groups[1], ways, shots, queries)
            test = test_sample(count, torch.Generator().manual_seed(0))
        return Tasks("classification", x.shape[1], ways, sample, test)

    def _rows(self, x, y, classes, outputs, option):
        repeated = sorted({c for c in classes if classes.count(c) > 1})
        if repeated:
            raise InvalidInputError(f"split {option}: each class once, but {repeated} "
                                    f"repeat(s) in {classes!r}")
        if self.test_classes is not None and option == "classes":
            shared = sorted(set(classes) & set(self.test_classes))
            if shared:
                raise InvalidInputError(f"split: classes and test_classes share {shared}; "
                                        "test classes must be unseen")
        if len(classes) < self.ways or not set(classes) <= set(range(outputs)):
            raise InvalidInputError(f"split {option}: need at least ways={self.ways} of the labels "
                                    f"0..{outputs - 1}, got {classes!r}")
        rows = [x[y == c] for c in classes]
        fewest = min(len(r) for r in rows)
        if fewest < self.shots + self.queries:
            raise InvalidInputError(f"split: shots + queries = {self.shots + self.queries} rows "
                                    f"per class, but a class of {option} has only {fewest}")
        return rows


def few_shot_sampler(rows: list, ways: int, shots: int, queries: int, classes=None):
    """sample(n, generator): n tasks of `ways` classes drawn from `rows` (one tensor of rows
    per class), `shots` + `queries` distinct rows of each, labels 0..ways-1 in random order;
    with `classes` (a tensor naming each class of `rows`), also {"classes": (n, ways)}, the
    class that each label stands for."""
    images = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)  # (classes, most, inputs)
    device = images.device
    counts = torch.tensor([len(r) for r in rows], device=device)

    def sample(n, generator=None):
        checks.integer("n", n, minimum=1)
        picks = torch.rand(n, len(rows), generator=generator).argsort(-1)[:, :ways].to(device)
        # Padding scores above every real row: the first shots + queries of each row's order
        # are distinct real rows of its class.
        scores = torch.rand(n, ways, images.shape[1], generator=generator).to(device)
        padding = torch.arange(images.shape[1], device=device) >= counts[picks, None]
        chosen = scores.masked_fill(padding, 2.0).argsort(-1)[..., :shots + queries]
        chosen_rows = images[picks[..., None], chosen]
        labels = torch.arange(ways, device=device)[None, :, None]

        def flat(part, size):
            return (chosen_rows[:, :, part].reshape(n, ways * size, images.shape[2]),
                    labels.expand(n, ways, size).reshape(n, ways * size))

        (xs, ys), (xq, yq) = flat(slice(0, shots), shots), flat(slice(shots, None), queries)
        tasks = {"x": xs, "y": ys, "xq": xq, "yq": yq}
        return tasks if classes is None else tasks | {"classes": classes[picks]}

    return sample


@functools.cache
def _sklearn_table(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    import sklearn.datasets

    data = getattr(sklearn.datasets, f"load_{dataset}")()
    return data.data, data.target


@sources.register("sklearn")
@dataclasses.dataclass(frozen=True)
class SklearnDataset:
    """A dataset that scikit-learn ships (nothing is downloaded): digits, breast_cancer,
    wine, iris (classification) or diabetes (regression)."""

    dataset: str = checks.option(f"one of {', '.join(SKLEARN)}")
    split: dict = checks.option(SPLIT, default_factory=dict)

    def __post_init__(self):
        checks.one_of("dataset", self.dataset, SKLEARN)

    def load(self, dtype, device) -> Tasks:
        x, y = _sklearn_table(self.dataset)
        kind = "regression" if self.dataset == "diabetes" else "classification"
        return table_tasks(x, y, kind, self.split, dtype, device, f"dataset {self.dataset}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _numeric(arrays, key: str, option: str, path) -> np.ndarray:
    """Array `key` of an .npz file as float64; object, string and other non-numeric arrays
    are refused (object arrays would need pickle, which may run code)."""
    try:
        array = arrays[key]
    except ValueError as error:  # "Object arrays cannot be loaded when allow_pickle=False"
        raise InvalidInputError(f"{option}: array {key!r} of {path} cannot be read ({error}); "
                                "save numbers, not Python objects") from None
    if array.dtype.kind not in "biuf":
        raise InvalidInputError(f"{option}: array {key!r} of {path} holds {array.dtype} values, "
                                "not numbers (bool, int or float)")
    array = array.astype(np.float64)
    if array.ndim in (1, 2):  # other shapes are refused with both arrays' shapes
        columns = [key] if array.ndim == 1 else [f"{key}[:, {j}]" for j in range(array.shape[1])]
        finite_cells(array, f"{option}: {path}", columns)
    return array


def _target_column(header: list[str], target, path) -> int:
    if isinstance(target, int) and not isinstance(target, bool):
        if -len(header) <= target < len(header):
            return target % len(header)
        raise InvalidInputError(f"target: column {target} does not exist in {path}, which has "
                                f"{len(header)} columns")
    if target not in header:
        raise InvalidInputError(f"target: no column {target!r} in {path}; its columns are "
                                f"{', '.join(header)}")
    return header.index(target)


@dataclasses.dataclass(frozen=True)
class _TableFile(abc.ABC):
    """A user's file of examples: `read` gives (features, targets); `kind` says whether the
    targets are classes (classification, regression, or auto: whole numbers with at most 50
    distinct values are classes); a relative `path` is relative to the config's folder."""

    path: str = checks.option("the file (relative: to the config's folder)")
    kind: str = checks.option("classification, regression, or auto (whole numbers with at "
                              "most 50 distinct values are classes)", "auto")
    split: dict = checks.option(SPLIT, default_factory=dict)

    @abc.abstractmethod
    def read(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """(features, targets) of the file at `path`."""

    def load(self, dtype, device) -> Tasks:
        kind = checks.not_regular(self.path)
        if kind is not None:
            raise InvalidInputError(f"path: {self.path} is {kind}, not a regular file")
        x, y = self.read(Path(self.path))
        return table_tasks(x, y, self.kind, self.split, dtype, device, self.path)


@sources.register("csv")
@dataclasses.dataclass(frozen=True)
class CsvFile(_TableFile):
    """A .csv file with a header row: one row per example, numeric columns; `target` names
    the target column (or gives its index; default: the last), every other column is a
    feature. `kind`, `split` and `path` as for every table source."""

    target: str | int = checks.option("the target column's name or index (-1: the last); "
                                      "every other column is a feature", -1)
    delimiter: str = checks.option("the one character between values", ",")

    def __post_init__(self):
        if not isinstance(self.delimiter, str) or len(self.delimiter) != 1 or \
                self.delimiter in '"\r\n' or self.delimiter.isalnum():
            raise InvalidInputError(f"delimiter must be one character other than a letter, a "
                                    f"digit, a quote or a line break, got {self.delimiter!r}")

    def read(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        try:
            with path.open(newline="", encoding="utf-8-sig") as file:  # a BOM is no column name
                rows = list(csv.reader(file, delimiter=self.delimiter))
        except OSError as error:
            raise InvalidInputError(f"path: cannot read {path}: {error.strerror}") from None
        except UnicodeDecodeError as error:
            raise InvalidInputError(f"path: {path} is not UTF-8 text ({error.reason}); save it "
                                    "as UTF-8") from None
        except csv.Error as error:
            raise InvalidInputError(f"path: {path} is not a readable .csv file: {error}") \
                from None
        if len(rows) < 2:
            raise InvalidInputError(f"path: {path} needs a header row and at least one data row")
        header, body = rows[0], rows[1:]
        if len(header) == 1:
            try:
                found = csv.Sniffer().sniff("\n".join(",".join(r) for r in rows[:5])).delimiter
            except csv.Error:
                found = None
            if found not in (None, self.delimiter):
                raise InvalidInputError(f"path: {path} has a single column with delimiter "
                                        f"{self.delimiter!r}; it looks separated by {found!r}: "
                                        f"set the source's delimiter: {found!r}")
        for number, row in enumerate(body, start=2):
            if len(row) != len(header):
                raise InvalidInputError(f"path: {path} line {number} has {len(row)} values, but "
                                        f"the header has {len(header)} columns")
        try:
            table = np.array(body, dtype=np.float64)
        except ValueError:
            number, row = next((n, r) for n, r in enumerate(body, start=2)
                               if not all(_is_number(cell) for cell in r))
            column = next(j for j, cell in enumerate(row) if not _is_number(cell))
            raise InvalidInputError(f"path: {path} line {number}, column {header[column]!r}: "
                                    f"{row[column][:40]!r} is not a number") from None
        finite_cells(table, f"path: {path}", header, first_row=2, row_name="line")
        column = _target_column(header, self.target, path)
        return np.delete(table, column, axis=1), table[:, column]


@sources.register("npz")
@dataclasses.dataclass(frozen=True)
class NpzFile(_TableFile):
    """A NumPy .npz file holding features (array `x`, rows by features) and targets (array
    `y`, one per row). `kind`, `split` and `path` as for every table source."""

    x: str = checks.option("the array of features (rows, features)", "x")
    y: str = checks.option("the array of targets, one per row", "y")

    def read(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        try:
            arrays = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise InvalidInputError(f"path: cannot read {path} as .npz: {error}") from None
        if not isinstance(arrays, np.lib.npyio.NpzFile):
            raise InvalidInputError(f"path: {path} is a single .npy array, not an .npz archive "
                                    "of arrays x and y")
        for option, key in (("x", self.x), ("y", self.y)):
            if key not in arrays:
                raise InvalidInputError(f"{option}: {path} has no array {key!r}; it has "
                                        f"{', '.join(arrays.files)}")
        x, y = (_numeric(arrays, key, option, path) for option, key in (("x", self.x),
                                                                         ("y", self.y)))
        if x.ndim != 2 or len(y) != len(x):
            raise InvalidInputError(f"path: in {path}, {self.x!r} must be (rows, features) and "
                                    f"{self.y!r} have one value per row; got shapes {x.shape} "
                                    f"and {y.shape}")
        return x, y

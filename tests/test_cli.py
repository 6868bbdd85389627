"""`bilevel list` names every registered unit; `bilevel schema` prints the config's JSON Schema."""

import json

from bilevel.cli import main


def test_list_names_every_registry(capsys):
    assert main(["list"]) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert set(lines) == {"problems", "task sources", "models", "loss functions", "methods",
                          "solvers", "regularizers", "outer optimizers",
                          "learning-rate schedules"}
    assert "fo-bmaml" in lines["methods"] and "clipped-gd" in lines["outer optimizers"]
    assert "sinusoid" in lines["problems"] and "sinusoid" in lines["task sources"]
    assert "csv" in lines["task sources"] and "mlp" in lines["models"]


def test_schema_is_json_schema_of_every_key(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"].endswith("2020-12/schema")
    assert set(schema["required"]) == {"problem", "solver", "steps", "tasks_per_step"}
    assert {"method", "outer", "eval", "seed", "device", "dtype", "out"} <= set(
        schema["properties"])
    assert schema["additionalProperties"] is False

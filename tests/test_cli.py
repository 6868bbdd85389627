"""`bilevel list` names every registered unit."""

from bilevel.cli import main


def test_list_names_every_registry(capsys):
    assert main(["list"]) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert set(lines) == {"methods", "solvers", "regularizers", "outer optimizers",
                          "learning-rate schedules"}
    assert "fo-bmaml" in lines["methods"] and "clipped-gd" in lines["outer optimizers"]

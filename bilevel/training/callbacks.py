"""`Callback`: what `meta_train` tells a caller during a run, hooks that do nothing by
default (as Optuna's samplers' optional hooks). `bilevel compare`'s hybrid trials report
their validations to Optuna's pruner through one."""


class Callback:
    """Subclass and override what you need. Each hook runs in the main process after the
    step it is told of is complete and checkpointed (where the run checkpoints); an
    exception raised by a hook stops the run, which keeps that step."""

    def on_start(self, out, step: int) -> None:
        """The run is set up: its run directory `out` (a Path, or None) opened, locked and
        its settings recorded; `step`: the steps already done (a resumed run's)."""

    def on_step(self, record: dict, h: dict) -> None:
        """Outer step `record["step"]` is done: `record` is its line of metrics.jsonl, `h`
        the hyperparameters after it."""

    def on_evaluation(self, record: dict, h: dict) -> None:
        """The step also evaluated the held-out tasks: `record` holds the "eval_*" metrics.
        Called after `on_step`."""

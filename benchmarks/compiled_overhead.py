"""Where the time of one compiled hypergradient goes, on the sinusoid workload (fomaml, MLP
1-40-40-1, 25 tasks, 10 GD steps, float32, one CPU thread): the whole call, the estimator
alone (the rest is `hypergradient`'s input checks), the eager vmaps that once surrounded
the compiled chunks (inner init, the solver's start and finish: a solve of up to 10 steps
now compiles them into its one function, a longer one still runs finish eagerly; measured
standalone), and from torch.profiler the time
inside the compiled regions and in dynamo's cache lookups (guard checks). Medians of
--repeats calls, in milliseconds. Prints JSON.

    python benchmarks/compiled_overhead.py [--repeats 200]
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def profiled_ms(fn, calls: int) -> dict:
    """Per call: CPU time inside compiled regions and in dynamo's cache lookups."""
    from torch.profiler import profile

    with profile() as prof:
        for _ in range(calls):
            fn()
    events = {e.key: e for e in prof.key_averages()}

    def total(prefix):
        return sum(e.cpu_time_total for key, e in events.items() if key.startswith(prefix))

    return {"compiled_regions": total("Torch-Compiled Region") / 1e3 / calls,
            "guard_checks": total("TorchDynamo Cache Lookup") / 1e3 / calls}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args(argv)
    import torch
    from torch.func import vmap

    import bilevel
    from bilevel.compiled import Compilation
    from bilevel.estimators import estimators
    from problems.sinusoid import Sinusoid

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    problem = Sinusoid(form="maml", lam=10.0)
    h, tasks = problem.init_hyper(generator), problem.sample_tasks(25, generator)
    solver = bilevel.solvers.GD(lr=0.01, steps=10)
    estimator = estimators.build("fomaml", {})

    def call():
        return bilevel.hypergradient(problem, h, tasks, solver=solver, method="fomaml",
                                     compile=True)

    def estimator_alone():
        return estimator(problem, h, tasks, solver, compilation=Compilation(True))

    inits = vmap(problem.inner_init, in_dims=(None, 0))(h, tasks)
    state = vmap(solver.start)(inits)
    result = {
        "eager_call": median_ms(lambda: bilevel.hypergradient(
            problem, h, tasks, solver=solver, method="fomaml"), args.repeats // 4),
        "compiled_call": median_ms(call, args.repeats),
        "estimator_alone": median_ms(estimator_alone, args.repeats),
        "eager_vmaps": {
            "inner_init": median_ms(lambda: vmap(problem.inner_init, in_dims=(None, 0))(
                h, tasks), args.repeats),
            "start": median_ms(lambda: vmap(solver.start)(inits), args.repeats),
            "finish": median_ms(lambda: vmap(solver.finish)(*state), args.repeats)},
        "profiled": profiled_ms(call, 20),
    }
    result["input_checks"] = result["compiled_call"] - result["estimator_alone"]
    print(json.dumps({"workload": "sinusoid fomaml, 25 tasks, 10 GD steps, float32, 1 thread",
                      "unit": "ms per call", "torch": torch.__version__} | result, indent=1))


if __name__ == "__main__":
    main()

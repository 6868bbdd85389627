"""The compiled path against the ideal: `hypergradient(..., compile=True)` against eager and
against the whole vmapped meta-gradient compiled by hand (one `torch.compile`d function of
(h, tasks), no checks, no Info), on the sinusoid workload (MLP 1-40-40-1, 25 tasks of
10 + 10 points, 10 GD steps at lr 0.01, float32, one CPU thread): fomaml (MAML form) and
fo-bmaml (B-MAML form, symmetric, nu="auto"). Calls interleaved, median of --repeats calls
of each, in milliseconds; the hand-compiled result is checked against ours. Prints JSON.

The issue's bar (18): ours >= 6x eager and within 1.5x of the hand-compiled function.

    python benchmarks/compiled_whole.py [--repeats 30] [--methods fomaml fo-bmaml]
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FORMS = {"fomaml": "maml", "fo-bmaml": "bmaml"}


def hand_fomaml(problem, solver):
    """grad F by FO-MAML for one task, written out: solve, then d_phi and d_h val_loss."""
    from torch.func import grad, grad_and_value

    def one_task(h, task):
        phi, _ = solver.run(grad(lambda p: problem.inner_objective(p, h, task)),
                            problem.inner_init(h, task))
        (f_phi, f_h), _ = grad_and_value(problem.val_loss, argnums=(0, 1))(phi, h, task)
        return f_h | {"theta": {k: f_h["theta"][k] + f_phi[k] for k in f_phi}}

    return one_task, None


def hand_fobmaml(problem, solver):
    """fo-bmaml (symmetric, nu="auto") written out: the per-task nu from the problem's
    scales, each (task, +-nu) pair solved and psi taken, then the difference."""
    import torch
    from torch.func import grad

    from bilevel.estimators.fobmaml import eps_nu, nu_factor, perturbed_objective, problem_scale

    def one_point(h, task, nu):
        phi, _ = solver.run(grad(lambda p: perturbed_objective(problem, p, h, task, nu)),
                            problem.inner_init(h, task))
        return grad(perturbed_objective, argnums=2)(problem, phi, h, task, nu)

    def whole(h, tasks, batched):
        n = tasks["x"].shape[0]
        leaf = h["log_lam"]
        nu = nu_factor("symmetric", *problem_scale(problem, h, tasks)) * eps_nu(
            "symmetric", leaf.dtype)
        nus = (torch.tensor([-1.0, 1.0], dtype=leaf.dtype) * nu[:, None]).reshape(-1)
        points = {k: v.repeat_interleave(2, dim=0) for k, v in tasks.items()}
        psis = batched(h, points, nus)
        weights = torch.tensor([-0.5, 0.5], dtype=leaf.dtype) / nu[:, None]
        return torch.utils._pytree.tree_map(
            lambda p: torch.tensordot(weights, p.reshape(n, 2, *p.shape[1:]), dims=2) / n,
            psis)

    return one_point, whole


def measure(method: str, repeats: int) -> dict:
    import torch
    from torch.func import vmap
    from torch.utils._pytree import tree_map

    import bilevel
    from bilevel.tree import relative_error
    from problems.sinusoid import Sinusoid

    generator = torch.Generator().manual_seed(0)
    problem = Sinusoid(form=FORMS[method], lam=10.0)
    h, tasks = problem.init_hyper(generator), problem.sample_tasks(25, generator)
    solver = bilevel.solvers.GD(lr=0.01, steps=10)
    per_task, whole = {"fomaml": hand_fomaml, "fo-bmaml": hand_fobmaml}[method](problem, solver)
    if whole is None:
        batched = vmap(per_task, in_dims=(None, 0))

        def hand_function(h, tasks):
            return tree_map(lambda g: g.mean(0), batched(h, tasks))
    else:
        batched = vmap(per_task, in_dims=(None, 0, 0))

        def hand_function(h, tasks):
            return whole(h, tasks, batched)

    hand_compiled = torch.compile(hand_function, fullgraph=True, dynamic=False)
    contenders = {
        "eager": lambda: bilevel.hypergradient(problem, h, tasks, solver=solver,
                                               method=method)[0],
        "compiled": lambda: bilevel.hypergradient(problem, h, tasks, solver=solver,
                                                  method=method, compile=True)[0],
        "hand_compiled": lambda: hand_compiled(h, tasks),
    }
    results, compile_s = {}, {}
    for name, call in contenders.items():
        start = time.perf_counter()
        results[name] = call()
        compile_s[name] = time.perf_counter() - start
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, call in contenders.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    return {"method": method, "form": FORMS[method], "ms": ms,
            "speedup_over_eager": ms["eager"] / ms["compiled"],
            "over_hand_compiled": ms["compiled"] / ms["hand_compiled"],
            "hand_compiled_speedup_over_eager": ms["eager"] / ms["hand_compiled"],
            "first_call_s": compile_s,
            "relative_difference": {
                "compiled_vs_eager": relative_error(results["compiled"], results["eager"]),
                "hand_vs_compiled": relative_error(results["hand_compiled"],
                                                   results["compiled"])}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--methods", nargs="+", default=list(FORMS), choices=list(FORMS))
    args = parser.parse_args(argv)
    import os

    import torch

    torch.set_num_threads(1)
    rows = [measure(method, args.repeats) for method in args.methods]
    print(json.dumps({"workload": "sinusoid, 25 tasks, 10 GD steps, float32, 1 thread",
                      "torch": torch.__version__, "repeats": args.repeats,
                      "load_average": os.getloadavg(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

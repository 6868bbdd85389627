"""Framework overhead: `maml` and `fomaml` on the sinusoid workload against a plain
hand-written torch.func + vmap implementation of the same computation.

Workload (issue 3): MLP 1-40-40-1, 25 tasks per step, 10 support and 10 query points,
10 inner GD steps at lr 0.01, float32, one CPU thread. Prints JSON: median seconds per
hypergradient for each implementation and the ratios framework / hand-written,
measured in the same process with the runs interleaved.
"""

import json
import statistics
import time

import torch
from torch.func import grad, vmap

import bilevel
from problems.sinusoid import Sinusoid

TASKS, INNER_STEPS, INNER_LR, REPEATS = 25, 10, 0.01, 30


def predict(params, x):
    hidden = torch.relu(x[:, None] @ params["w0"] + params["b0"])
    hidden = torch.relu(hidden @ params["w1"] + params["b1"])
    return (hidden @ params["w2"] + params["b2"])[:, 0]


def mse(params, x, y):
    return ((predict(params, x) - y) ** 2).mean()


def adapt(theta, x, y):
    phi = theta
    for _ in range(INNER_STEPS):
        g = grad(mse)(phi, x, y)
        phi = {k: phi[k] - INNER_LR * g[k] for k in phi}
    return phi


def maml_task(theta, x, y, xq, yq):
    return mse(adapt(theta, x, y), xq, yq)


def fomaml_task(theta, x, y, xq, yq):
    return grad(mse)(adapt(theta, x, y), xq, yq)


def hand_written(kind):
    per_task = grad(maml_task) if kind == "maml" else fomaml_task
    batched = vmap(per_task, in_dims=(None, 0, 0, 0, 0))

    def hypergradient(theta, tasks):
        grads = batched(theta, tasks["x"], tasks["y"], tasks["xq"], tasks["yq"])
        return {k: g.mean(0) for k, g in grads.items()}

    return hypergradient


def framework(kind, problem, solver):
    def hypergradient(theta, tasks):
        return bilevel.hypergradient(problem, {"theta": theta}, tasks, solver=solver,
                                     method=kind)[0]["theta"]

    return hypergradient


def main():
    torch.set_num_threads(1)
    problem = Sinusoid(form="maml", shots=10, queries=10)
    theta = problem.init_hyper(torch.Generator().manual_seed(0))["theta"]
    tasks = problem.sample_tasks(TASKS, torch.Generator().manual_seed(1))
    solver = bilevel.solvers.GD(lr=INNER_LR, steps=INNER_STEPS)
    result = {"workload": {"mlp": "1-40-40-1", "tasks": TASKS, "shots": 10, "queries": 10,
                           "inner_steps": INNER_STEPS, "threads": 1, "repeats": REPEATS}}
    for kind in ("maml", "fomaml"):
        contenders = {"hand_written": hand_written(kind),
                      "framework": framework(kind, problem, solver)}
        answers = {name: f(theta, tasks) for name, f in contenders.items()}  # also warms up
        for key in theta:
            torch.testing.assert_close(answers["framework"][key], answers["hand_written"][key])
        times = {name: [] for name in contenders}
        for _ in range(REPEATS):
            for name, f in contenders.items():
                start = time.perf_counter()
                f(theta, tasks)
                times[name].append(time.perf_counter() - start)
        medians = {name: statistics.median(t) for name, t in times.items()}
        result[kind] = medians | {"ratio": medians["framework"] / medians["hand_written"]}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Turn the benchmark JSON under docs/results/benchmarks/ into docs/results/benchmarks.md.

    python benchmarks/estimators.py > docs/results/benchmarks/estimators.cpu.json
    python benchmarks/sinusoid_overhead.py > docs/results/benchmarks/sinusoid_overhead.cpu.json
    python benchmarks/training_overhead.py > docs/results/benchmarks/training_overhead.cpu.json
    python benchmarks/compiled.py > docs/results/benchmarks/compiled.cpu.json
    python benchmarks/compiled_overhead.py > docs/results/benchmarks/compiled_overhead.cpu.json
    python benchmarks/compiled_whole.py > docs/results/benchmarks/compiled_whole.cpu.json
    python benchmarks/kinks.py > docs/results/benchmarks/kinks.cpu.json
    python benchmarks/fault_checks_overhead.py \
        > docs/results/benchmarks/fault_checks_overhead.cpu.json
    python benchmarks/report.py

and on a machine with a CUDA GPU (benchmarks/cuda_check.sh runs it beside the test suite):

    python benchmarks/compiled.py --device cuda > docs/results/benchmarks/compiled.cuda.json
"""

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def load(name, device="cpu"):
    return json.loads((RESULTS / "benchmarks" / f"{name}.{device}.json").read_text())


def estimators_section(data) -> list[str]:
    rows = data["rows"]
    steps = sorted({r["steps"] for r in rows})
    lines = ["## Estimators: time and peak memory against inner steps",
             "",
             "`benchmarks/estimators.py`, CPU, one thread, each cell measured in a fresh "
             "process (median of 3 calls after a warm-up). Quadratic: dim 100, kappa 100, "
             "32 tasks, float64. Sinusoid (B-MAML form): MLP 1-40-40-1, 25 tasks of 10 + 10 "
             "points, float32. Memory: peak resident set of the process (MiB), and in "
             "brackets what the timed calls added to it.", ""]
    for problem in ("quadratic", "sinusoid"):
        lines += [f"**{problem}**", "",
                  "| method | " + " | ".join(f"K={k} time [s]" for k in steps) + " | "
                  + " | ".join(f"K={k} peak MiB (+added)" for k in steps) + " |",
                  "|---" * (1 + 2 * len(steps)) + "|"]
        for method in dict.fromkeys(r["method"] for r in rows if r["problem"] == problem):
            cells = {r["steps"]: r for r in rows
                     if (r["problem"], r["method"]) == (problem, method)}
            times = " | ".join(f"{cells[k]['time_s']:.3f}" for k in steps)
            memory = " | ".join(f"{cells[k]['peak_memory_mib']:.0f} "
                                f"(+{cells[k]['peak_memory_added_mib']:.1f})" for k in steps)
            lines.append(f"| {method} | {times} | {memory} |")
        lines.append("")
    key = next(k for k in data["summary"] if k.startswith("peak_memory_ratio"))
    lines += [f"Peak memory ratio, most / fewest steps ({key}):", "",
              "| method | " + " | ".join(data["summary"][key]) + " |",
              "|---" * (1 + len(data["summary"][key])) + "|"]
    methods = dict.fromkeys(m for ratios in data["summary"][key].values() for m in ratios)
    for method in methods:
        cells = " | ".join(f"{ratios[method]:.2f}" if method in ratios else "-"
                           for ratios in data["summary"][key].values())
        lines.append(f"| {method} | {cells} |")
    lines += ["", "fo-bmaml / fomaml at the same inner steps, measured interleaved in one "
              "process (time ratio; ratio of inner gradient evaluations in brackets):", "",
              "| problem | scheme | " + " | ".join(f"K={k}" for k in steps) + " |",
              "|---" * (2 + len(steps)) + "|"]
    for problem, by_steps in data["summary"]["fobmaml_over_fomaml"].items():
        for scheme in next(iter(by_steps.values())):
            cells = " | ".join(f"{by_steps[str(k)][scheme]['time']:.2f} "
                               f"({by_steps[str(k)][scheme]['grad_evals']:.0f})" for k in steps)
            lines.append(f"| {problem} | {scheme} | {cells} |")
    return lines + [""]


def overhead_section(sinusoid, training) -> list[str]:
    w = sinusoid["workload"]
    lines = ["## Framework overhead", "",
             f"`benchmarks/sinusoid_overhead.py`: MLP {w['mlp']}, {w['tasks']} tasks, "
             f"{w['shots']} + {w['queries']} points, {w['inner_steps']} inner steps, "
             f"{w['threads']} thread, median of {w['repeats']} interleaved calls; against a "
             "plain hand-written torch.func + vmap implementation of the same computation "
             "(same result checked).", "",
             "| method | hand-written [ms] | bilevel [ms] | ratio |", "|---|---|---|---|"]
    for method in ("maml", "fomaml"):
        r = sinusoid[method]
        lines.append(f"| {method} | {1e3 * r['hand_written']:.2f} | {1e3 * r['framework']:.2f} "
                     f"| {r['ratio']:.3f} |")
    lines += ["", "`benchmarks/training_overhead.py`: `meta_train` against bare "
              "`hypergradient` calls on the quadratic, per outer step.", "",
              "| case | bare [ms] | loop [ms] | ratio | with run directory |",
              "|---|---|---|---|---|"]
    for case in ("small", "medium"):
        r = training[case]
        lines.append(f"| {case} (dim {r['dim']}, {r['inner_steps']} inner steps, "
                     f"{r['tasks_per_step']} tasks) | {r['bare_ms_per_step']:.1f} | "
                     f"{r['loop_ms_per_step']:.1f} | {r['ratio_loop']:.3f} | "
                     f"{r['ratio_loop_with_run_dir']:.3f} |")
    return lines + [""]


def integrity_section(data, training) -> list[str]:
    run, call = data["run"], data["hypergradient"]
    names = [name for name in run if name != "rounds"]
    lines = ["## What the integrity checks cost", "",
             "`benchmarks/fault_checks_overhead.py`: a whole `meta_train` run with every "
             "integrity check of a run (the checkpoint's checksum, the problem's fingerprints, "
             "the run directory's lock, the checks of h and the tasks on the per-step path, "
             "strict JSON, hyper.json) against the same run with each patched to a no-op, "
             f"interleaved in one process, one thread, {run['rounds']} rounds, per step; plots "
             "left out of both. The checks are also timed alone (no noise of fsync or of the "
             "shared machine): those paid every step as a share of a step, those paid once per "
             "run (with a checkpoint at the end only, its checksum among them) in steps. Load "
             f"average {load_note(data['load_average'])} "
             f"({', '.join(f'{x:.1f}' for x in data['load_average'])}).", "",
             "| run | with checks [ms/step] | without [ms/step] | median paired ratio "
             "(quartiles) | checks alone, per step | checks alone, once per run |",
             "|---|---|---|---|---|---|"]
    for name in names:
        r = run[name]
        low, _, high = r["paired_ratios_quartiles"]
        when = "every step" if r["checkpoint_every"] == 1 else "at the end"
        problem = name.removesuffix("-every-step")
        lines.append(f"| {problem}: {r['steps']} steps, checkpoint {when} | "
                     f"{1e3 * r['with_checks_s_per_step']:.1f} | "
                     f"{1e3 * r['without_checks_s_per_step']:.1f} | "
                     f"{r['median_paired_ratio']:.3f} ({low:.2f}-{high:.2f}) | "
                     f"{100 * r['checks_alone_share_of_step']:.2f}% of a step | "
                     f"{r['once_per_run_in_steps']:.2f} steps |")
    checks = list(dict.fromkeys(k for name in names for part in run[name]["checks_alone"].values()
                                for k in part))
    lines += ["", "Checks alone, median per call [ms]:", "",
              "| run | " + " | ".join(checks) + " |", "|---" * (1 + len(checks)) + "|"]
    for name in names:
        alone = run[name]["checks_alone"]
        values = alone["per_step_s"] | alone["once_per_run_s"]
        lines.append(f"| {name} | " + " | ".join(f"{1e3 * values[k]:.3f}" for k in checks)
                     + " |")
    lines += ["", "Quadratic: dim 4, 4 tasks, GD x10, fo-bmaml (the small case of "
              f"training_overhead.py, a bare step of {training['small']['bare_ms_per_step']:.1f}"
              " ms there); sinusoid: MLP 1-40-40-1, 25 tasks, GD x10, fomaml.",
              "", f"Per `hypergradient` call ({call['workload']}): median paired ratio "
              f"{call['median_paired_ratio']:.3f}, its checks alone "
              f"{100 * call['checks_share']:.2f}% of a call.", ""]
    return lines


def load_note(loads: list) -> str:
    """What the load average says about the timings (above 1: more than this job ran on
    the 2 cores, or TorchInductor's compile workers did)."""
    if max(loads, default=0) < 1:
        return "nothing else ran"
    return ("above 1: other jobs, or TorchInductor's compile workers, ran beside it; absolute "
            "times are inflated, ratios less so")


def compiled_section(data) -> list[str]:
    cache = "a fresh TorchInductor cache (a first run)" if data["cold_cache"] else \
        "TorchInductor's warm cache"
    lines = ["## Compiled against eager", "",
             "`benchmarks/compiled.py`: `hypergradient(..., compile=True)` against eager on the "
             "sinusoid workload (MLP 1-40-40-1, 25 tasks of 10 + 10 points, one CPU thread), "
             f"median of {data['repeats']} calls of each, interleaved; compile time with "
             f"{cache}. Break-even: outer steps after which compiling has paid for its "
             "compile time. Difference: relative L2 between the two results. The machine's "
             "load average (1 min, 2 cores) was "
             f"{' then '.join(f'{x:.1f}' for x in data.get('load_average_1min', []))} "
             f"({load_note(data.get('load_average_1min', []))}).", "",
             "| case | solver | eager [ms] | compiled [ms] | speed-up | compile [s] | "
             "break-even [steps] | difference |", "|---" * 8 + "|"]
    for r in data["rows"]:
        solver = f"{r['solver']['name']} {r['solver']['steps']}"
        even = "-" if r["break_even_steps"] is None else f"{r['break_even_steps']:.0f}"
        case = r["case"] + (" (eager fallback: see below)" if r.get("eager_fallbacks") else "")
        lines.append(f"| {case} | {solver} | {1e3 * r['eager_s']:.2f} | "
                     f"{1e3 * r['compiled_s']:.2f} | {r['speedup']:.1f} | "
                     f"{r['compile_s']:.1f} | {even} | {r['relative_difference']:.1e} |")
    fallbacks = sorted({m for r in data["rows"] for m in r.get("eager_fallbacks", [])})
    if fallbacks:
        lines += ["", "What ran eagerly instead (the warnings of `compile=True`):", ""]
        lines += [f"- {message}" for message in fallbacks]
    if data["over_fomaml"]:
        lines += ["", "Time over fomaml's at the same 10 inner steps (B-MAML form), same "
                  "process:", "", "| method | eager | compiled |", "|---|---|---|"]
        for case, ratios in data["over_fomaml"].items():
            lines.append(f"| {case} | {ratios['eager']:.2f} | {ratios['compiled']:.2f} |")
    return lines + [""]


def cuda_compiled_section(data) -> list[str]:
    """Eager, compiled and compiled with CUDA graphs on the GPU (and the rows of a second
    run, where the first stopped at its deadline)."""
    second = data.get("second_run", {})
    rows = data["rows"] + [r | {"case": f"{r['case']} (run 2)"} for r in second.get("rows", [])]
    lines = ["## On a GPU: compiled and CUDA graphs against eager", "",
             f"`benchmarks/compiled.py --device cuda` on an {data['gpu']} (torch "
             f"{data['torch']}), the same sinusoid workload, every call synchronised, median of "
             f"{data['repeats']} calls of each variant, interleaved (100 and 1000 steps: eager "
             "once). *compiled*: `compile=Compilation(True, cuda_graphs=False)`; "
             "*graphs*: `compile=True` as it runs on CUDA, replaying CUDA graphs. Compile: the "
             "first call's extra time with a fresh TorchInductor cache (graphs compiled second, "
             "reusing part of what the compiled variant generated: a user's first run pays about "
             "the compiled column); at 100 and 1000 steps the 10-step row's chunks are reused. "
             "Peak: `torch.cuda.max_memory_allocated` during one call above what was allocated "
             "before it (the CUDA graphs' memory pool, kept between calls, counts as before). "
             "The whole test suite ran beside it on other cores. Rows marked *run 2* ran right "
             "after, in a new process on the same machine, where the first run had stopped at "
             "its deadline.", "",
             "| case | solver | eager [ms] | compiled [ms] | graphs [ms] | speed-up compiled, "
             "graphs | compile [s] | break-even with graphs [steps] | difference | peak MiB: "
             "eager, compiled, graphs |", "|---" * 10 + "|"]
    for r in rows:
        solver = f"{r['solver']['name']} {r['solver']['steps']}"
        compile_s = "-" if r["compile_s"] is None or r["solver"]["steps"] >= 100 else \
            f"{r['compile_s']:.1f}"
        # A user's first run compiles with graphs at once: the compiled column's compile time.
        even = "-" if compile_s == "-" else f"{r['compile_s'] / (r['eager_s'] - r['graphs_s']):.0f}"
        eager_peak = "-" if r.get("eager_peak_mib") is None else f"{r['eager_peak_mib']:.1f}"
        lines.append(f"| {r['case']} | {solver} | {1e3 * r['eager_s']:.1f} | "
                     f"{1e3 * r['compiled_s']:.2f} | {1e3 * r['graphs_s']:.2f} | "
                     f"{r['speedup']:.1f}, {r['graphs_speedup']:.1f} | {compile_s} | {even} | "
                     f"{r['graphs_relative_difference']:.1e} | {eager_peak}, "
                     f"{r['compiled_peak_mib']:.1f}, {r['graphs_peak_mib']:.1f} |")
    if second.get("over_fomaml"):
        lines += ["", "Time over fomaml's at 10 inner steps (B-MAML form), same process (run 2):",
                  "",
                  "| method | eager | compiled | graphs |", "|---|---|---|---|"]
        for case, ratios in second["over_fomaml"].items():
            lines.append(f"| {case} | {ratios['eager']:.2f} | {ratios['compiled']:.2f} | "
                         f"{ratios['graphs']:.2f} |")
    return lines + [""]


def compiled_overhead_section(data) -> list[str]:
    vmaps = data["eager_vmaps"]
    return ["", "`benchmarks/compiled_overhead.py`: where one compiled call's time goes "
            f"({data['workload']}; ms per call, medians; the profiled times include the "
            "profiler's own cost):", "",
            "| eager call | compiled call | estimator alone | input checks | compiled regions "
            "(profiled) | guard checks (profiled) | eager vmaps: init, start, finish |",
            "|---" * 7 + "|",
            f"| {data['eager_call']:.2f} | {data['compiled_call']:.2f} | "
            f"{data['estimator_alone']:.2f} | {data['input_checks']:.2f} | "
            f"{data['profiled']['compiled_regions']:.2f} | "
            f"{data['profiled']['guard_checks']:.2f} | {vmaps['inner_init']:.2f}, "
            f"{vmaps['start']:.2f}, {vmaps['finish']:.2f} |", ""]


def compiled_whole_section(data) -> list[str]:
    load = ", ".join(f"{x:.1f}" for x in data["load_average"])
    lines = ["`benchmarks/compiled_whole.py`: `hypergradient(..., compile=True)` against eager "
             "and against the whole vmapped meta-gradient compiled by hand (one "
             f"`torch.compile`d function, no checks, no Info) ({data['workload']}; median of "
             f"{data['repeats']} interleaved calls, ms; load average {load} on 2 cores: "
             "absolute times inflated, ratios less so). The bar of issue 18: compiled >= 6x "
             "eager, <= 1.5x hand-compiled.", "",
             "| method | eager | compiled | hand-compiled | compiled: speed-up | over "
             "hand-compiled | hand-compiled: speed-up |", "|---" * 7 + "|"]
    for row in data["rows"]:
        ms = row["ms"]
        lines.append(f"| {row['method']} | {ms['eager']:.2f} | {ms['compiled']:.2f} | "
                     f"{ms['hand_compiled']:.2f} | {row['speedup_over_eager']:.1f} | "
                     f"{row['over_hand_compiled']:.2f} | "
                     f"{row['hand_compiled_speedup_over_eager']:.1f} |")
    return lines + [""]


def main():
    lines = ["# Benchmarks", "",
             "Generated by `benchmarks/report.py` from the JSON beside it; rerun the commands "
             "in its docstring to refresh. Measured on the 2-core development machine, but "
             "for the last section (a GPU).", ""]
    lines += estimators_section(load("estimators"))
    lines += overhead_section(load("sinusoid_overhead"), load("training_overhead"))
    lines += integrity_section(load("fault_checks_overhead"), load("training_overhead"))
    lines += compiled_section(load("compiled"))
    lines += compiled_overhead_section(load("compiled_overhead"))
    lines += compiled_whole_section(load("compiled_whole"))
    lines += cuda_compiled_section(load("compiled", "cuda"))
    (RESULTS / "benchmarks.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()

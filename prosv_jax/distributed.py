"""Multi-host training: one process per host (or per device group), all training one grid into one output folder.

Start the same command on every host with either

* JAX_COORDINATOR_ADDRESS=host0:port JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i (any launcher; all three or none), or
* nothing but `--distributed` inside SLURM (srun), Open MPI (mpirun) or a multi-host Cloud TPU, where jax reads
  the cluster's own variables.

`initialize_from_env` then connects the processes (jax.distributed.initialize); without any of that it does nothing
and the run is the usual single process. The trainer splits the grid's groups round-robin over the processes;
`barrier` lets them wait for each other (the distributed runtime's key-value store: no device collectives, so it
works on CPU hosts too). The output folder must be shared (a network file system) by all of them.

A process that fails tells the others (`failing_together`), which stop at their next group or barrier; a process
that dies without a word ends the job through jax's own heartbeat. Rerunning the command resumes.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from typing import Mapping

import jax

ENV_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
BARRIER_TIMEOUT_S = 30 * 24 * 3600  # waiting for the slowest host's groups: training may take days
_barriers = itertools.count()
_FAILED = "prosv-jax:failed"


class DistributedSetupError(ValueError):
    """The environment describes a multi-process run incompletely or inconsistently."""


class DistributedError(RuntimeError):
    """Another process of a multi-process run failed."""


def _int(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise DistributedSetupError(f"{name}={environ[name]!r} is not an integer") from None


def initialize_from_env(environ: Mapping[str, str] | None = None, *, auto_detect: bool = False) -> bool:
    """Connects this process to the others when the environment describes a multi-process run.

    JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID: all three set -> initialise with them (a no-op
    for JAX_NUM_PROCESSES=1); some but not all -> DistributedSetupError naming the missing ones; none -> a no-op,
    unless `auto_detect`, which lets jax find a SLURM / Open MPI / Cloud TPU cluster (and errors when there is
    none). Returns whether this process is now one of several. Must run before anything starts a jax backend.
    """
    environ = os.environ if environ is None else environ
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    given = [name for name in ENV_VARS if environ.get(name, "") != ""]
    if given and len(given) < len(ENV_VARS):
        missing = [name for name in ENV_VARS if name not in given]
        raise DistributedSetupError(
            f"multi-process environment half set: {', '.join(given)} set but {', '.join(missing)} not; set all of "
            f"{', '.join(ENV_VARS)} (e.g. JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=2 "
            "JAX_PROCESS_ID=0 on the first host), or none for a single process")
    if given:
        address = environ["JAX_COORDINATOR_ADDRESS"]
        count, index = _int(environ, "JAX_NUM_PROCESSES"), _int(environ, "JAX_PROCESS_ID")
        if ":" not in address or not address.rsplit(":", 1)[1].isdigit():
            raise DistributedSetupError(f"JAX_COORDINATOR_ADDRESS={address!r} is not host:port")
        if count < 1 or not 0 <= index < count:
            raise DistributedSetupError(f"JAX_PROCESS_ID={index} must be in 0..JAX_NUM_PROCESSES-1 "
                                        f"(JAX_NUM_PROCESSES={count})")
        if count == 1:
            return False
        jax.distributed.initialize(coordinator_address=address, num_processes=count, process_id=index)
        return True
    if not auto_detect:
        return False
    try:
        jax.distributed.initialize()
    except ValueError as error:  # jax found no cluster to read the coordinator, count and index from
        raise DistributedSetupError(
            f"--distributed: no SLURM, Open MPI or Cloud TPU cluster found ({error}); set "
            f"{', '.join(ENV_VARS)} instead") from None
    return jax.process_count() > 1


def _client():
    """The distributed runtime's client (its key-value store), or None (single process, or a jax without it)."""
    client = getattr(getattr(getattr(jax._src, "distributed", None), "global_state", None), "client", None)
    return client if client is not None and hasattr(client, "key_value_dir_get") else None


def report_failure(message: str) -> None:
    """Tells the other processes that this one failed, so that they stop at their next group or barrier rather
    than wait for it. Best effort: a no-op for a single process."""
    client = _client()
    if jax.process_count() == 1 or client is None:
        return
    try:
        client.key_value_set(f"{_FAILED}/{jax.process_index()}", message[:2000], allow_overwrite=True)
    except Exception:  # noqa: BLE001  the coordinator may be gone already; the failure is raised anyway
        pass


def raise_if_another_failed() -> None:
    """Raises DistributedError when another process has reported a failure (no-op for a single process)."""
    client = _client()
    if jax.process_count() == 1 or client is None:
        return
    failed = [(key, value) for key, value in client.key_value_dir_get(f"{_FAILED}/")
              if key.rsplit("/", 1)[1] != str(jax.process_index())]
    if failed:
        raise DistributedError(f"stopping: process {failed[0][0].rsplit('/', 1)[1]} failed: {failed[0][1]}")


@contextlib.contextmanager
def failing_together():
    """Reports any exception leaving the block to the other processes (see `report_failure`), then re-raises."""
    try:
        yield
    except BaseException as error:
        if not isinstance(error, DistributedError):  # an echo of another process's failure is not reported again
            report_failure(f"{type(error).__name__}: {error}")
        raise


def barrier(name: str, timeout_s: float = BARRIER_TIMEOUT_S, poll_s: float = 0.5) -> None:
    """Waits until every process reaches the barrier `name` (no-op for a single process).

    Every process must call the same barriers in the same order (each call gets a fresh id). Raises
    DistributedError as soon as another process reports a failure, TimeoutError after `timeout_s`.
    """
    if jax.process_count() == 1:
        return
    key = f"prosv-jax:barrier:{name}:{next(_barriers)}"
    client = _client()
    if client is None:  # a later jax without the private client: a device all-reduce (gloo on CPU)
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(key)
        return
    client.key_value_set(f"{key}/{jax.process_index()}", "arrived")
    deadline = time.monotonic() + timeout_s
    while len(client.key_value_dir_get(f"{key}/")) < jax.process_count():
        raise_if_another_failed()
        if time.monotonic() > deadline:
            raise TimeoutError(f"barrier {name!r}: not every process arrived within {timeout_s:.0f} s")
        time.sleep(poll_s)

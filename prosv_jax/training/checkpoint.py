"""Orbax checkpoints of a group of runs: train state (params, optimiser state, step, alive) and JSON metadata.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a kill during a save
leaves the previous checkpoint as the latest one that loads. The data order needs no saving: it is a function
of (seed, step), and both are saved.

With several processes (multi-host training, `prosv_jax.distributed`) each process checkpoints its own groups alone.
Orbax's array writers assume every process saves one global array together (only process 0 writes numpy data, and
arrays of one process are refused), so there the state is stored as an exact byte copy in a JSON item
("host_state"; a group's train state is small). Either kind of checkpoint restores in either mode.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

HOST_STATE = "host_state"


def _encode(state: Any) -> dict:
    leaves = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]
    return {"leaves": [{"dtype": x.dtype.name, "shape": list(x.shape),
                        "data": base64.b64encode(np.ascontiguousarray(x).tobytes()).decode("ascii")} for x in leaves]}


def _decode(encoded: dict, like: Any) -> Any:
    leaves = [np.frombuffer(base64.b64decode(e["data"]), dtype=np.dtype(e["dtype"])).reshape(e["shape"])
              for e in encoded["leaves"]]
    structure = jax.tree.structure(like)
    if len(leaves) != structure.num_leaves:
        raise ValueError(f"checkpoint holds {len(leaves)} arrays, the train state has {structure.num_leaves}")
    return jax.tree.unflatten(structure, leaves)


class RunCheckpoints:
    """Save / restore the (stacked) train state of one group of runs under `directory`."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
        self.directory = os.path.abspath(os.fspath(directory))
        self.alone = jax.process_count() > 1  # one of several processes, saving without the others
        if self.alone:  # no barrier with the others, its own primary host; orbax leaves creating the folder to us
            me = jax.process_index()
            os.makedirs(self.directory, exist_ok=True)
            multiprocessing = ocp.options.MultiprocessingOptions(
                primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"process{me}")
            options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=False,
                                                   enable_async_checkpointing=False,
                                                   multiprocessing_options=multiprocessing)
            handlers = {name: ocp.JsonCheckpointHandler(multiprocessing_options=multiprocessing)
                        for name in (HOST_STATE, "metadata")}
            handlers["state"] = ocp.StandardCheckpointHandler(multiprocessing_options=multiprocessing)
            self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        else:
            options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                   enable_async_checkpointing=False)
            self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, metadata: dict) -> None:
        if self.alone:
            item = {HOST_STATE: ocp.args.JsonSave(_encode(state))}
        else:
            item = {"state": ocp.args.StandardSave(state)}
        self.manager.save(step, args=ocp.args.Composite(**item, metadata=ocp.args.JsonSave(metadata)))
        self.manager.wait_until_finished()

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict]:
        """(state shaped and placed like `like`, metadata) of `step` (default: the latest)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        on_host = os.path.isdir(os.path.join(self.directory, str(step), HOST_STATE))
        if on_host:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                **{HOST_STATE: ocp.args.JsonRestore()}, metadata=ocp.args.JsonRestore()))
            state = _decode(restored[HOST_STATE], like)
        else:
            if self.alone:  # orbax reads it on the host; placed below
                abstract = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), like)
            else:
                abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), metadata=ocp.args.JsonRestore()))
            state = restored["state"]
        if on_host or self.alone:  # back where `like` lives
            state = jax.tree.map(lambda x, ref: jax.device_put(np.asarray(x, ref.dtype), ref.sharding), state, like)
        return state, restored["metadata"]

    def close(self) -> None:
        self.manager.close()

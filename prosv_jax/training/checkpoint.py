"""Orbax checkpoints of a group of runs: train state (params, optimiser state, step, alive) and JSON metadata.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a kill during a save
leaves the previous checkpoint as the latest one that loads. The data order needs no saving: it is a function
of (seed, step), and both are saved.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class RunCheckpoints:
    """Save / restore the (stacked) train state of one group of runs under `directory`."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, metadata: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        metadata=ocp.args.JsonSave(metadata)))
        self.manager.wait_until_finished()

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict]:
        """(state shaped like `like`, metadata) of `step` (default: the latest)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                      metadata=ocp.args.JsonRestore()))
        return restored["state"], restored["metadata"]

    def close(self) -> None:
        self.manager.close()

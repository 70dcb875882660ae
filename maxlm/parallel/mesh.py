"""The device mesh: data / fsdp / expert / context / tensor axes sized from the config."""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from maxlm.config import MeshConfig
from maxlm.errors import MaxlmError
from maxlm.parallel.rules import RULES

AXES = ("data", "fsdp", "expert", "context", "tensor")


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, ...]:
    """Returns the (data, fsdp, expert, context, tensor) sizes with a -1 axis filled from `num_devices`."""
    sizes = [cfg.data, cfg.fsdp, cfg.expert, cfg.context, cfg.tensor]
    described = f"mesh data={cfg.data} fsdp={cfg.fsdp} expert={cfg.expert} " + (f"context={cfg.context} " if cfg.context != 1 else "") + f"tensor={cfg.tensor}"
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise MaxlmError(f"{described} does not fit {num_devices} devices: {num_devices} is not a multiple of {known}")
        sizes[sizes.index(-1)] = num_devices // known
    elif known != num_devices:
        raise MaxlmError(f"{described} needs {known} devices but {num_devices} are present (set one axis to -1 to fill)")
    return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
    """Returns a Mesh over `devices` (default: all) shaped by `cfg`, with auto-sharded axes."""
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(cfg, len(devices))
    try:
        # create_device_mesh orders devices so that tensor (the innermost axis) stays on fast links.
        grid = jax.experimental.mesh_utils.create_device_mesh(shape, devices)
    except Exception:
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def data_parallel_size(mesh: Mesh) -> int:
    """Returns how many ways the batch dimension is split."""
    return math.prod(mesh.shape[ax] for ax in RULES["batch"])

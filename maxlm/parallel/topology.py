"""Cloud TPU slices by their `gcloud` accelerator-type names (v4-128, v5litepod-256, v5p-1024, v6e-256),
and the abstract devices of one, for compiling a step ahead of time on a machine without TPUs.

v4 and v5p names count TensorCores (two per chip, one JAX device per chip: megacore), v5litepod
and v6e names count chips. Slices are power-of-two chip counts laid out as libtpu expects: 2-D
(v5e, v6e: 16 chips are 4x4, 256 are 16x16) or 3-D tori (v4, v5p: 64 chips are 4x4x4, 512 are 8x8x8).
"""

from __future__ import annotations

import dataclasses
import os
import re

from jax.experimental import topologies

from maxlm.errors import MaxlmError


@dataclasses.dataclass(frozen=True)
class Generation:
    """One TPU generation: how gcloud names its slices, what libtpu calls it, and each chip's memory."""

    prefix: str  # gcloud's accelerator-type prefix
    libtpu: str  # libtpu's topology prefix
    cores_per_unit: int  # TensorCores per counted unit of the name: 2 where the name counts cores
    dims: int  # 2-D mesh or 3-D torus
    chip_config: str
    device_kind: str  # what a JAX device of this chip reports
    hbm_gib: float  # per chip, from Google's datasheets
    hbm_bytes_per_second: float


GENERATIONS = {
    g.prefix: g
    for g in (
        Generation("v4", "v4", 2, 3, "megacore", "TPU v4", 32.0, 1.2e12),
        Generation("v5litepod", "v5e", 1, 2, "default", "TPU v5 lite", 16.0, 8.19e11),
        Generation("v5p", "v5", 2, 3, "megacore", "TPU v5", 95.0, 2.765e12),
        Generation("v6e", "v6e", 1, 2, "default", "TPU v6 lite", 32.0, 1.64e12),
    )
}


@dataclasses.dataclass(frozen=True)
class Slice:
    """A named TPU slice: its generation, chip count and libtpu topology string (e.g. "v5e:16x16")."""

    name: str
    generation: Generation
    chips: int
    shape: tuple[int, ...]

    @property
    def topology(self) -> str:
        """Returns libtpu's name of the slice's topology, e.g. "v5e:16x16" ("v5:8x8x8" for a v5p-1024)."""
        return f"{self.generation.libtpu}:{'x'.join(map(str, self.shape))}"


def _shape(chips: int, dims: int) -> tuple[int, ...]:
    """Returns the chip grid of a power-of-two slice: 2-D as square as it goes (8 -> 2x4), 3-D from 2x2x1 up (64 -> 4x4x4)."""
    if dims == 2:
        a = 1 << ((chips.bit_length() - 1) // 2)
        return (a, chips // a)
    if chips == 4:
        return (2, 2, 1)
    grid = [2, 2, 2]
    while grid[0] * grid[1] * grid[2] < chips:
        i = max(j for j in range(3) if grid[j] == min(grid))  # the last of the smallest: 16 -> 2x2x4
        grid[i] *= 2
    return tuple(sorted(grid))


def parse_slice(name: str) -> Slice:
    """Returns the Slice of a gcloud accelerator type such as "v5litepod-256"; MaxlmError for an unknown one."""
    m = re.fullmatch(r"([a-z0-9]+)-(\d+)", name.strip())
    gen = GENERATIONS.get(m.group(1)) if m else None
    known = ", ".join(f"{p}-N" for p in GENERATIONS)
    if gen is None:
        raise MaxlmError(f"--topology {name!r}: expected a Cloud TPU accelerator type as gcloud names it ({known}), e.g. v5p-128")
    chips, rest = divmod(int(m.group(2)), gen.cores_per_unit)
    smallest = 4 if gen.dims == 3 else 1
    if rest or chips < smallest or chips & (chips - 1) or (gen.dims == 2 and chips > 256) or chips == 2:
        counts = "8, 16, 32, ... (TensorCores: 2 per chip)" if gen.dims == 3 else "1, 4, 8, 16, ..., 256 (chips)"
        raise MaxlmError(f"--topology {name!r}: {gen.prefix} slices come in {counts}; other shapes are not supported here")
    return Slice(name, gen, chips, _shape(chips, gen.dims))


def _host_bounds(s: Slice) -> tuple[int, int, int]:
    # The compiler sees 2x2x1 chips a host on every multi-chip slice of these generations.
    return (1, 1, 1) if s.chips == 1 else (2, 2, 1)


def abstract_devices(s: Slice, slices: int = 1) -> list:
    """Returns the JAX devices of `slices` copies of `s`, abstract (no TPU needed: libtpu's compiler targets them)."""
    if slices < 1:
        raise MaxlmError(f"--slices {slices}: expected at least 1")
    # Another process with libtpu loaded (any JAX program, even on CPU) holds its lock file: the
    # compiler alone needs no exclusive TPU access.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=s.topology, chip_config_name=s.generation.chip_config,
                                            chips_per_host_bounds=_host_bounds(s), num_slices=slices)
    except (RuntimeError, ValueError) as e:  # libtpu absent (jax: "Unknown backend") or a shape it refuses
        raise MaxlmError(f"--topology {s.name} ({s.topology}): libtpu could not describe it ({str(e).splitlines()[0][:200]}); "
                         'install the extra: pip install -e ".[aot]"') from None
    return list(desc.devices)

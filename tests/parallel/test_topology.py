"""gcloud accelerator types -> libtpu topologies, and the peak FLOP/s each chip's device kind maps to."""

from __future__ import annotations

import pytest

from maxlm.errors import MaxlmError
from maxlm.parallel.topology import parse_slice
from maxlm.train.metrics import peak_flops


@pytest.mark.parametrize("name, chips, topology", [
    ("v4-128", 64, "v4:4x4x4"), ("v4-8", 4, "v4:2x2x1"), ("v5p-1024", 512, "v5:8x8x8"), ("v5p-256", 128, "v5:4x4x8"),
    ("v5litepod-256", 256, "v5e:16x16"), ("v5litepod-8", 8, "v5e:2x4"), ("v6e-256", 256, "v6e:16x16"), ("v6e-32", 32, "v6e:4x8"),
])
def test_gcloud_names_map_to_the_chips_and_topologies_cloud_tpu_documents(name, chips, topology):
    s = parse_slice(name)
    assert (s.chips, s.topology) == (chips, topology)


@pytest.mark.parametrize("name", ["v5p-12", "v5litepod-512", "tpu-8", "v5p"])
def test_unknown_or_unsupported_slices_are_refused_by_name(name):
    with pytest.raises(MaxlmError, match="--topology"):
        parse_slice(name)


def test_each_device_kind_gets_its_own_peak_v5p_reporting_plain_tpu_v5():
    assert peak_flops("TPU v5") == 459e12 and peak_flops("TPU v5 lite") == 197e12
    assert peak_flops("TPU v6 lite") == 918e12 and peak_flops("TPU v4") == 275e12 and peak_flops("cpu") is None

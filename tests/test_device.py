"""--device resolution, the ONNX Runtime providers that follow it, and report labels naming
the device that actually ran."""

from __future__ import annotations

import pytest
import torch

from vitslim.errors import UserError
from vitslim.evaluate.device import describe_device, ort_providers, resolve_device
from vitslim.report.markdown import device_line, where_measured

ENV = {"cpu": "Test CPU", "logical_cores": 2, "cuda": "NVIDIA Test GPU", "os": "Linux", "python": "3.11"}


def test_cpu_and_auto() -> None:
    assert resolve_device("CPU") == torch.device("cpu")
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == expected
    assert ort_providers(torch.device("cpu")) == ["CPUExecutionProvider"]
    assert describe_device(torch.device("cpu")) == "cpu"


@pytest.mark.parametrize(("name", "message"), [("mps", "not supported"), ("gpu", "unknown device"), ("", "unknown")])
def test_unsupported_devices(name: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_says_so() -> None:
    with pytest.raises(UserError, match="PyTorch sees no CUDA GPU"):
        resolve_device("cuda:1")


def test_a_gpu_the_run_did_not_use_is_not_named() -> None:
    assert where_measured(ENV) == "CPU Test CPU (2 logical cores)"
    assert device_line(ENV).startswith("CPU Test CPU")
    assert where_measured(ENV, "cuda:0 (NVIDIA Test GPU)") == "GPU cuda:0 (NVIDIA Test GPU)"

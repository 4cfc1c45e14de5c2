"""What a runtime offers a run: whether it is installed, its artifact prepared from the variant's
ONNX file (and checked), timed calls for the interleaved latency, evaluation of a file, and how
reports name it.

A runtime is a :class:`Runtime` subclass (importing its library only when it runs) registered
once in :mod:`vitslim.runtimes`; every ``--runtime`` option, the latency of ``compress``,
``bench`` and ``demo`` and the reports' summaries read that registry, so adding one touches its
own module and one registration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from vitslim.errors import UserError

if TYPE_CHECKING:  # the registry is read by the CLI's options: torch loads only when a runtime runs
    import torch

    from vitslim.evaluate.accuracy import Outputs
    from vitslim.evaluate.data import EvalData

__all__ = ["Deployed", "Check", "Timed", "Runtime"]


@dataclass(frozen=True)
class Deployed:
    """One variant ready to run: its PyTorch model (outputting what the run measures; None when only
    its file runs), its ONNX file and the input size of one image; PyTorch runs on ``device`` (ONNX
    Runtime follows it with its CUDA provider where installed)."""

    name: str
    model: torch.nn.Module | None
    onnx: Path
    input_size: tuple[int, ...]
    device: torch.device
    #: the uncompressed variant: runtimes also time it in their exact float precision
    baseline: bool = False
    #: the artifacts runtimes prepared from the ONNX file (e.g. OpenVINO's IR), by runtime
    artifacts: Mapping[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    """What a prepared artifact is evaluated on and compared with: the evaluation ``batches``, the
    variant's own PyTorch ``outputs`` (parity) and fp32's (``reference``, None for fp32 itself:
    accuracy and fidelity)."""

    batches: Iterable[Any]
    outputs: Outputs
    reference: Outputs | None
    classifier: bool
    threads: int
    progress: bool = True


@dataclass(frozen=True)
class Timed:
    """A no-argument call to time, and where and in which precision it runs (e.g. ``CPU (bf16)``)."""

    call: Callable[[], object]
    device: str


class Runtime:
    """A deployment runtime. ``name``: its key (``--runtime``, report entries); ``title``: how
    reports name it; ``deploy_rank``: the summary takes speed-ups in the measured runtime of lowest
    rank (what a deployment would run); ``optional``: ``--runtime all`` includes it only when
    :meth:`available`."""

    name: ClassVar[str]
    title: ClassVar[str]
    deploy_rank: ClassVar[int] = 100
    optional: ClassVar[bool] = False
    #: how to install it, said when it is missing
    install: ClassVar[str] = ""
    #: it runs the PyTorch model, not the exported file
    runs_model: ClassVar[bool] = False

    def available(self) -> bool:
        return True

    def require(self) -> None:
        """A UserError saying how to install the runtime when it is missing."""
        if not self.available():
            raise UserError(f"{self.title} is not installed{': ' + self.install if self.install else ''}")

    def prepare(self, deployed: Deployed, check: Check) -> dict[str, Any] | None:
        """Build the runtime's artifact beside ``deployed.onnx`` and evaluate it: the record the report
        variant carries under :attr:`name` (None: nothing beyond the ONNX file's own check)."""
        return None

    def judged(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """What the ``validate`` stage judges of a :meth:`prepare` record (which names its ``file``):
        the parity (``max_abs_diff``, ``top1_agreement``, ``samples``) in exact precision; None: nothing."""
        return None

    def timers(self, deployed: Deployed, batch: int, threads: int) -> dict[str, Timed]:
        """Calls timing ``deployed`` at ``batch`` images, by mode ("": as deployed; e.g. "f32": an extra
        exact-precision run of the baseline)."""
        raise NotImplementedError

    def evaluate_file(self, path: Path, data: EvalData, threads: int, progress: bool) -> tuple[str, Outputs]:
        """Outputs of the exported file at ``path`` on ``data``, and a label saying what ran where."""
        raise UserError(f"{self.title} does not run exported files")

    def ran_in(self, variant: dict[str, Any], device: str) -> str:
        """The summary's "ran in" cell for a report ``variant`` timed on ``device``."""
        return f"{self.title} {device}"

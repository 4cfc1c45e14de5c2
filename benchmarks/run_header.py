"""The header every benchmark result starts with: the command that produced it, when, the model
and the machine."""

from __future__ import annotations

import datetime
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vitslim.evaluate.environment import environment
from vitslim.models import LoadedModel
from vitslim.pipeline.measure import model_summary


def run_header(script: str, loaded: LoadedModel, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``command`` (``script`` with ``argv``, this process's arguments by default), ``created``,
    ``model`` and ``environment`` of a benchmark result."""
    args = sys.argv[1:] if argv is None else argv
    return {
        "command": " ".join(["python", f"benchmarks/{Path(script).name}", *args]),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": model_summary(loaded),
        "environment": environment(),
    }

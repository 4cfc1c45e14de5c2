"""``manifest.json``: what an export folder holds, how it was made and how each layer runs.

``write_manifest(out_dir, [model.onnx, ...], recipe=..., export=quant_export)`` lists every file
with its sha256 and size, the recipe (plain data), the per-site precision of a quantized export
(quantizer, bits, ``accelerated`` = Q/DQ an integer kernel can run, ``emulated`` = float ops),
the opset, the validation result and the library versions.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from vitslim.errors import UserError
from vitslim.evaluate.environment import package_versions
from vitslim.files import atomic_write_json

from .qdq import QuantExport
from .validate import Validation

__all__ = ["MANIFEST_NAME", "MANIFEST_FORMAT", "sha256_file", "file_entry", "precision_table", "write_manifest"]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "vitslim-manifest/1"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: str | Path, root: str | Path) -> dict[str, Any]:
    """``{"path" (relative to root when inside it), "sha256", "size_bytes"}``."""
    path, root = Path(path), Path(root)
    if not path.is_file():
        raise UserError(f"manifest artifact {path} does not exist")
    try:
        shown = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        shown = str(path)
    return {"path": shown, "sha256": sha256_file(path), "size_bytes": path.stat().st_size}


def precision_table(export: QuantExport) -> dict[str, dict[str, Any]]:
    """Per site: quantizer, bits, mode (accelerated / emulated), ONNX type and axis."""
    return {
        s.site: {
            "kind": s.kind,
            "quantizer": s.quantizer,
            "bits": s.bits,
            "mode": s.mode,
            "onnx_type": s.onnx_type,
            "axis": s.axis,
            **({"note": s.note} if s.note else {}),
        }
        for s in export.sites
    }


def _versions() -> dict[str, str | None]:
    versions = package_versions()
    try:
        versions["tensorrt"] = metadata.version("tensorrt")
    except metadata.PackageNotFoundError:
        versions["tensorrt"] = None
    return versions


def write_manifest(
    out_dir: str | Path,
    artifacts: Iterable[str | Path],
    *,
    recipe: Mapping[str, Any] | None = None,
    export: QuantExport | None = None,
    validation: Validation | None = None,
    opset: int | None = None,
    extra: Mapping[str, Any] | None = None,
    name: str = MANIFEST_NAME,
) -> Path:
    """Write ``out_dir/manifest.json`` describing ``artifacts`` (module docstring); returns its path."""
    out_dir = Path(out_dir)
    files = [file_entry(p, out_dir) for p in artifacts]
    data: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "files": files,
        "recipe": None if recipe is None else dict(recipe),
        "opset": export.opset if export is not None else opset,
    }
    if export is not None:
        data["quantization"] = {
            "accelerated_sites": len(export.accelerated),
            "emulated_sites": len(export.emulated),
            "tensorrt_int8_ready": export.tensorrt_int8_ready,
            "tensorrt_issues": export.tensorrt_issues,
            "tensorrt": export.tensorrt.to_dict(),
            "notes": list(export.notes),
            "graph": {k: v for k, v in export.graph.to_dict().items() if k not in ("ops", "weights")},
        }
        data["precision"] = precision_table(export)
    if validation is not None:
        data["validation"] = validation.to_dict()
    if extra:
        data.update(dict(extra))
    data["versions"] = _versions()
    return atomic_write_json(out_dir / name, data)

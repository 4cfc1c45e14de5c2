"""Image folders as datasets: class subfolders give labels, a flat folder is unlabelled."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from vitslim.errors import UserError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
UNLABELLED = -1


def is_image_name(path: Path) -> bool:
    """True for a visible file whose extension (any case) is a known image format."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def is_readable_image(path: Path) -> bool:
    """A cheap integrity check: PIL can identify the file and its structure verifies."""
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception:  # PIL raises many kinds (OSError, SyntaxError, ValueError...) for bad files
        return False
    return True


def images_in(folder: Path, recursive: bool) -> list[Path]:
    """The image files in ``folder`` (and below it if ``recursive``), sorted by path."""
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in candidates if is_image_name(p))


class ImageFolderDataset(Dataset):
    """Images under ``root``, as ``(transform(rgb_image), label)``.

    Layout ``root/<class>/<image>`` (class folders searched recursively) is labelled, classes
    sorted by name; a flat folder of images is unlabelled (label -1, ``classes`` None). When
    both exist the class folders win and the loose top-level images are counted in
    ``ignored_loose``. Files that fail PIL's cheap ``verify()`` at scan time are listed in
    ``skipped``; damage only a full decode finds (a truncated JPEG) raises ``UserError`` on access.
    """

    def __init__(self, root: str | Path, transform: Callable[[Image.Image], Any] | None = None) -> None:
        self.root = Path(root)
        self.transform = transform
        if not self.root.exists():
            raise UserError(f"Data folder {self.root} does not exist.")
        if not self.root.is_dir():
            raise UserError(f"Data path {self.root} is not a folder.")

        loose = images_in(self.root, recursive=False)
        class_dirs = sorted(
            (d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name
        )
        by_class = {d.name: images_in(d, recursive=True) for d in class_dirs}
        by_class = {name: files for name, files in by_class.items() if files}

        candidates: list[tuple[Path, int]]
        if by_class:
            self.classes: list[str] | None = list(by_class)
            self.ignored_loose = len(loose)
            candidates = [(p, label) for label, files in enumerate(by_class.values()) for p in files]
        else:
            self.classes = None
            self.ignored_loose = 0
            candidates = [(p, UNLABELLED) for p in loose]
        if not candidates:
            raise UserError(f"Data folder {self.root} contains no images ({', '.join(sorted(IMAGE_EXTENSIONS))}).")

        readable = [is_readable_image(p) for p, _ in candidates]
        self.samples = [item for item, ok in zip(candidates, readable, strict=True) if ok]
        self.skipped = [p for (p, _), ok in zip(candidates, readable, strict=True) if not ok]
        if not self.samples:
            raise UserError(f"None of the {len(candidates)} images in data folder {self.root} could be read.")

    @property
    def labelled(self) -> bool:
        """Whether the items carry class labels."""
        return self.classes is not None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except OSError as e:  # e.g. a truncated JPEG, which the cheap scan-time check lets through
            raise UserError(f"Image {path} could not be decoded ({e}); remove or replace it.") from None
        return (self.transform(rgb) if self.transform else rgb), label

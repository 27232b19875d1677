"""Videos stored as folders of frames, in the authors' layout ``root/{train,test}/<class>/<video>/<frame>.jpg``.

Frames are ordered by file name, numbers compared as numbers (``2.jpg`` before ``10.jpg``). Sampling and
the clip-consistent augmentation are :class:`~.clip_videos.ClipVideos`'.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from PIL import Image

from .clip_videos import SAMPLINGS, ClipVideos, color_jitter, image_to_tensor, natural_key, subfolders

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def load_frame(path: Path, resize_shorter: Optional[int]) -> torch.Tensor:
    """One RGB frame ``(3, H, W)`` in ``[0, 1]``, its shorter side resized to ``resize_shorter`` if given.

    Raises ``ValueError`` naming ``path`` when the file cannot be read as an image.
    """
    try:
        with Image.open(path) as img:
            return image_to_tensor(img, resize_shorter)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read frame {path}: {err}") from err


class FrameFolderVideos(ClipVideos):
    """A video classification dataset read from frame folders (see the module docstring and :class:`ClipVideos`
    for the arguments)."""

    kind = "video folder"

    def _scan(self, class_dir: Path) -> List[Tuple[object, int, Path]]:
        found = []
        for video_dir in subfolders(class_dir):
            frames = sorted((p for p in video_dir.iterdir() if p.suffix.lower() in EXTENSIONS), key=natural_key)
            found.append((frames, len(frames), video_dir))
        return found

    def _read(self, video: object, indices: Sequence[int]) -> Tuple[List[torch.Tensor], List[str]]:
        chosen = [video[i] for i in indices]
        return [load_frame(p, self.resize_shorter) for p in chosen], [str(p) for p in chosen]

    def _where(self, video: object) -> str:
        return str(video[0].parent)


__all__ = ["EXTENSIONS", "SAMPLINGS", "FrameFolderVideos", "color_jitter", "load_frame"]

"""Clip sampling and clip-consistent augmentation shared by every video classification dataset.

A dataset lists ``root/<split>/<class>/<video>`` (a video is a folder of frames or a video file: the
subclass says) and returns one clip ``(T, 3, H, W)`` float32 in ``[0, 1]`` and its class index per item.
Augmentation is shared by every frame of a clip, as in the paper: one resize, one crop window, one flip
decision and one set of color-jitter factors per clip. Randomness comes from ``(seed, epoch, index)``, so an
item is reproducible, differs between epochs (:meth:`ClipVideos.set_epoch`) and is the same in any
``DataLoader`` worker.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

SAMPLINGS = ("uniform", "clips")


def natural_key(path: Path) -> List[Union[int, str]]:
    """Sort key of a file name with numbers compared as numbers (``2.jpg`` before ``10.jpg``)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def subfolders(folder: Path) -> List[Path]:
    """The sub-folders of ``folder`` in natural order."""
    return sorted((p for p in folder.iterdir() if p.is_dir()), key=natural_key)


def image_to_tensor(img: Image.Image, resize_shorter: Optional[int]) -> torch.Tensor:
    """An RGB ``(3, H, W)`` tensor in ``[0, 1]`` of ``img``, its shorter side resized to ``resize_shorter`` if given."""
    img = img.convert("RGB")
    if resize_shorter is not None:
        scale = resize_shorter / min(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    array = np.asarray(img, dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255.0


def color_jitter(clip: torch.Tensor, brightness: float, contrast: float, saturation: float) -> torch.Tensor:
    """Scale brightness, contrast (around each frame's mean gray) and saturation of ``clip (T, 3, H, W)``."""
    weights = clip.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    clip = clip * brightness
    mean = (clip * weights).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    clip = (clip - mean) * contrast + mean
    gray = (clip * weights).sum(dim=1, keepdim=True)
    return ((clip - gray) * saturation + gray).clamp(0.0, 1.0)


class ClipVideos:
    """Base of the video classification datasets: the class folders, sampling and augmentation.

    Args:
        root: the folder holding one folder per split.
        split: ``"train"`` or ``"test"`` (any subfolder name works).
        num_frames: frames per clip.
        sampling: ``"uniform"``: one clip per video, ``num_frames`` frames spread evenly over it (one per
            equal segment: a random one in training, the middle one otherwise); ``"clips"``: every video
            cut into consecutive clips of ``num_frames`` frames overlapping by ``clip_overlap`` (the last
            partial window dropped), each clip one item.
        clip_overlap: overlap rate of ``"clips"`` sampling in ``[0, 1)`` (paper: 0.25).
        resize_shorter: resize every frame's shorter side to this (paper: 368); None keeps the size.
        crop_size: square crop side (paper: 224), random in training and central otherwise; None: no crop.
        train: random augmentation (crop position, horizontal flip, color jitter); default
            ``split == "train"``.
        jitter: color-jitter strength: brightness, contrast and saturation factors in ``[1-j, 1+j]``.
        seed: seed of the augmentation and sampling randomness.

    Subclasses implement :meth:`_scan` (the videos of a class folder and their frame counts) and
    :meth:`_read` (chosen frames of one video). Raises ``ValueError`` naming the folder or file on a missing
    split, a class without videos, a video with fewer than ``num_frames`` frames; unreadable frames and
    frames of a different size raise it when their clip is loaded.
    """

    kind = "video"
    """How errors name one video (``"video folder"``, ``"video file"``)."""

    def __init__(
        self,
        root: Union[str, Path],
        split: str = "train",
        num_frames: int = 16,
        sampling: str = "uniform",
        clip_overlap: float = 0.25,
        resize_shorter: Optional[int] = None,
        crop_size: Optional[int] = None,
        train: Optional[bool] = None,
        jitter: float = 0.4,
        seed: int = 0,
    ) -> None:
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {list(SAMPLINGS)}, got {sampling!r}")
        if not 0.0 <= clip_overlap < 1.0:
            raise ValueError(f"clip_overlap must be in [0, 1), got {clip_overlap!r}")
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {jitter!r}")
        for name, value in (("resize_shorter", resize_shorter), ("crop_size", crop_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or a positive int, got {value!r}")
        folder = Path(root) / split
        if not folder.is_dir():
            raise ValueError(f"split folder {folder} does not exist")
        class_dirs = subfolders(folder)
        if not class_dirs:
            raise ValueError(f"split folder {folder} has no class folders")
        self.classes = [d.name for d in class_dirs]
        self.num_frames, self.sampling = num_frames, sampling
        self.resize_shorter, self.crop_size, self.jitter = resize_shorter, crop_size, jitter
        self.train = split == "train" if train is None else train
        self.seed, self.epoch = seed, 0
        self.videos: List[Tuple[object, int, int]] = []  # (what _read takes, frame count, label)
        for label, class_dir in enumerate(class_dirs):
            found = self._scan(class_dir)
            if not found:
                raise ValueError(f"class folder {class_dir} has no {self.kind}s")
            for video, count, name in found:
                if count < num_frames:
                    raise ValueError(f"{self.kind} {name} has {count} frames, fewer than num_frames={num_frames}")
                self.videos.append((video, count, label))
        stride = max(1, num_frames - round(clip_overlap * num_frames))
        self.items: List[Tuple[int, int]] = [
            (v, start)
            for v, (_, count, _) in enumerate(self.videos)
            for start in (range(0, count - num_frames + 1, stride) if sampling == "clips" else (0,))
        ]

    def _scan(self, class_dir: Path) -> List[Tuple[object, int, Path]]:
        """Every video of ``class_dir``: ``(what _read takes, frame count, path to name in errors)``."""
        raise NotImplementedError

    def _read(self, video: object, indices: Sequence[int]) -> Tuple[List[torch.Tensor], List[str]]:
        """Frames ``indices`` of ``video`` as ``(3, H, W)`` tensors (resized), and a name for each in errors."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Draw new augmentation and sampling randomness (call once per epoch)."""
        self.epoch = epoch

    def _frame_indices(self, count: int, start: int, g: torch.Generator) -> List[int]:
        """Which of a video's ``count`` frames form the clip."""
        if self.sampling == "clips":
            return list(range(start, start + self.num_frames))
        bounds = torch.linspace(0, count, self.num_frames + 1)
        if self.train:
            offsets = torch.rand(self.num_frames, generator=g)
        else:
            offsets = torch.full((self.num_frames,), 0.5)
        picks = (bounds[:-1] + offsets * (bounds[1:] - bounds[:-1])).long().clamp(max=count - 1)
        return picks.tolist()

    def _crop(self, clip: torch.Tensor, where: str, g: torch.Generator) -> torch.Tensor:
        """One crop window for the whole clip: random in training, central otherwise."""
        size = self.crop_size
        H, W = clip.shape[-2:]
        if size is None:
            return clip
        if size > H or size > W:
            raise ValueError(f"crop_size={size} exceeds the {H}x{W} frames of {self.kind} {where}")
        if self.train:
            top = int(torch.randint(H - size + 1, (1,), generator=g))
            left = int(torch.randint(W - size + 1, (1,), generator=g))
        else:
            top, left = (H - size) // 2, (W - size) // 2
        return clip[..., top:top + size, left:left + size]

    def _where(self, video: object) -> str:
        """The video's name in error messages."""
        return str(video)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        """Clip ``index``: ``(frames (T, 3, H, W) float32 in [0, 1], class index)``."""
        v, start = self.items[index]
        video, count, label = self.videos[v]
        g = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) & 0x7FFF_FFFF_FFFF_FFFF)
        frames, names = self._read(video, self._frame_indices(count, start, g))
        for name, f in zip(names, frames):
            if f.shape != frames[0].shape:
                size, first = tuple(f.shape[1:]), tuple(frames[0].shape[1:])
                raise ValueError(f"frame {name} is {size}, unlike {names[0]} ({first})")
        clip = self._crop(torch.stack(frames), self._where(video), g)
        if self.train:
            if float(torch.rand((), generator=g)) < 0.5:
                clip = clip.flip(-1)
            if self.jitter > 0:
                brightness, contrast, saturation = (1.0 + (torch.rand(3, generator=g) * 2 - 1) * self.jitter).tolist()
                clip = color_jitter(clip, brightness, contrast, saturation)
        return clip.contiguous(), label

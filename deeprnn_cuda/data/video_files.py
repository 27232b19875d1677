"""Videos stored as files, in the common action-recognition layout ``root/{train,test}/<class>/<video>.mp4``.

Decoded with PyAV (``pip install av``, or the package's ``video`` extra). Sampling and the
clip-consistent augmentation are :class:`~.clip_videos.ClipVideos`', exactly as for frame folders.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple

import torch

from .clip_videos import ClipVideos, image_to_tensor, natural_key

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm")


def _av():
    try:
        import av
    except ImportError:
        raise ImportError("VideoFileVideos needs PyAV to decode videos: pip install av "
                          "(or pip install deeprnn-cuda[video])") from None
    return av


def count_frames(path: Path) -> int:
    """Frames in the first video stream of ``path`` (decoded and counted when the header does not say)."""
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"video file {path} has no video stream")
            stream = container.streams.video[0]
            return stream.frames or sum(1 for _ in container.decode(stream))
    except av.FFmpegError as err:
        raise ValueError(f"cannot read video file {path}: {err}") from err


def read_frames(path: Path, indices: Sequence[int], resize_shorter=None) -> List[torch.Tensor]:
    """Frames ``indices`` (any order, repeats allowed) of ``path`` as RGB ``(3, H, W)`` tensors in ``[0, 1]``."""
    av = _av()
    wanted = set(indices)
    decoded = {}
    try:
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(container.streams.video[0])):
                if i in wanted:
                    decoded[i] = image_to_tensor(frame.to_image(), resize_shorter)
                if len(decoded) == len(wanted):
                    break
    except av.FFmpegError as err:
        raise ValueError(f"cannot read video file {path}: {err}") from err
    missing = sorted(wanted - decoded.keys())
    if missing:
        raise ValueError(f"video file {path} has no frame {missing[0]} (it decoded to {len(decoded)} of the wanted frames)")
    return [decoded[i] for i in indices]


class VideoFileVideos(ClipVideos):
    """A video classification dataset read from video files (see the module docstring and :class:`ClipVideos`
    for the arguments). Frame counts are read when the dataset is built; frames are decoded per item."""

    kind = "video file"

    def _scan(self, class_dir: Path) -> List[Tuple[object, int, Path]]:
        files = sorted((p for p in class_dir.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS), key=natural_key)
        return [(path, count_frames(path), path) for path in files]

    def _read(self, video: object, indices: Sequence[int]) -> Tuple[List[torch.Tensor], List[str]]:
        return read_frames(video, indices, self.resize_shorter), [f"{i} of {video}" for i in indices]

"""A user's own frame sequences for next-frame prediction: arrays, frame folders and video files.

A sequence is one of

* a ``.npy`` file, or one array of a ``.npz`` file (each of its arrays a sequence): ``(T, H, W)``,
  ``(T, H, W, C)`` or ``(T, C, H, W)`` with ``C`` 1 or 3 (a last axis of 1 or 3 reads as channels last),
  uint8 (0-255) or float in ``[0, 1]``;
* a folder of image frames (``.png``, ``.jpg``, ...), ordered by name with numbers compared as numbers;
  grayscale images give one channel, any other mode RGB;
* a video file (``.mp4``, ``.avi``, ...), decoded as RGB with PyAV.

:func:`scan_sequences` lists a folder's sequences and checks everything that a header tells (frame counts,
sizes, channels, array value ranges) before any training starts, raising one ``ValueError`` that names the
file; :class:`FrameWindows` cuts them into windows of ``length`` frames with a stride and reads one window
per item, so a ``DataLoader``'s workers do the decoding.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .clip_videos import natural_key
from .frame_folder import EXTENSIONS as IMAGE_EXTENSIONS
from .video_files import VIDEO_EXTENSIONS, _av, count_frames, read_frames

ARRAY_EXTENSIONS = (".npy", ".npz")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")
TEST_FRACTION = 0.2
"""Without ``train``/``test`` folders, the last fifth of the sequences (by name, at least one) is the test split."""


@dataclass
class FrameSequence:
    """One sequence: where it is (``path``, and ``key`` inside an ``.npz``), how many frames, their channels and
    size; ``files`` lists the image files of a frame folder, ``layout`` the axes of an array."""

    path: Path
    kind: str
    length: int
    channels: int
    height: int
    width: int
    key: Optional[str] = None
    files: List[Path] = field(default_factory=list)
    layout: str = "thw"

    @property
    def name(self) -> str:
        """How errors and records name the sequence."""
        return f"{self.path}:{self.key}" if self.key is not None else str(self.path)


def _array_layout(shape: Tuple[int, ...], name: str) -> Tuple[str, int, int, int]:
    """``(layout, C, H, W)`` of an array of ``shape``: ``"thw"``, ``"thwc"`` or ``"tchw"``."""
    if len(shape) == 3:
        return "thw", 1, shape[1], shape[2]
    if len(shape) == 4 and shape[3] in (1, 3):
        return "thwc", shape[3], shape[1], shape[2]
    if len(shape) == 4 and shape[1] in (1, 3):
        return "tchw", shape[1], shape[2], shape[3]
    raise ValueError(f"array {name} has shape {shape}; expected (T, H, W), (T, H, W, C) or (T, C, H, W) with C 1 or 3")


def _check_array(array: np.ndarray, path: Path, key: Optional[str]) -> FrameSequence:
    name = f"{path}:{key}" if key is not None else str(path)
    layout, C, H, W = _array_layout(array.shape, name)
    if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"array {name} has dtype {array.dtype}; expected uint8 (0-255) or float in [0, 1]")
    if array.dtype != np.uint8 and array.size and not (np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1):
        raise ValueError(f"array {name} holds float values outside [0, 1] (uint8 0-255 or float 0-1 expected)")
    return FrameSequence(path, "array", array.shape[0], C, H, W, key=key, layout=layout)


def _scan_arrays(path: Path) -> List[FrameSequence]:
    try:
        if path.suffix.lower() == ".npy":
            return [_check_array(np.load(path, mmap_mode="r", allow_pickle=False), path, None)]
        with np.load(path, allow_pickle=False) as archive:
            if not archive.files:
                raise ValueError(f"array file {path} holds no arrays")
            return [_check_array(archive[key], path, key) for key in sorted(archive.files)]
    except (OSError, EOFError, ValueError) as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"cannot read array file {path}: {err}") from err


def _scan_folder(folder: Path) -> FrameSequence:
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS), key=natural_key)
    if not files:
        raise ValueError(f"frame folder {folder} holds no image frames ({', '.join(IMAGE_EXTENSIONS)})")
    channels, size = None, None
    for path in files:
        try:
            with Image.open(path) as img:
                c, s = (1 if img.mode in _GRAY_MODES else 3), img.size
        except OSError as err:
            raise ValueError(f"cannot read frame {path}: {err}") from err
        if size is not None and (c, s) != (channels, size):
            raise ValueError(f"frame {path} is {s[0]}x{s[1]} with {c} channel(s), but the frames before it in "
                             f"{folder} are {size[0]}x{size[1]} with {channels}")
        channels, size = c, s
    return FrameSequence(folder, "frames", len(files), channels, size[1], size[0], files=files)


def _scan_video(path: Path) -> FrameSequence:
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"video file {path} has no video stream")
            ctx = container.streams.video[0].codec_context
            height, width = ctx.height, ctx.width
    except av.FFmpegError as err:
        raise ValueError(f"cannot read video file {path}: {err}") from err
    return FrameSequence(path, "video", count_frames(path), 3, height, width)


def scan_sequence(path: Path) -> List[FrameSequence]:
    """The sequences of one path: an array file (an ``.npz`` may hold several), a frame folder or a video file."""
    path = Path(path)
    if path.is_dir():
        return [_scan_folder(path)]
    suffix = path.suffix.lower()
    if not path.exists():
        raise ValueError(f"input {path} does not exist")
    if suffix in ARRAY_EXTENSIONS:
        return _scan_arrays(path)
    if suffix in VIDEO_EXTENSIONS:
        return [_scan_video(path)]
    raise ValueError(f"input {path} is not a frame folder, an array ({', '.join(ARRAY_EXTENSIONS)}) "
                     f"or a video file ({', '.join(VIDEO_EXTENSIONS)})")


def scan_sequences(folder: Path) -> List[FrameSequence]:
    """Every sequence in ``folder`` (array files, video files and frame folders, by name); other files are skipped."""
    folder = Path(folder)
    found: List[FrameSequence] = []
    for path in sorted(folder.iterdir(), key=natural_key):
        if path.is_dir() or path.suffix.lower() in ARRAY_EXTENSIONS + VIDEO_EXTENSIONS:
            found.extend(scan_sequence(path))
    if not found:
        raise ValueError(f"folder {folder} holds no sequences (array files, frame folders or video files)")
    return found


def split_sequences(root: Path) -> Tuple[List[FrameSequence], List[FrameSequence]]:
    """Train and test sequences: those of ``root/train`` and ``root/test``, or, without either folder, the
    sequences of ``root`` with the last :data:`TEST_FRACTION` of them (at least one) held out for testing."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"data folder {root} does not exist")
    train_dir, test_dir = root / "train", root / "test"
    if train_dir.is_dir() != test_dir.is_dir():
        missing = test_dir if train_dir.is_dir() else train_dir
        raise ValueError(f"data folder {root} has no {missing.name}/ beside its {'train' if train_dir.is_dir() else 'test'}/")
    if train_dir.is_dir():
        return scan_sequences(train_dir), scan_sequences(test_dir)
    sequences = scan_sequences(root)
    if len(sequences) < 2:
        raise ValueError(f"data folder {root} holds one sequence ({sequences[0].name}); give at least two, "
                         "or train/ and test/ folders")
    held_out = max(1, round(TEST_FRACTION * len(sequences)))
    return sequences[:-held_out], sequences[-held_out:]


def check_consistent(sequences: Sequence[FrameSequence], image_size: Optional[int], min_length: int) -> Tuple[int, int, int]:
    """``(C, H, W)`` the sequences share after resizing to ``image_size`` (None: as they are); a ``ValueError``
    names the first sequence shorter than ``min_length`` frames or differing in channels (or, unresized, size)."""
    first = sequences[0]
    for s in sequences:
        if s.length < min_length:
            raise ValueError(f"sequence {s.name} has {s.length} frames, fewer than observe + predict = {min_length}")
        if s.channels != first.channels:
            raise ValueError(f"sequence {s.name} has {s.channels} channel(s), but {first.name} has {first.channels}")
        if image_size is None and (s.height, s.width) != (first.height, first.width):
            raise ValueError(f"sequence {s.name} is {s.height}x{s.width}, but {first.name} is "
                             f"{first.height}x{first.width}; give --image-size to resize every frame")
    if image_size is not None:
        return first.channels, image_size, image_size
    return first.channels, first.height, first.width


def _to_frames(array: np.ndarray, layout: str) -> torch.Tensor:
    """``(T, C, H, W)`` float32 in ``[0, 1]`` of a uint8 or float array in ``layout``."""
    tensor = torch.from_numpy(np.array(array))
    tensor = tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor.float()
    if layout == "thw":
        return tensor.unsqueeze(1)
    if layout == "thwc":
        return tensor.permute(0, 3, 1, 2)
    return tensor


def read_sequence(seq: FrameSequence, start: int, count: int, image_size: Optional[int] = None) -> torch.Tensor:
    """Frames ``start .. start + count - 1`` of ``seq`` as ``(count, C, H, W)`` float32 in ``[0, 1]``, resized
    (bilinear, antialiased) to ``image_size x image_size`` if given."""
    indices = range(start, start + count)
    if seq.kind == "array":
        if seq.key is None:
            array = np.load(seq.path, mmap_mode="r", allow_pickle=False)[start:start + count]
        else:
            with np.load(seq.path, allow_pickle=False) as archive:
                array = archive[seq.key][start:start + count]
        frames = _to_frames(array, seq.layout)
    elif seq.kind == "frames":
        mode = "L" if seq.channels == 1 else "RGB"
        images = []
        for i in indices:
            try:
                with Image.open(seq.files[i]) as img:
                    images.append(np.asarray(img.convert(mode), dtype=np.uint8))
            except OSError as err:
                raise ValueError(f"cannot read frame {seq.files[i]}: {err}") from err
        frames = _to_frames(np.stack(images), "thw" if seq.channels == 1 else "thwc")
    else:
        frames = torch.stack(read_frames(seq.path, list(indices)))
    if image_size is not None and frames.shape[-2:] != (image_size, image_size):
        frames = F.interpolate(frames, size=(image_size, image_size), mode="bilinear", antialias=True,
                               align_corners=False).clamp(0, 1)
    return frames


def window_starts(length: int, window: int, stride: int) -> range:
    """Starts of the windows of ``window`` frames, ``stride`` apart, in a sequence of ``length`` frames."""
    return range(0, length - window + 1, stride)


class FrameWindows(torch.utils.data.Dataset):
    """Every window of ``window`` consecutive frames, starting every ``stride`` frames, of ``sequences``; an item
    is ``(window, C, H, W)`` float32 in ``[0, 1]``, read when asked for (in a ``DataLoader`` worker)."""

    def __init__(self, sequences: Sequence[FrameSequence], window: int, stride: int, image_size: Optional[int]) -> None:
        for name, value in (("window", window), ("stride", stride)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.sequences, self.window, self.image_size = list(sequences), window, image_size
        self.index: List[Tuple[int, int]] = [
            (i, start) for i, s in enumerate(self.sequences) for start in window_starts(s.length, window, stride)
        ]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> torch.Tensor:
        i, start = self.index[item]
        return read_sequence(self.sequences[i], start, self.window, self.image_size)

    def describe(self, item: int) -> Dict[str, object]:
        """Which sequence and first frame window ``item`` is."""
        i, start = self.index[item]
        return {"source": self.sequences[i].name, "start": start}

"""IDX files, the format of MNIST and Fashion-MNIST (``train-images-idx3-ubyte[.gz]``), and where to find them.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), one
big-endian uint32 per dimension, then the data in C order. Fashion-MNIST's real images come with Debian's
package ``dataset-fashion-mnist`` (:data:`FASHION_MNIST_DIR`); real MNIST files, where a user has them, are
read the same way from any folder.
"""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` installs the IDX files."""

DEBIAN_PACKAGE = "dataset-fashion-mnist"

IMAGE_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
"""The standard image file name of each split (MNIST and Fashion-MNIST share them), without ``.gz``."""

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
           0x0E: np.dtype(">f8")}


class MissingDataError(FileNotFoundError):
    """An IDX file that is not there; the message says how to get it."""


def read_idx(path: Union[str, Path]) -> torch.Tensor:
    """The array stored in the IDX file ``path`` (gzip-compressed or not, told by its first bytes).

    Returns a tensor of the file's dtype (uint8 for images and labels) and shape. Raises ``ValueError``
    naming ``path`` when it is not a well-formed IDX file (bad magic, unknown type, wrong length).
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ValueError(f"{path}: not a readable gzip file: {err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise ValueError(f"{path}: not an IDX file (magic bytes {raw[:4].hex() or 'missing'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: IDX header truncated ({len(raw)} bytes, needs {header})")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: IDX data of shape {shape} needs {expected} bytes, the file has {len(raw)}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(data.astype(dtype.newbyteorder("="), copy=True))


def find_images(split: str, data_dir: Optional[Union[str, Path]] = None) -> Path:
    """The image IDX file of ``split`` (``"train"`` or ``"test"``) in ``data_dir`` (default Fashion-MNIST's).

    Either the ``.gz`` or the uncompressed file is accepted. Raises :class:`MissingDataError` with a
    one-line message naming the Debian package and the ``--data-dir`` option when neither exists.
    """
    if split not in IMAGE_FILES:
        raise ValueError(f"split must be one of {list(IMAGE_FILES)}, got {split!r}")
    folder = Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR
    name = IMAGE_FILES[split]
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise MissingDataError(
        f"no {name}[.gz] in {folder}: install Debian's package {DEBIAN_PACKAGE} (apt-get install {DEBIAN_PACKAGE}) "
        f"for Fashion-MNIST, or pass --data-dir DIR holding MNIST-format IDX files"
    )


def load_images(split: str, data_dir: Optional[Union[str, Path]] = None) -> torch.Tensor:
    """The ``(N, H, W)`` uint8 images of ``split`` from :func:`find_images`; ``ValueError`` if not 3-D uint8."""
    path = find_images(split, data_dir)
    images = read_idx(path)
    if images.dim() != 3 or images.dtype != torch.uint8:
        raise ValueError(f"{path}: expected uint8 images of shape (N, H, W), got {images.dtype} {tuple(images.shape)}")
    return images

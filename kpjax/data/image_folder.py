"""Image-folder datasets: `train/<class>/*` and `test/<class>/*` (JPEG or PNG).

The layout of torchvision's ImageFolder and Keras' image_dataset_from_directory,
given as a folder or as one .tar, .tar.gz/.tgz or .zip archive (optionally
under one top-level folder). Class index = position of the class name in
sorted order. Images are decoded with Pillow into uint8 NHWC arrays in a
deterministic order (split, class, path), whatever the storage order.

Archives are read, never extracted (`kpjax.data.archives` refuses absolute
paths, `..`, links and device files, and bombs). A corrupt image names its
member; an empty class, a class missing from one split, and images of
another size (unless `resize` is given) are errors.

Decoding 60,000 JPEGs takes a while, so the arrays are cached as one .npz
keyed by the source's sha256 (a folder: by its listing's paths, sizes and
mtimes) and the options, written atomically; a second load only reads it.

May import: numpy, PIL, kpjax.data.archives.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from PIL import Image

from kpjax.data import archives

_log = logging.getLogger(__name__)

SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# What an image-folder dataset may hold: 16 GiB of files in all, 64 MiB per
# file, 2²⁴ pixels per image (checked from the header, before decoding).
MAX_BYTES = 16 << 30
MAX_MEMBER_BYTES = 64 << 20
MAX_PIXELS = 1 << 24
# Bumped when the decoded arrays would change for the same source and options.
_CACHE_VERSION = 1


class ImageFolder(NamedTuple):
    """A decoded image-folder dataset.

    Attributes:
      train_images, test_images: uint8 (N, H, W, C), C = 1 (grayscale) or 3.
      train_labels, test_labels: int32, the index of the class in `class_names`.
      class_names: the class folder names, sorted.
      source: where the arrays came from: the path and its sha256.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    source: str


def is_image_folder(path: str | os.PathLike | None) -> bool:
    """Whether `path` looks like an image-folder dataset: an archive file, or a
    folder with train/ and test/ subfolders (the contents are checked on load)."""
    if path is None:
        return False
    path = os.path.expanduser(os.fspath(path))
    if archives.is_archive(path):
        return True
    return all(os.path.isdir(os.path.join(path, s)) for s in SPLITS)


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "kpjax", "image_folder")


def load(path: str | os.PathLike, *, resize: tuple[int, int] | None = None,
         cache_dir: str | os.PathLike | None = None, max_bytes: int = MAX_BYTES,
         progress: Callable[[float, int], None] | None = None) -> ImageFolder:
    """Reads (or takes from the cache) an image-folder dataset.

    Args:
      path: a folder with train/ and test/, or a .tar/.tar.gz/.tgz/.zip of one.
      resize: (height, width) every image is resized to (bilinear); default:
        all images must have the size of the first one.
      cache_dir: where the decoded arrays are cached (default
        `default_cache_dir()`); the folder is created if needed.
      max_bytes: refuse a source that inflates beyond this many bytes.
      progress: called with (fraction of the source read, images decoded)
        while decoding; default: a log line every 10 %.

    Raises:
      ValueError: one line naming the problem (and the member, if one).
    """
    path = os.path.expanduser(os.fspath(path))
    if not os.path.exists(path):
        raise ValueError(f"image folder {path}: no such file or folder")
    if not is_image_folder(path):
        raise ValueError(f"{path}: not an image-folder dataset (a folder with train/ and test/, "
                         f"or a {', '.join(archives.ARCHIVE_SUFFIXES)} archive of one)")
    if resize is not None and not (len(resize) == 2 and all(int(x) >= 1 for x in resize)):
        raise ValueError(f"resize must be (height, width) >= 1, got {resize}")
    digest = _source_digest(path)
    cache = os.path.join(os.fspath(cache_dir or default_cache_dir()),
                         f"{digest[:32]}-{'x'.join(map(str, resize)) if resize else 'native'}"
                         f"-v{_CACHE_VERSION}.npz")
    source = f"{path} (sha256 {digest[:16]}…)"
    cached = _read_cache(cache, source)
    if cached is not None:
        return cached
    start = time.time()
    folder = _decode(path, resize, max_bytes, progress or _log_progress(path))
    folder = folder._replace(source=source)
    _write_cache(cache, folder)
    _log.info("%s: %d + %d images decoded in %.0f s, cached in %s", path,
              len(folder.train_labels), len(folder.test_labels), time.time() - start, cache)
    return folder


def _source_digest(path: str) -> str:
    h = hashlib.sha256()
    if os.path.isfile(path):
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    for root, dirs, files in os.walk(path, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            info = os.lstat(full)
            h.update(f"{os.path.relpath(full, path)}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _log_progress(path: str) -> Callable[[float, int], None]:
    shown = [0]

    def report(fraction: float, images: int) -> None:
        tenth = int(fraction * 10)
        if tenth > shown[0]:
            shown[0] = tenth
            _log.info("%s: decoding, %d %% read, %d images", path, 10 * tenth, images)
    return report


class _Refused(ValueError):
    """An image refused before decoding (its message is final)."""


class _Decoded(NamedTuple):
    split: str
    class_name: str
    name: str
    pixels: np.ndarray


def _layout(name: str, root: list[str | None], where: str) -> tuple[str, str] | None:
    """(split, class) of a member path, or None if it is not under a split.
    `root` holds the archive's single top-level folder once seen."""
    parts = name.split("/")
    if root[0] is None and parts[0] not in SPLITS and len(parts) > 1 and parts[1] in SPLITS:
        root[0] = parts[0]
    if root[0] is not None:
        if parts[0] != root[0]:
            return None
        parts = parts[1:]
    if not parts or parts[0] not in SPLITS:
        return None
    if len(parts) < 3:
        if len(parts) == 2 and parts[1].lower().endswith(IMAGE_SUFFIXES):
            raise ValueError(f"{where}: {name} is not inside a class folder ({parts[0]}/<class>/)")
        return None
    return parts[0], parts[1]


def _decode(path: str, resize, max_bytes: int, progress) -> ImageFolder:
    directories: set[str] = set()
    decoded: list[_Decoded] = []
    root: list[str | None] = [None]
    shape: list[tuple[int, ...] | None] = [None]
    mode: list[str | None] = [None]
    budget = [max_bytes]
    for member in archives.members(path, max_bytes, MAX_MEMBER_BYTES, directories,
                                   lambda f: progress(f, len(decoded))):
        where = _layout(member.name, root, path)
        if where is None or not member.name.lower().endswith(IMAGE_SUFFIXES):
            continue
        pixels = _decode_image(member.read(), member.name, path, resize, shape, mode)
        budget[0] -= pixels.nbytes
        if budget[0] < 0:
            raise ValueError(f"{path}: the decoded images exceed {max_bytes:,} bytes; refusing it.")
        decoded.append(_Decoded(*where, member.name, pixels))
    return _assemble(path, decoded, directories, root[0])


def _decode_image(content: bytes, name: str, where: str, resize, shape, mode) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(content), formats=("JPEG", "PNG")) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise _Refused(f"{where}: {name} is {width}×{height}, larger than the "
                                   f"{MAX_PIXELS:,} pixels allowed; refusing it.")
                if mode[0] is None:
                    mode[0] = "L" if image.mode in ("1", "L", "I;16", "I") else "RGB"
                image = image.convert(mode[0])
                if resize is not None and (height, width) != tuple(resize):
                    image = image.resize((resize[1], resize[0]), Image.BILINEAR)
                pixels = np.asarray(image, np.uint8)
    except _Refused:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"{where}: {name} is larger than the {MAX_PIXELS:,} pixels allowed "
                         f"({e}); refusing it.") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ValueError(f"{where}: {name} is not a readable JPEG or PNG image ({e}).") from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if shape[0] is None:
        shape[0] = pixels.shape
    elif pixels.shape != shape[0]:
        raise ValueError(
            f"{where}: {name} is {pixels.shape[1]}×{pixels.shape[0]}, the first image was "
            f"{shape[0][1]}×{shape[0][0]}; images must share one size (or pass resize)")
    return pixels


def _assemble(path: str, decoded: list[_Decoded], directories: set[str], root: str | None
              ) -> ImageFolder:
    prefix = f"{root}/" if root else ""
    classes = {s: set() for s in SPLITS}
    for d in directories:  # class folders, including empty ones
        parts = d[len(prefix):].split("/") if d.startswith(prefix) else []
        if len(parts) == 2 and parts[0] in SPLITS:
            classes[parts[0]].add(parts[1])
    counts = {s: {} for s in SPLITS}
    for item in decoded:
        classes[item.split].add(item.class_name)
        counts[item.split][item.class_name] = counts[item.split].get(item.class_name, 0) + 1
    if not classes["train"]:
        raise ValueError(f"{path}: no train/<class>/ images (JPEG or PNG) found")
    for split in SPLITS:
        empty = sorted(c for c in classes[split] if not counts[split].get(c))
        if empty:
            raise ValueError(f"{path}: class folder(s) {empty} of {split}/ hold no JPEG or PNG image")
    if classes["train"] != classes["test"]:
        raise ValueError(
            f"{path}: train/ and test/ have different classes: only in train "
            f"{sorted(classes['train'] - classes['test'])}, only in test "
            f"{sorted(classes['test'] - classes['train'])}")
    names = tuple(sorted(classes["train"]))
    index = {c: i for i, c in enumerate(names)}
    decoded.sort(key=lambda d: (d.split, d.class_name, d.name))
    arrays = {}
    for split in SPLITS:
        items = [d for d in decoded if d.split == split]
        arrays[f"{split}_images"] = np.stack([d.pixels for d in items])
        arrays[f"{split}_labels"] = np.asarray([index[d.class_name] for d in items], np.int32)
    return ImageFolder(arrays["train_images"], arrays["train_labels"], arrays["test_images"],
                       arrays["test_labels"], names, "")


def _read_cache(cache: str, source: str) -> ImageFolder | None:
    if not os.path.exists(cache):
        return None
    try:
        with np.load(cache, allow_pickle=False) as f:
            folder = ImageFolder(f["train_images"], f["train_labels"], f["test_images"],
                                 f["test_labels"], tuple(str(c) for c in f["class_names"]), source)
    except (OSError, ValueError, KeyError, EOFError) as e:
        _log.warning("ignoring the damaged cache %s (%s); decoding again", cache, e)
        return None
    ok = (folder.train_images.dtype == np.uint8 and folder.train_images.ndim == 4
          and folder.test_images.shape[1:] == folder.train_images.shape[1:]
          and len(folder.train_labels) == len(folder.train_images)
          and len(folder.test_labels) == len(folder.test_images))
    if not ok:
        _log.warning("ignoring the inconsistent cache %s; decoding again", cache)
        return None
    _log.info("image folder from the cache %s", cache)
    return folder


def _write_cache(cache: str, folder: ImageFolder) -> None:
    try:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(cache), prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, train_images=folder.train_images, train_labels=folder.train_labels,
                         test_images=folder.test_images, test_labels=folder.test_labels,
                         class_names=np.asarray(folder.class_names))
            os.replace(tmp, cache)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:  # a read-only cache folder costs time, not the run
        _log.warning("could not cache the decoded images in %s (%s)", cache, e)

"""Tests of kpjax.data.image_folder and kpjax.data.archives on tiny folders and archives
made here (PNG is lossless, so decoded pixels are known exactly)."""

import io
import os
import struct
import tarfile
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from kpjax import data
from kpjax.data import image_folder

CLASSES = ("cat", "ant", "bee")  # sorted: ant 0, bee 1, cat 2


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def jpeg(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=95)
    return out.getvalue()


def example_files(classes=CLASSES, per_class=(2, 1), size=(6, 5)):
    """{member path: bytes} and the expected arrays, in (split, class, name) order."""
    rng = np.random.default_rng(0)
    files, expected = {}, {"train": [], "test": []}
    for split, count in zip(("train", "test"), per_class):
        for c in sorted(classes):
            for i in range(count):
                pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
                files[f"{split}/{c}/{i:03d}.png"] = png(pixels)
                expected[split].append((pixels, sorted(classes).index(c)))
    return files, expected


def write_folder(root, files):
    for name, content in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content)
    return root


def write_tar(path, files, mode="w:gz", extra=()):
    with tarfile.open(path, mode) as tar:
        for name, content in reversed(list(files.items())):  # storage order ≠ sorted order
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


def write_zip(path, files):
    with zipfile.ZipFile(path, "w") as z:
        for name, content in files.items():
            z.writestr(name, content)
    return path


def check(folder, expected):
    assert folder.class_names == ("ant", "bee", "cat")
    for split in ("train", "test"):
        images = getattr(folder, f"{split}_images")
        labels = getattr(folder, f"{split}_labels")
        assert images.dtype == np.uint8 and labels.dtype == np.int32
        np.testing.assert_array_equal(images, np.stack([p for p, _ in expected[split]]))
        np.testing.assert_array_equal(labels, [c for _, c in expected[split]])


@pytest.mark.parametrize("form", ["folder", "tar", "tar.gz", "zip", "tar.gz under a root folder"])
def test_folders_and_archives_load_to_the_same_arrays(tmp_path, form):
    files, expected = example_files()
    if form == "folder":
        source = write_folder(str(tmp_path / "data"), files)
    elif form == "tar":
        source = write_tar(str(tmp_path / "d.tar"), files, mode="w")
    elif form == "tar.gz":
        source = write_tar(str(tmp_path / "d.tar.gz"), files)
    elif form == "zip":
        source = write_zip(str(tmp_path / "d.zip"), files)
    else:
        source = write_tar(str(tmp_path / "d.tgz"), {f"mydata/{k}": v for k, v in files.items()})
    folder = image_folder.load(source, cache_dir=tmp_path / "cache")
    check(folder, expected)
    assert source in folder.source


def test_jpeg_and_grayscale(tmp_path):
    rng = np.random.default_rng(1)
    gray = {f"{s}/{c}/0.png": png(rng.integers(0, 256, (4, 4), dtype=np.uint8))
            for s in ("train", "test") for c in ("a", "b")}
    folder = image_folder.load(write_zip(str(tmp_path / "g.zip"), gray), cache_dir=tmp_path)
    assert folder.train_images.shape == (2, 4, 4, 1)
    smooth = np.tile(np.linspace(0, 255, 16, dtype=np.uint8)[None, :, None], (16, 1, 3))
    files = {f"{s}/{c}/0.jpg": jpeg(smooth) for s in ("train", "test") for c in ("a", "b")}
    folder = image_folder.load(write_tar(str(tmp_path / "j.tar.gz"), files), cache_dir=tmp_path)
    assert folder.train_images.shape == (2, 16, 16, 3)
    assert np.abs(folder.train_images.astype(int) - smooth).max() <= 8  # JPEG, quality 95


def tar_info(name, kind, size=0, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, linkname
    return info


@pytest.mark.parametrize("member, message", [
    (tar_info("/etc/passwd", tarfile.REGTYPE, 1), "absolute path"),
    (tar_info("train/../../evil.png", tarfile.REGTYPE, 1), r"outside the archive \(\.\.\)"),
    (tar_info("train/ant/link.png", tarfile.SYMTYPE, linkname="/etc/passwd"), "is a link"),
    (tar_info("train/ant/hard.png", tarfile.LNKTYPE, linkname="train/ant/000.png"), "is a link"),
    (tar_info("train/ant/dev", tarfile.CHRTYPE), "device or special file"),
    (tar_info("train/ant/fifo", tarfile.FIFOTYPE), "device or special file"),
])
def test_hostile_tar_members_are_refused(tmp_path, member, message):
    files, _ = example_files()
    source = write_tar(str(tmp_path / "h.tar.gz"), files, extra=[member])
    with pytest.raises(ValueError, match=message):
        image_folder.load(source, cache_dir=tmp_path / "cache")
    assert not os.path.exists("/tmp/evil.png")


def test_hostile_zip_members_are_refused(tmp_path):
    files, _ = example_files()
    for name, message in (("../evil.png", "outside the archive"), ("/abs.png", "absolute path")):
        path = tmp_path / "h.zip"
        with zipfile.ZipFile(path, "w") as z:
            for k, v in files.items():
                z.writestr(k, v)
            z.writestr(zipfile.ZipInfo(name), b"x")
        with pytest.raises(ValueError, match=message):
            image_folder.load(str(path), cache_dir=tmp_path / "cache")
    link = zipfile.ZipInfo("train/ant/link.png")
    link.external_attr = (0o120777 << 16)
    with zipfile.ZipFile(path, "w") as z:
        for k, v in files.items():
            z.writestr(k, v)
        z.writestr(link, "/etc/passwd")
    with pytest.raises(ValueError, match="is a link"):
        image_folder.load(str(path), cache_dir=tmp_path / "cache")


def test_a_link_in_a_folder_is_refused(tmp_path):
    files, _ = example_files()
    root = write_folder(str(tmp_path / "data"), files)
    os.symlink("/etc/passwd", os.path.join(root, "train", "ant", "x.png"))
    with pytest.raises(ValueError, match="is a link"):
        image_folder.load(root, cache_dir=tmp_path / "cache")


def test_bombs_are_refused_before_they_inflate(tmp_path):
    files, _ = example_files()
    def bomb(size):  # a member of `size` zero bytes: gzip shrinks it ~1000×
        with tarfile.open(tmp_path / "bomb.tar.gz", "w:gz") as tar:
            for name, content in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            info = tarfile.TarInfo("train/ant/big.png")
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
        assert os.path.getsize(tmp_path / "bomb.tar.gz") < 1 << 20
        return str(tmp_path / "bomb.tar.gz")
    with pytest.raises(ValueError, match="more than the .* allowed for one file"):
        image_folder.load(bomb(100 << 20), cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="inflates beyond 1,048,576 bytes"):
        image_folder.load(bomb(2 << 20), cache_dir=tmp_path / "cache", max_bytes=1 << 20)
    # PNGs whose headers claim 30000×30000 and 5000×5000 pixels are refused from
    # the header (by Pillow's bomb check, resp. kpjax's pixel limit).
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    for side, message in ((30000, "huge.png is larger than the 16,777,216 pixels allowed"),
                          (5000, "huge.png is 5000×5000, larger than the 16,777,216 pixels")):
        header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
        files["train/ant/huge.png"] = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                                       + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
        with pytest.raises(ValueError, match=message):
            image_folder.load(write_zip(str(tmp_path / "huge.zip"), files), cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("change, message", [
    (lambda f: f.update({"train/ant/bad.png": b"\x89PNG\r\n\x1a\nnot really"}), "bad.png is not a readable"),
    (lambda f: f.update({"train/ant/000.png": png(np.zeros((7, 7, 3), np.uint8))}),
     "images must share one size"),
    (lambda f: [f.pop(k) for k in list(f) if k.startswith("test/cat/")], "different classes"),
    (lambda f: f.update({"train/x.png": png(np.zeros((6, 5, 3), np.uint8))}), "not inside a class folder"),
    (lambda f: [f.pop(k) for k in list(f) if k.startswith("train/")], "no train/<class>/ images"),
])
def test_bad_datasets_get_one_clear_error(tmp_path, change, message):
    files, _ = example_files()
    change(files)
    with pytest.raises(ValueError, match=message):
        image_folder.load(write_zip(str(tmp_path / "b.zip"), files), cache_dir=tmp_path / "cache")


def test_an_empty_class_folder_is_an_error(tmp_path):
    files, _ = example_files()
    root = write_folder(str(tmp_path / "data"), files)
    os.makedirs(os.path.join(root, "train", "dog"))
    os.makedirs(os.path.join(root, "test", "dog"))
    with pytest.raises(ValueError, match=r"\['dog'\] of train/ hold no JPEG or PNG"):
        image_folder.load(root, cache_dir=tmp_path / "cache")


def test_resize_on_request(tmp_path):
    files, _ = example_files()
    files["train/ant/big.png"] = png(np.full((12, 10, 3), 7, np.uint8))
    folder = image_folder.load(write_zip(str(tmp_path / "r.zip"), files), resize=(6, 5),
                               cache_dir=tmp_path / "cache")
    assert folder.train_images.shape[1:] == (6, 5, 3)
    assert np.all(folder.train_images[2] == 7)  # train/ant/big.png sorts after 000, 001


def test_the_cache_is_reused_and_invalidated_when_the_archive_changes(tmp_path, monkeypatch):
    files, expected = example_files()
    source = write_tar(str(tmp_path / "c.tar.gz"), files)
    cache = tmp_path / "cache"
    check(image_folder.load(source, cache_dir=cache), expected)
    assert len(list(cache.glob("*.npz"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")
    with monkeypatch.context() as m:
        m.setattr(image_folder.Image, "open", no_decoding)
        check(image_folder.load(source, cache_dir=cache), expected)
    # Another archive at the same path: a new key, decoded again.
    files2, expected2 = example_files(per_class=(1, 1))
    write_tar(source, files2)
    check(image_folder.load(source, cache_dir=cache), expected2)
    assert len(list(cache.glob("*.npz"))) == 2
    # A damaged cache file is decoded again, not trusted.
    for f in cache.glob("*.npz"):
        f.write_bytes(b"garbage")
    check(image_folder.load(source, cache_dir=cache), expected2)


def test_the_cifar10_loader_and_imagefolder_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    files, expected = example_files(classes=data.CIFAR10_CLASSES, per_class=(1, 1), size=(32, 32))
    source = write_tar(str(tmp_path / "cifar-jpeg.tar.gz"), files)
    data.check_available("cifar10", source)
    dataset = data.load_dataset("cifar10", source)
    assert dataset.name == "cifar10" and dataset.num_classes == 10
    assert dataset.train_images.shape == (10, 32, 32, 3)
    np.testing.assert_array_equal(dataset.train_labels, np.arange(10))
    assert "image folder" in dataset.source and source in dataset.source
    generic = data.load_dataset("imagefolder", source)
    np.testing.assert_array_equal(generic.test_images, dataset.test_images)
    assert data.image_folder_spec(source) == ((32, 32, 3), 10)
    # Other class names are not CIFAR-10.
    other, _ = example_files(size=(32, 32))
    with pytest.raises(ValueError, match="not CIFAR-10's"):
        data.load_dataset("cifar10", write_zip(str(tmp_path / "o.zip"), other))
    with pytest.raises(data.DataNotFoundError, match="needs --data_dir"):
        data.load_dataset("imagefolder", str(tmp_path / "missing"))


@pytest.mark.parametrize("suffix", ["tar.gz", "zip"])
def test_a_truncated_archive_is_one_clear_error(tmp_path, suffix):
    files, _ = example_files()
    path = str(tmp_path / f"t.{suffix}")
    (write_zip if suffix == "zip" else write_tar)(path, files)
    content = open(path, "rb").read()
    open(path, "wb").write(content[: len(content) // 2])
    with pytest.raises(ValueError, match="corrupt"):
        image_folder.load(path, cache_dir=tmp_path / "cache")

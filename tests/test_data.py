"""Tests for kpjax.data: parsers, checksums, synthetic data, batching, preprocessing."""

import gzip
import hashlib
import importlib.resources
import io
import itertools
import pickle
import struct
import tarfile
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kpjax import data
from kpjax.data import sources

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# From shared/data/README.md: sha256 of the uncompressed original IDX files.
MNIST_IDX_SHA256 = {
    "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file: 0x0000, type 0x08 (uint8), ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture(scope="module")
def mnist():
    with warnings.catch_warnings():
        warnings.simplefilter("error", data.UnverifiedDataWarning)
        return data.load_dataset("mnist")


# ----------------------------------------------------------------------------
# MNIST / IDX.


def test_embedded_mnist_shapes_and_labels(mnist):
    assert mnist.name == "mnist" and mnist.num_classes == 10
    assert mnist.train_images.shape == (60000, 28, 28, 1)
    assert mnist.test_images.shape == (10000, 28, 28, 1)
    assert mnist.train_images.dtype == np.uint8 and mnist.test_images.dtype == np.uint8
    assert mnist.train_labels.shape == (60000,) and mnist.test_labels.shape == (10000,)
    assert mnist.train_labels.dtype == np.int32 and mnist.test_labels.dtype == np.int32
    for labels in (mnist.train_labels, mnist.test_labels):
        np.testing.assert_array_equal(np.unique(labels), np.arange(10))
    # Known MNIST facts: 5923 zeros in train; images use the full range.
    assert np.sum(mnist.train_labels == 0) == 5923
    assert mnist.train_images.min() == 0 and mnist.train_images.max() == 255


def test_embedded_mnist_uncompressed_sha256_matches_readme():
    package_dir = importlib.resources.files("kpjax") / "mnist_data"
    for filename, expected in MNIST_IDX_SHA256.items():
        content = gzip.decompress((package_dir / filename).read_bytes())
        assert hashlib.sha256(content).hexdigest() == expected, filename


def test_embedded_mnist_equals_parsed_content(mnist):
    package_dir = importlib.resources.files("kpjax") / "mnist_data"
    raw = gzip.decompress((package_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    # IDX label file: 8-byte header, then one byte per label.
    np.testing.assert_array_equal(mnist.test_labels, np.frombuffer(raw[8:], np.uint8))


def test_shared_mnist_dir_matches_embedded(mnist):
    mnist_dir = SHARED_DATA / "mnist"
    if not mnist_dir.is_dir():
        pytest.skip(f"../shared/data not found: {mnist_dir} is missing")
    with warnings.catch_warnings():
        warnings.simplefilter("error", data.UnverifiedDataWarning)
        loaded = data.load_dataset("mnist", data_dir=mnist_dir)
    for a, b in zip(loaded[1:5], mnist[1:5]):
        np.testing.assert_array_equal(a, b)


def test_parse_idx_round_trip_plain_and_gzipped():
    array = np.random.default_rng(0).integers(0, 256, (3, 4, 5)).astype(np.uint8)
    content = idx_bytes(array)
    np.testing.assert_array_equal(data.parse_idx(content), array)
    np.testing.assert_array_equal(data.parse_idx(gzip.compress(content)), array)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c[:-1], "truncated"),
        (lambda c: c + b"\x00", "trailing"),
        (lambda c: c[:6], "truncated IDX header"),
        (lambda c: b"\x01\x02" + c[2:], "not an IDX file"),
        (lambda c: c[:2] + b"\x0d" + c[3:], "not supported"),
        (lambda c: b"", "not an IDX file"),
        (lambda c: gzip.compress(c)[:-10], "gzip"),
        (lambda c: gzip.compress(c)[:12] + b"garbage" * 3, "gzip"),
    ],
)
def test_parse_idx_rejects_corrupt_content(mutate, message):
    content = idx_bytes(np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(ValueError, match=message):
        data.parse_idx(mutate(content), "some.idx")


def write_tiny_mnist(directory: Path, gzipped: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(6) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28)),
        "t10k-labels-idx1-ubyte": np.array([9, 0, 4]),
    }
    for name, array in arrays.items():
        content = idx_bytes(array)
        if gzipped:
            (directory / (name + ".gz")).write_bytes(gzip.compress(content))
        else:
            (directory / name).write_bytes(content)
    return arrays


@pytest.mark.parametrize("gzipped", [True, False])
def test_mnist_from_data_dir_warns_on_unknown_checksum(tmp_path, gzipped):
    arrays = write_tiny_mnist(tmp_path, gzipped)
    with pytest.warns(data.UnverifiedDataWarning, match="differs from the original"):
        ds = data.load_dataset("mnist", data_dir=tmp_path)
    np.testing.assert_array_equal(ds.train_images[..., 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.test_labels, [9, 0, 4])
    assert ds.train_images.shape == (6, 28, 28, 1) and ds.train_labels.dtype == np.int32


def test_mnist_truncated_file_in_data_dir_is_a_clear_error(tmp_path):
    write_tiny_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-5]))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz.*truncated"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", data.UnverifiedDataWarning)
            data.load_dataset("mnist", data_dir=tmp_path)


def test_mnist_label_out_of_range_is_an_error(tmp_path):
    write_tiny_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.array([1, 2, 10]))))
    with pytest.raises(ValueError, match="labels outside"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", data.UnverifiedDataWarning)
            data.load_dataset("mnist", data_dir=tmp_path)


# ----------------------------------------------------------------------------
# CIFAR-10, on archives generated here.

CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def tiny_cifar_batches(records_per_batch=3):
    """{batch: (images CHW uint8 (n, 3, 32, 32), labels (n,))}, all distinct."""
    rng = np.random.default_rng(2)
    return {
        name: (rng.integers(0, 256, (records_per_batch, 3, 32, 32)).astype(np.uint8),
               rng.integers(0, 10, records_per_batch))
        for name in CIFAR_BATCHES
    }


def write_tar_gz(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))


def write_cifar_binary(path: Path, batches) -> None:
    members = {}
    for name, (images, labels) in batches.items():
        records = np.concatenate(
            [labels.astype(np.uint8)[:, None], images.reshape(len(images), -1)], axis=1)
        members[f"cifar-10-batches-bin/{name}.bin"] = records.tobytes()
    write_tar_gz(path, members)


def py2_cifar_pickle(images, labels) -> bytes:
    """A batch pickle as in the original archive: protocol 2 written by Python 2.

    Python 2 strings are SHORT_BINSTRING/BINSTRING opcodes (bytes when loaded
    with encoding="bytes"), and the array is rebuilt by
    numpy.core.multiarray._reconstruct, numpy.ndarray and numpy.dtype.
    """
    flat = images.reshape(len(images), -1)
    n, d = flat.shape
    dtype = (b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R"
             b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
             b"(K\x01M" + struct.pack("<H", n) + b"M" + struct.pack("<H", d) + b"\x86"
             + dtype + b"\x89T" + struct.pack("<I", flat.size) + flat.tobytes() + b"tb")
    label_list = b"](" + b"".join(b"K" + bytes([int(v)]) for v in labels) + b"e"
    return (b"\x80\x02}(U\x04data" + array + b"U\x06labels" + label_list
            + b"U\x0bbatch_labelU\x04tinyu.")


def py3_cifar_pickle(images, labels, numpy_module) -> bytes:
    """A batch pickle written by Python 3 / NumPy 2, naming `numpy_module`."""
    batch = {b"batch_label": b"tiny", b"labels": [int(v) for v in labels],
             b"data": images.reshape(len(images), -1), b"filenames": [b"x.png"] * len(labels)}
    content = pickle.dumps(batch, protocol=3)
    return content.replace(b"numpy._core.multiarray\n", numpy_module.encode() + b"\n")


def cifar_pickle(images, labels, style: str) -> bytes:
    if style == "python2":
        return py2_cifar_pickle(images, labels)
    return py3_cifar_pickle(images, labels, style)


def write_cifar_python(path: Path, batches, style="python2") -> None:
    write_tar_gz(path, {
        f"cifar-10-batches-py/{name}": cifar_pickle(images, labels, style)
        for name, (images, labels) in batches.items()
    })


def assert_cifar_matches(ds, batches):
    train = [batches[n] for n in CIFAR_BATCHES[:5]]
    expected_train = np.concatenate([images for images, _ in train]).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(ds.train_images, expected_train)
    np.testing.assert_array_equal(ds.train_labels,
                                  np.concatenate([labels for _, labels in train]))
    np.testing.assert_array_equal(ds.test_images, batches["test_batch"][0].transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(ds.test_labels, batches["test_batch"][1])
    assert ds.name == "cifar10" and ds.num_classes == 10
    assert ds.train_images.shape == (15, 32, 32, 3) and ds.train_images.dtype == np.uint8
    assert ds.train_labels.dtype == np.int32


def test_cifar_binary_archive_read_back_exactly(tmp_path):
    batches = tiny_cifar_batches()
    write_cifar_binary(tmp_path / "cifar-10-binary.tar.gz", batches)
    with pytest.warns(data.UnverifiedDataWarning, match="cifar-10-binary.tar.gz"):
        ds = data.load_dataset("cifar10", data_dir=tmp_path)
    assert_cifar_matches(ds, batches)
    # CHW -> HWC: channel c of pixel (h, w) is byte 1 + c*1024 + h*32 + w of a record.
    images, _ = batches["test_batch"]
    assert ds.test_images[1, 5, 7, 2] == images[1].reshape(-1)[2 * 1024 + 5 * 32 + 7]


@pytest.mark.parametrize("style", ["python2", "numpy.core.multiarray", "numpy._core.multiarray"])
def test_cifar_python_archive_read_back_exactly(tmp_path, style):
    batches = tiny_cifar_batches()
    write_cifar_python(tmp_path / "cifar-10-python.tar.gz", batches, style)
    with pytest.warns(data.UnverifiedDataWarning, match="cifar-10-python.tar.gz"):
        ds = data.load_dataset("cifar10", data_dir=tmp_path)
    assert_cifar_matches(ds, batches)


def test_cifar_binary_archive_preferred_over_python(tmp_path):
    batches = tiny_cifar_batches()
    write_cifar_binary(tmp_path / "cifar-10-binary.tar.gz", batches)
    other = tiny_cifar_batches(records_per_batch=2)
    write_cifar_python(tmp_path / "cifar-10-python.tar.gz", other)
    with pytest.warns(data.UnverifiedDataWarning):
        ds = data.load_dataset("cifar10", data_dir=tmp_path)
    assert len(ds.test_images) == 3


def test_cifar_archive_missing_member_or_bad_record_size(tmp_path):
    batches = tiny_cifar_batches()
    del batches["data_batch_3"]
    write_cifar_binary(tmp_path / "cifar-10-binary.tar.gz", batches)
    with pytest.warns(data.UnverifiedDataWarning), pytest.raises(
            ValueError, match="lacks cifar-10-batches-bin/data_batch_3.bin"):
        data.load_dataset("cifar10", data_dir=tmp_path)

    write_tar_gz(tmp_path / "cifar-10-binary.tar.gz", {
        f"cifar-10-batches-bin/{name}.bin": bytes(3073 * 2 - 1) for name in CIFAR_BATCHES})
    with pytest.warns(data.UnverifiedDataWarning), pytest.raises(
            ValueError, match="not a multiple"):
        data.load_dataset("cifar10", data_dir=tmp_path)


def test_cifar_truncated_archive_is_a_clear_error(tmp_path):
    path = tmp_path / "cifar-10-binary.tar.gz"
    write_cifar_binary(path, tiny_cifar_batches())
    path.write_bytes(path.read_bytes()[:200])
    with pytest.warns(data.UnverifiedDataWarning), pytest.raises(
            ValueError, match="corrupt or truncated archive"):
        data.load_dataset("cifar10", data_dir=tmp_path)


def test_restricted_unpickler_allows_arrays_and_builtins():
    value = {b"data": np.arange(12, dtype=np.uint8).reshape(3, 4), b"labels": [1, 2, 3],
             "s": "text", "f": 1.5, "t": (1, None, True)}
    loaded = data.restricted_unpickle(pickle.dumps(value, protocol=3))
    np.testing.assert_array_equal(loaded[b"data"], value[b"data"])
    assert loaded[b"labels"] == [1, 2, 3] and loaded["t"] == (1, None, True)


def test_restricted_unpickler_refuses_os_system(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    with pytest.raises(pickle.UnpicklingError, match="os.system"):
        data.restricted_unpickle(payload)
    # The same payload inside a CIFAR archive: a clear ValueError, nothing run.
    write_tar_gz(tmp_path / "cifar-10-python.tar.gz",
                 {f"cifar-10-batches-py/{name}": payload for name in CIFAR_BATCHES})
    with pytest.warns(data.UnverifiedDataWarning), pytest.raises(
            ValueError, match="refusing to load global os.system"):
        data.load_dataset("cifar10", data_dir=tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    (pickle.dumps([1, 2], protocol=3), "expected a dict"),
    (pickle.dumps({b"data": [1], b"labels": [0]}, protocol=3), "expected uint8 data"),
    (b"\x80\x03}q\x00(", "cannot unpickle"),
])
def test_cifar_python_bad_batch_is_a_clear_error(tmp_path, content, message):
    write_tar_gz(tmp_path / "cifar-10-python.tar.gz",
                 {f"cifar-10-batches-py/{name}": content for name in CIFAR_BATCHES})
    with pytest.warns(data.UnverifiedDataWarning), pytest.raises(ValueError, match=message):
        data.load_dataset("cifar10", data_dir=tmp_path)


def test_restricted_unpickler_refuses_builtins_eval():
    payload = b"cbuiltins\neval\n(S'1+1'\ntR."
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        data.restricted_unpickle(payload)


# ----------------------------------------------------------------------------
# Downloading (the TFDS download manager is replaced by a fake: no network).


class FakeDownloadManager:
    """Records its constructor arguments; 'downloads' from a dict of local files."""

    instances = []
    files = {}
    real_class = None

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        FakeDownloadManager.instances.append(self)

    def download(self, urls):
        self.urls = urls
        return {name: self.files[url] for name, url in urls.items()}


@pytest.fixture
def fake_download_manager(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    FakeDownloadManager.instances = []
    FakeDownloadManager.files = {}
    FakeDownloadManager.real_class = tfds.download.DownloadManager
    monkeypatch.setattr(tfds.download, "DownloadManager", FakeDownloadManager)
    monkeypatch.setattr(sources, "_check_reachable", lambda url, download_dir: None)  # no network
    return FakeDownloadManager


def test_download_cifar10_uses_tfds_with_original_url_and_checksum(tmp_path,
                                                                  fake_download_manager):
    batches = tiny_cifar_batches()
    local = tmp_path / "fetched_archive"
    write_cifar_binary(local, batches)
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
    fake_download_manager.files = {url: str(local)}
    cache = tmp_path / "cache"
    with pytest.warns(data.UnverifiedDataWarning):
        ds = data.load_dataset("cifar10", data_dir=cache, download=True)
    assert_cifar_matches(ds, batches)
    (manager,) = fake_download_manager.instances
    assert manager.urls == {"cifar-10-binary.tar.gz": url}
    assert Path(manager.kwargs["download_dir"]) == cache
    assert manager.kwargs["force_checksums_validation"] is True
    info = manager.kwargs["url_infos"][url]
    assert info.checksum == "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
    assert info.size == 170052171
    # The real download manager accepts these arguments (constructing it is offline).
    fake_download_manager.real_class(**manager.kwargs)


def test_download_mnist_fetches_only_missing_files(tmp_path, fake_download_manager):
    write_tiny_mnist(tmp_path)
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").rename(fetched / "whatever.gz")
    url = "https://storage.googleapis.com/cvdf-datasets/mnist/t10k-labels-idx1-ubyte.gz"
    fake_download_manager.files = {url: str(fetched / "whatever.gz")}
    with pytest.warns(data.UnverifiedDataWarning):
        ds = data.load_dataset("mnist", data_dir=tmp_path, download=True)
    np.testing.assert_array_equal(ds.test_labels, [9, 0, 4])
    (manager,) = fake_download_manager.instances
    assert manager.urls == {"t10k-labels-idx1-ubyte.gz": url}
    info = manager.kwargs["url_infos"][url]
    # The original download's sha256 (docs/DESIGN.md §5 gives it truncated: f7ae60f9…aec6).
    assert info.checksum.startswith("f7ae60f9") and info.checksum.endswith("aec6")


# ----------------------------------------------------------------------------
# Missing data and bad arguments.


def test_missing_cifar_lists_the_ways_to_provide_it(tmp_path):
    for kwargs in ({}, {"data_dir": tmp_path}):
        with pytest.raises(data.DataNotFoundError) as excinfo:
            data.load_dataset("cifar10", **kwargs)
        assert isinstance(excinfo.value, FileNotFoundError)
        message = str(excinfo.value)
        for way in ("data_dir", "cifar-10-binary.tar.gz", "cifar-10-python.tar.gz",
                    "download=True", "--data=synthetic"):
            assert way in message


def test_missing_mnist_files_in_data_dir_are_named(tmp_path):
    write_tiny_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(data.DataNotFoundError,
                       match=r"(?s)train-labels-idx1-ubyte\.gz.*download=True.*synthetic"):
        data.load_dataset("mnist", data_dir=tmp_path)


def test_unknown_dataset_and_misplaced_options():
    with pytest.raises(ValueError, match="known: mnist, cifar10, synthetic"):
        data.load_dataset("imagenet")
    with pytest.raises(ValueError, match="only apply to name='synthetic'"):
        data.load_dataset("mnist", num_train=5)


# ----------------------------------------------------------------------------
# Synthetic data.


@pytest.mark.parametrize("image_shape", [(28, 28, 1), (32, 32, 3)])
def test_synthetic_shapes_and_determinism(image_shape):
    ds = data.load_dataset("synthetic", image_shape=image_shape, num_train=50, num_test=20,
                           seed=3)
    assert ds.name == "synthetic" and ds.num_classes == 10
    assert ds.train_images.shape == (50, *image_shape) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (20, *image_shape)
    assert ds.train_labels.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(ds.train_labels), [5] * 10)
    again = data.load_dataset("synthetic", image_shape=image_shape, num_train=50,
                              num_test=20, seed=3)
    for a, b in zip(ds[1:5], again[1:5]):
        np.testing.assert_array_equal(a, b)
    other = data.synthetic_dataset(image_shape, num_train=50, num_test=20, seed=4)
    assert not np.array_equal(ds.train_images, other.train_images)


def test_synthetic_signal_is_learnable():
    # Nearest class mean (estimated on train) classifies the test set well.
    ds = data.synthetic_dataset((8, 8, 1), num_train=400, num_test=200, num_classes=4,
                                noise=128)
    x_train = ds.train_images.reshape(400, -1).astype(np.float64)
    x_test = ds.test_images.reshape(200, -1).astype(np.float64)
    means = np.stack([x_train[ds.train_labels == c].mean(0) for c in range(4)])
    distances = ((x_test[:, None, :] - means[None]) ** 2).sum(-1)
    assert np.mean(distances.argmin(1) == ds.test_labels) > 0.9


def test_synthetic_without_noise_is_one_template_per_class():
    ds = data.synthetic_dataset((4, 4, 3), num_train=30, num_test=10, num_classes=3, noise=0)
    for c in range(3):
        images = np.concatenate([ds.train_images[ds.train_labels == c],
                                 ds.test_images[ds.test_labels == c]])
        assert (images == images[0]).all()
    assert len({ds.train_images[ds.train_labels == c][0].tobytes() for c in range(3)}) == 3


def test_synthetic_rejects_bad_options():
    with pytest.raises(ValueError, match="image_shape"):
        data.synthetic_dataset((28, 28))
    with pytest.raises(ValueError, match="num_classes"):
        data.synthetic_dataset(num_classes=1)
    with pytest.raises(ValueError, match="noise"):
        data.synthetic_dataset(noise=300)


# ----------------------------------------------------------------------------
# Batching.


def indexed_arrays(n):
    images = np.arange(n, dtype=np.int64).reshape(n, 1, 1, 1) * np.ones((1, 2, 2, 1), np.int64)
    return images, np.arange(n)


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_batches_cover_every_example_once_per_epoch(drop_remainder):
    images, labels = indexed_arrays(103)
    out = list(data.batches(images, labels, 10, seed=0, epoch=1,
                            drop_remainder=drop_remainder))
    assert len(out) == data.num_batches(103, 10, drop_remainder=drop_remainder)
    assert len(out) == (10 if drop_remainder else 11)
    seen = np.concatenate([y for _, y in out])
    for x, y in out:  # images stay paired with their labels
        np.testing.assert_array_equal(x[:, 0, 0, 0], y)
    assert len(np.unique(seen)) == len(seen)
    if drop_remainder:
        assert len(seen) == 100 and all(len(y) == 10 for _, y in out)
    else:
        np.testing.assert_array_equal(np.sort(seen), np.arange(103))
        assert len(out[-1][1]) == 3
    assert not np.array_equal(seen[:50], np.arange(50))  # actually shuffled


def test_batches_deterministic_per_seed_and_epoch():
    images, labels = indexed_arrays(64)

    def order(seed, epoch):
        return np.concatenate([y for _, y in data.batches(images, labels, 16, seed=seed,
                                                          epoch=epoch)])

    np.testing.assert_array_equal(order(0, 0), order(0, 0))
    np.testing.assert_array_equal(order(0, 0),
                                  data.epoch_permutation(64, seed=0, epoch=0))
    assert not np.array_equal(order(0, 0), order(0, 1))
    assert not np.array_equal(order(0, 0), order(1, 0))


def test_batches_without_shuffle_keep_order():
    images, labels = indexed_arrays(25)
    out = list(data.batches(images, labels, 10, seed=0, epoch=0, shuffle=False))
    np.testing.assert_array_equal(np.concatenate([y for _, y in out]), np.arange(25))
    assert [len(y) for _, y in out] == [10, 10, 5]


def test_batches_bad_arguments():
    images, labels = indexed_arrays(10)
    with pytest.raises(ValueError, match="batch_size"):
        list(data.batches(images, labels, 0, seed=0, epoch=0))
    with pytest.raises(ValueError, match="10 images but 9 labels"):
        list(data.batches(images, labels[:9], 4, seed=0, epoch=0))


# ----------------------------------------------------------------------------
# Normalization.


def test_normalization_constants():
    assert data.get_normalization("mnist") == ((0.1307,), (0.3081,))
    assert data.get_normalization("cifar10") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert data.get_normalization("cifar10", "pretrained") == data.get_normalization("cifar10")
    assert data.get_normalization("cifar10", "shrinkbench") == (
        (0.491, 0.482, 0.447), (0.247, 0.243, 0.262))
    with pytest.raises(ValueError, match="variant='imagenet'"):
        data.get_normalization("cifar10", "imagenet")


def test_normalize_values_and_dtype():
    images = np.array([0, 51, 255], np.uint8).reshape(3, 1, 1, 1) * np.ones((1, 2, 2, 3), np.uint8)
    mean, std = data.get_normalization("cifar10")
    out = data.normalize(images, mean, std)
    assert out.dtype == jnp.float32 and out.shape == images.shape
    expected = (np.array([0.0, 0.2, 1.0])[:, None] - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(out[:, 0, 0, :], expected, rtol=1e-6)
    jitted = jax.jit(data.normalize)(images, mean, std)
    np.testing.assert_allclose(jitted, out, rtol=1e-6)
    with pytest.raises(ValueError, match="3 channels"):
        data.normalize(images, (0.1, 0.2), (1.0, 1.0))


def test_normalize_mnist_standardizes_the_training_set(mnist):
    out = np.asarray(data.normalize(mnist.train_images[:20000], *data.get_normalization("mnist")))
    assert abs(out.mean()) < 0.01 and abs(out.std() - 1.0) < 0.02


# ----------------------------------------------------------------------------
# CIFAR augmentation.


def test_augment_shapes_dtypes_and_per_example_randomness():
    rng = jax.random.key(0)
    images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3)).astype(np.uint8)
    out = data.augment_cifar(rng, images)
    assert out.shape == images.shape and out.dtype == jnp.uint8
    out_float = data.augment_cifar(rng, images.astype(np.float32))
    assert out_float.dtype == jnp.float32
    np.testing.assert_array_equal(out_float, np.asarray(out).astype(np.float32))
    np.testing.assert_array_equal(data.augment_cifar(rng, images), out)
    # The same image repeated gets different crops/flips.
    same = np.repeat(images[:1], 16, axis=0)
    out_same = np.asarray(data.augment_cifar(rng, same))
    assert len({o.tobytes() for o in out_same}) > 4
    with pytest.raises(ValueError, match="N, H, W, C"):
        data.augment_cifar(rng, images[0])


def test_augment_is_a_window_of_the_padded_image_possibly_flipped():
    images = np.random.default_rng(1).integers(1, 256, (24, 32, 32, 3)).astype(np.uint8)
    out = np.asarray(data.augment_cifar(jax.random.key(1), images))
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    for image, result in zip(padded, out):
        candidates = [w for dy in range(9) for dx in range(9)
                      for w in (image[dy:dy + 32, dx:dx + 32],
                                image[dy:dy + 32, dx:dx + 32][:, ::-1])]
        assert any(np.array_equal(result, c) for c in candidates)


def test_augment_marked_pixel_moves_by_at_most_4_or_flips():
    n, (row, col) = 2048, (15, 10)
    images = np.zeros((n, 32, 32, 3), np.uint8)
    images[:, row, col, :] = 255
    out = np.asarray(data.augment_cifar(jax.random.key(2), images))
    shifts, flips = [], []
    for result in out:
        rows, cols = np.nonzero(result[..., 0])
        assert len(rows) == 1  # the mark is more than 4 pixels from the border: never cropped away
        np.testing.assert_array_equal(result[rows[0], cols[0]], [255, 255, 255])
        dy = rows[0] - row
        flipped = abs(cols[0] - col) > 4
        dx = (31 - cols[0] if flipped else cols[0]) - col
        assert abs(dy) <= 4 and abs(dx) <= 4
        shifts.append((dy, dx))
        flips.append(flipped)
    dys, dxs = zip(*shifts)
    assert set(dys) == set(range(-4, 5)) and set(dxs) == set(range(-4, 5))
    assert 0.4 < np.mean(flips) < 0.6


def test_batch_stream_resumes_at_any_global_step():
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    labels = np.arange(10, dtype=np.int32)
    full = list(itertools.islice(data.batch_stream(images, labels, 4, seed=3), 9))
    # 3 batches an epoch (4, 4, 2): every epoch visits each example once.
    for e in range(3):
        seen = np.concatenate([b[1] for b in full[3 * e:3 * e + 3]])
        assert sorted(seen) == list(range(10))
    for start in (0, 2, 3, 7):
        resumed = list(itertools.islice(data.batch_stream(images, labels, 4, seed=3, start_step=start), 9 - start))
        for (a, la), (b, lb) in zip(full[start:], resumed):
            np.testing.assert_array_equal(la, lb)
    with pytest.raises(ValueError, match="start_step"):
        next(data.batch_stream(images, labels, 4, seed=0, start_step=-1))


def test_class_balanced_sample_takes_the_first_of_each_class_in_a_seeded_shuffle():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 0, 1])
    images = np.arange(len(labels)) * 10
    x, y = data.class_balanced_sample(images, labels, 2, seed=5)
    order = np.random.default_rng(5).permutation(len(labels))
    expected = [i for k, i in enumerate(order) if sum(labels[j] == labels[i] for j in order[:k]) < 2]
    np.testing.assert_array_equal(x, images[expected])
    np.testing.assert_array_equal(np.bincount(y), [2, 2, 2])
    np.testing.assert_array_equal(y, labels[x // 10])
    with pytest.raises(ValueError, match="class 2 has 3 examples"):
        data.class_balanced_sample(images, labels, 4, seed=0)
    with pytest.raises(ValueError, match="per_class must be >= 1"):
        data.class_balanced_sample(images, labels, 0, seed=0)


def test_check_available_says_what_load_dataset_would(tmp_path):
    data.check_available("mnist")  # the embedded copy
    data.check_available("synthetic")
    data.check_available("cifar10", download=True)  # nothing fetched by a check
    with pytest.raises(data.DataNotFoundError, match="No cifar10 data found"):
        data.check_available("cifar10", tmp_path)
    with pytest.raises(data.DataNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
        data.check_available("mnist", tmp_path)
    with pytest.raises(ValueError, match="Unknown dataset 'svhn'"):
        data.check_available("svhn")
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(b"")
    data.check_available("cifar10", tmp_path)  # present; corruption is load_dataset's to report


def test_download_without_network_fails_at_once_with_one_line(tmp_path, fake_download_manager, monkeypatch):
    monkeypatch.undo()  # the real reachability check, with the connection refused
    monkeypatch.setattr(sources.socket, "create_connection",
                        lambda address, timeout: (_ for _ in ()).throw(OSError("Network is unreachable")))
    start = time.monotonic()
    with pytest.raises(data.DataNotFoundError) as info:
        data.load_dataset("cifar10", data_dir=tmp_path / "cache", download=True)
    message = str(info.value)
    assert "cannot reach www.cs.toronto.edu" in message and str(tmp_path / "cache") in message
    assert "\n" not in message and time.monotonic() - start < 5
    assert not fake_download_manager.instances  # nothing was attempted


def test_a_failing_download_is_one_line(tmp_path, fake_download_manager):
    fake_download_manager.files = {}  # the fake then fails with a KeyError
    with pytest.raises(data.DataNotFoundError, match=r"download of cifar-10-binary.tar.gz into .* failed \(KeyError"):
        data.load_dataset("cifar10", data_dir=tmp_path, download=True)

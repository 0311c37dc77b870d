"""Hostile and broken inputs: each is built here, in the test, and must end in
one clear exception within 5 s and under 200 MB of extra memory, with any
payload never run.

Every case runs in a forked child (`isolated`): a segfault, a hang or a
memory blow-up of the reader then fails the test instead of killing or
stalling the suite. The child measures its own peak RSS above its RSS at
the fork (ru_maxrss against /proc/self/status).
"""

import io
import os
import pickle
import resource
import signal
import struct
import time
import zipfile
import zlib

import numpy as np
import pytest

from kpjax.io import torch_import
from test_torch_import import FakeStorage, FakeTensor, legacy_header, pickle_object, tensor, write, zip_bytes

SECONDS, EXTRA_MB = 5.0, 200

# JAX warns on every fork of its multithreaded process; the child here runs
# only numpy and pickle code (JAX was imported, never called) and _exits.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def isolated(fn):
    """Runs fn() in a forked child; returns (exception type, message, seconds, extra MB)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            start_rss, start = _rss_bytes(), time.monotonic()
            try:
                fn()
                outcome = ("no exception", "")
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                outcome = (type(e).__name__ if isinstance(e, ValueError) else f"not a ValueError: {type(e).__name__}",
                           str(e)[:3000])
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            report = pickle.dumps((*outcome, time.monotonic() - start, (peak - start_rss) / 2**20))
            os.write(write_end, report)
        finally:
            os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + SECONDS + 5
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the reader hung (killed after the deadline)")
        time.sleep(0.01)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    if os.WIFSIGNALED(status):
        pytest.fail(f"the reader crashed with signal {os.WTERMSIG(status)}")
    return pickle.loads(data)


def assert_refused(fn, *fragments):
    kind, message, seconds, extra_mb = isolated(fn)
    assert kind.endswith("Error") and not kind.startswith("not a"), (kind, message)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert seconds < SECONDS, f"took {seconds:.1f} s"
    assert extra_mb < EXTRA_MB, f"used {extra_mb:.0f} MB more"
    assert len(message) < 1000 and "\n" not in message  # one readable line


# ---------------------------------------------------------------------------
# Torch checkpoints.


def legacy_with_object(object_pickle: bytes) -> bytes:
    return legacy_header() + object_pickle


def deep_tuple_as_dict_key(depth: int) -> bytes:
    # {((((...),),),): 1} built with TUPLE1 opcodes: hashing the key recurses
    # `depth` levels on the C stack.
    return b"\x80\x02}" + b")" + b"\x85" * depth + b"K\x01s."


def laughs(levels: int, use: bytes) -> bytes:
    # t0 = (); t_{i+1} = (t_i, t_i) through the memo: < 1 KB, 2^levels nodes.
    out = b"\x80\x02)q\x00"
    for i in range(levels):
        out += b"h" + bytes([i]) + b"h" + bytes([i]) + b"\x86q" + bytes([i + 1])
    return out + use


@pytest.mark.parametrize("case, payload, fragments", [
    ("deep nesting", deep_tuple_as_dict_key(200_000), ("nested deeper than",)),
    ("laughs as a dict key", laughs(60, b"}h<K\x01s."), ("more than",)),  # {t60: 1}
    ("laughs as a storage id", laughs(60, b"Q."), ("more than",)),
])
def test_hostile_pickles_are_refused_before_unpickling(tmp_path, case, payload, fragments):
    path = write(tmp_path, "hostile.pt", legacy_with_object(payload))
    assert os.path.getsize(path) < 2000 or case == "deep nesting"
    assert_refused(lambda: torch_import.load_torch_file(path), str(path), *fragments)


def test_a_stride_zero_view_larger_than_its_storage_is_refused(tmp_path):
    one = FakeStorage("0", np.zeros(1, np.float32))
    view = FakeTensor(one, 0, (300_000_000,), (0,))  # 1.2 GB if copied
    for name, content in (("z.pt", zip_bytes({"w": view})), ("l.pt", _legacy({"w": view}))):
        path = write(tmp_path, name, content)
        assert_refused(lambda: torch_import.load_torch_file(path), "stride 0")


def _legacy(obj):
    from test_torch_import import legacy_bytes
    return legacy_bytes(obj)


def _huge_storage(numel: int) -> FakeStorage:
    storage = FakeStorage.__new__(FakeStorage)  # no allocation: a broadcast view
    storage.key, storage.elements = "0", np.broadcast_to(np.float32(0), (numel,))
    return storage


def test_storages_beyond_the_element_budget_are_refused_before_reading(tmp_path):
    obj = {"w": FakeTensor(_huge_storage(10**10), 0, (10**10,), (1,))}
    object_pickle, _ = pickle_object(obj, legacy=False)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("archive/data.pkl", object_pickle)
        z.writestr("archive/data/0", b"\0" * 4)
    path = write(tmp_path, "big.pt", out.getvalue())
    assert_refused(lambda: torch_import.load_torch_file(path), "more than", "elements")
    # The importer's budget is relative to the target model: a checkpoint 10x
    # larger than the model is refused, whatever the global default.
    small = {"w": tensor("0", np.zeros(100_000, np.float32))}
    path = write(tmp_path, "larger.pt", zip_bytes(small))
    template = {"params": {"w": np.zeros(10, np.float32)}}
    assert_refused(lambda: torch_import.import_torch_checkpoint(path, template), "elements")


def _deflate_bomb_zip(member: str, megabytes: int) -> bytes:
    """A zip whose `member` inflates to `megabytes` MB of zeros (about 1000:1)."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, -15)
    chunk = b"\0" * (1 << 20)
    raw = b"".join(compressor.compress(chunk) for _ in range(megabytes)) + compressor.flush()
    crc = 0
    for _ in range(megabytes):
        crc = zlib.crc32(chunk, crc)
    size = megabytes << 20
    name = member.encode()
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(raw), size, len(name), 0)
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(raw), size,
                          len(name), 0, 0, 0, 0, 0, 0)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central) + len(name),
                      len(local) + len(name) + len(raw), 0)
    return local + name + raw + central + name + end


def test_a_deflate_bomb_is_refused_before_inflating(tmp_path):
    path = write(tmp_path, "bomb.pt", _deflate_bomb_zip("archive/data.pkl", 300))
    assert os.path.getsize(path) < 2 << 20
    assert_refused(lambda: torch_import.load_torch_file(path), "refusing a data.pkl")


def test_path_traversal_and_code_execution_payloads_do_nothing(tmp_path):
    marker = tmp_path / "ran"
    # A storage key that climbs out of the archive names a missing record (the
    # reader never touches the file system beyond the checkpoint).
    traversal = {"w": tensor("../../../etc/passwd", np.zeros(2, np.float32))}
    object_pickle, _ = pickle_object(traversal, legacy=False)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("archive/data.pkl", object_pickle)
    path = write(tmp_path, "traversal.pt", out.getvalue())
    assert_refused(lambda: torch_import.load_torch_file(path), "missing storage record")

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = write(tmp_path, "exec.pt", legacy_with_object(pickle.dumps({"w": Payload()}, protocol=2)))
    assert_refused(lambda: torch_import.load_torch_file(path), "refusing to load global")
    assert not marker.exists()


# ---------------------------------------------------------------------------
# Dataset archives.

import tarfile  # noqa: E402
import warnings  # noqa: E402

from kpjax import data  # noqa: E402
from test_data import CIFAR_BATCHES, py3_cifar_pickle, tiny_cifar_batches, write_tar_gz, write_tiny_mnist  # noqa: E402


def _gzip_bomb(header: bytes, megabytes: int) -> bytes:
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    chunk = b"\0" * (1 << 20)
    return (compressor.compress(header) + b"".join(compressor.compress(chunk) for _ in range(megabytes))
            + compressor.flush())


def _loader(name, directory):
    """load_dataset(name, directory), quiet about unknown checksums (every file here is made up)."""
    def load():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", data.UnverifiedDataWarning)
            data.load_dataset(name, directory)
    return load


def _load_mnist(directory):
    return _loader("mnist", directory)


def _load_cifar(directory):
    return _loader("cifar10", directory)


def test_an_idx_gzip_bomb_is_refused_on_its_header(tmp_path):
    write_tiny_mnist(tmp_path)
    # A header declaring 10^9 images of 28×28, then 300 MB of zeros: 1.3 MB on disk.
    header = b"\0\0\x08\x03" + struct.pack(">III", 10**9, 28, 28)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(_gzip_bomb(header, 300))
    assert_refused(_load_mnist(tmp_path), "train-images-idx3-ubyte.gz", "declares shape (1000000000, 28, 28)")


def test_an_idx_that_inflates_past_its_declared_size_is_refused(tmp_path):
    write_tiny_mnist(tmp_path)
    header = b"\0\0\x08\x01" + struct.pack(">I", 6)  # 6 labels declared, 300 MB follow
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(_gzip_bomb(header, 300))
    assert_refused(_load_mnist(tmp_path), "train-labels-idx1-ubyte.gz", "inflates beyond")


def test_a_cifar_tar_gzip_bomb_is_refused_while_streaming(tmp_path):
    tar_header = tarfile.TarInfo("cifar-10-batches-bin/padding")
    tar_header.size = 300 << 20
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(_gzip_bomb(tar_header.tobuf(), 300))
    assert_refused(_load_cifar(tmp_path), "cifar-10-binary.tar.gz", "inflates beyond")


def test_a_cifar_member_of_the_wrong_size_is_an_error_not_a_warning(tmp_path):
    members = {f"cifar-10-batches-bin/{n}.bin": b"\0" * (3073 * 3) for n in CIFAR_BATCHES}
    members["cifar-10-batches-bin/test_batch.bin"] = b"\0" * (3073 * 10001)
    write_tar_gz(tmp_path / "cifar-10-binary.tar.gz", members)
    assert_refused(_load_cifar(tmp_path), "test_batch.bin has 30,733,073 bytes")


@pytest.mark.parametrize("labels, message", [
    ([0.5, 1.0, 2.0], "labels must be integers"),
    ([[0, 1], [1, 0], [2, 2]], "1-D"),
    ([], "non-empty"),
])
def test_cifar_labels_must_be_a_non_empty_integer_vector(tmp_path, labels, message):
    batches = tiny_cifar_batches()
    members = {}
    for name, (images, good) in batches.items():
        content = py3_cifar_pickle(images, good, "numpy._core.multiarray")
        if name == "test_batch":
            batch = pickle.loads(content)
            batch[b"labels"] = labels
            batch[b"data"] = batch[b"data"][:len(labels)]
            content = pickle.dumps(batch, protocol=3)
        members[f"cifar-10-batches-py/{name}"] = content
    write_tar_gz(tmp_path / "cifar-10-python.tar.gz", members)
    assert_refused(_load_cifar(tmp_path), message)

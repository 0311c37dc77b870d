"""Tests for kpjax.io.torch_import.

Checkpoints are written here without torch: a pickler with persistent ids
emits the same GLOBALs `torch.save` does (stand-in `torch` modules exist only
while pickling). Oracles for the layout mapping are NumPy forward passes
written directly in PyTorch layout (NCHW, OIHW, (out, in), C,H,W flatten).
"""

import collections
import contextlib
import functools
import gzip
import io
import os
from pathlib import Path
import pickle
import sys
import types
from typing import Any, NamedTuple
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kpjax.io import torch_import, torch_pickle
from kpjax.models import get_model

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
STORAGE_CLASSES = {np.dtype(v): k for k, v in torch_pickle.STORAGE_DTYPES.items()}


# ---------------------------------------------------------------------------
# Writing torch.save files without torch.


class FakeTensor(NamedTuple):
    """A tensor as torch pickles it: a view (offset, size, stride) of a storage."""

    storage: "FakeStorage"
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    # How torch.save pickles it: "v2" (torch >= 0.4), "v1" (older: no autograd
    # arguments) or "parameter" (an nn.Parameter around a v2 tensor).
    kind: str = "v2"

    def numpy(self) -> np.ndarray:
        if 0 in self.size:
            return np.empty(self.size, self.storage.elements.dtype)
        itemsize = self.storage.elements.dtype.itemsize
        return np.lib.stride_tricks.as_strided(
            self.storage.elements[self.offset:], self.size,
            tuple(s * itemsize for s in self.stride)).copy()


class FakeStorage:
    def __init__(self, key: str, elements: np.ndarray):
        self.key = key
        self.elements = np.ascontiguousarray(elements).reshape(-1)


def tensor(key: str, array: np.ndarray) -> FakeTensor:
    """A contiguous tensor with its own storage."""
    array = np.array(array, order="C")
    stride = tuple(s // array.itemsize for s in array.strides)
    return FakeTensor(FakeStorage(key, array), 0, array.shape, stride)


@contextlib.contextmanager
def fake_torch_modules():
    """Stand-ins for torch and torch._utils, so that pickle emits their GLOBALs."""
    torch_module = types.ModuleType("torch")
    utils_module = types.ModuleType("torch._utils")
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter"):
        def function(*args):
            raise AssertionError("never called")
        function.__module__, function.__name__, function.__qualname__ = (
            "torch._utils", name, name)
        setattr(utils_module, name, function)
    for name in torch_pickle.STORAGE_DTYPES:
        setattr(torch_module, name, type(name, (), {"__module__": "torch"}))
    torch_module._utils = utils_module
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch_module, "torch._utils": utils_module})
    try:
        yield torch_module, utils_module
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k)
            else:
                sys.modules[k] = v


class TorchLikePickler(pickle.Pickler):
    """Pickles FakeTensors the way torch.save pickles tensors (protocol 2)."""

    def __init__(self, file, legacy: bool, torch_module, utils_module,
                 views: dict[str, tuple[str, int, int]] | None = None):
        super().__init__(file, protocol=2)
        self.legacy = legacy
        self.torch_module = torch_module
        self.utils_module = utils_module
        self.views = views or {}  # storage key -> (root key, offset, root numel)
        self.storages: dict[str, np.ndarray] = {}  # key in the file -> elements

    def reducer_override(self, obj: Any):
        if not isinstance(obj, FakeTensor):
            return NotImplemented
        layout = (obj.storage, obj.offset, obj.size, obj.stride)
        if obj.kind == "v1":
            return (self.utils_module._rebuild_tensor, layout)
        if obj.kind == "parameter":
            return (self.utils_module._rebuild_parameter,
                    (obj._replace(kind="v2"), True, collections.OrderedDict()))
        return (self.utils_module._rebuild_tensor_v2,
                (*layout, False, collections.OrderedDict()))

    def persistent_id(self, obj: Any):
        if not isinstance(obj, FakeStorage):
            return None
        storage_class = getattr(self.torch_module, STORAGE_CLASSES[obj.elements.dtype])
        numel = obj.elements.size
        if obj.key not in self.views:
            self.storages[obj.key] = obj.elements
        if not self.legacy:
            return ("storage", storage_class, obj.key, "cpu", numel)
        if obj.key in self.views:
            root, offset, root_numel = self.views[obj.key]
            return ("storage", storage_class, root, "cuda:0", root_numel,
                    (obj.key, offset, numel))
        return ("storage", storage_class, obj.key, "cuda:0", numel, None)


def pickle_object(obj: Any, legacy: bool, **kwargs) -> tuple[bytes, dict[str, np.ndarray]]:
    buffer = io.BytesIO()
    with fake_torch_modules() as (torch_module, utils_module):
        pickler = TorchLikePickler(buffer, legacy, torch_module, utils_module, **kwargs)
        pickler.dump(obj)
    return buffer.getvalue(), pickler.storages


def legacy_header() -> bytes:
    """The first three records of a legacy file: magic number, version, system info."""
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return b"".join(pickle.dumps(record, protocol=2)
                    for record in (torch_pickle.LEGACY_MAGIC_NUMBER, 1001, sys_info))


def little_endian_bytes(elements: np.ndarray) -> bytes:
    return (elements if sys.byteorder == "little" else elements.byteswap()).tobytes()


def legacy_bytes(obj: Any, storage_data: dict[str, np.ndarray] | None = None,
                 **kwargs) -> bytes:
    """A legacy torch.save stream; `storage_data` adds or replaces storages' elements."""
    object_pickle, storages = pickle_object(obj, legacy=True, **kwargs)
    storages.update(storage_data or {})
    keys = sorted(storages)
    out = io.BytesIO()
    out.write(legacy_header())
    out.write(object_pickle)
    pickle.dump(keys, out, protocol=2)
    for key in keys:
        out.write(little_endian_bytes(np.array([storages[key].size], np.int64)))
        out.write(little_endian_bytes(storages[key]))
    return out.getvalue()


def zip_bytes(obj: Any, byteorder: str | None = "little", folder: str = "archive") -> bytes:
    object_pickle, storages = pickle_object(obj, legacy=False)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{folder}/data.pkl", object_pickle)
        if byteorder is not None:
            archive.writestr(f"{folder}/byteorder", byteorder)
        for key, elements in storages.items():
            if (byteorder or "little") != sys.byteorder:
                elements = elements.byteswap()
            archive.writestr(f"{folder}/data/{key}", elements.tobytes())
        archive.writestr(f"{folder}/version", "3\n")
    return out.getvalue()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def as_numpy(obj: Any) -> Any:
    """The object load_torch_file should return for `obj` (FakeTensors -> arrays)."""
    if isinstance(obj, FakeTensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return type(obj)((k, as_numpy(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(as_numpy(v) for v in obj)
    return obj


def assert_same(actual: Any, expected: Any) -> None:
    assert type(actual) is type(expected), (actual, expected)
    if isinstance(expected, np.ndarray):
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        np.testing.assert_array_equal(actual, expected)
    elif isinstance(expected, dict):
        assert list(actual) == list(expected)
        for k in expected:
            assert_same(actual[k], expected[k])
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert_same(a, e)
    else:
        assert actual == expected


def mixed_checkpoint() -> dict[str, Any]:
    """Tensors of many dtypes and layouts (shared storages, strides, offsets)."""
    rng = np.random.default_rng(0)
    shared = FakeStorage("shared", rng.standard_normal(24).astype(np.float32))
    state_dict = collections.OrderedDict([
            ("matrix", FakeTensor(shared, 0, (4, 6), (6, 1))),
            ("transposed", FakeTensor(shared, 0, (6, 4), (1, 6))),
            ("strided", FakeTensor(shared, 3, (5,), (4,))),
            ("broadcast", FakeTensor(shared, 2, (3, 2), (0, 1))),
            ("scalar", FakeTensor(shared, 23, (), ())),
            ("empty", FakeTensor(shared, 0, (0, 3), (3, 1))),
            ("float64", tensor("f64", rng.standard_normal((2, 3)))),
            ("float16", tensor("f16", rng.standard_normal(5).astype(np.float16))),
            ("bfloat16", tensor("bf16", rng.standard_normal(4).astype(jnp.bfloat16))),
            ("int64", tensor("i64", np.array([-(2 ** 40), 0, 2 ** 62], np.int64))),
            ("int32", tensor("i32", np.arange(6, dtype=np.int32).reshape(2, 3))),
            ("uint8", tensor("u8", np.array([0, 255, 7], np.uint8))),
            ("bool", tensor("b", np.array([True, False, True]))),
            ("complex", tensor("c64", np.array([1 + 2j, -3j], np.complex64))),
            ("parameter", tensor("p", np.ones((2, 2), np.float32))._replace(kind="parameter")),
            ("old_style", tensor("v1", np.arange(4, dtype=np.float32))._replace(kind="v1")),
    ])
    # Module.state_dict() attaches module versions as an attribute (pickled via BUILD).
    state_dict._metadata = collections.OrderedDict([("", {"version": 1})])
    return {"epoch": 7, "arch": "test", "best": 91.5, "flags": [True, None, (1, "x")],
            "state_dict": state_dict}


# ---------------------------------------------------------------------------
# NumPy forward passes in PyTorch layout (the oracles).


def conv2d_nchw(x: np.ndarray, w: np.ndarray, b: np.ndarray | None,
                stride: int = 1, padding: int = 0) -> np.ndarray:
    """torch.nn.functional.conv2d: every output pixel is a patch · kernel product.

    out[n, o, y, x] = b[o] + Σ_{c,i,j} w[o, c, i, j] · x_pad[n, c, s·y + i, s·x + j].
    """
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    patches = np.lib.stride_tricks.sliding_window_view(x, w.shape[2:], axis=(2, 3))
    patches = patches[:, :, ::stride, ::stride]  # (N, C, H_out, W_out, kh, kw)
    out = np.tensordot(patches, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)
    return out if b is None else out + b[None, :, None, None]


def max_pool2_nchw(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def mnistnet_torch_forward(sd: dict[str, np.ndarray], x_nchw: np.ndarray) -> np.ndarray:
    x = max_pool2_nchw(relu(conv2d_nchw(x_nchw, sd["conv1.weight"], sd["conv1.bias"])))
    x = max_pool2_nchw(relu(conv2d_nchw(x, sd["conv2.weight"], sd["conv2.bias"])))
    x = x.reshape(x.shape[0], -1)  # PyTorch's flatten: C, H, W
    x = relu(x @ sd["fc1.weight"].T + sd["fc1.bias"])
    return x @ sd["fc2.weight"].T + sd["fc2.bias"]


def batch_norm_eval_nchw(x: np.ndarray, sd: dict[str, np.ndarray], name: str) -> np.ndarray:
    def channel(v: np.ndarray) -> np.ndarray:
        return v[None, :, None, None]
    scale = channel(sd[f"{name}.weight"]) / np.sqrt(channel(sd[f"{name}.running_var"]) + 1e-5)
    return (x - channel(sd[f"{name}.running_mean"])) * scale + channel(sd[f"{name}.bias"])


def resnet_torch_forward(sd: dict[str, np.ndarray], x_nchw: np.ndarray) -> np.ndarray:
    """akamaster's CIFAR ResNet in eval mode, option-A shortcuts."""
    x = relu(batch_norm_eval_nchw(conv2d_nchw(x_nchw, sd["conv1.weight"], None, 1, 1), sd, "bn1"))
    for stage in (1, 2, 3):
        block = 0
        while f"layer{stage}.{block}.conv1.weight" in sd:
            name = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            y = conv2d_nchw(x, sd[f"{name}.conv1.weight"], None, stride, 1)
            y = relu(batch_norm_eval_nchw(y, sd, f"{name}.bn1"))
            y = batch_norm_eval_nchw(
                conv2d_nchw(y, sd[f"{name}.conv2.weight"], None, 1, 1), sd, f"{name}.bn2")
            planes = y.shape[1]
            shortcut = x
            if stride != 1 or x.shape[1] != planes:
                pad = planes // 4
                shortcut = np.pad(x[:, :, ::2, ::2], ((0, 0), (pad, pad), (0, 0), (0, 0)))
            x = relu(y + shortcut)
            block += 1
    x = x.mean(axis=(2, 3))
    return x @ sd["linear.weight"].T + sd["linear.bias"]


def template(model_name: str, num_classes: int = 10):
    spec = get_model(model_name, num_classes)
    return jax.eval_shape(lambda: spec.module.init(
        jax.random.PRNGKey(0), jnp.zeros((1, *spec.input_shape)), train=False))


def import_as(path, model_name: str, num_classes: int = 10):
    """The checkpoint as variables of a kpjax model (the caller knows the model)."""
    return torch_import.import_torch_checkpoint(
        path, template(model_name, num_classes), get_model(model_name).flattened_inputs)


def random_torch_state_dict(model_name: str, seed: int = 0) -> dict[str, np.ndarray]:
    """A state dict in PyTorch layout and naming for a kpjax model (random values)."""
    rng = np.random.default_rng(seed)
    variables = template(model_name)
    sd = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
        collection, *module, name = [k.key for k in path]
        torch_module = ".".join(m.replace("_", ".") for m in module)
        shape = leaf.shape
        if name == "kernel" and len(shape) == 4:
            shape = (shape[3], shape[2], shape[0], shape[1])
        elif name == "kernel":
            shape = shape[::-1]
        torch_name = {"kernel": "weight", "scale": "weight", "bias": "bias",
                      "mean": "running_mean", "var": "running_var"}[name]
        value = rng.standard_normal(shape).astype(np.float32)
        if name == "var":
            value = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        sd[f"{torch_module}.{torch_name}"] = value
        if name == "var":
            sd[f"{torch_module}.num_batches_tracked"] = np.array(100, np.int64)
    return sd


@functools.cache
def jitted_apply(model_name: str):
    module = get_model(model_name).module
    return jax.jit(lambda variables, x: module.apply(variables, x, train=False))


def apply(model_name: str, variables, x_nchw: np.ndarray) -> np.ndarray:
    x = jnp.asarray(x_nchw.transpose(0, 2, 3, 1), jnp.float32)
    return np.asarray(jitted_apply(model_name)(variables, x))


# ---------------------------------------------------------------------------
# Reading: synthetic files (always run).


@pytest.mark.parametrize("fmt", ["legacy", "zip", "zip-big-endian", "zip-no-byteorder"])
def test_round_trip_of_torch_like_files_is_exact(tmp_path, fmt):
    obj = mixed_checkpoint()
    data = {"legacy": lambda: legacy_bytes(obj),
            "zip": lambda: zip_bytes(obj),
            "zip-big-endian": lambda: zip_bytes(obj, "big", folder="my_model"),
            "zip-no-byteorder": lambda: zip_bytes(obj, None)}[fmt]()
    loaded = torch_import.load_torch_file(write(tmp_path, "ckpt.pt", data))
    assert_same(loaded, as_numpy(obj))
    assert loaded["state_dict"]._metadata == {"": {"version": 1}}
    arrays = loaded["state_dict"]
    assert arrays["transposed"].dtype.isnative and arrays["transposed"].flags.owndata
    assert not np.shares_memory(arrays["matrix"], arrays["transposed"])


def test_legacy_storage_views_read_a_slice_of_their_root(tmp_path):
    root = np.arange(10, dtype=np.float32)
    view_storage = FakeStorage("view", root[4:9])
    obj = {"t": FakeTensor(view_storage, 1, (2, 2), (1, 2))}
    data = legacy_bytes(obj, storage_data={"root": root},
                        views={"view": ("root", 4, root.size)})
    loaded = torch_import.load_torch_file(write(tmp_path, "view.pt", data))
    np.testing.assert_array_equal(loaded["t"], [[5, 7], [6, 8]])


def test_every_truncation_is_a_clear_value_error(tmp_path):
    data = legacy_bytes({"w": tensor("0", np.arange(6, dtype=np.float32)),
                         "b": tensor("1", np.ones(2, np.float64))})
    for length in range(len(data)):
        path = write(tmp_path, "cut.pt", data[:length])
        with pytest.raises(ValueError, match=str(path).replace("\\", "\\\\")):
            torch_import.load_torch_file(path)
    with pytest.raises(ValueError, match=r"truncated: storage 2/2 .*'1'"):
        torch_import.load_torch_file(write(tmp_path, "cut.pt", data[:-1]))


def test_flipped_bytes_fail_with_value_errors_only(tmp_path):
    data = legacy_bytes({"w": tensor("0", np.arange(6, dtype=np.float32))})
    pickle_end = len(data) - (8 + 6 * 4)  # then the storage's count and elements
    errors = 0
    for position in range(pickle_end):
        corrupt = bytearray(data)
        corrupt[position] ^= 0xFF
        try:
            torch_import.load_torch_file(write(tmp_path, "flip.pt", bytes(corrupt)))
        except ValueError as e:
            assert "flip.pt" in str(e)
            errors += 1
    assert errors > pickle_end // 2


def test_flipped_opcode_names_the_record(tmp_path):
    data = bytearray(legacy_bytes({"w": tensor("0", np.zeros(3, np.float32))}))
    object_start = len(legacy_header())
    assert data[object_start:object_start + 2] == b"\x80\x02"  # PROTO 2
    data[object_start + 2] = 0xFF  # an invalid opcode
    with pytest.raises(torch_import.TorchCheckpointError,
                       match=r"bad\.pt: corrupt or truncated saved object"):
        torch_import.load_torch_file(write(tmp_path, "bad.pt", bytes(data)))


def test_storage_count_mismatch_and_bad_layout_are_reported(tmp_path):
    data = legacy_bytes({"w": tensor("0", np.zeros(3, np.float32))},
                        storage_data={"0": np.zeros(4, np.float32)})
    with pytest.raises(ValueError, match=r"element count 4 .* expected 3"):
        torch_import.load_torch_file(write(tmp_path, "count.pt", data))
    storage = FakeStorage("0", np.zeros(3, np.float32))
    data = legacy_bytes({"w": FakeTensor(storage, 1, (3,), (1,))})
    with pytest.raises(ValueError, match=r"reaches element 3 of a storage of 3"):
        torch_import.load_torch_file(write(tmp_path, "oob.pt", data))


class Exploit:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, fmt):
    marker = tmp_path / "pwned"
    obj = {"w": tensor("0", np.zeros(2, np.float32)), "x": Exploit(f"touch {marker}")}
    data = legacy_bytes(obj) if fmt == "legacy" else zip_bytes(obj)
    path = write(tmp_path, "evil.pt", data)
    with pytest.raises(torch_import.UnsafeCheckpointError,
                       match=r"evil\.pt: refusing to load global '(posix|os|nt)\.system'"):
        torch_import.load_torch_file(path)
    assert not marker.exists()


def test_non_checkpoints_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"magic number"):
        torch_import.load_torch_file(write(tmp_path, "p.pkl", pickle.dumps([1, 2])))
    with pytest.raises(ValueError, match=r"corrupt or truncated magic number"):
        torch_import.load_torch_file(write(tmp_path, "t.txt", b"hello world"))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("readme.txt", "no pickle here")
    with pytest.raises(ValueError, match=r"exactly one <folder>/data.pkl"):
        torch_import.load_torch_file(write(tmp_path, "z.pt", archive.getvalue()))
    with pytest.raises(FileNotFoundError):
        torch_import.load_torch_file(tmp_path / "absent.pt")


def test_zip_with_missing_or_short_storage_record(tmp_path):
    data = zip_bytes({"w": tensor("0", np.zeros(3, np.float32))})
    with zipfile.ZipFile(io.BytesIO(data)) as src:
        records = {n: src.read(n) for n in src.namelist()}
    for change, message in [(lambda r: r.pop("archive/data/0"), "missing storage record"),
                            (lambda r: r.update({"archive/data/0": b"\0" * 8}),
                             "declares 8 bytes, expected 3 x float32 = 12")]:
        edited = dict(records)
        change(edited)
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as z:
            for name, content in edited.items():
                z.writestr(name, content)
        with pytest.raises(ValueError, match=message):
            torch_import.load_torch_file(write(tmp_path, "z.pt", out.getvalue()))


def test_state_dict_from_unwraps_and_strips_data_parallel_prefix():
    w = np.ones(2, np.float32)
    assert torch_import.state_dict_from({"state_dict": {"module.a.weight": w},
                                         "best_prec1": 91.78}) == {"a.weight": w}
    assert torch_import.state_dict_from(collections.OrderedDict(x=w)) == {"x": w}
    with pytest.raises(ValueError, match="expected a state dict"):
        torch_import.state_dict_from({"epoch": 3})


# ---------------------------------------------------------------------------
# Mapping: random weights in tiny models against the NumPy oracles (always run).


@pytest.mark.parametrize("model_name, forward, input_shape", [
    ("mnistnet_tiny", mnistnet_torch_forward, (3, 1, 28, 28)),
    ("resnet_tiny", resnet_torch_forward, (3, 3, 32, 32)),
])
def test_imported_tiny_models_match_torch_layout_forward(model_name, forward, input_shape):
    sd = random_torch_state_dict(model_name)
    variables = torch_import.state_dict_to_variables(
        sd, template(model_name), get_model(model_name).flattened_inputs)
    x = np.random.default_rng(1).standard_normal(input_shape).astype(np.float32)
    expected = forward({k: v.astype(np.float64) for k, v in sd.items()}, x.astype(np.float64))
    np.testing.assert_allclose(apply(model_name, variables, x), expected, rtol=1e-4, atol=1e-4)


def test_zip_checkpoint_imports_end_to_end(tmp_path):
    sd = random_torch_state_dict("resnet_tiny")
    obj = {"state_dict": collections.OrderedDict(
        (f"module.{k}", tensor(str(i), v)) for i, (k, v) in enumerate(sd.items()))}
    variables = torch_import.import_torch_checkpoint(
        write(tmp_path, "r.pt", zip_bytes(obj)), template("resnet_tiny"))
    np.testing.assert_array_equal(variables["batch_stats"]["layer2_0"]["bn1"]["var"],
                                  sd["layer2.0.bn1.running_var"])
    np.testing.assert_array_equal(variables["params"]["layer1_0"]["conv2"]["kernel"],
                                  sd["layer1.0.conv2.weight"].transpose(2, 3, 1, 0))


def test_wrong_architecture_and_wrong_shapes_are_listed():
    sd = random_torch_state_dict("mnistnet_tiny")
    bad = dict(sd, **{"fc2.weight": np.zeros((10, 15), np.float32)})
    del bad["conv1.bias"]
    bad["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as info:
        torch_import.state_dict_to_variables(
            bad, template("mnistnet_tiny"), get_model("mnistnet_tiny").flattened_inputs)
    message = str(info.value)
    assert "missing (1): params/conv1/bias" in message
    assert "unexpected (1): extra.weight" in message
    assert "fc2.weight (10, 15) -> params/fc2/kernel expects (16, 10)" in message
    with pytest.raises(ValueError, match=r"unexpected \(\d+\): .*fc1.weight"):
        torch_import.state_dict_to_variables(sd, template("resnet_tiny"))


# ---------------------------------------------------------------------------
# The pretrained checkpoints (need ../shared/data).


@pytest.fixture(scope="module")
def pretrained() -> Path:
    path = SHARED_DATA / "pretrained"
    if not path.is_dir():
        pytest.skip(f"../shared/data not found: {path} holds the pretrained checkpoints")
    return path


def read_mnist_test(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(mnist_dir / "t10k-images-idx3-ubyte.gz") as f:
        raw = f.read()
    assert int.from_bytes(raw[:4], "big") == 2051
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(mnist_dir / "t10k-labels-idx1-ubyte.gz") as f:
        raw = f.read()
    assert int.from_bytes(raw[:4], "big") == 2049
    return images, np.frombuffer(raw, np.uint8, offset=8)


def test_pretrained_files_load_as_expected(pretrained):
    mnist = torch_import.load_torch_file(pretrained / "mnistnet.pt")
    assert isinstance(mnist, collections.OrderedDict)
    assert sum(v.size for v in mnist.values()) == 431_080
    resnet = torch_import.load_torch_file(pretrained / "resnet20.th")
    assert resnet["best_prec1"] == pytest.approx(91.78, abs=1e-4)
    sd = torch_import.state_dict_from(resnet)
    assert sd["conv1.weight"].shape == (16, 3, 3, 3)
    assert sum(v.size for k, v in sd.items() if "running" not in k) == 269_722


def test_pretrained_mnistnet_accuracy_matches_torch_layout_forward(pretrained):
    sd = torch_import.state_dict_from(torch_import.load_torch_file(pretrained / "mnistnet.pt"))
    variables = import_as(pretrained / "mnistnet.pt", "mnistnet")
    images, labels = read_mnist_test(SHARED_DATA / "mnist")
    x = ((images.astype(np.float32) / 255 - 0.1307) / 0.3081).astype(np.float32)
    flax_logits = np.concatenate([apply("mnistnet", variables, x[i:i + 2500])
                                  for i in range(0, len(x), 2500)])
    # The NumPy oracle is slow on 2 cores: compare on the first half of the test set.
    n = 5000
    torch_logits = np.concatenate([mnistnet_torch_forward(sd, x[i:i + 500])
                                   for i in range(0, n, 500)])
    np.testing.assert_allclose(flax_logits[:n], torch_logits, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(flax_logits[:n].argmax(1), torch_logits.argmax(1))
    accuracy = np.mean(flax_logits.argmax(1) == labels)
    print(f"imported MnistNet MNIST test accuracy: {accuracy:.4f} (10,000 images; "
          f"first {n}: {np.mean(torch_logits.argmax(1) == labels[:n]):.4f} for both "
          "the import and the torch-layout NumPy forward)")
    assert accuracy > 0.98


def test_pretrained_resnet20_logits_match_torch_layout_forward(pretrained):
    sd = torch_import.state_dict_from(torch_import.load_torch_file(pretrained / "resnet20.th"))
    variables = import_as(pretrained / "resnet20.th", "resnet20")
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    expected = resnet_torch_forward({k: v.astype(np.float64) for k, v in sd.items()},
                                    x.astype(np.float64))
    np.testing.assert_allclose(apply("resnet20", variables, x), expected, rtol=0, atol=1e-4)


def test_pretrained_checkpoint_of_another_architecture_is_refused(pretrained):
    with pytest.raises(ValueError, match=r"(?s)does not fit the model's variables.*missing \(96\)"
                                         r".*unexpected \(7\): .*fc1\.weight"):
        import_as(pretrained / "mnistnet.pt", "resnet20")
    with pytest.raises(ValueError, match=r"shape mismatches .*fc2\.weight"):
        import_as(pretrained / "mnistnet.pt", "mnistnet", num_classes=5)


def test_corrupted_pretrained_file_is_a_clear_error(pretrained, tmp_path):
    data = bytearray((pretrained / "mnistnet.pt").read_bytes())
    truncated = write(tmp_path, "mnistnet_cut.pt", bytes(data[:-1000]))
    with pytest.raises(ValueError, match=r"mnistnet_cut\.pt: truncated: storage \d/8"):
        torch_import.load_torch_file(truncated)
    data[137:139] = b"\xff\xff"  # the object pickle's PROTO opcode
    with pytest.raises(ValueError, match=r"mnistnet_bad\.pt: corrupt or truncated saved object"):
        torch_import.load_torch_file(write(tmp_path, "mnistnet_bad.pt", bytes(data)))


def test_a_checkpoint_of_another_shape_is_refused_before_its_data_is_read(tmp_path, monkeypatch):
    sd = random_torch_state_dict("mnistnet_tiny")
    sd["fc2.weight"] = np.zeros((10, 15), np.float32)  # the model's fc2 reads 16
    obj = collections.OrderedDict((k, tensor(str(i), v)) for i, (k, v) in enumerate(sd.items()))
    path = write(tmp_path, "other.pt", zip_bytes(obj))
    reads = []
    real_read = zipfile.ZipFile.read
    monkeypatch.setattr(zipfile.ZipFile, "read",
                        lambda self, name, *a: reads.append(name) or real_read(self, name, *a))
    with pytest.raises(ValueError, match=r"fc2.weight \(10, 15\) -> params/fc2/kernel expects \(16, 10\)"):
        import_as(path, "mnistnet_tiny")
    assert reads == ["archive/byteorder", "archive/data.pkl"]  # no storage record
    # The layout pass gives shapes and dtypes without memory.
    layout = torch_import.load_torch_file(path, layout_only=True)
    assert layout["fc2.weight"].shape == (10, 15) and layout["fc2.weight"].strides == (0, 0)

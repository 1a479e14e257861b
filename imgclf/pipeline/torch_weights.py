"""Reads a PyTorch ``.pth`` state dict into numpy arrays, without torch and without trusting it.

A ``.pth`` file is a pickle, and a pickle can name any importable callable and call it. This
module unpickles with an allow-list: the handful of globals a state dict needs (``OrderedDict``,
torch's tensor rebuild functions and its ``*Storage`` type names) are mapped to functions and
sentinels of this module that rebuild numpy arrays; any other global raises ``UnsafePickleError``
before it is imported, so nothing the file names is ever called.

Both serialisations ``torch.save`` has written are read:

- the legacy format (torch < 1.6, and ``_use_new_zipfile_serialization=False``): a sequence of
  pickles (magic number, protocol version, system info, the object whose tensors refer to their
  storages by persistent id, the list of storage keys) followed by the raw storages in that order,
  each preceded by its element count as a little-endian int64;
- the zip format (torch >= 1.6): ``<prefix>/data.pkl`` and one ``<prefix>/data/<key>`` entry of
  raw little-endian bytes per storage.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

# The first pickle of a legacy file, and the protocol version that follows it (torch.serialization).
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# torch.<Name>Storage -> numpy dtype of one element (always little-endian on disk).
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    # numpy has no bfloat16: read the raw 16 bits, widened to float32 when the tensor is built.
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class UnsafePickleError(ValueError):
    """The file's pickle names a global outside the allow-list (or is not a state dict)."""


@dataclass(frozen=True)
class _StorageType:
    """What ``torch.FloatStorage`` and friends unpickle to: just a name and a dtype."""

    name: str
    dtype: np.dtype


@dataclass
class _Storage:
    """One storage named by a persistent id; its elements are filled in once they are read."""

    key: str
    dtype: np.dtype
    numel: int
    bfloat16: bool = False
    data: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class _TensorRef:
    """A tensor as the pickle describes it; it becomes an array once its storage is read."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(
    storage: _Storage,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: object = None,
    metadata: object = None,
) -> _TensorRef:
    """Stands in for ``torch._utils._rebuild_tensor_v2``: records where the tensor's data lies."""
    if not isinstance(storage, _Storage):
        raise UnsafePickleError(f"a tensor refers to {type(storage).__name__}, not a storage")
    return _TensorRef(storage, int(storage_offset), tuple(map(int, size)), tuple(map(int, stride)))


def _rebuild_parameter(
    data: _TensorRef, requires_grad: bool = False, backward_hooks: object = None
) -> _TensorRef:
    """Stands in for ``torch._utils._rebuild_parameter``: a parameter is its tensor."""
    if not isinstance(data, _TensorRef):
        raise UnsafePickleError(f"a parameter wraps {type(data).__name__}, not a tensor")
    return data


# (module, name) -> what it unpickles to. Everything else is refused.
_ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only allow-listed globals and storage persistent ids.

    ``find_class`` is also what the ``INST``, ``OBJ`` and ``EXT*`` opcodes go through, so the
    allow-list covers every way a pickle can reach a callable.
    """

    def __init__(self, file: IO[bytes], storages: dict[str, _Storage] | None = None) -> None:
        super().__init__(file)
        # None: no persistent ids expected (the small header pickles of the legacy format).
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle the global {module}.{name}: a state dict only needs "
                f"{sorted(f'{m}.{n}' for m, n in _ALLOWED_GLOBALS)}"
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        if self._storages is None:
            raise UnsafePickleError(f"unexpected persistent id {pid!r}")
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise UnsafePickleError(f"unsupported persistent id {pid!r} (only storages are read)")
        storage_type, key, _location, numel = pid[1:5]
        # The legacy format can add (view_key, offset, size) for a view into a storage; state
        # dicts written by torch >= 0.4 never use it.
        if len(pid) > 5 and pid[5] is not None:
            raise UnsafePickleError(f"storage views are not supported: {pid!r}")
        if not isinstance(storage_type, _StorageType):
            raise UnsafePickleError(f"unknown storage type {storage_type!r}")
        key, numel = str(key), int(numel)
        if numel < 0:
            raise UnsafePickleError(f"storage {key} has a negative size {numel}")
        storage = self._storages.get(key)
        if storage is None:
            storage = _Storage(
                key, storage_type.dtype, numel, storage_type.name == "BFloat16Storage"
            )
            self._storages[key] = storage
        elif (storage.dtype, storage.numel) != (storage_type.dtype, numel):
            raise UnsafePickleError(f"storage {key} is described twice, differently")
        return storage


def _unpickle(file: IO[bytes], storages: dict[str, _Storage] | None = None) -> Any:
    return _RestrictedUnpickler(file, storages).load()


def _materialise(ref: _TensorRef, name: str) -> np.ndarray:
    """Builds the array a tensor reference describes, after checking it lies inside its storage."""
    storage = ref.storage
    data = storage.data
    if data is None:
        raise UnsafePickleError(f"{name}: storage {storage.key} has no data in the file")
    if len(ref.shape) != len(ref.stride) or any(d < 0 for d in ref.shape + ref.stride):
        raise UnsafePickleError(f"{name}: invalid shape {ref.shape} / stride {ref.stride}")
    numel = int(np.prod(ref.shape, dtype=np.int64))
    if numel:
        # as_strided reads wherever the strides point: prove the last element is in bounds first.
        last = ref.offset + sum((d - 1) * s for d, s in zip(ref.shape, ref.stride, strict=True))
        if ref.offset < 0 or last >= data.size:
            raise UnsafePickleError(
                f"{name}: shape {ref.shape}, stride {ref.stride}, offset {ref.offset} reach past "
                f"the {data.size} elements of storage {storage.key}"
            )
    contiguous = tuple(
        int(np.prod(ref.shape[i + 1 :], dtype=np.int64)) for i in range(len(ref.shape))
    )
    if numel == 0:
        array = np.zeros(ref.shape, dtype=data.dtype)
    elif all(s == c for d, s, c in zip(ref.shape, ref.stride, contiguous, strict=True) if d > 1):
        array = data[ref.offset : ref.offset + numel].reshape(ref.shape)
    else:
        view = np.lib.stride_tricks.as_strided(
            data[ref.offset :],
            shape=ref.shape,
            strides=tuple(s * data.itemsize for s in ref.stride),
            writeable=False,
        )
        array = np.ascontiguousarray(view)
    if storage.bfloat16:
        array = (array.astype(np.uint32) << 16).view(np.float32)
    # Native byte order and our own memory: callers may write to the result.
    return array.astype(array.dtype.newbyteorder("="), copy=True)


def _to_state_dict(obj: Any, path: Path) -> dict[str, np.ndarray]:
    if not isinstance(obj, Mapping):
        raise UnsafePickleError(f"{path} holds a {type(obj).__name__}, not a state dict")
    result: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, _TensorRef):
            raise UnsafePickleError(
                f"{path}: entry {name!r} is a {type(value).__name__}; a state dict maps names to "
                "tensors (a training checkpoint must be unpacked to its state dict first)"
            )
        result[name] = _materialise(value, name)
    return result


def _read_exact(file: IO[bytes], size: int, what: str) -> bytes:
    data = file.read(size)
    if len(data) != size:
        raise ValueError(f"the file ends inside {what} ({len(data)} of {size} bytes)")
    return data


def _load_legacy(file: IO[bytes], path: Path) -> dict[str, np.ndarray]:
    try:
        magic = _unpickle(file)
    except (pickle.UnpicklingError, EOFError) as exc:
        raise ValueError(f"{path} is neither a zip nor a legacy PyTorch file: {exc}") from exc
    if magic != LEGACY_MAGIC_NUMBER:
        raise ValueError(f"{path} is not a PyTorch file (no magic number; a tar checkpoint?)")
    protocol = _unpickle(file)
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise ValueError(f"{path}: unsupported legacy protocol version {protocol!r}")
    sys_info = _unpickle(file)
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
        raise ValueError(f"{path} was written on a big-endian machine, which is not supported")
    storages: dict[str, _Storage] = {}
    obj = _unpickle(file, storages)
    keys = _unpickle(file)
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(storages):
        raise UnsafePickleError(f"{path}: the storage key list does not match the tensors")
    for key in map(str, keys):
        storage = storages[key]
        (numel,) = struct.unpack("<q", _read_exact(file, 8, f"the size of storage {key}"))
        if numel != storage.numel:
            raise ValueError(
                f"{path}: storage {key} has {numel} elements, expected {storage.numel}"
            )
        raw = _read_exact(file, numel * storage.dtype.itemsize, f"storage {key}")
        storage.data = np.frombuffer(raw, dtype=storage.dtype)
    return _to_state_dict(obj, path)


def _load_zip(archive: zipfile.ZipFile, path: Path) -> dict[str, np.ndarray]:
    pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise ValueError(f"{path}: expected one <prefix>/data.pkl in the zip, found {pickles}")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = f"{prefix}byteorder"
    if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
        raise ValueError(f"{path} was written on a big-endian machine, which is not supported")
    storages: dict[str, _Storage] = {}
    with archive.open(pickles[0]) as file:
        obj = _unpickle(io.BytesIO(file.read()), storages)
    for key, storage in storages.items():
        entry = f"{prefix}data/{key}"
        try:
            info = archive.getinfo(entry)
        except KeyError:
            raise ValueError(f"{path}: storage {key} is missing ({entry})") from None
        expected = storage.numel * storage.dtype.itemsize
        # Checked before reading: the size a pickle claims should not decide what we allocate.
        if info.file_size != expected:
            raise ValueError(f"{path}: {entry} has {info.file_size} bytes, expected {expected}")
        storage.data = np.frombuffer(archive.read(entry), dtype=storage.dtype)
    return _to_state_dict(obj, path)


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a PyTorch state dict (``torch.save(model.state_dict(), path)``) as numpy arrays.

    Only the globals a state dict needs are resolved (see the module docstring); torch is not
    imported and nothing the file names is called.

    Args:
        path: a ``.pth``/``.pt`` file in the legacy or the zip serialisation.

    Returns:
        Tensor name -> array, in the file's order, each array C-contiguous, in native byte order
        and owning its memory; shapes are torch's (a conv weight is OIHW). bfloat16 tensors come
        back as float32.

    Raises:
        UnsafePickleError: the pickle names a global outside the allow-list, or is not a flat
            name -> tensor mapping, or a tensor lies outside its storage.
        ValueError: the file is not a PyTorch file, is truncated, or is in an unsupported variant
            (big-endian, storage views).
        OSError: the file cannot be read.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return _load_zip(archive, path)
    with path.open("rb") as file:
        return _load_legacy(file, path)


def parameter_count(state_dict: Mapping[str, np.ndarray]) -> int:
    """The number of elements of all the tensors of a state dict (what ``sum(t.numel())`` says)."""
    return sum(int(t.size) for t in state_dict.values())

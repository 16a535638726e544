"""Read and write PyTorch's `torch.save` zip format without importing torch.

Only what state dicts use is understood: an (Ordered)dict of name -> tensor, tensors rebuilt by
`torch._utils._rebuild_tensor_v2` (or `_rebuild_parameter`) over typed storages. Loading goes through a
restricted unpickler that refuses every other global, so a malicious `.pth` cannot run code.
Written files are loadable by `torch.load` (weights_only=True included) and by RWKV-LM / the `rwkv` package.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from typing import Mapping


import ml_dtypes
import numpy as np

from rwkvjax.fileio import atomic_write

STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}
DTYPE_STORAGES = {v: k for k, v in STORAGE_DTYPES.items()}


class PthFormatError(ValueError):
  """A file that is not a torch.save zip archive of a state dict."""


class _StorageType:
  def __init__(self, name: str):
    self.name = name
    self.dtype = STORAGE_DTYPES[name]


def _rebuild_tensor(storage, offset, size, stride, *unused):
  del unused
  data = storage
  itemsize = data.dtype.itemsize
  if not size:
    return data[offset:offset + 1].reshape(()).copy()
  view = np.lib.stride_tricks.as_strided(
      data[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride), writeable=False)
  return np.ascontiguousarray(view)


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused):
  del requires_grad, backward_hooks, unused
  return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: str):
    super().__init__(file)
    self._archive, self._prefix, self._path = archive, prefix, path
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module, name):
    if module == "torch" and name in STORAGE_DTYPES:
      return _StorageType(name)
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise PthFormatError(f"{self._path}: refuses to load global {module}.{name}; only state dicts of "
                           "tensors can be read") from None

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise PthFormatError(f"{self._path}: unknown persistent id {pid!r}")
    _, storage_type, key, _location, numel = pid
    if key not in self._storages:
      raw = self._archive.read(f"{self._prefix}data/{key}")
      arr = np.frombuffer(raw, dtype=storage_type.dtype)
      if arr.size != numel:
        raise PthFormatError(f"{self._path}: storage {key} holds {arr.size} elements, expected {numel}")
      self._storages[key] = arr
    return self._storages[key]


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a `torch.save`d state dict as {name: numpy array} (bf16 as ml_dtypes.bfloat16), no torch."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint {path} does not exist")
  if not zipfile.is_zipfile(path):
    raise PthFormatError(f"{path}: not a torch.save zip archive (legacy pre-1.6 torch files are not supported; "
                         "re-save it with a recent torch)")
  with zipfile.ZipFile(path) as archive:
    pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
    if len(pkl) != 1:
      raise PthFormatError(f"{path}: expected one data.pkl in the archive, found {pkl}")
    prefix = pkl[0][: -len("data.pkl")]
    byteorder = f"{prefix}byteorder"
    if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
      raise PthFormatError(f"{path}: big-endian checkpoints are not supported")
    obj = _RestrictedUnpickler(io.BytesIO(archive.read(pkl[0])), archive, prefix, path).load()
  if not isinstance(obj, Mapping):
    raise PthFormatError(f"{path}: holds a {type(obj).__name__}, expected a state dict (name -> tensor)")
  out = {}
  for name, value in obj.items():
    if not isinstance(value, np.ndarray):
      raise PthFormatError(f"{path}: entry {name!r} is a {type(value).__name__}, expected a tensor")
    out[name] = value
  return out


class _Global:
  """Pickles as a bare GLOBAL opcode (module.name) without importing the module."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle's save_reduce requires a callable; never called here
    raise TypeError(f"{self.module}.{self.name} is only a pickle reference")


class _TensorRef:
  def __init__(self, key: str, array: np.ndarray):
    self.key, self.array = key, array

  def __reduce__(self):
    a = self.array
    stride = tuple(int(np.prod(a.shape[i + 1:])) for i in range(a.ndim))
    return (_Global("torch._utils", "_rebuild_tensor_v2"),
            (_StorageRef(self.key, a), 0, tuple(a.shape), stride, False, collections.OrderedDict()))


class _StorageRef:
  def __init__(self, key: str, array: np.ndarray):
    self.key, self.array = key, array


class _TorchPickler(pickle._Pickler):  # the pure-Python pickler lets us emit GLOBAL for absent modules
  dispatch = dict(pickle._Pickler.dispatch)

  def _save_global_ref(self, obj):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("utf-8"))

  dispatch[_Global] = _save_global_ref

  def persistent_id(self, obj):
    if isinstance(obj, _StorageRef):
      storage = _Global("torch", DTYPE_STORAGES[obj.array.dtype])
      return ("storage", storage, obj.key, "cpu", int(obj.array.size))
    return None


def _aligned_info(name: str, offset: int, align: int = 64) -> zipfile.ZipInfo:
  """A stored entry whose data starts at a multiple of `align` (torch aligns records to 64 bytes)."""
  info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
  info.compress_type = zipfile.ZIP_STORED
  header = 30 + len(name.encode("utf-8"))
  pad = (-(offset + header + 4)) % align
  info.extra = b"\xfe\xca" + pad.to_bytes(2, "little") + b"\x00" * pad  # one padding extra field
  return info


def save_state_dict(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
  """Writes {name: array} as a torch.save zip archive, atomically (temp file, then rename)."""
  path = os.fspath(path)
  for name, a in state_dict.items():
    if np.dtype(a.dtype) not in DTYPE_STORAGES:
      raise ValueError(f"save_state_dict: {name} has dtype {a.dtype}; expected one of "
                       f"{sorted(str(d) for d in DTYPE_STORAGES)}")
  arrays = collections.OrderedDict((n, np.ascontiguousarray(a)) for n, a in state_dict.items())
  refs = collections.OrderedDict((n, _TensorRef(str(i), a)) for i, (n, a) in enumerate(arrays.items()))
  buf = io.BytesIO()
  _TorchPickler(buf, protocol=2).dump(refs)
  prefix = os.path.splitext(os.path.basename(path))[0] or "archive"
  with atomic_write(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
    records = [(f"{prefix}/data.pkl", buf.getvalue()), (f"{prefix}/byteorder", b"little")]
    records += [(f"{prefix}/data/{i}", a.tobytes()) for i, a in enumerate(arrays.values())]
    records += [(f"{prefix}/version", b"3\n")]
    for name, data in records:
      zf.writestr(_aligned_info(name, f.tell()), data)

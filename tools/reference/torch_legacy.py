"""Reads a PyTorch *legacy* (pre-1.6, non-zip) `torch.save` file into numpy arrays, without torch.

The legacy format is a sequence of pickles: magic number, protocol version, system info, the object
itself (tensors refer to storages through persistent ids), the list of storage keys, then each
storage's raw bytes (8-byte little-endian element count + data) in that order.
Used only by the reference scripts that produce test fixtures; the server reads weights with burn-store.
"""
import io
import pickle
import struct

import numpy as np

MAGIC = 0x1950A86A20F9469CFC6C
DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ByteStorage": np.uint8,
}


class _StateDict(dict):
    """OrderedDict stand-in: accepts the `_metadata` attribute torch pickles onto state dicts."""


class _StorageType:
    def __init__(self, name):
        self.name = name


class _Storage:
    def __init__(self, dtype):
        self.dtype = dtype
        self.data = None


def _rebuild_tensor_v2(storage, offset, size, stride, *_):
    return ("tensor", storage, offset, tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, storages):
        super().__init__(f)
        self.storages = storages

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return _StateDict
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, _size = pid[:5]
        assert kind == "storage", pid
        if key not in self.storages:
            self.storages[key] = _Storage(DTYPES[storage_type.name])
        return self.storages[key]


def load_state_dict(path):
    with open(path, "rb") as f:
        assert pickle.load(f) == MAGIC, "not a legacy torch file"
        pickle.load(f)  # protocol version
        pickle.load(f)  # sys info
        storages = {}
        obj = _Unpickler(f, storages).load()
        keys = pickle.load(f)
        for key in keys:
            (n,) = struct.unpack("<q", f.read(8))
            st = storages[key]
            st.data = np.frombuffer(f.read(n * np.dtype(st.dtype).itemsize), dtype=st.dtype)
    out = {}
    for name, value in obj.items():
        _, st, offset, size, stride = value
        item = st.data.itemsize
        arr = np.lib.stride_tricks.as_strided(
            st.data[offset:], shape=size, strides=tuple(s * item for s in stride)
        )
        out[name] = np.ascontiguousarray(arr)
    return out


if __name__ == "__main__":
    import sys

    sd = load_state_dict(sys.argv[1])
    for k, v in list(sd.items())[:8]:
        print(k, v.shape, v.dtype)
    print(len(sd), "tensors")

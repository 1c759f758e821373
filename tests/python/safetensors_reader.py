"""The tests' own reader of F32 .safetensors files (model, detector and gradient files), written
from the format's description rather than shared with tools/ or the engine, so that a converter and
its test cannot agree on the same mistake."""
import collections
import json
import struct

import numpy as np

SafetensorsFile = collections.namedtuple("SafetensorsFile", ["tensors", "header", "header_len"])


def read_safetensors(path):
    """tensors (OrderedDict name -> float32 array, in header order), the parsed header and its
    length. Asserts what every writer here promises (the converters, the engine's WriteSafetensors):
    F32 only, data contiguous in header order, nothing after the last tensor."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"), object_pairs_hook=collections.OrderedDict)
    data = memoryview(blob)[8 + n:]
    tensors = collections.OrderedDict()
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        b, e = info["data_offsets"]
        assert b == end, "tensor data not contiguous at %s" % name
        end = e
        tensors[name] = np.frombuffer(data[b:e], dtype="<f4").reshape(info["shape"])
    assert end == len(data), "trailing bytes after the last tensor"
    return SafetensorsFile(tensors, header, n)

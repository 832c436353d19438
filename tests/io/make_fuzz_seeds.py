#!/usr/bin/python3
# Writes the fuzz target's seed files (valid safetensors) into fuzz_seeds/: cd tests/io/fuzz_seeds && /usr/bin/python3 ../make_fuzz_seeds.py
import json, struct

def write(name, tensors, metadata=None):
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for tname, dtype, shape, raw in tensors:
        header[tname] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    open(name, "wb").write(struct.pack("<Q", len(h)) + h + data)

f32 = lambda *v: struct.pack("<%df" % len(v), *v)
write("two_f32.safetensors", [("a", "F32", [2, 3], f32(*range(6))), ("b", "I32", [3], struct.pack("<3i", 1, -2, 3))],
      {"k": "v"})
write("frugal_model.safetensors", [("wte", "F32", [4, 2], f32(*range(8))), ("wpe", "F32", [2, 2], f32(1, 2, 3, 4))],
      {"format": "frugal", "n_layer": "1", "n_head": "1", "n_embd": "2", "vocab_size": "4", "context": "2"})
write("dtypes.safetensors", [("h", "BF16", [2], b"\x80\x3f\x00\x40"), ("e", "F16", [0, 3], b""),
                             ("d", "F64", [1], struct.pack("<d", 1.5)), ("u", "U8", [3], b"xyz")])
write("empty.safetensors", [])

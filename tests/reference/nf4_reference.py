"""bitsandbytes' NF4 (QLoRA's 4-bit base weights) on given tensors: the reference for
tests/core/quant_test.cpp.

  python nf4_reference.py DIR ROWSxCOLS [ROWSxCOLS ...]

For case i, reads DIR/w{i}.f32 (ROWS x COLS fp32, raw) and quantizes it with
bitsandbytes.functional.quantize_4bit(blocksize=64, quant_type='nf4', compress_statistics=True)
on the CPU; writes, raw: DIR/{i}.q (the packed codes, uint8), {i}.absmax (the absmax codes,
uint8), {i}.absmax2 (fp32), {i}.offset (fp32), and {i}.deq.f32, {i}.deq.bf16, {i}.deq.f16
(dequantize_4bit into each dtype). Also DIR/nf4_code.f32 (16) and DIR/dynamic_code.f32 (256):
the code tables the quantization states hold.
"""
import copy
import sys

import torch
from bitsandbytes.functional import dequantize_4bit, quantize_4bit


def main():
    out = sys.argv[1]
    for i, shape in enumerate(sys.argv[2:]):
        rows, cols = (int(v) for v in shape.split("x"))
        w = torch.from_file(f"{out}/w{i}.f32", size=rows * cols, dtype=torch.float32).reshape(rows, cols)
        q, st = quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
        assert st.nested and st.state2.blocksize == 256
        q.reshape(-1).numpy().tofile(f"{out}/{i}.q")
        st.absmax.numpy().tofile(f"{out}/{i}.absmax")
        st.state2.absmax.float().numpy().tofile(f"{out}/{i}.absmax2")
        st.offset.reshape(1).float().numpy().tofile(f"{out}/{i}.offset")
        for name, dt in (("f32", torch.float32), ("bf16", torch.bfloat16), ("f16", torch.float16)):
            s = copy.copy(st)
            s.dtype = dt
            d = dequantize_4bit(q, s).reshape(rows, cols).contiguous()
            (d.view(torch.int16) if dt != torch.float32 else d).numpy().tofile(f"{out}/{i}.deq.{name}")
        if i == 0:
            st.code.float().numpy().tofile(f"{out}/nf4_code.f32")
            st.state2.code.float().numpy().tofile(f"{out}/dynamic_code.f32")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Rewrites a GGUF with the tensors of the given encodings (default: Q5_0) dequantized to F32, everything else as is,
so a model can be compared with llama.cpp before our kernels run those encodings (both engines then read the same
F32 values). Uses gguf-py as a library (`pip install gguf`).

    python3 tools/gguf_dequantize.py IN.gguf OUT.gguf [Q5_0 Q5_1 ...]

Used on Gemma 3 270M (Q5_0 tensors): with the prompt ids 2 818 5279 529 7001 563, tools/llama_logits.cpp and the
engine gave the same 24 greedy tokens, top logits within 0.2, 1-stage and 2-stage alike.
"""
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q


def main():
    src, dst = sys.argv[1], sys.argv[2]
    encodings = {Q[name] for name in (sys.argv[3:] or ["Q5_0"])}
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, r.fields["general.architecture"].contents())
    for name, field in r.fields.items():
        # The writer adds the GGUF header fields and the architecture itself.
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, field.contents(), kind, sub_type=sub)
    for t in r.tensors:
        if t.tensor_type in encodings:
            w.add_tensor(t.name, gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32), raw_dtype=Q.F32)
        elif t.tensor_type in (Q.F32, Q.F16):
            w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
        else:
            # Quantized rows stay as bytes; the writer derives the element shape from the byte shape.
            w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()

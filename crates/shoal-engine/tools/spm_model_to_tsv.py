#!/usr/bin/env python3
"""Reads a SentencePiece tokenizer.model (a protobuf ModelProto) with the standard library only and writes one
line per piece, in id order: `TYPE<TAB>SCORE<TAB>HEX(piece UTF-8)`, preceded by a header line
`add_dummy_prefix<TAB>0|1` (normalizer_spec.add_dummy_prefix, default 1). SentencePiece's piece types (1 normal,
2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte) are GGUF's token types, so tests/vocab can lay the
result into a vocabulary-only GGUF (`tokenizer.ggml.model = llama`) the way llama.cpp's converter does.

Usage: spm_model_to_tsv.py TOKENIZER_MODEL OUT_TSV
"""
import os
import struct
import sys


def varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def fields(buf):
    """(field number, wire type, value) of one message; length-delimited values as bytes."""
    i = 0
    while i < len(buf):
        key, i = varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = varint(buf, i)
        elif wire == 1:
            v, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = varint(buf, i)
            v, i = buf[i:i + n], i + n
        elif wire == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise SystemExit(f"unsupported protobuf wire type {wire}")
        yield num, wire, v


def main(src, dst):
    with open(src, "rb") as f:
        model = f.read()
    pieces, add_dummy_prefix = [], 1
    for num, _, v in fields(model):
        if num == 1:  # repeated SentencePiece pieces
            piece, score, kind = b"", 0.0, 1
            for n, _, x in fields(v):
                if n == 1:
                    piece = x
                elif n == 2:
                    score = struct.unpack("<f", x)[0]
                elif n == 3:
                    kind = x
            pieces.append((kind, score, piece))
        elif num == 3:  # normalizer_spec
            for n, _, x in fields(v):
                if n == 3:
                    add_dummy_prefix = int(bool(x))
    part = f"{dst}.part{os.getpid()}"  # concurrent runs must not share a partial file
    with open(part, "w", encoding="ascii") as out:
        out.write(f"add_dummy_prefix\t{add_dummy_prefix}\n")
        for kind, score, piece in pieces:
            out.write(f"{kind}\t{score!r}\t{piece.hex()}\n")
    os.replace(part, dst)


if __name__ == "__main__":
    main(*sys.argv[1:3])

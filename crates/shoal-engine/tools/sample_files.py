#!/usr/bin/env python3
"""Writes the strings of a Rust `const NAME: &[(&str, &[u32])]` sample table to DIR/00.txt, DIR/01.txt, ... (exact
bytes, Rust escapes resolved), in table order, for tools/ref_tokenize.cpp to tokenize.
Usage: sample_files.py TEST_FILE.rs CONST_NAME DIR"""
import re, sys
src, const, out = sys.argv[1:4]
text = open(src, encoding='utf-8').read()
start = text.index(f"const {const}")
body = text[start:text.index("];\n", start)]
lits = re.findall(r'\(\s*"((?:[^"\\]|\\.)*)",', body)
def unesc(s):
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c == '\\':
            n = s[i+1]
            if n == 'u':
                j = s.index('}', i); out.append(chr(int(s[i+3:j], 16))); i = j + 1; continue
            out.append({'n': '\n', 't': '\t', 'r': '\r', '"': '"', '\\': '\\', '0': '\0', "'": "'"}[n]); i += 2; continue
        out.append(c); i += 1
    return ''.join(out)
import os
os.makedirs(out, exist_ok=True)
for k, l in enumerate(lits):
    open(f"{out}/{k:02d}.txt", "wb").write(unesc(l).encode('utf-8'))
print(len(lits))

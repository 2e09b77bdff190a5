#!/usr/bin/env python3
"""Turns Mistral's tekken.json (tiktoken-style: byte strings with ranks, special tokens first) into a minimal
Hugging Face tokenizer.json (byte-level BPE vocabulary + merges + added special tokens), the form tests/vocab
lays into a vocabulary-only GGUF. The layout follows how Mistral Nemo GGUFs are made: ids 0..n_special-1 are the
special tokens (the deprecated fixed list, then <SPECIAL_i> fillers), then every ranked token at n_special + rank,
spelled in GPT-2's byte alphabet; merges are rebuilt from the ranks (for each token by rank, every split into two
ranked tokens, lowest ranks first). Standard library only.

Usage: tekken_to_tokenizer_json.py TEKKEN_JSON OUT_JSON
"""
import base64
import json
import os
import sys

# Mistral's fixed special tokens of tokenizers up to v7 (their file lists none).
SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
            "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
            "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]"]


def byte_alphabet():
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, n = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


def main(src, dst):
    with open(src, encoding="utf-8") as f:
        tek = json.load(f)
    cfg = tek["config"]
    n_special = cfg["default_num_special_tokens"]
    n_inner = cfg["default_vocab_size"] - n_special
    specials = [t["token_str"] for t in tek.get("special_tokens", [])] or list(SPECIALS)
    specials += [f"<SPECIAL_{i}>" for i in range(len(specials), n_special)]
    ranks = {}
    for t in tek["vocab"][:n_inner]:
        ranks[base64.b64decode(t["token_bytes"])] = t["rank"]
    by_rank = {r: b for b, r in ranks.items()}
    alpha = byte_alphabet()
    spell = lambda b: "".join(alpha[x] for x in b)
    vocab = {s: i for i, s in enumerate(specials)}
    for b, r in ranks.items():
        vocab[spell(b)] = n_special + r
    merges = []
    for r in range(256, n_inner):
        tok = by_rank[r]
        local = [(tok[:j], tok[j:]) for j in range(1, len(tok)) if tok[:j] in ranks and tok[j:] in ranks]
        if not local:
            raise SystemExit(f"no merge makes the token of rank {r}")
        local.sort(key=lambda p: (ranks[p[0]], ranks[p[1]]))
        merges += [f"{spell(a)} {spell(b)}" for a, b in local]
    out = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
             "special": True}
            for i, s in enumerate(specials)
        ],
        "normalizer": None,
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": None,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": merges},
    }
    part = f"{dst}.part{os.getpid()}"  # concurrent runs must not share a partial file
    with open(part, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)
    os.replace(part, dst)


if __name__ == "__main__":
    main(*sys.argv[1:3])

import numpy as np, sys
from gguf import GGUFReader
from gguf.quants import dequantize
r = GGUFReader("/root/.cache/shoal-test-models/SmolLM2-135M-Instruct.Q4_1.gguf")
T = {t.name: t for t in r.tensors}
def W(name):
    t = T[name]
    a = dequantize(t.data, t.tensor_type)
    return np.asarray(a, dtype=np.float32).reshape([int(x) for x in reversed(t.shape)]) if a.ndim==1 else np.asarray(a,dtype=np.float32)
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, AddedToken
toks = r.fields["tokenizer.ggml.tokens"].contents()
merges = [tuple(m.split(" ",1)) for m in r.fields["tokenizer.ggml.merges"].contents()]
tk = Tokenizer(models.BPE({t:i for i,t in enumerate(toks)}, merges))
tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
tk.decoder = decoders.ByteLevel()
tk.add_special_tokens([AddedToken(toks[i], special=True) for i in range(17)])
prompt = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
ids = tk.encode(prompt).ids
print(len(ids), ids)
H, NH, NKV, HD, L = 576, 9, 3, 64, 30
emb = W("token_embd.weight"); print(emb.shape)
def rms(x, w): return x / np.sqrt((x*x).mean(-1, keepdims=True) + 1e-5) * w
def rope(x, pos):  # x (n, h, d) interleaved
    d = x.shape[-1]; inv = 1.0 / (100000.0 ** (np.arange(0, d, 2) / d))
    ang = pos[:, None] * inv[None, :]; c = np.cos(ang)[:, None, :]; s = np.sin(ang)[:, None, :]
    x0 = x[..., 0::2]; x1 = x[..., 1::2]
    out = np.empty_like(x); out[..., 0::2] = x0*c - x1*s; out[..., 1::2] = x0*s + x1*c
    return out
Wl = [{k: W(f"blk.{l}.{k}.weight") for k in ["attn_norm","attn_q","attn_k","attn_v","attn_output","ffn_norm","ffn_gate","ffn_up","ffn_down"]} for l in range(L)]
onorm = W("output_norm.weight")
def forward(ids):
    n = len(ids); x = emb[ids].astype(np.float64); pos = np.arange(n, dtype=np.float64)
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for l in range(L):
        w = Wl[l]; h = rms(x, w["attn_norm"])
        q = (h @ w["attn_q"].T).reshape(n, NH, HD); k = (h @ w["attn_k"].T).reshape(n, NKV, HD); v = (h @ w["attn_v"].T).reshape(n, NKV, HD)
        q = rope(q, pos); k = rope(k, pos)
        out = np.zeros((n, NH, HD))
        for hh in range(NH):
            kv = hh // (NH // NKV)
            sc = q[:, hh] @ k[:, kv].T / np.sqrt(HD) + mask
            p = np.exp(sc - sc.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
            out[:, hh] = p @ v[:, kv]
        x = x + out.reshape(n, H) @ w["attn_output"].T
        h = rms(x, w["ffn_norm"]); g = h @ w["ffn_gate"].T; u = h @ w["ffn_up"].T
        x = x + ((g / (1 + np.exp(-g))) * u) @ w["ffn_down"].T
    return rms(x[-1], onorm) @ emb.T
out = []
for step in range(12):
    lg = forward(ids + out); t = int(np.argmax(lg)); out.append(t)
    if step == 0: print("top5", np.argsort(-lg)[:5], lg[np.argsort(-lg)[:5]])
print(out, repr(tk.decode(out)))

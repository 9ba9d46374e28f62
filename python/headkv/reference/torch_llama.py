"""A small PyTorch Llama over gguf-py's dequantized weights: the reference forward for KV
compression. Written from the Llama architecture, independently of cpp/src/model.

Attention takes an optional per-KV-head key mask, so a compressed cache is modelled as the full
model with every dropped (position, head) masked out: mathematically the same as the engine's
ragged per-head cache.

    m = TorchLlama(path)
    cache = m.new_cache()
    logits, win_q = m.forward(ids, cache, window=8)        # prompt, full causal attention
    keep = [torch.tensor(bool mask [n_head_kv, n_keys]) per layer]
    logits, _ = m.forward([tok], cache, key_mask=keep)     # decode over the kept entries
"""
from __future__ import annotations

import numpy as np
import torch


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    v = f.contents()
    return v


class TorchLlama:
    def __init__(self, path, dtype=torch.float32):
        import gguf
        r = gguf.GGUFReader(str(path))
        arch = _field(r, "general.architecture")
        if arch != "llama":
            raise ValueError(f"TorchLlama handles architecture 'llama', not {arch!r}")
        p = "llama."
        self.n_layer = int(_field(r, p + "block_count"))
        self.n_embd = int(_field(r, p + "embedding_length"))
        self.n_head = int(_field(r, p + "attention.head_count"))
        self.n_head_kv = int(_field(r, p + "attention.head_count_kv", self.n_head))
        self.eps = float(_field(r, p + "attention.layer_norm_rms_epsilon"))
        self.head_dim = self.n_embd // self.n_head
        self.rope_dim = int(_field(r, p + "rope.dimension_count", self.head_dim))
        base = float(_field(r, p + "rope.freq_base", 10000.0))
        if _field(r, p + "rope.scaling.type") not in (None, "none"):
            raise ValueError("TorchLlama: RoPE scaling is not modelled")
        self.dtype = dtype
        self.w = {}
        for t in r.tensors:
            a = gguf.quants.dequantize(t.data, t.tensor_type)
            a = np.array(a, np.float32).reshape([int(x) for x in reversed(t.shape)])
            self.w[t.name] = torch.from_numpy(a).to(dtype)
        if "output.weight" not in self.w:
            self.w["output.weight"] = self.w["token_embd.weight"]
        # same float32 computation as HF's default RoPE: inv_freq = 1 / base^(2i/d)
        self.inv_freq = 1.0 / (base ** (torch.arange(0, self.rope_dim, 2, dtype=torch.int64).float() / self.rope_dim))

    def new_cache(self):
        """Per layer: K (RoPE'd) and V as [n_head_kv, n_keys, head_dim]."""
        e = torch.empty(self.n_head_kv, 0, self.head_dim, dtype=self.dtype)
        return {"k": [e] * self.n_layer, "v": [e] * self.n_layer, "n": 0}

    def _norm(self, x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    def _rope(self, x, pos):
        """x: [T, heads, d]; rotates adjacent pairs (GGUF's permuted q/k layout)."""
        ang = pos.float()[:, None] * self.inv_freq[None, :]          # [T, rope_dim/2], fp32
        c, s = torch.cos(ang)[:, None, :].to(x.dtype), torch.sin(ang)[:, None, :].to(x.dtype)
        r = x[..., : self.rope_dim]
        a, b = r[..., 0::2], r[..., 1::2]
        out = torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(-2)
        return torch.cat((out, x[..., self.rope_dim:]), dim=-1)

    @torch.no_grad()
    def forward(self, ids, cache, key_mask=None, window=0, kv_dtype=None, kv_store=None):
        """Appends `ids` to the cache; returns (logits of the last token [n_vocab], window queries).

        key_mask: per layer a bool [n_head_kv, n_keys_after] (True = the key may be attended), applied
        on top of causality to every new query; None = full attention.
        window > 0: also returns per layer the RoPE'd queries of the last `window` tokens, [window, n_head, d].
        kv_dtype: the new keys / values are rounded to this storage type (e.g. torch.float16, the
        engine's f16 KV cache) before they are stored and attended; None = kept in the compute dtype.
        kv_store: optional function (layer, first position, k, v) -> (k, v) applied to the new keys / values
        ([T, n_head_kv, head_dim]) before they are stored and attended: e.g. the values a quantized cache holds.
        """
        T, n0 = len(ids), cache["n"]
        H, Hkv, d = self.n_head, self.n_head_kv, self.head_dim
        G = H // Hkv
        x = self.w["token_embd.weight"][torch.as_tensor(ids, dtype=torch.long)]
        pos = torch.arange(n0, n0 + T)
        causal = pos[:, None] >= torch.arange(n0 + T)[None, :]          # [T, S]
        win_q = []
        for l in range(self.n_layer):
            W = lambda n: self.w[f"blk.{l}.{n}.weight"]  # noqa: E731
            h = self._norm(x, W("attn_norm"))
            q = self._rope((h @ W("attn_q").T).view(T, H, d), pos)
            k = self._rope((h @ W("attn_k").T).view(T, Hkv, d), pos)
            v = (h @ W("attn_v").T).view(T, Hkv, d)
            if kv_dtype is not None:
                k, v = k.to(kv_dtype).to(self.dtype), v.to(kv_dtype).to(self.dtype)
            if kv_store is not None:
                k, v = kv_store(l, n0, k, v)
            K = cache["k"][l] = torch.cat((cache["k"][l], k.transpose(0, 1)), dim=1)
            V = cache["v"][l] = torch.cat((cache["v"][l], v.transpose(0, 1)), dim=1)
            if window:
                win_q.append(q[-window:].clone())
            qg = q.view(T, Hkv, G, d).permute(1, 2, 0, 3)                 # [Hkv, G, T, d]
            s = qg @ K[:, None].transpose(-1, -2) / d ** 0.5               # [Hkv, G, T, S]
            allowed = causal[None, None]
            if key_mask is not None:
                allowed = allowed & key_mask[l][:, None, None, :]
            s = s.masked_fill(~allowed, float("-inf"))
            o = torch.softmax(s, dim=-1) @ V[:, None]                      # [Hkv, G, T, d]
            o = o.permute(2, 0, 1, 3).reshape(T, H * d)
            x = x + o @ W("attn_output").T
            h = self._norm(x, W("ffn_norm"))
            x = x + (torch.nn.functional.silu(h @ W("ffn_gate").T) * (h @ W("ffn_up").T)) @ W("ffn_down").T
        cache["n"] = n0 + T
        logits = self._norm(x[-1], self.w["output_norm.weight"]) @ self.w["output.weight"].T
        return logits, win_q

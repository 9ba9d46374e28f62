"""Greedy decoding with per-step attention: the native engine (attention probe) or the PyTorch
reference (transformers loading the same GGUF, eager attention, float32).

Both follow the official detection code: prefill all prompt tokens but the last, then feed the
last prompt token as decode step 0; every step yields (att[L, H, N] of that step's query over all
N cached positions, greedy token). Both take headkv's token ids (transformers' GGUF tokenizer
ignores SmolLM2's pre-tokenizer, see tests/test_parity_hf.py), so the prompts are identical.
"""
from __future__ import annotations

import os
from typing import Callable, Iterator

import numpy as np

from ..errors import InvalidArgumentError, UnsupportedError


class NativeBackend:
    name = "native"

    def __init__(self, model):
        self.model = model
        model.attention_probe(True)
        self.device = "cpu"

    def steps(self, ids, max_steps: int, is_stop: Callable[[int], bool]) -> Iterator[tuple[np.ndarray, int]]:
        m = self.model
        if len(ids) + max_steps > m.n_ctx:
            raise InvalidArgumentError(f"prompt of {len(ids)} tokens + {max_steps} steps does not fit n_ctx={m.n_ctx}")
        m.reset()
        if len(ids) > 1:
            m.eval(ids[:-1])
        feed = int(ids[-1])
        for _ in range(max_steps):
            m.eval([feed])
            att = m.probed_attention()
            tok = int(np.argmax(m.logits()))
            yield att, tok
            if is_stop(tok):
                return
            feed = tok


def torch_device(device: str = "auto") -> str:
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class TorchBackend:
    name = "reference"

    def __init__(self, gguf_path, device: str = "auto", threads: int = 0):
        try:
            import torch
            from transformers import AutoModelForCausalLM
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise UnsupportedError("the reference backend needs torch and transformers "
                                   "(pip install torch transformers gguf), or use --backend native") from e
        self.torch = torch
        if threads:
            torch.set_num_threads(int(threads))
        self.device = torch_device(device)
        p = os.fspath(gguf_path)
        self.hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(p)), gguf_file=os.path.basename(p),
                                                       dtype=torch.float32, attn_implementation="eager")
        self.hf.to(self.device).eval()

    def steps(self, ids, max_steps: int, is_stop: Callable[[int], bool]) -> Iterator[tuple[np.ndarray, int]]:
        torch = self.torch
        with torch.no_grad():
            past = None
            if len(ids) > 1:
                out = self.hf(input_ids=torch.tensor([list(ids[:-1])], device=self.device), use_cache=True)
                past = out.past_key_values
                del out
            feed = int(ids[-1])
            for _ in range(max_steps):
                o = self.hf(input_ids=torch.tensor([[feed]], device=self.device), past_key_values=past,
                            use_cache=True, output_attentions=True)
                past = o.past_key_values
                att = torch.stack([a[0, :, -1] for a in o.attentions]).float().cpu().numpy()
                tok = int(o.logits[0, -1].argmax())
                yield att, tok
                if is_stop(tok):
                    return
                feed = tok

#!/usr/bin/env python3
"""Reads Multitune's GGUF exports with the `gguf` package (llama.cpp's own Python reader)
and checks what llama.cpp and Ollama need: the architecture and tokenizer metadata of
the base GGUF, every tensor the base has with its type, and, for the LoRA adapter, the
lora_a / lora_b pairs with shapes llama.cpp's `--lora` accepts. Usage:
check_gguf.py BASE.gguf MODEL.gguf ADAPTER.gguf (needs `make bench-setup`)."""
import sys

from gguf import GGUFReader, GGMLQuantizationType

base, model, adapter = (GGUFReader(p) for p in sys.argv[1:4])


def field(r, key):
    f = r.fields[key]
    return f.contents()


for key in ["general.architecture", "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.chat_template",
            "tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id", "llama.context_length",
            "llama.rope.freq_base", "llama.attention.head_count_kv"]:
    assert field(model, key) == field(base, key), key
assert field(model, "tokenizer.ggml.tokens") == field(base, "tokenizer.ggml.tokens")
assert field(model, "tokenizer.ggml.merges") == field(base, "tokenizer.ggml.merges")
ftype = field(model, "general.file_type")
want = {1: GGMLQuantizationType.F16, 7: GGMLQuantizationType.Q8_0}[ftype]
b = {t.name: t for t in base.tensors}
m = {t.name: t for t in model.tensors}
assert set(b) == set(m), set(b) ^ set(m)
for name, t in m.items():
    assert list(t.shape) == list(b[name].shape), name
    assert t.tensor_type == (GGMLQuantizationType.F32 if len(t.shape) == 1 else want), (name, t.tensor_type)
assert field(adapter, "general.type") == "adapter" and field(adapter, "adapter.type") == "lora"
alpha = field(adapter, "adapter.lora.alpha")
pairs = 0
for t in adapter.tensors:
    if t.name.endswith(".lora_a"):
        w = b[t.name[: -len(".lora_a")]]
        lb = next(x for x in adapter.tensors if x.name == t.name[:-1] + "b")
        # ggml dims: a is [in, r], b is [r, out]; the weight is [in, out].
        assert t.shape[0] == w.shape[0] and lb.shape[1] == w.shape[1] and t.shape[1] == lb.shape[0], t.name
        pairs += 1
print(f"ok: {len(m)} tensors ({want.name}), tokenizer and chat template as the base; "
      f"adapter: {pairs} lora pairs, alpha {alpha}")

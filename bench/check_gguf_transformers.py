#!/usr/bin/env python3
"""Loads Multitune's exported GGUF files with Hugging Face transformers (its own GGUF
reader: dequantizes, undoes llama.cpp's q/k order, builds the tokenizer from the GGUF's
metadata) and compares their next-token logits with the merged Hugging Face folder that
`multitune export-merged` writes, loaded by transformers too. Usage:
check_gguf_transformers.py MERGED_HF_DIR DIR_WITH_GGUF... (needs `make bench-setup`)."""
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

hf_dir, gguf_files = sys.argv[1], sys.argv[2:]
tok = AutoTokenizer.from_pretrained(hf_dir)
ref = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
prompts = ["What is the capital of France?", "Classify the sentiment: I loved every minute of it."]
texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
         for p in prompts]
with torch.no_grad():
    want = [ref(**tok(t, return_tensors="pt")).logits[0, -1] for t in texts]
for path in gguf_files:
    d, f = os.path.dirname(path), os.path.basename(path)
    gtok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32).eval()
    worst, agree = 0.0, 0
    with torch.no_grad():
        for t, w in zip(texts, want):
            ids = gtok(t, return_tensors="pt")
            assert ids["input_ids"].tolist() == tok(t, return_tensors="pt")["input_ids"].tolist(), "tokens differ"
            got = model(**ids).logits[0, -1]
            worst = max(worst, (got - w).abs().max().item())
            agree += int(got.argmax() == w.argmax())
    print(f"{f}: max |Δlogit| {worst:.4f} against the merged folder, same next token {agree}/{len(texts)}")

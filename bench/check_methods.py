#!/usr/bin/env python3
"""Checks that transformers + PEFT reproduce Multitune's greedy answers with an adapter
Multitune trained and exported (any method: LoRA, rsLoRA, DoRA with its magnitudes, PiSSA
as the LoRA it converts to): the base model read from its GGUF by transformers' own
reader, `PeftModel.from_pretrained(base, ADAPTER_DIR)`, each prompt of a held-out file
chat-templated as Multitune does, greedy decoding; compared with the answers of
`multitune eval --adapter ADAPTER_DIR --data FILE --json` (OURS.json). Prints how many of
the answers are the same text. Usage:
check_methods.py MODEL.gguf ADAPTER_DIR FILE.jsonl OURS.json [N] (needs `make bench-setup`)."""
import json
import os
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

gguf, adapter, data, ours_file = sys.argv[1:5]
n = int(sys.argv[5]) if len(sys.argv) > 5 else 40
d, f = os.path.dirname(gguf), os.path.basename(gguf)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
base = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32).eval()
model = PeftModel.from_pretrained(base, adapter).eval()
ours = json.load(open(ours_file))[0]["predictions"]
records = [json.loads(line) for line in open(data) if line.strip()][:n]
same = 0
for rec, mine in zip(records, ours):
    ids = tok.apply_chat_template([{"role": "user", "content": rec["prompt"]}], add_generation_prompt=True,
                                  return_tensors="pt")
    if not torch.is_tensor(ids):
        ids = ids["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=48, do_sample=False, pad_token_id=tok.eos_token_id)
    text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    if text == mine["output"].strip():
        same += 1
    else:
        print(f"differs: {rec['prompt']!r}: PEFT {text!r}, multitune {mine['output']!r}")
print(f"{adapter}: {same} of {len(records)} greedy answers identical (transformers + PEFT vs multitune)")

#!/usr/bin/env python3
"""Recomputes Multitune's retention figures with Hugging Face transformers and PEFT: the
base model (read from its GGUF by transformers' own reader) and the same model with the
adapter (`PeftModel`), fed the probe exactly as Multitune measured it (`multitune
retention --json FILE`: every prompt and base answer as token ids). For every answer
position, KL(base ‖ tuned) of the next-token distributions (float64 from float32
logits); the mean over all answer positions, and the share of prompts whose greedy answer
stays the base model's (the tuned model's most likely token is the answer's at every
position, and a stop token where the base answer stopped). Usage:
check_retention.py MODEL.gguf ADAPTER_DIR PROBE.json (needs `make bench-setup`)."""
import json
import os
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

gguf, adapter, probe_file = sys.argv[1:4]
probe = json.load(open(probe_file))
d, f = os.path.dirname(gguf), os.path.basename(gguf)
base = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32).eval()
with torch.no_grad():
    base_logits = []
    for e in probe["examples"]:
        ids = torch.tensor([e["ids"][:-1]])
        base_logits.append(base(input_ids=ids).logits[0, e["prompt_len"] - 1:].double())
tuned = PeftModel.from_pretrained(base, adapter).eval()
stop = set(probe["stop"])
kl_sum, positions, same = 0.0, 0, 0
with torch.no_grad():
    for e, zb in zip(probe["examples"], base_logits):
        ids = torch.tensor([e["ids"][:-1]])
        zt = tuned(input_ids=ids).logits[0, e["prompt_len"] - 1:].double()
        lb, lt = torch.log_softmax(zb, -1), torch.log_softmax(zt, -1)
        kl = (lb.exp() * (lb - lt)).sum(-1).clamp(min=0)
        kl_sum += kl.sum().item()
        positions += kl.numel()
        picked = zt.argmax(-1).tolist()
        targets = e["ids"][e["prompt_len"]:]
        ok = all(p == t for p, t in zip(picked[:-1], targets[:-1]))
        last = picked[-1] in stop if e["stopped"] else picked[-1] == targets[-1]
        same += int(ok and last)
n = len(probe["examples"])
kl = kl_sum / positions
print(f"transformers + PEFT: KL {kl:.5f} nats per answer token, {same} of {n} answers kept ({100 * same / n:.1f}%)")
print(f"multitune:           KL {probe['kl']:.5f} nats per answer token, "
      f"{round(probe['same_answer'] * n)} of {n} answers kept ({100 * probe['same_answer']:.1f}%)")
print(f"KL relative difference: {abs(kl - probe['kl']) / max(probe['kl'], 1e-12):.2%}")

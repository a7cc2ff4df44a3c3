#!/usr/bin/env python3
"""Reads a Multitune run's TensorBoard event files with TensorBoard's own reader and
checks them against its train_log.jsonl: every step's loss, learning rate and gradient
norm at the same step (as float32). Usage: check_tensorboard.py RUN_DIR (a `multitune
train --out` folder). Needs the bench environment (`make bench-setup`)."""
import json
import sys

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

run = sys.argv[1]
acc = EventAccumulator(f"{run}/tensorboard")
acc.Reload()
tags = acc.Tags()["scalars"]
steps = [json.loads(l) for l in open(f"{run}/train_log.jsonl") if '"event":"step"' in l]
for tag, field in [("train/loss", "loss"), ("train/learning_rate", "lr"), ("train/grad_norm", "grad_norm")]:
    got = [(e.step, e.value) for e in acc.Scalars(tag)]
    want = [(s["step"], float(np.float32(s[field]))) for s in steps]
    assert got == want, f"{tag}: {got[:3]} != {want[:3]}"
print(f"ok: {len(steps)} steps, tags {sorted(tags)}")

"""The reference Multitune measures itself against: PyTorch (CPU) + transformers + PEFT.

`multitune bench --reference PYTHON` writes a workload file (the exact token ids of every
batch, or the prompts and labels of a ranking job) and runs this script once per
measurement, alternating with its own worker, so that both see the same data on the
same machine state. This script prints one JSON object on stdout.

What it runs is what a user of the Python stack would write:
- train: `get_peft_model` with LoRA (same rank/alpha/dropout/targets as ours), AdamW,
  gradient clipping at 1.0, labels -100 on prompt and padding, right padding to the
  longest row of the batch (dynamic padding, as `DataCollatorForSeq2Seq` does);
- eval: the same batches under `torch.no_grad()`, forward with labels;
- rank: each label appended to each prompt, one padded forward per label, the sum of
  the label tokens' log-probabilities (as lm-evaluation-harness scores choices);
- generate: `model.generate` greedy (`do_sample=False`) on left-padded batches of the
  workload's prompts, the same batch size, new-token cap and end-of-turn ids as ours;
- peak: the best f32 matmul rate torch reaches on this machine.

`--device cuda` runs the same on the GPU as a PEFT user does there: the base model in
bf16 (`dtype=torch.bfloat16`), LoRA factors kept in f32 by PEFT, the forward under
`torch.autocast(bfloat16)`, timings after `torch.cuda.synchronize()`, and the peak in
bf16. A model folder without weights (`config.json` only: what `multitune bench` writes
for `random:<shape>` models) is built from its config with random weights: the same
architecture and shapes, so the same work per token.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["train", "eval", "rank", "generate", "peak"], required=True)
    p.add_argument("--model-dir", help="Hugging Face model folder (config.json + model.safetensors)")
    p.add_argument("--workload", help="workload JSON written by `multitune bench`")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    return p.parse_args()


ARGS = parse_args()
# Thread pools read these when torch is imported.
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import torch  # noqa: E402

torch.set_num_threads(ARGS.threads)
torch.set_num_interop_threads(1)
DEVICE = torch.device(ARGS.device)
GPU = DEVICE.type == "cuda"
# What a PEFT user loads the base model in on each device.
DTYPE = torch.bfloat16 if GPU else torch.float32


def sync():
    if GPU:
        torch.cuda.synchronize(DEVICE)


def autocast():
    """bf16 autocast on the GPU (LoRA factors stay f32, products run in bf16); nothing on the CPU."""
    import contextlib

    return torch.autocast("cuda", dtype=torch.bfloat16) if GPU else contextlib.nullcontext()


def peak_rss_mib():
    # ru_maxrss is KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def pad(rows, value):
    t = max(len(r) for r in rows)
    return [r + [value] * (t - len(r)) for r in rows], [[1] * len(r) + [0] * (t - len(r)) for r in rows]


def load_model(workload):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    if os.path.exists(os.path.join(ARGS.model_dir, "model.safetensors")):
        model = AutoModelForCausalLM.from_pretrained(ARGS.model_dir, dtype=DTYPE)
    else:
        config = AutoConfig.from_pretrained(ARGS.model_dir)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPE)
    model = model.to(DEVICE)
    lora = workload["lora"]
    cfg = LoraConfig(
        r=lora["rank"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["targets"],
        use_rslora=lora.get("use_rslora", False),
        use_dora=lora.get("use_dora", False),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


def timed(fn, batches, warmup):
    """Runs `fn` on every batch; returns the per-step seconds of the batches after warm-up."""
    secs = []
    for i, b in enumerate(batches):
        t0 = time.perf_counter()
        fn(b)
        sync()
        if i >= warmup:
            secs.append(time.perf_counter() - t0)
    return secs


def lm_tensors(batch, pad_id):
    ids, mask = pad([e["ids"] for e in batch], pad_id)
    labels = []
    for e, row in zip(batch, ids):
        lab = list(row)
        for i in range(len(lab)):
            if i < e["prompt_len"] or i >= len(e["ids"]):
                lab[i] = -100
        labels.append(lab)
    return tuple(torch.tensor(x, device=DEVICE) for x in (ids, mask, labels))


def run_train(workload):
    model = load_model(workload)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    prepared = [lm_tensors(b, workload["pad"]) for b in workload["batches"]]

    def step(b):
        ids, mask, labels = b
        with autocast():
            out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.float().backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return timed(step, prepared, workload["warmup"]), sum(p.numel() for p in params)


def run_eval(workload):
    model = load_model(workload)
    model.eval()
    prepared = [lm_tensors(b, workload["pad"]) for b in workload["batches"]]

    def step(b):
        ids, mask, labels = b
        with torch.no_grad(), autocast():
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()

    return timed(step, prepared, workload["warmup"]), 0


def run_rank(workload):
    model = load_model(workload)
    model.eval()
    labels = workload["labels"]
    bs = workload["batch"]
    prompts = workload["prompts"]
    chunks = [prompts[i : i + bs] for i in range(0, len(prompts), bs)]

    def step(chunk):
        with torch.no_grad(), autocast():
            scores = torch.zeros(len(chunk), len(labels))
            for li, label in enumerate(labels):
                rows = [p + label for p in chunk]
                ids, mask = pad(rows, workload["pad"])
                ids, mask = torch.tensor(ids, device=DEVICE), torch.tensor(mask, device=DEVICE)
                logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1).cpu()
                for r, p in enumerate(chunk):
                    pos = torch.arange(len(p) - 1, len(p) - 1 + len(label))
                    scores[r, li] = logp[r, pos, torch.tensor(label)].sum()
            scores.argmax(-1).tolist()

    return timed(step, chunks, workload["warmup"]), 0


def left_pad(rows, value):
    t = max(len(r) for r in rows)
    return [[value] * (t - len(r)) + r for r in rows], [[0] * (t - len(r)) + [1] * len(r) for r in rows]


def run_generate(workload):
    """Batched greedy `generate`; returns the step seconds and every answer's new ids."""
    model = load_model(workload)
    model.eval()
    stop, pad_id, bs = workload["stop"], workload["pad"], workload["batch"]
    prompts = workload["prompts"]
    outputs = []

    def answer(chunk):
        ids, mask = left_pad(chunk, pad_id)
        with torch.no_grad(), autocast():
            out = model.generate(
                input_ids=torch.tensor(ids, device=DEVICE),
                attention_mask=torch.tensor(mask, device=DEVICE),
                do_sample=False,
                max_new_tokens=workload["max_new_tokens"],
                eos_token_id=stop,
                pad_token_id=pad_id,
            )
        rows = []
        for row in out[:, len(ids[0]) :].tolist():
            end = next((i for i, t in enumerate(row) if t in stop), len(row))
            rows.append(row[:end])
        return rows

    answer(prompts[:1])  # warm-up, untimed
    secs = []
    for i in range(0, len(prompts), bs):
        t0 = time.perf_counter()
        outputs.extend(answer(prompts[i : i + bs]))
        secs.append(time.perf_counter() - t0)
    return secs, outputs


# The shapes the peak is the best of (the GPU's needs large products to fill it).
PEAK_SHAPES = [(512, 576, 1536), (512, 1536, 576), (1024, 1024, 1024), (2048, 2048, 2048)]
if GPU:
    PEAK_SHAPES += [(4096, 4096, 4096), (8192, 8192, 8192)]


def peak_of(matmul, randn):
    best = 0.0
    for m, k, n in PEAK_SHAPES:
        a, b = randn(m, k), randn(k, n)
        for _ in range(3):
            matmul(a, b)
        times = []
        for _ in range(10):
            t0 = time.perf_counter()
            matmul(a, b)
            sync()
            times.append(time.perf_counter() - t0)
        best = max(best, 2 * m * k * n / statistics.median(times) / 1e9)
    return best


def run_peak():
    """torch's matmul (MKL) and numpy's (its bundled OpenBLAS), f32; on the GPU torch's bf16 (cuBLAS)."""
    if GPU:
        return {
            "matmul_gflops": peak_of(lambda a, b: a @ b, lambda m, n: torch.randn(m, n, device=DEVICE, dtype=DTYPE)),
            "dtype": "bf16",
            "gpu": torch.cuda.get_device_name(DEVICE),
        }
    import numpy as np

    rng = np.random.default_rng(0)
    return {
        "matmul_gflops": peak_of(lambda a, b: a @ b, lambda m, n: torch.randn(m, n)),
        "openblas_gflops": peak_of(np.matmul, lambda m, n: rng.standard_normal((m, n), dtype=np.float32)),
    }


def main():
    if ARGS.mode == "peak":
        print(json.dumps({"impl": "reference", "torch": torch.__version__, **run_peak()}))
        return
    with open(ARGS.workload) as f:
        workload = json.load(f)
    outputs = []
    if ARGS.mode == "generate":
        secs, outputs = run_generate(workload)
        trainable = 0
    else:
        secs, trainable = {"train": run_train, "eval": run_eval, "rank": run_rank}[ARGS.mode](workload)
    import peft
    import transformers

    print(
        json.dumps(
            {
                "impl": "reference",
                "step_secs": secs,
                "trainable": trainable,
                "peak_rss_mib": peak_rss_mib(),
                "outputs": outputs,
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())

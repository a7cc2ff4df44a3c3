#!/bin/sh
# The GPU check: what `make gpu-bundle` packs beside `bin/` and a machine with an NVIDIA
# GPU runs, with no Rust, no network and no PyPI there. One run tells, in at most about
# 8 minutes:
#   1. the CUDA tests (app/src/cuda_tests.rs: f32 loss and gradients against the CPU,
#      bf16 logits, a short training run);
#   2. `multitune bench` on random models in the default model's shape and in a 1B
#      Llama's (training and eval tokens/s, MFU against the measured bf16 matmul peak,
#      peak GPU memory), against PyTorch + transformers + PEFT on the same GPU and shapes
#      where the machine's python3 has them;
#   3. a short `compare` (two strategies) on the default-shaped model with generated tasks.
# It writes summary.json and summary.txt (and every log) into $OUT_DIR (default: out/
# beside this script) and exits 0 only if every step passed.
#
# The CUDA libraries the binaries load (cuBLAS, cuRAND, NVRTC of CUDA 13) are found in
# $CUDA_HOME, /usr/local/cuda, or the nvidia-* wheels of python3's site-packages (what
# PyTorch installs); the driver's libcuda comes from the system.
#
# usage: gpu-check.sh            (from the unpacked bundle)
#        GPU_CHECK_QUICK=1 gpu-check.sh   (smaller bench: the default shape only)
#        GPU_CHECK_DEVICE=cpu GPU_CHECK_SHAPES=2x16 GPU_CHECK_BUDGET=1500 GPU_CHECK_QUICK=1 gpu-check.sh
#            (a dry run of every step on the CPU, small enough for it, to try this script)
set -u
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT_DIR:-$here/out}

# 1. A GPU, or a clear stop.
if ! command -v nvidia-smi >/dev/null 2>&1; then
	echo "gpu-check: no GPU seen: nvidia-smi is not installed (this check needs an NVIDIA GPU and its driver)" >&2
	exit 3
fi
if ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
	echo "gpu-check: no GPU seen: nvidia-smi lists no GPU ($(nvidia-smi -L 2>&1 | head -n 1))" >&2
	exit 3
fi
bin=$here/bin
if [ ! -x "$bin/multitune" ] || [ ! -x "$bin/cuda-tests" ]; then
	echo "gpu-check: $bin/multitune or $bin/cuda-tests is missing: run the script of an unpacked \`make gpu-bundle\`" >&2
	exit 2
fi
mkdir -p "$out"
log=$out/steps.log
: >"$log"

# 2. The CUDA 13 libraries.
python=$(command -v python3 || true)
candidates="${CUDA_HOME:+$CUDA_HOME/lib64 $CUDA_HOME/lib} /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib"
if [ -n "$python" ]; then
	wheels=$("$python" -c 'import nvidia, os; print(" ".join(os.path.join(p, d, "lib") for p in nvidia.__path__ for d in sorted(os.listdir(p))))' 2>/dev/null || true)
	candidates="$candidates $wheels"
fi
libpath=
for d in $candidates; do
	if [ -d "$d" ] && ls "$d" 2>/dev/null | grep -qE '^lib(cublas|curand|nvrtc)\.so'; then
		libpath=${libpath:+$libpath:}$d
	fi
done
# The driver's libcuda: the system's, or where containers mount the driver.
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1'; then
	for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/wsl/lib /usr/lib64; do
		if [ -e "$d/libcuda.so.1" ]; then
			libpath=${libpath:+$libpath:}$d
			break
		fi
	done
fi
export LD_LIBRARY_PATH=${libpath}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
missing=$(ldd "$bin/multitune" | grep 'not found' || true)
if [ -n "$missing" ]; then
	echo "gpu-check: CUDA libraries not found (looked in: $candidates):" >&2
	echo "$missing" >&2
	exit 4
fi
gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader -i 0)
echo "gpu-check: $gpu; CUDA libraries from ${libpath:-the system}" | tee -a "$log"

# GPU_CHECK_DEVICE=cpu dry-runs every step on the CPU (to try this script without a GPU).
export MULTITUNE_DEVICE=${GPU_CHECK_DEVICE:-cuda:0}
models=$out/models
mkdir -p "$models"
status=0
# step NAME SECONDS COMMAND...: runs it with a time limit, its output in NAME.log.
step() {
	name=$1
	limit=$2
	shift 2
	t0=$(date +%s)
	timeout "$limit" "$@" >"$out/$name.log" 2>&1
	rc=$?
	echo "$name rc=$rc $(($(date +%s) - t0))s" | tee -a "$log"
	tail -n 40 "$out/$name.log"
	[ $rc -eq 0 ] || status=1
}

step cuda-tests 90 "$bin/cuda-tests" cuda_tests --test-threads 1

reference=
if [ -n "$python" ] && "$python" -c 'import torch, transformers, peft; assert torch.cuda.is_available()' 2>/dev/null; then
	reference="--reference $python --reference-script $here/bench/reference.py"
else
	echo "gpu-check: python3 has no torch + transformers + peft with CUDA: ours only" | tee -a "$log"
fi
bench_models=random:smollm2-135m,random:llama-1b
[ -n "${GPU_CHECK_QUICK:-}" ] && bench_models=random:smollm2-135m
# shellcheck disable=SC2086 # $reference is two flags or none
step bench 240 "$bin/multitune" --models-dir "$models" bench --models "$bench_models" --shapes "${GPU_CHECK_SHAPES:-16x512}" \
	--demo '' --modes train,eval --warmup 2 --steps 8 --json "$out/bench.json" $reference

tasks=$out/tasks
step compare 120 sh -c "'$bin/multitune' demo-data --out '$tasks' >/dev/null && \
	'$bin/multitune' --models-dir '$models' compare --model random:smollm2-135m --tasks '$tasks'/*.jsonl \
	--strategies combined,separate --merges linear --budget-tokens ${GPU_CHECK_BUDGET:-16000} --eval-limit 20 --out '$out/compare'"

# 3. The summary: every step's status and time, the GPU, the bench figures, the comparison.
if [ -n "$python" ]; then
	"$python" - "$out" "$gpu" <<'EOF'
import json, os, sys
out, gpu = sys.argv[1], sys.argv[2]
steps = {}
for line in open(os.path.join(out, "steps.log")):
    parts = line.split()
    if len(parts) == 3 and parts[1].startswith("rc="):
        steps[parts[0]] = {"rc": int(parts[1][3:]), "secs": int(parts[2].rstrip("s"))}
summary = {"gpu": gpu, "steps": steps}
bench = os.path.join(out, "bench.json")
if os.path.exists(bench):
    summary["bench"] = json.load(open(bench))
report = os.path.join(out, "compare", "report.json")
if os.path.exists(report):
    r = json.load(open(report))
    summary["compare"] = {
        "recommendation": r.get("recommendation"),
        "runs": [{k: run.get(k) for k in ("name", "tokens", "wall_s", "peak_rss_mib")} for run in r.get("runs", [])],
    }
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
EOF
fi
{
	cat "$log"
	grep -A20 'matmul peak' "$out/bench.log" 2>/dev/null
	tail -n 30 "$out/compare.log" 2>/dev/null
} >"$out/summary.txt"
echo "gpu-check: $( [ $status -eq 0 ] && echo passed || echo FAILED ); summary in $out/summary.txt and summary.json"
exit $status

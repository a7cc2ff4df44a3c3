#!/bin/sh
# Packs what the GPU check needs into one file (`make gpu-bundle` calls this after the
# CUDA build): the CLI built with `--features cuda`, the CUDA test binary (both stripped),
# scripts/gpu-check.sh and the PyTorch reference, as target/gpu-bundle/multitune-gpu.tar.xz.
# Then checks it here: at most 60 MiB, and, on a machine without a GPU, its runner stops
# with "no GPU seen" (exit 3).
#
# usage: scripts/gpu-bundle.sh CLI_BINARY CUDA_TEST_BINARY
set -eu
cli=$1
tests=$2
limit_mib=60
root=target/gpu-bundle
dir=$root/multitune-gpu
rm -rf "$root"
mkdir -p "$dir/bin" "$dir/bench"
cp "$cli" "$dir/bin/multitune"
cp "$tests" "$dir/bin/cuda-tests"
strip "$dir/bin/multitune" "$dir/bin/cuda-tests"
cp scripts/gpu-check.sh "$dir/gpu-check.sh"
cp bench/reference.py "$dir/bench/reference.py"
git describe --always --dirty >"$dir/VERSION" 2>/dev/null || echo unknown >"$dir/VERSION"
tar -C "$root" -cf - multitune-gpu | xz -9 -T0 >"$root/multitune-gpu.tar.xz"
bytes=$(wc -c <"$root/multitune-gpu.tar.xz")
mib=$(awk "BEGIN { printf \"%.1f\", $bytes / 1048576 }")
echo "gpu bundle: $root/multitune-gpu.tar.xz, $mib MiB (limit $limit_mib MiB); unpacked:"
du -sh "$dir/bin/multitune" "$dir/bin/cuda-tests"
if [ "$bytes" -gt $((limit_mib * 1048576)) ]; then
	echo "gpu bundle: $mib MiB is over the $limit_mib MiB limit" >&2
	exit 1
fi
# The runner on this machine: unpacked from the archive, it must stop cleanly where no
# GPU is seen (always here when nvidia-smi lists none).
if ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
	check=$(mktemp -d)
	tar -C "$check" -xJf "$root/multitune-gpu.tar.xz"
	set +e
	msg=$("$check/multitune-gpu/gpu-check.sh" 2>&1)
	rc=$?
	set -e
	rm -rf "$check"
	if [ $rc -ne 3 ] || ! echo "$msg" | grep -q 'no GPU seen'; then
		echo "gpu bundle: without a GPU the runner should stop with 'no GPU seen' (exit 3); it exited $rc: $msg" >&2
		exit 1
	fi
	echo "gpu bundle: no GPU here, and the runner says so: $msg"
fi
echo "on a GPU machine: tar xJf multitune-gpu.tar.xz && OUT_DIR=out multitune-gpu/gpu-check.sh"

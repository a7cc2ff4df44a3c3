#!/bin/sh
# Link-time stand-ins for `cargo build --features cuda` on a machine without the NVIDIA
# driver: candle links cuBLAS, cuRAND, NVRTC and the driver's libcuda dynamically. The
# toolkit libraries come from PyPI wheels as versioned files only (libcublas.so.13), so
# this makes the unversioned names the linker asks for, and a stub libcuda.so with the
# driver's soname (libcuda.so.1) defining every driver function cudarc can call. At run
# time the real driver's libcuda.so.1 is loaded instead; the stub is never on that path.
#
# usage: scripts/cuda-link.sh CUDA_HOME OUT_DIR
set -eu
cuda_home=$1
out=$2
mkdir -p "$out"
libdir=$cuda_home/lib
[ -d "$cuda_home/lib64" ] && libdir=$cuda_home/lib64
for lib in cublas cublasLt curand nvrtc cudart; do
	f=$(ls "$libdir/lib$lib.so."* | grep -v builtins | sort | head -n 1)
	ln -sf "$f" "$out/lib$lib.so"
done
version=$(awk '/^name = "cudarc"$/ { getline; gsub(/"/, "", $3); print $3 }' Cargo.lock)
src=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path "*/cudarc-$version/src/driver/sys/mod.rs" | head -n 1)
if [ -z "$src" ]; then
	cargo fetch -q
	src=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path "*/cudarc-$version/src/driver/sys/mod.rs" | head -n 1)
fi
# 999 is CUDA_ERROR_UNKNOWN: were the stub ever called, every call would fail cleanly.
grep -o '^pub unsafe fn cu[A-Za-z0-9_]*' "$src" | sort -u | sed 's/^pub unsafe fn \(.*\)/int \1(void) { return 999; }/' >"$out/cuda_stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$out/libcuda.so" "$out/cuda_stub.c"
# Only for trying the binaries without a driver (LD_LIBRARY_PATH=OUT_DIR): every CUDA
# call then fails, as on a machine whose driver sees no GPU.
ln -sf libcuda.so "$out/libcuda.so.1"
echo "link directory ready: $out ($(grep -c . "$out/cuda_stub.c") driver functions in the stub)"

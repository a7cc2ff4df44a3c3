# Sourced by the comparison benchmarks (bench-sizes.sh, bench-merges.sh): `run NAME
# [flags...]` times one demo comparison (every strategy, $budget tokens) into $out/NAME,
# its log in $out/NAME.log, and prints its wall time in seconds. Needs $bin, $models,
# $budget and $out.
run() {
    name=$1
    shift
    start=$(date +%s.%N)
    "$bin" --models-dir "$models" compare --model default --tasks assets/demo/*.jsonl --strategies all \
        --budget-tokens "$budget" --out "$out/$name" "$@" >"$out/$name.log" 2>&1 || {
        tail -20 "$out/$name.log"
        exit 1
    }
    end=$(date +%s.%N)
    awk "BEGIN { print $end - $start }"
}

#!/usr/bin/env bash
# Several demo recipes x seeds at once, each a first run on a fresh cache (bench_demo.py per recipe, one
# torch thread per run), for a machine with many cores and optionally a GPU:
#
#   bash benchmarks/sweep_recipes.sh OUT_DIR [RECIPES_FILE]
#
# RECIPES_FILE has one recipe per line: a name, then demo key=value settings (e.g. base.steps=2000) (default: the list below).
# SEEDS (default "0 1 2") picks the seeds. Each recipe writes OUT_DIR/NAME.txt (the bench table) and
# OUT_DIR/NAME/ (a report per seed). Wall times are only comparable between runs that shared the machine.
set -u
out=${1:-outputs/sweep}
recipes=${2:-}
seeds=${SEEDS:-"0 1 2"}
mkdir -p "$out"
default_recipes="default
plain_judge judge.hard_negatives=false
patch8 judge.patch_size=8
deeper base.num_layers=4"
list=$( [ -n "$recipes" ] && cat "$recipes" || echo "$default_recipes" )
jobs=$(echo $seeds | wc -w)
while read -r name settings; do
  [ -z "$name" ] && continue
  # shellcheck disable=SC2086  # settings are separate key=value words
  python benchmarks/bench_demo.py --seeds $seeds --jobs "$jobs" --threads 1 --out "$out/$name" $settings \
    > "$out/$name.txt" 2>&1 &
done <<< "$list"
wait
for table in "$out"/*.txt; do echo "== $(basename "$table" .txt)"; tail -n 8 "$table"; done

#!/usr/bin/env bash
# Regenerates the pictures in docs/views/ (docs/views.md says what each shows):
#   - `ttc solve --watch` on the embedded model, captured from tmux mid-search and at
#     the end (ANSI + plain text, and a PNG of the final frame rendered in Chromium);
#   - the interactive tree page (ttc tree -o tree.html) and its headless-Chromium
#     screenshot, and the tree PNG;
#   - the report plots of a simulated sweep (ttc sweep + ttc report), and a budget-cut tree.
# Needs tmux and chromium (apt-get install tmux chromium). Takes ~3 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${VENV:-.venv}/bin"
OUT=docs/views
WORK="$(mktemp -d)"
trap 'tmux kill-session -t ttc-views 2>/dev/null || true; rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
shot() {  # shot FILE.html FILE.png WIDTH HEIGHT
    chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
        --user-data-dir="$WORK/profile" --window-size="$3,$4" --screenshot="$2" \
        "file://$(realpath "$1")" 2>/dev/null
}

# 1. the live view in a real terminal (tmux), on the embedded model
"$BIN/ttc" solve "What is 3 + 5?" -q backend=native strategy.n=1 >/dev/null  # converts the model once
tmux new-session -d -s ttc-views -x 140 -y 45
tmux send-keys -t ttc-views "clear; $BIN/ttc solve 'What is 3 + 5?' --watch --strategy beam \
--budget 600 strategy.n=4 strategy.width=2 --tree $WORK/native.json; tmux wait -S ttc-views-$$" Enter
for _ in $(seq 600); do     # the first frame that shows the search under way
    tmux capture-pane -e -p -t ttc-views > "$WORK/pane.ansi"
    if grep -q "searching" "$WORK/pane.ansi" && grep -q "#3 " "$WORK/pane.ansi"; then
        cp "$WORK/pane.ansi" "$OUT/solve_watch_mid.ansi"; break
    fi
    sleep 0.1
done
tmux wait "ttc-views-$$"
tmux capture-pane -e -p -t ttc-views > "$OUT/solve_watch_final.ansi"
for f in mid final; do
    sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g' "$OUT/solve_watch_$f.ansi" > "$OUT/solve_watch_$f.txt"
done
"$BIN/python" - "$OUT/solve_watch_final.ansi" "$WORK/term.html" <<'PY'
import sys
from rich.console import Console
from rich.text import Text
console = Console(record=True, width=140, file=open("/dev/null", "w"), force_terminal=True)
console.print(Text.from_ansi(open(sys.argv[1], encoding="utf-8").read().rstrip()))
open(sys.argv[2], "w", encoding="utf-8").write(console.export_html(inline_styles=True))
PY
shot "$WORK/term.html" "$OUT/solve_watch_final.png" 1420 420

# 2. a sweep on the simulator: report plots and trees
"$BIN/ttc" sweep strategy=beam,best_of_n,dvts budget=256,1024,4096 "seed=range(0,10)" \
    dataset=sim_hard limit=20 save_tree=true progress=false "output=$WORK/sweep" >/dev/null
"$BIN/ttc" report "$WORK/sweep" --out "$WORK/report" >/dev/null
cp "$WORK"/report/plots/*.png "$OUT/"
cp "$WORK/report/report.md" "$OUT/report.md"
RUN="$WORK/sweep/runs/strategy=beam,budget=4096,seed=0/results.jsonl"
ID="$("$BIN/python" -c "import json,sys; print(next(r['id'] for r in map(json.loads, open(sys.argv[1])) if r['correct'] and len(r['tree']['nodes']) > 30))" "$RUN")"
"$BIN/ttc" tree "$RUN" -p "$ID" -o "$OUT/tree.png" >/dev/null
"$BIN/ttc" tree "$RUN" -p "$ID" -o "$OUT/tree.html" >/dev/null
shot "$OUT/tree.html" "$OUT/tree_page.png" 1200 900
CUT="$WORK/sweep/runs/strategy=beam,budget=256,seed=0/results.jsonl"
CUT_ID="$("$BIN/python" -c "import json,sys; print(next(r['id'] for r in map(json.loads, open(sys.argv[1])) if r['budget_exhausted']))" "$CUT")"
"$BIN/ttc" tree "$CUT" -p "$CUT_ID" -o "$OUT/tree_budget_cut.png" >/dev/null
echo "wrote $(ls "$OUT" | wc -l) files to $OUT"

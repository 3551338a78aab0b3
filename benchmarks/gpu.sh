#!/usr/bin/env bash
# The GPU checks in one run: the GPU tests, the Multi30k Transformers both ways, tinyshakespeare, MFU on fixed
# shapes and on real bucketed Multi30k batches (with nmtkit's loop against the bare step), and translate speed,
# ending in one Markdown table (benchmarks/gpu_report.py).
#
#   bash benchmarks/gpu.sh              # on a GPU machine, from the source tree: about 8 minutes on one H100/H200
#   TINY=1 bash benchmarks/gpu.sh       # tiny models and steps, on any machine: checks the script itself on a CPU
#
# Runs `python -m nmtkit` from src/ (PYTHONPATH=src) with torch, sentencepiece, sacrebleu, typer and rich; no
# `datasets`, no network. Corpora: $CORPORA, else .data/corpora (git-ignored: copy multi30k and tinyshakespeare
# there, and sst2 and squad for the LoRA step, and carry it to the GPU machine), else ../shared/corpora. Work
# files (runs, caches) go to $WORK (default /tmp/nmtkit-gpu); what comes back goes to $OUT (default benchmark-runs/gpu): table.md and logs.tgz (every
# step's log, each run's run.json and metrics.jsonl), packed again after every step, so a run cut short still
# brings back what it did. Each step runs under its own `timeout`; a step that fails or times out is a row of
# the table saying so, and the next step runs.
#
# The three quality runs and the tests share the GPU (they start together and train for $MINUTES each); the speed
# measurements (translate, MFU) then run one at a time, alone on the GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/benchmark-runs/gpu}
WORK=${WORK:-/tmp/nmtkit-gpu}
CORPORA=${CORPORA:-}
for candidate in "$CORPORA" "$ROOT/.data/corpora" "$ROOT/../shared/corpora"; do
  if [ -n "$candidate" ] && [ -f "$candidate/multi30k/train.de" ]; then CORPORA=$candidate; break; fi
done
[ -f "$CORPORA/multi30k/train.de" ] || { echo "gpu.sh: no corpora (multi30k, tinyshakespeare) found; set CORPORA" >&2; exit 1; }
M30K=$CORPORA/multi30k
mkdir -p "$OUT" "$WORK/keep"
rm -f "$WORK/status.txt"
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH} NMTKIT_CACHE=$WORK/cache PYTHONUNBUFFERED=1
PY=${PYTHON:-python}

if [ "${TINY:-0}" = 1 ]; then  # the same steps with tiny settings: minutes on a 2-core CPU
  DEVICE=cpu; MINUTES=0.5; TEST_LINES=100; VOCAB=1000
  MODEL=(--d-model 32 --heads 2 --layers 1 --ff-dim 64 --max-tokens 2048 --max-steps 30 --eval-every 30)
  BASE=(--d-model 32 --heads 2 --layers 2 --ff-dim 64 --max-tokens 2048 --max-steps 12 --log-every 3)
  CHARS=(--block-size 32 --d-model 32 --heads 2 --layers 1 --batch-size 8 --max-steps 30 --eval-every 30)
  SPEED=(--model transformer-cpu gpt-cpu --device cpu --steps 8 --max-tokens 512)
  LORA=(--steps 2 --batch-size 2)
  LIMIT=300
else
  DEVICE=cuda; MINUTES=${MINUTES:-3}; TEST_LINES=1000; VOCAB=8000
  # the GPU recipe of benchmarks/multi30k.py, bounded by time
  MODEL=(--d-model 512 --heads 8 --layers 3 --ff-dim 2048 --dropout 0.3 --lr 1e-3 --warmup 1000 --max-tokens 8192
         --max-steps 100000 --eval-every 500)
  # Transformer-base (6+6 layers, 512 wide) on real, length-bucketed Multi30k batches
  BASE=(--d-model 512 --heads 8 --encoder-layers 6 --decoder-layers 6 --ff-dim 2048 --max-tokens 32768 --max-steps 240
        --log-every 40)
  # nanoGPT's shakespeare-char model and schedule
  CHARS=(--block-size 256 --d-model 384 --heads 6 --layers 6 --dropout 0.2 --batch-size 64 --lr 1e-3 --warmup 100
         --beta2 0.99 --schedule cosine --min-lr-ratio 0.1 --max-steps 5000 --eval-every 250 --compile)
  SPEED=(--model transformer-base gpt2-small --device cuda --compile --steps 60)
  LORA=(--steps 100 --batch-size 32)
  LIMIT=420
fi

pack() {  # what comes back: small files only
  tar czf "$OUT/logs.tgz.tmp" -C "$WORK" status.txt keep $(cd "$WORK" && ls ./*.log ./*.out 2>/dev/null) 2>/dev/null
  mv "$OUT/logs.tgz.tmp" "$OUT/logs.tgz"
}

step() {  # step NAME SECONDS COMMAND...: stdout to NAME.out, stderr to NAME.log, the exit status to status.txt
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout -k 10 "$limit" "$@" > "$WORK/$name.out" 2> "$WORK/$name.log"
  local rc=$?
  echo "$name $rc $((SECONDS - start))" >> "$WORK/status.txt"
  for run in "$WORK/$name" "$WORK/run-$name"; do  # a run folder's records come back
    if [ -d "$run" ]; then
      mkdir -p "$WORK/keep/$name"
      cp "$run"/run.json "$run"/metrics.jsonl "$WORK/keep/$name/" 2>/dev/null
    fi
  done
  pack
  return $rc
}

NMTKIT=("$PY" -m nmtkit)

m30k() {  # m30k SRC TGT: the command line of a Multi30k run, in CMD
  CMD=("${NMTKIT[@]}" train-translator --src "$M30K/train.$1" --tgt "$M30K/train.$2" --valid-src "$M30K/val.$1"
       --valid-tgt "$M30K/val.$2" --arch transformer -t "$WORK/tok" -o "$WORK/m30k-$1-$2" --overwrite
       --device "$DEVICE" --label-smoothing 0.1 --max-minutes "$MINUTES" "${MODEL[@]}")
}

head -n "$TEST_LINES" "$M30K/test_2016_flickr.de" > "$WORK/test.de"
head -n "$TEST_LINES" "$M30K/test_2016_flickr.en" > "$WORK/test.en"
step environment 60 "$PY" -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU')"
step tokenizer 120 "${NMTKIT[@]}" train-tokenizer "$M30K/train.de" "$M30K/train.en" -o "$WORK/tok" --vocab-size "$VOCAB" --overwrite

# the quality runs and the tests, together
seconds=$(awk "BEGIN { print int($MINUTES * 60) + $LIMIT }")
step tests 300 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py &
m30k de en && step m30k-de-en "$seconds" "${CMD[@]}" &
m30k en de && step m30k-en-de "$seconds" "${CMD[@]}" &
step shakespeare "$seconds" "${NMTKIT[@]}" pretrain "$CORPORA/tinyshakespeare/input.txt" --tokenizer-type char \
  --vocab-size 100 -o "$WORK/shakespeare" --overwrite --device "$DEVICE" --max-minutes "$MINUTES" "${CHARS[@]}" &
wait

# speed, one thing at a time
for pair in de-en en-de; do
  src=${pair%-*} tgt=${pair#*-}
  for beam in 5 1; do
    step "translate-$pair-beam$beam" 300 "${NMTKIT[@]}" evaluate -m "$WORK/m30k-$pair" --src "$WORK/test.$src" \
      --ref "$WORK/test.$tgt" --beam "$beam" --tokenize 13a --lowercase --device "$DEVICE" --json
  done
done
step first-line 120 bash -c "(head -n 1 '$WORK/test.de'; sleep 20) | timeout 60 $PY -m nmtkit translate \
  -m '$WORK/m30k-de-en' --device $DEVICE | (IFS= read -r line && echo \"\$SECONDS s: \$line\")"
step training-speed 400 "$PY" benchmarks/training_speed.py "${SPEED[@]}"
step bucketed 300 "${NMTKIT[@]}" train-translator --src "$M30K/train.de" --tgt "$M30K/train.en" --arch transformer \
  -t "$WORK/tok" -o "$WORK/bucketed" --overwrite --device "$DEVICE" --eval-every 100000 "${BASE[@]}"
if [ -f "$CORPORA/sst2/train.tsv" ] && [ -f "$CORPORA/squad/train.json" ]; then  # full vs LoRA on GPT-2's shape
  step lora 400 "$PY" benchmarks/lora.py --corpora "$CORPORA" --out "$WORK/lora" --device "$DEVICE" "${LORA[@]}"
fi

"$PY" benchmarks/gpu_report.py "$WORK" | tee "$OUT/table.md"
pack

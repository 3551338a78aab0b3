#!/usr/bin/env bash
# nmtkit end to end on the demo English -> Korean corpus that ships with it (about a minute on 2 CPU cores):
# train a tokenizer, train a small Transformer, translate "I am a student.", score the test set.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf checkpoints/demo-tokenizer checkpoints/demo-transformer  # this script's own earlier results
set -x
nmtkit train-tokenizer demo -o checkpoints/demo-tokenizer --vocab-size 400
nmtkit train-translator --corpus demo --src-lang en --tgt-lang ko -t checkpoints/demo-tokenizer \
    --arch transformer --d-model 64 --heads 4 --layers 2 --ff-dim 256 \
    --max-steps 400 --warmup 100 --lr 2e-3 --max-tokens 2048 --eval-every 100 -o checkpoints/demo-transformer
echo "I am a student." | nmtkit translate -m checkpoints/demo-transformer
nmtkit evaluate -m checkpoints/demo-transformer --src demo/test.en --ref demo/test.ko

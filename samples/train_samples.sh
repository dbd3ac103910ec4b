#!/usr/bin/env bash
# How the sample models in samples/ were made (2 CPU cores). Run from the repository root.
# Each run writes runs/NAME/{best,last}.safetensors and metrics.jsonl; best.safetensors is copied here.
set -euo pipefail
MNIST=${MNIST:-../shared/data/mnist}
t() { local name=$1; shift; local t0=$(date +%s); vitscope train --quiet --overwrite --out runs/$name "$@";
      echo "$name: $(( $(date +%s) - t0 ))s wall" | tee -a runs/times.txt; cp runs/$name/best.safetensors samples/$name.safetensors; }
mkdir -p runs
t fashion-vit-p7 --model vit-4x4 --dataset fashion-mnist --epochs 15
t fashion-vit-p4 --model vit-4x4-p4 --dataset fashion-mnist --epochs 30 --lr 3e-3
t fashion-cnn --model cnn-small --dataset fashion-mnist --epochs 8
t digits-vit --model vit-4x4 --dataset mnist --data-dir "$MNIST" --split-train 8000 --epochs 40
t digits-vit-ft --finetune samples/fashion-vit-p7.safetensors --dataset mnist --data-dir "$MNIST" \
  --split-train 8000 --epochs 20 --lr 1e-3

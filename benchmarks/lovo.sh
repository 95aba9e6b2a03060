#!/usr/bin/env bash
# Leave one volume out: train each recipe on one volume (300 steps, resumable), then score it on
# the other volume's training stack. Run from the repository root; figures in docs/benchmarks.md.
set -eu
D=${MITOSEG_DATA_DIR:-../shared/data}
ARCH='"encoder": "timm-regnety_004", "decoder_channels": [128, 64, 32, 16, 16], "input_scale": 0.5'
COMMON="--steps 300 --resume --seed 0"
SBEM="--image $D/sbem/train_image.tif --mask $D/sbem/train_mask.tif --val-fraction 0.2"
LUCCHI="--image $D/lucchipp/train_image.tif --mask $D/lucchipp/train_mask.tif --val-fraction 0.12"
export HF_HUB_OFFLINE=1
# v2's recipe: no pixel sizes, the network at half the stack's resolution, full augmentation
mitoseg train $SBEM --spec "{$ARCH}" --augment full $COMMON --out runs/lovo/v2-sbem
mitoseg train $LUCCHI --spec "{$ARCH}" --augment full $COMMON --out runs/lovo/v2-lucchipp
# pixel sizes in nm (the network at 10 nm) with strong, then full, augmentation
mitoseg train $SBEM --pixel-size 9.3 --spec "{$ARCH, \"pixel_size_nm\": 5}" --augment strong $COMMON --out runs/lovo/nm-sbem
mitoseg train $LUCCHI --pixel-size 5 --spec "{$ARCH, \"pixel_size_nm\": 5}" --augment strong $COMMON --out runs/lovo/nm-lucchipp
mitoseg train $SBEM --pixel-size 9.3 --spec "{$ARCH, \"pixel_size_nm\": 5}" --augment full $COMMON --out runs/lovo/nmfull-sbem
cd benchmarks
for run in v2-sbem nm-sbem nmfull-sbem; do
  python cross_volume.py ../runs/lovo/$run/best --trained-on sbem --on lucchipp --every 3
done
for run in v2-lucchipp nm-lucchipp; do
  python cross_volume.py ../runs/lovo/$run/best --trained-on lucchipp --on sbem
done

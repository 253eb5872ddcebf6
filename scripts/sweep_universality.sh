#!/usr/bin/env bash
# The dead-latent sweep of the Fashion-MNIST universality study: one training run per row, written
# to runs/fashion_mnist_{usae,independent}/<row>/. Rows are chosen on the validation split;
# `make results` (scripts/make_results.py) turns the run folders into the sweep table.
#   bash scripts/sweep_universality.sh list            # the rows
#   bash scripts/sweep_universality.sh usae:lr5e-4     # train one row
# Every run: the Makefile's stage command plus the row's overrides (run niced on a shared machine);
# each row sets every lever the table shows, so a row trains the same whatever the configs' defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
FM=configs/fashion_mnist
M=--model.init_args

declare -A ROWS=(
  # baseline: the previous defaults (lr 1e-4 constant, no AuxK, revive 1e-4, 4,096 latents)
  [base]="--trainer.max_epochs 14 $M.sae.n_latents 4096 $M.lr 0.0001 $M.lr_schedule constant $M.warmup_steps 0 $M.sae.aux_k 0 $M.sae.pre_bias false $M.sae.revive_bias_step 0.0001 $M.sae.dead_window 4096 $M.loss_normalisation mean"
  # learning rate for the 280-step budget, warm-up + cosine, pre-bias (data mean), AuxK on dead latents
  # the cached features are nearly low-rank (MobileNetV3: 95% of the variance in ~9 principal
  # components; ResNet50: 80% in ~12), so a small dictionary is the lever for rare latents;
  # 6 epochs (120 steps), lr 1e-3 warm-up + cosine, pre-bias, AuxK 256 on latents silent for 4 batches
  [e6_n512_lr1e-3_auxk_rev3e-4]="--trainer.max_epochs 6 $M.sae.n_latents 512 $M.lr 0.001 $M.lr_schedule cosine $M.warmup_steps 10 $M.sae.pre_bias true $M.sae.aux_k 256 $M.sae.dead_window 4096 $M.sae.revive_bias_step 0.0003 $M.loss_normalisation mean"
  [e6_n512_lr1e-3_auxk_norevive]="--trainer.max_epochs 6 $M.sae.n_latents 512 $M.lr 0.001 $M.lr_schedule cosine $M.warmup_steps 10 $M.sae.pre_bias true $M.sae.aux_k 256 $M.sae.dead_window 4096 $M.sae.revive_bias_step 0.0 $M.loss_normalisation mean"
  # fewer latents (the rare-latent lever on near-low-rank features), the same 6-epoch budget
  [e6_n256_lr1e-3_auxk_rev3e-4]="--trainer.max_epochs 6 $M.sae.n_latents 256 $M.lr 0.001 $M.lr_schedule cosine $M.warmup_steps 10 $M.sae.pre_bias true $M.sae.aux_k 128 $M.sae.dead_window 4096 $M.sae.revive_bias_step 0.0003 $M.loss_normalisation mean"
  [e6_n256_lr1e-3_auxk_norevive]="--trainer.max_epochs 6 $M.sae.n_latents 256 $M.lr 0.001 $M.lr_schedule cosine $M.warmup_steps 10 $M.sae.pre_bias true $M.sae.aux_k 128 $M.sae.dead_window 4096 $M.sae.revive_bias_step 0.0 $M.loss_normalisation mean"
  [e6_n128_lr1e-3_auxk_rev3e-4]="--trainer.max_epochs 6 $M.sae.n_latents 128 $M.lr 0.001 $M.lr_schedule cosine $M.warmup_steps 10 $M.sae.pre_bias true $M.sae.aux_k 64 $M.sae.dead_window 4096 $M.sae.revive_bias_step 0.0003 $M.loss_normalisation mean"
  [e6_n128_lr1e-3_auxk_norevive]="--trainer.max_epochs 6 $M.sae.n_latents 128 $M.lr 0.001 $M.lr_schedule cosine $M.warmup_steps 10 $M.sae.pre_bias true $M.sae.aux_k 64 $M.sae.dead_window 4096 $M.sae.revive_bias_step 0.0 $M.loss_normalisation mean"
  [e6_n128_lr1e-3_auxk_rev3e-4_pmv]="--trainer.max_epochs 6 $M.sae.n_latents 128 $M.lr 0.001 $M.lr_schedule cosine $M.warmup_steps 10 $M.sae.pre_bias true $M.sae.aux_k 64 $M.sae.dead_window 4096 $M.sae.revive_bias_step 0.0003 $M.loss_normalisation per_model_variance"
  # loss normalisation (same budget as the 512-latent row): per-sample squared norms (the paper's
  # form) and per-model variance (each model's term weighted equally per unit of relative error)
  [e6_n512_lr1e-3_auxk_rev3e-4_sqnorm]="--trainer.max_epochs 6 $M.sae.n_latents 512 $M.lr 0.001 $M.lr_schedule cosine $M.warmup_steps 10 $M.sae.pre_bias true $M.sae.aux_k 256 $M.sae.dead_window 4096 $M.sae.revive_bias_step 0.0003 $M.loss_normalisation squared_norm"
  [e6_n512_lr1e-3_auxk_rev3e-4_pmv]="--trainer.max_epochs 6 $M.sae.n_latents 512 $M.lr 0.001 $M.lr_schedule cosine $M.warmup_steps 10 $M.sae.pre_bias true $M.sae.aux_k 256 $M.sae.dead_window 4096 $M.sae.revive_bias_step 0.0003 $M.loss_normalisation per_model_variance"
  [e6_n1024_lr1e-3_auxk_rev3e-4]="--trainer.max_epochs 6 $M.sae.n_latents 1024 $M.lr 0.001 $M.lr_schedule cosine $M.warmup_steps 10 $M.sae.pre_bias true $M.sae.aux_k 256 $M.sae.dead_window 4096 $M.sae.revive_bias_step 0.0003 $M.loss_normalisation mean"
  # short budget: 6 epochs (120 steps), 2,048 latents, lr 1e-3 warm-up + cosine, pre-bias, AuxK 256 on
  # latents silent for 4 batches, revive step 3e-4
  [e6_n2048_lr1e-3_auxk_rev3e-4]="--trainer.max_epochs 6 $M.sae.n_latents 2048 $M.lr 0.001 $M.lr_schedule cosine $M.warmup_steps 10 $M.sae.pre_bias true $M.sae.aux_k 256 $M.sae.dead_window 4096 $M.sae.revive_bias_step 0.0003 $M.loss_normalisation mean"
  [e6_n2048_lr1e-3_auxk_norevive]="--trainer.max_epochs 6 $M.sae.n_latents 2048 $M.lr 0.001 $M.lr_schedule cosine $M.warmup_steps 10 $M.sae.pre_bias true $M.sae.aux_k 256 $M.sae.dead_window 4096 $M.sae.revive_bias_step 0.0 $M.loss_normalisation mean"
  # 2,048 latents for a 20k-image demo, lr 7e-4 warm-up + cosine, pre-bias (data mean), AuxK 256 on
  # latents silent for 4 batches, revive step 3e-4; the same 280 steps (batch 1024, 14 epochs)
  [n2048_lr7e-4_auxk_rev3e-4]="--trainer.max_epochs 14 $M.sae.n_latents 2048 $M.lr 0.0007 $M.lr_schedule cosine $M.warmup_steps 20 $M.sae.pre_bias true $M.sae.aux_k 256 $M.sae.dead_window 4096 $M.sae.revive_bias_step 0.0003 $M.loss_normalisation mean"
  [n2048_lr7e-4_auxk_norevive]="--trainer.max_epochs 14 $M.sae.n_latents 2048 $M.lr 0.0007 $M.lr_schedule cosine $M.warmup_steps 20 $M.sae.pre_bias true $M.sae.aux_k 256 $M.sae.dead_window 4096 $M.sae.revive_bias_step 0.0 $M.loss_normalisation mean"
  # 2,048 latents for a 20k-image demo, batch 512 (560 steps), lr 5e-4 warm-up + cosine, pre-bias, AuxK
  [n2048_b512_lr5e-4_auxk]="--trainer.max_epochs 14 $M.sae.n_latents 2048 --data.init_args.batch_size 512 $M.lr 0.0005 $M.lr_schedule cosine $M.warmup_steps 28 $M.sae.pre_bias true $M.sae.aux_k 256 $M.sae.dead_window 4096 $M.sae.revive_bias_step 0.0001 $M.loss_normalisation mean"
  [n2048_b512_lr5e-4_auxk_norevive]="--trainer.max_epochs 14 $M.sae.n_latents 2048 --data.init_args.batch_size 512 $M.lr 0.0005 $M.lr_schedule cosine $M.warmup_steps 28 $M.sae.pre_bias true $M.sae.aux_k 256 $M.sae.dead_window 4096 $M.sae.revive_bias_step 0.0 $M.loss_normalisation mean"
  [lr5e-4_auxk]="--trainer.max_epochs 14 $M.sae.n_latents 4096 $M.lr 0.0005 $M.lr_schedule cosine $M.warmup_steps 20 $M.sae.pre_bias true $M.sae.aux_k 256 $M.sae.dead_window 20480 $M.sae.revive_bias_step 0.0001 $M.loss_normalisation mean"
  [lr5e-4_auxk_n2048]="--trainer.max_epochs 14 $M.sae.n_latents 2048 $M.lr 0.0005 $M.lr_schedule cosine $M.warmup_steps 20 $M.sae.pre_bias true $M.sae.aux_k 256 $M.sae.dead_window 20480 $M.sae.revive_bias_step 0.0001 $M.loss_normalisation mean"
  [lr1e-3_auxk]="--trainer.max_epochs 14 $M.sae.n_latents 4096 $M.lr 0.001 $M.lr_schedule cosine $M.warmup_steps 20 $M.sae.pre_bias true $M.sae.aux_k 512 $M.sae.dead_window 10240 $M.sae.revive_bias_step 0.0001 $M.loss_normalisation mean"
  [lr5e-4_auxk_norevive]="--trainer.max_epochs 14 $M.sae.n_latents 4096 $M.lr 0.0005 $M.lr_schedule cosine $M.warmup_steps 20 $M.sae.pre_bias true $M.sae.aux_k 256 $M.sae.dead_window 20480 $M.sae.revive_bias_step 0.0 $M.loss_normalisation mean"
  [lr5e-4_nopre]="--trainer.max_epochs 14 $M.sae.n_latents 4096 $M.lr 0.0005 $M.lr_schedule cosine $M.warmup_steps 20 $M.sae.pre_bias false $M.sae.aux_k 256 $M.sae.dead_window 20480 $M.sae.revive_bias_step 0.0001 $M.loss_normalisation mean"
)

if [[ "${1:-list}" == list ]]; then
  for r in "${!ROWS[@]}"; do echo "$r: ${ROWS[$r]}"; done | sort
  exit 0
fi
system=${1%%:*}; row=${1#*:}; seed=${2:-0}
[[ -n "${ROWS[$row]+x}" ]] || { echo "error: unknown row '$row' (bash $0 list)" >&2; exit 2; }
case $system in
  usae) sae=(--config configs/sae/usae_joint.yaml --config $FM/usae.yaml) ;;
  independent) sae=(--config configs/sae/independent.yaml --config $FM/independent.yaml) ;;
  *) echo "error: system '$system' must be usae or independent" >&2; exit 2 ;;
esac
version=sweep_$row; [[ $row == base ]] && version=base  # the previous defaults (make results compares to it)
[[ $seed == 0 ]] || version=${version}_seed$seed
# shellcheck disable=SC2086
exec $PYTHON train.py --config $FM/activations.yaml "${sae[@]}" --run.version "$version" \
  --seed_everything "$seed" $M.seed "$seed" --data.init_args.progress false ${ROWS[$row]}

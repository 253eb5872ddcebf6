#!/usr/bin/env bash
# Seeds of the Fashion-MNIST universality headline: for each seed (SAE initialisation and data
# order; the backbones and the activation cache stay fixed) train the USAE and the independent SAEs
# with the default configs into runs/fashion_mnist_{usae,independent}/seed<s>/, score them
# (splits.json) and write the universality report (no feature visualisation) beside the USAE run.
# `make results` then reports mean ± std over the seeds.
#   bash scripts/seeds_universality.sh            # seeds 0 1 2
#   bash scripts/seeds_universality.sh 3 4        # more seeds
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
FM=configs/fashion_mnist
seeds=("$@"); [[ ${#seeds[@]} -gt 0 ]] || seeds=(0 1 2)
for s in "${seeds[@]}"; do
  for system in usae independent; do
    sae=configs/sae/independent.yaml; [[ $system == usae ]] && sae=configs/sae/usae_joint.yaml
    run=runs/fashion_mnist_$system/seed$s
    [[ -f $run/results.json ]] || $PYTHON train.py --config $FM/activations.yaml --config $sae --config $FM/$system.yaml \
      --run.version "seed$s" --seed_everything "$s" --model.init_args.seed "$s" --data.init_args.progress false
    $PYTHON scripts/eval_sae_splits.py "$run"
  done
  $PYTHON analyze.py --config $FM/analysis_universality.yaml \
    --analysis.init_args.inputs.usae_checkpoint runs/fashion_mnist_usae/seed$s/checkpoints/last.ckpt \
    --analysis.init_args.inputs.independent_checkpoint runs/fashion_mnist_independent/seed$s/checkpoints/last.ckpt \
    --analysis.init_args.inputs.train_config runs/fashion_mnist_usae/seed$s/config.yaml \
    --analysis.init_args.output_dir runs/fashion_mnist_usae/seed$s/universality_report \
    --analysis.init_args.n_features 0 --analysis.init_args.seed "$s"
done

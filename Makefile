# The project's commands. `make demo` runs the main job, `make test` the test suite; both install
# what they need first (scripts/setup.sh). PYTHON picks the interpreter (default python3).
#
# The studies are file targets: each stage's output is a file, a stage runs only when its output is
# missing or older than its inputs, and scripts/stage.py resumes an interrupted training stage from
# its last checkpoint (or skips it when its results.json matches the config and no --after input,
# an earlier stage's output, is newer than the run). Kill any stage and
# run the same command again: it finishes with the numbers an unbroken run would have had.
PYTHON ?= python3
export PYTHONWARNINGS ?= ignore
RUNS := runs
STAGE := $(PYTHON) scripts/stage.py
FM := configs/fashion_mnist
CF := configs/cifar100
banner = @echo "==== [$$(date +%H:%M:%S)] $(1)"

.PHONY: setup test test-slow demo fashion-study ksae-study universality-study explorer cifar-study bench gpu-check results

setup:
	PYTHON=$(PYTHON) bash scripts/setup.sh

test: setup
	$(PYTHON) -m pytest

test-slow: setup
	$(PYTHON) -m pytest -m slow

demo: setup fashion-study

# ---- Fashion-MNIST study (CPU, offline): k-sparse autoencoder + universality over two CNNs -----
fashion-study: ksae-study universality-study explorer
	$(call banner,Fashion-MNIST study done: runs/fashion_mnist_ksae/main/report/report.html and runs/fashion_mnist_usae/main/universality_report/index.html)
	$(call banner,Concept explorers: runs/fashion_mnist_usae/main/explorer/index.html and runs/fashion_mnist_ksae/main/explorer/index.html)

KSAE := $(RUNS)/fashion_mnist_ksae/main/results.json
PROBE := $(RUNS)/fashion_mnist_probe/main/results.json
PIXELS := $(RUNS)/fashion_mnist_probe_pixels/main/results.json
PROBE_AK := $(RUNS)/fashion_mnist_probe_alphak/main/results.json
KSAE_REPORT := $(RUNS)/fashion_mnist_ksae/main/report/results.json
ksae-study: $(KSAE_REPORT)

$(KSAE): $(FM)/ksae.yaml
	$(call banner,k-sparse autoencoder)
	$(STAGE) --config $(FM)/ksae.yaml
$(PROBE): $(FM)/probe.yaml $(KSAE)
	$(call banner,linear probe on the frozen codes)
	$(STAGE) --after=$(KSAE) --config $(FM)/probe.yaml
$(PIXELS): $(FM)/probe.yaml $(FM)/probe_pixels.yaml
	$(call banner,linear probe on raw pixels (baseline))
	$(STAGE) --config $(FM)/probe.yaml --config $(FM)/probe_pixels.yaml
$(PROBE_AK): $(FM)/probe.yaml $(FM)/probe_alphak.yaml $(KSAE)
	$(call banner,linear probe on the alpha-k codes (second row))
	$(STAGE) --after=$(KSAE) --config $(FM)/probe.yaml --config $(FM)/probe_alphak.yaml
$(KSAE_REPORT): $(FM)/analysis.yaml $(PROBE) $(PIXELS) $(PROBE_AK)
	$(call banner,k-sparse analysis report)
	$(PYTHON) analyze.py --config $(FM)/analysis.yaml

RESNET := $(RUNS)/fashion_mnist_resnet50/main/results.json
MOBILE := $(RUNS)/fashion_mnist_mobilenet_v3_large/main/results.json
FM_CACHE := artifacts/activations/fashion_mnist/.built
USAE := $(RUNS)/fashion_mnist_usae/main/results.json
INDEP := $(RUNS)/fashion_mnist_independent/main/results.json
UNIV_REPORT := $(RUNS)/fashion_mnist_usae/main/universality_report/report.json
universality-study: $(UNIV_REPORT)

$(RESNET): $(FM)/resnet50.yaml
	$(call banner,fine-tune ResNet50)
	$(STAGE) --config $(FM)/resnet50.yaml
$(MOBILE): $(FM)/mobilenet_v3_large.yaml
	$(call banner,fine-tune MobileNetV3-Large)
	$(STAGE) --config $(FM)/mobilenet_v3_large.yaml
$(FM_CACHE): $(FM)/activations.yaml $(RESNET) $(MOBILE)
	$(call banner,activation cache)
	$(PYTHON) build_cache.py --config $(FM)/activations.yaml
	@touch $@
$(USAE): $(FM_CACHE) $(FM)/usae.yaml configs/sae/usae_joint.yaml
	$(call banner,Universal SAE)
	$(STAGE) --after=$(FM_CACHE) --config $(FM)/activations.yaml --config configs/sae/usae_joint.yaml --config $(FM)/usae.yaml
$(INDEP): $(FM_CACHE) $(FM)/independent.yaml configs/sae/independent.yaml
	$(call banner,independent SAEs)
	$(STAGE) --after=$(FM_CACHE) --config $(FM)/activations.yaml --config configs/sae/independent.yaml --config $(FM)/independent.yaml
$(UNIV_REPORT): $(FM)/analysis_universality.yaml $(USAE) $(INDEP)
	$(call banner,universality report)
	$(PYTHON) analyze.py --config $(FM)/analysis_universality.yaml

# Concept explorers (static sites, open from file://): every latent of the USAE, every k-sparse unit.
FM_EXPLORER := $(RUNS)/fashion_mnist_usae/main/explorer/build.json
KSAE_EXPLORER := $(RUNS)/fashion_mnist_ksae/main/explorer/build.json
explorer: $(FM_EXPLORER) $(KSAE_EXPLORER)

$(FM_EXPLORER): $(FM)/explorer.yaml $(UNIV_REPORT)
	$(call banner,concept explorer: Universal SAE latents)
	$(PYTHON) analyze.py --config $(FM)/explorer.yaml
$(KSAE_EXPLORER): $(FM)/explorer_ksparse.yaml $(KSAE_REPORT)
	$(call banner,concept explorer: k-sparse AE units)
	$(PYTHON) analyze.py --config $(FM)/explorer_ksparse.yaml

# ---- CIFAR-100 study (GPU): pretrained backbones, 10,000 latents, k = 32, 14 epochs --------------
# Extra Trainer options for every training stage, e.g. TRAINER="--trainer.devices 4 --trainer.strategy ddp"
TRAINER ?=
C_RUNS := $(foreach m,resnet50 mobilenet_v3_large vgg16,$(RUNS)/cifar100_$(m)/main/results.json)
CF_CACHE := artifacts/activations/cifar100/.built
C_USAE := $(RUNS)/cifar100_usae/main/results.json
C_INDEP := $(RUNS)/cifar100_independent/main/results.json
C_REPORT := $(RUNS)/cifar100_usae/main/universality_report/report.json
C_EXPLORER := $(RUNS)/cifar100_usae/main/explorer/build.json
cifar-study: setup $(C_EXPLORER)

$(RUNS)/cifar100_%/main/results.json: $(CF)/%.yaml
	$(call banner,fine-tune $* on CIFAR-100)
	$(STAGE) --config $(CF)/$*.yaml $(TRAINER)
$(CF_CACHE): $(CF)/activations.yaml $(C_RUNS)
	$(call banner,activation cache)
	$(PYTHON) build_cache.py --config $(CF)/activations.yaml
	@touch $@
$(C_USAE): $(CF_CACHE) $(CF)/usae.yaml configs/sae/usae_joint.yaml
	$(call banner,Universal SAE)
	$(STAGE) --after=$(CF_CACHE) --config $(CF)/activations.yaml --config configs/sae/usae_joint.yaml --config $(CF)/usae.yaml $(TRAINER)
$(C_INDEP): $(CF_CACHE) $(CF)/independent.yaml configs/sae/independent.yaml
	$(call banner,independent SAEs)
	$(STAGE) --after=$(CF_CACHE) --config $(CF)/activations.yaml --config configs/sae/independent.yaml --config $(CF)/independent.yaml $(TRAINER)
$(C_REPORT): $(CF)/analysis_universality.yaml $(C_USAE) $(C_INDEP)
	$(call banner,universality report)
	$(PYTHON) analyze.py --config $(CF)/analysis_universality.yaml
$(C_EXPLORER): $(CF)/explorer.yaml $(C_REPORT)
	$(call banner,concept explorer)
	$(PYTHON) analyze.py --config $(CF)/explorer.yaml

bench: setup
	$(PYTHON) benchmarks/bench_fashion_loading.py
	$(PYTHON) benchmarks/bench_topk_sae.py --quick

# One-call GPU check (<= 8 min on one CUDA GPU, offline): make gpu-check [OUT=runs/gpu_check]
OUT ?= runs/gpu_check
gpu-check:  # no setup: the GPU machine may be offline (install requirements.txt first)
	PYTHON=$(PYTHON) bash scripts/gpu_check.sh $(OUT)

# docs/results.md (+ docs/figures/) from the run folders; no number in it is typed by hand
results:
	$(PYTHON) scripts/make_results.py --readme README.md

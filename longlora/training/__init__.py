"""What ``python -m longlora.finetune`` is made of, beside its training loop (``longlora/finetune.py``).

- ``data``: packed pre-training rows and SFT examples (read through ``data_tools.reader``).
- ``config``: ``FinetuneConfig``, the flags and YAML recipes of a run, checked before anything loads.
- ``checkpoints``: the output folder: checkpoints with manifests, ``--resume``, the run record.
- ``launch``: the accelerator for one process, DDP, DeepSpeed or FSDP launchers.
- ``offload``: activation offloading to CPU memory (``--offload-activations``).
- ``cpu_memory``: glibc's allocator setting behind ``--compact-cpu-memory``.

Only training imports these; the app, the QA engine and evaluation never do.
"""

"""The output folder of ``python -m longlora.finetune``: checkpoints, resuming, the run's own files.

A run writes ``train_log.jsonl`` and ``longlora_args.json`` (the run record, ``status`` "running" then
"complete") from its first step, checkpoints under ``checkpoints/step-N`` (the newest ``--keep-checkpoints``,
2 by default), and the adapter (or full model) at the end, when the checkpoints are deleted. So a folder tells what happened:
a checkpoint -> resume from it; only the run's own files -> killed before its first checkpoint, start at
step 0; a record with status "complete" and weights -> finished, nothing to resume.

A checkpoint counts only once its ``trainer_state.json`` is written, last, after every other file: a run
killed or out of disk space while saving leaves the previous checkpoint in charge. That file also lists
every file of the checkpoint with its size and SHA-256, and ``--resume`` checks them before loading, so a
checkpoint truncated or damaged afterwards (a copy cut short, a bad disk) is never loaded into a run that
would train on from garbage: ``--resume`` names the damaged file, moves the checkpoint aside
(``checkpoints/damaged-step-N``) and falls back to the newest intact one; with none left it refuses.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from data_tools.errors import InputError, WriteError
from data_tools.files import atomic_write_text, sha256_file
from longlora.models import RUN_ARGS_FILE as ARGS_FILE  # one name for the run record
from longlora.models import WRITE_FAILURES

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
LOG_FILE = "train_log.jsonl"


def checkpoint_manifest(folder: Path) -> dict[str, dict]:
    """Every file of a checkpoint folder but its state file: relative path -> bytes and SHA-256."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != STATE_FILE)
    return {
        p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files
    }


def verify_checkpoint(folder: Path) -> None:
    """Raise ``InputError`` naming the first file of ``folder`` that is missing, cut short or changed
    since it was saved (checkpoints written before manifests existed are trusted as they are)."""
    try:
        state = json.loads((folder / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{folder / STATE_FILE} is unreadable ({err}); {_damaged_fix(folder)}") from err
    for name, want in (state.get("files") or {}).items():
        path = folder / name
        if not path.is_file():
            problem = "is missing"
        elif path.stat().st_size != want["bytes"]:
            problem = f"has {path.stat().st_size:,} bytes, {want['bytes']:,} when it was saved"
        elif sha256_file(path) != want["sha256"]:
            problem = "has changed since it was saved (SHA-256 differs)"
        else:
            continue
        raise InputError(f"checkpoint {folder}: {name} {problem}; {_damaged_fix(folder)}")


def _damaged_fix(folder: Path) -> str:
    return (
        f"the checkpoint is damaged and no intact one is left: restore {folder.name} from a copy, or delete "
        f"{folder.parent} to train again from step 0 (or pass --overwrite-output-dir without --resume)"
    )


def _step_of(folder: Path) -> int:
    try:
        return int(folder.name.removeprefix("step-"))
    except ValueError:
        return -1


def checkpoints(output_dir: Path) -> list[Path]:
    """The complete checkpoints of a run (state file written), oldest first."""
    root = output_dir / CHECKPOINTS
    done = (
        [p for p in root.glob("step-*") if (p / STATE_FILE).is_file() and _step_of(p) >= 0]
        if root.is_dir()
        else []
    )
    return sorted(done, key=_step_of)


def latest_checkpoint(output_dir: Path) -> Path | None:
    done = checkpoints(output_dir)
    return done[-1] if done else None


def resumable_checkpoint(output_dir: Path, say=print) -> Path | None:
    """The newest checkpoint that passes its manifest check. A damaged newer one is moved aside to
    ``checkpoints/damaged-step-N`` (so it is neither trusted nor overwritten) with the damage named through
    ``say``; when every checkpoint is damaged, the newest one's ``InputError`` is raised."""
    done = checkpoints(output_dir)
    first_error = None
    for folder in reversed(done):
        try:
            verify_checkpoint(folder)
        except InputError as err:
            first_error = first_error or err
            continue
        for bad in done[done.index(folder) + 1 :] if _is_main_rank() else []:  # one rank moves them
            aside = bad.with_name(f"damaged-{bad.name}")
            shutil.rmtree(aside, ignore_errors=True)
            bad.rename(aside)
            say(
                f"--resume: {str(first_error).split('; ')[0]}; moved it to {aside} and resuming from {folder.name}"
            )
        return folder
    if first_error is not None:
        raise first_error
    return None


def _is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints (and folders of saves that never finished)."""
    done = checkpoints(output_dir)
    for old in done[: max(0, len(done) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def _finished_run(out: Path) -> dict | None:
    """The run record of a run that finished in ``out`` (its weights are written), else None."""
    try:
        record = json.loads((out / ARGS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    weights = any((out / name).is_file() for name in ("adapter_model.safetensors", "model.safetensors"))
    weights = weights or (out / "model.safetensors.index.json").is_file()
    return record if weights and record.get("status", "complete") == "complete" else None


def _own_files(cfg, out: Path) -> set[str]:
    """What a run writes into ``out`` before its final save (a killed run leaves only these)."""
    own = {LOG_FILE, ARGS_FILE, CHECKPOINTS}
    if cfg.log_file and Path(cfg.log_file).resolve().parent == out.resolve():
        own.add(Path(cfg.log_file).name)
    return own


class RunComplete(Exception):
    """``--resume`` found a finished run in --output-dir: there is nothing left to train."""

    def __init__(self, message: str, record: dict):
        super().__init__(message)
        self.record = record


def check_output_dir(cfg) -> Path | None:
    """Refuse a non-empty output dir unless asked; return the checkpoint to resume from, if any.

    With ``--resume``: the latest checkpoint; none yet (killed before the first one) -> start from step 0;
    a finished run -> ``RunComplete``.
    """
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--output-dir {out} is a file; pass a folder")
    if cfg.resume:
        ckpt = resumable_checkpoint(out)
        if ckpt is not None:
            return ckpt
        done = _finished_run(out)
        if done is not None:
            steps = (done.get("resolved") or {}).get("steps")
            more = (
                f"; to train further, continue its adapter: --adapter {out} --output-dir NEW_FOLDER"
                if steps is not None and steps < cfg.max_steps
                else ""
            )
            raise RunComplete(f"the run in {out} is complete ({steps} steps); nothing to resume{more}", done)
        left = {p.name for p in out.iterdir()} - _own_files(cfg, out) if out.is_dir() else set()
        if not left:
            return None  # killed before its first checkpoint: train from step 0
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite_output_dir:
        hint = (
            ""
            if not cfg.resume
            else f"it has no checkpoint to resume from and holds other files ({', '.join(sorted(left))}); "
        )  # noqa: F821 (set above under --resume)
        raise InputError(
            f"--output-dir {out} is not empty; {hint}pass --overwrite-output-dir to write into it, --resume to "
            "continue its last checkpoint, or choose another folder"
        )
    return None


def check_resume_processes(state: dict, folder: Path, *, processes: int, deepspeed: bool) -> None:
    """Refuse, naming the fix, a checkpoint this launch cannot load: DeepSpeed ZeRO splits the optimizer
    state over the processes that wrote it, so it loads only into as many. DDP checkpoints (whole weights
    and optimizer state on every process) load under any process count and ``--sequence-parallel``."""
    saved = state.get("world_size")
    if deepspeed and saved is not None and saved != processes:
        raise InputError(
            f"checkpoint {folder} was written by {saved} processes under DeepSpeed ZeRO, which splits the "
            f"optimizer state between them; this launch has {processes}: resume with {saved} processes "
            "(--sequence-parallel may differ)"
        )


def truncate_log(path: Path, last_step: int) -> None:
    """Drop log lines of steps after the checkpoint being resumed (they are trained again)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    atomic_write_text(path, "".join(k + "\n" for k in keep))


def keep_trainable_only(models, weights, output_dir) -> None:
    """Checkpoints hold only what trains (LoRA, embedding, norms): the frozen base is reloaded anyway."""
    for model, state in zip(models, weights):
        keep = {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
        for key in [k for k in state if k not in keep]:
            del state[key]


def save_checkpoint(accelerator, out: Path, step: int, keep: int = 2, *, sequence_parallel: int = 1) -> None:
    """Save ``checkpoints/step-{step}`` with its manifest (and the processes and ``--sequence-parallel`` it
    was written with), then keep only the newest ``keep``."""
    root = out / CHECKPOINTS
    target = root / f"step-{step}"
    try:
        accelerator.save_state(str(target))
        accelerator.wait_for_everyone()  # every rank's files are complete before the manifest lists them
        if accelerator.is_main_process:
            state = {
                "step": step,
                "world_size": accelerator.num_processes,
                "sequence_parallel": sequence_parallel,
                "files": checkpoint_manifest(target),
            }
            atomic_write_text(target / STATE_FILE, json.dumps(state, indent=1))
    except (
        WRITE_FAILURES
    ) as err:  # a full disk: drop the partial folder, keep the previous checkpoint in charge
        shutil.rmtree(target, ignore_errors=True)
        previous = latest_checkpoint(out)
        kept = (
            f"{previous.name} is kept and --resume continues from it"
            if previous
            else "no checkpoint is kept yet"
        )
        raise WriteError(
            f"cannot write the checkpoint of step {step} in {root}: {getattr(err, 'strerror', None) or err}; "
            f"{kept}. Free space "
            "on that disk (or pass another --output-dir) and run the same command with --resume"
        ) from err
    if accelerator.is_main_process:
        prune_checkpoints(out, keep)
    accelerator.wait_for_everyone()

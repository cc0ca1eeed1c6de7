"""Sequence parallelism (--sequence-parallel N, DeepSpeed Ulysses with S2-Attn inside).

Unit tests: S2 over slices of the heads with a global head offset equals the whole call; the attention
adapters read the head slice from the sequence-parallel group and packed documents from position_ids;
batches are cut and labels shifted as one process would; refusals name the fix. Then 2-process gloo runs
of ``python -m longlora.finetune --sequence-parallel 2`` against one process: the same losses, gradient
norms and trained weights, for S2 and full attention over a one-document row and a packed row, and for
SFT rows whose label tokens all sit on one process, resumed from a one-process checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import make_char_tokenizer, tiny_model
from reference import s2_attention_ref
from safetensors.torch import load_file

from data_tools.errors import DependencyError, InputError
from longlora import finetune
from longlora.finetune import main
from longlora.s2attn import s2_attention, s2_attention_forward
from longlora.s2groups import cu_seqlens_from_position_ids
from longlora.sequence_parallel import (
    _MPU,
    SequenceParallel,
    check_sequence_parallel,
    full_attention_forward,
    head_slice,
    shard_batch,
    valid_sizes,
)
from longlora.training.checkpoints import check_resume_processes


def _qkv(heads, kv_heads, seq_len, batch=1, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, seq_len, dim, generator=g)
    k = torch.randn(batch, kv_heads, seq_len, dim, generator=g)
    v = torch.randn(batch, kv_heads, seq_len, dim, generator=g)
    return q, k, v


def _rank_slice(q, k, v, rank, size):
    """What Ulysses hands rank ``rank`` of ``size``: heads [r H/N, (r+1) H/N) of q, and their kv heads
    (split, or replicated when there are fewer kv heads than ranks)."""
    heads, kv_heads = q.shape[1], k.shape[1]
    local = heads // size
    lo = rank * local
    kv_lo, kv_hi = lo * kv_heads // heads, ((lo + local - 1) * kv_heads // heads) + 1
    return q[:, lo : lo + local], k[:, kv_lo:kv_hi], v[:, kv_lo:kv_hi], lo


def _close(actual, expected, atol=1e-5, what=""):
    diff = (actual - expected).abs().max().item()
    assert diff <= atol, f"{what}: max diff {diff:.3e}"


# (H, H_kv, N): split kv heads; N = 3 cuts a rank's heads across the shift boundary (H // 2 = 3 or 4);
# N = 4 with 2 kv heads replicates each kv head on two ranks
LAYOUTS = [(6, 2, 2), (6, 3, 3), (9, 3, 3), (8, 2, 4)]
DOCS = [(0, 23), (23, 31), (54, 10)]  # packed documents of one 64-token row


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda x: "H{}kv{}N{}".format(*x))
@pytest.mark.parametrize("case", ["plain", "packed", "window+softcap", "packed+sinks"])
def test_head_slices_with_a_global_offset_equal_the_whole_call(layout, case):
    heads, kv_heads, size = layout
    q, k, v = _qkv(heads, kv_heads, 64)
    extra = {}
    if case == "packed":
        extra["cu_seqlens"] = torch.tensor([0, 23, 54, 64])
    if case == "window+softcap":
        extra.update(sliding_window=5, softcap=3.0)
    if case == "packed+sinks":  # --attention s2-sink: the sinks and strided keys follow the global heads too
        extra.update(cu_seqlens=torch.tensor([0, 23, 54, 64]), sink_tokens=2, sink_stride=4)
    whole = s2_attention(q, k, v, 12, backend="sdpa", **extra)
    parts = []
    for rank in range(size):
        qs, ks, vs, lo = _rank_slice(q, k, v, rank, size)
        parts.append(s2_attention(qs, ks, vs, 12, backend="sdpa", head_offset=lo, total_heads=heads, **extra))
    _close(torch.cat(parts, dim=1), whole, what="slices vs whole")
    if case == "packed":
        _close(whole, s2_attention_ref(q, k, v, 12, docs=[DOCS]), what="whole vs reference")
    if case == "packed+sinks":
        want = s2_attention_ref(q, k, v, 12, docs=[DOCS], sinks=2, stride=4)
        _close(whole, want, what="whole vs reference")


def test_shifting_half_of_each_slice_instead_is_wrong():
    """The bug a global offset fixes: each rank shifting half of its own heads is another attention."""
    q, k, v = _qkv(6, 3, 64)
    whole = s2_attention(q, k, v, 12)
    local = torch.cat([s2_attention(*_rank_slice(q, k, v, r, 3)[:3], 12) for r in range(3)], dim=1)
    assert (local - whole).abs().max().item() > 1e-2


def test_head_slices_on_the_flex_kernel_forward():
    q, k, v = _qkv(9, 3, 64)
    cu = torch.tensor([0, 23, 54, 64])
    whole = s2_attention(q, k, v, 12, cu_seqlens=cu, backend="sdpa")
    parts = [
        s2_attention(qs, ks, vs, 12, cu_seqlens=cu, backend="flex", head_offset=lo, total_heads=9)
        for qs, ks, vs, lo in (_rank_slice(q, k, v, r, 3) for r in range(3))
    ]
    _close(torch.cat(parts, dim=1), whole, what="flex slices vs sdpa whole")


def test_head_offset_outside_the_model_is_refused():
    q, k, v = _qkv(3, 1, 16)
    with pytest.raises(ValueError, match=r"heads \[4, 7\).*total_heads=6"):
        s2_attention(q, k, v, 8, head_offset=4, total_heads=6)


def test_packed_documents_from_position_ids():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2], [5, 6, 7, 8, 0, 1, 2, 3]])
    assert cu_seqlens_from_position_ids(pos).tolist() == [0, 3, 5, 8, 12, 16]
    assert cu_seqlens_from_position_ids(torch.arange(8).expand(2, 8)) is None  # one document per row


class _FakeMPU(types.ModuleType):
    """DeepSpeed's sequence-parallel state as rank ``rank`` of ``size`` sees it."""

    def __init__(self, rank, size):
        super().__init__(_MPU)
        self._SEQUENCE_PARALLEL_GROUP = object()
        self.get_sequence_parallel_rank = lambda: rank
        self.get_sequence_parallel_world_size = lambda: size


def _attention_module(**config):
    cfg = types.SimpleNamespace(num_attention_heads=6, s2_group_size=12, s2_shift=True, s2_backend="sdpa")
    cfg.__dict__.update(config)
    return types.SimpleNamespace(config=cfg, training=True)


def test_s2_adapter_reads_its_heads_from_the_group_and_documents_from_position_ids(monkeypatch):
    """What Ulysses calls the core attention with: this rank's heads, every token, no mask, the row's
    gathered position_ids."""
    q, k, v = _qkv(6, 2, 64)
    pos = torch.cat([torch.arange(n) for _, n in DOCS])[None]  # (1, 64)
    whole = s2_attention(q, k, v, 12, cu_seqlens=torch.tensor([0, 23, 54, 64]))
    assert head_slice(3, 6) == (0, 3)  # no group: the call's heads are all there is
    for rank in range(2):
        monkeypatch.setitem(sys.modules, _MPU, _FakeMPU(rank, 2))
        assert head_slice(3, 6) == (3 * rank, 6)
        qs, ks, vs, lo = _rank_slice(q, k, v, rank, 2)
        out, _ = s2_attention_forward(_attention_module(), qs, ks, vs, None, position_ids=pos)
        _close(out.transpose(1, 2), whole[:, lo : lo + 3], what=f"rank {rank}")
    monkeypatch.setitem(sys.modules, _MPU, _FakeMPU(0, 3))
    with pytest.raises(RuntimeError, match="3 query heads on each of 3 sequence-parallel ranks"):
        head_slice(3, 6)


def test_full_attention_adapter_is_causal_attention_inside_each_document():
    q, k, v = _qkv(6, 2, 64, batch=2)
    pos = torch.stack([torch.cat([torch.arange(n) for _, n in DOCS]), torch.arange(64)])  # packed, plain
    out, _ = full_attention_forward(_attention_module(), q, k, v, None, position_ids=pos)
    # reference: SDPA with the block-diagonal causal mask of each row
    doc = torch.stack([torch.cat([torch.full((n,), d) for d, (_, n) in enumerate(DOCS)]), torch.zeros(64)])
    i = torch.arange(64)
    mask = (doc[:, :, None] == doc[:, None, :]) & (i[:, None] >= i[None, :])  # (B, T, T)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], enable_gqa=True)
    _close(out.transpose(1, 2), ref, what="full attention per document")


def test_shards_put_back_together_are_the_batch_with_labels_shifted_before_the_cut():
    ids = torch.arange(1, 15).reshape(2, 7)  # 7 tokens per row: padded to 8 for N = 2
    labels = ids.clone()
    labels[0, :3] = -100
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    shards = [shard_batch(batch, SequenceParallel(size=2, rank=r), pad_id=0) for r in range(2)]
    joined = {key: torch.cat([s[key] for s in shards], dim=1) for key in shards[0]}
    assert joined["input_ids"].tolist() == [[*ids[0].tolist(), 0], [*ids[1].tolist(), 0]]
    assert joined["position_ids"].tolist() == [list(range(8))] * 2
    want = F.pad(labels[:, 1:], (0, 2), value=-100)  # token t predicts t + 1; nothing after the row
    assert joined["shift_labels"].tolist() == want.tolist()
    assert all(s["input_ids"].shape == (2, 4) for s in shards)

    left = dict(batch, attention_mask=torch.tensor([[0, 1, 1, 1, 1, 1, 1]] * 2))
    with pytest.raises(ValueError, match="padding must be on the right"):
        shard_batch(left, SequenceParallel(size=2, rank=0))


@pytest.mark.parametrize(
    "size, kwargs, message",
    [
        (2, dict(processes=1), r"over 2 processes but 1 was launched.*torchrun --nproc-per-node 2"),
        (4, dict(processes=6), r"over 4 processes but 6 were launched"),
        (4, dict(processes=4, heads=6), r"must divide the model's 6 query heads.*use --sequence-parallel 2$"),
        (3, dict(processes=6, heads=12, kv_heads=4), r"4 key/value heads.*use --sequence-parallel 2$"),
        (3, dict(processes=3, heads=9, kv_heads=2), r"one to divide the other.*use DDP"),
        (2, dict(context_length=1001), r"--context-length 1001 is not a multiple.*1000 or 1002"),
    ],
)
def test_refusals_name_the_fix(size, kwargs, message):
    args = dict(processes=2, heads=6, kv_heads=2, context_length=None) | kwargs
    with pytest.raises(InputError, match=message):
        check_sequence_parallel(size, **args)


def test_valid_sizes_follow_deepspeeds_rule():
    # 9 query heads, 3 kv heads: N divides 9 and divides or is a multiple of 3
    assert valid_sizes(9, 3, 9) == [3, 9]
    assert valid_sizes(8, 2, 8) == [2, 4, 8]  # 4 and 8 replicate the kv heads
    assert valid_sizes(6, 2, 3) == []


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "tiny-llama"
    tiny_model("llama").save_pretrained(out)  # 6 query heads, 2 kv heads
    make_char_tokenizer().save_pretrained(out)
    return out


def test_the_command_refuses_before_loading_the_model(base_dir, tmp_path, capsys, monkeypatch):
    common = ["--model", str(base_dir), "--data", str(base_dir / "config.json"), "--output-dir"]
    assert main([*common, str(tmp_path / "a"), "--sequence-parallel", "2"]) == 2
    assert "over 2 processes but 1 was launched" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert main([*common, str(tmp_path / "b"), "--sequence-parallel", "4"]) == 2
    assert (
        "must divide the model's 6 query heads (each process attends with heads / N of them); use --sequence-parallel 2"
        in capsys.readouterr().err
    )
    with pytest.raises(ValueError, match="--sequence-parallel must be at least 1"):
        finetune.parse_args([*common, str(tmp_path / "c"), "--sequence-parallel", "0"])

    find = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else find(name, *a)
    )
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DependencyError, match="--sequence-parallel needs deepspeed: pip install deepspeed"):
        finetune.train(finetune.parse_args([*common, str(tmp_path / "d"), "--sequence-parallel", "2"]))


# ----------------------------------------------------------------------------- 2 processes vs 1


WORDS = "It is a truth universally acknowledged, that a single man in possession of a good fortune, " * 9


def _launch(*args, nproc=2):
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    res = subprocess.run(
        [*cmd, "-m", "longlora.finetune", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=os.getcwd(),
    )
    assert res.returncode == 0, res.stderr[-4000:]
    return res


def _log(out: Path):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def _assert_same_training(sp: Path, single: Path):
    a, b = _log(sp), _log(single)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], abs=2e-5)
    # the gradient norm before clipping pins the gradient's scale, which Adam's update would hide
    assert [r["grad_norm"] for r in a] == pytest.approx([r["grad_norm"] for r in b], rel=1e-4)
    name = (
        "adapter_model.safetensors"
        if (single / "adapter_model.safetensors").is_file()
        else "model.safetensors"
    )
    wa, wb = load_file(sp / name), load_file(single / name)
    assert wa.keys() == wb.keys()
    # Adam divides by sqrt(v) + eps: a LoRA A matrix, whose gradient is ~1e-8 in step 2 (B was 0 in step 1),
    # turns rounding into update differences of a few 1e-5; a wrong gradient moves weights by ~lr (1e-2)
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-4, rtol=1e-4, msg=key)


@pytest.fixture(scope="module")
def rows_dir(tmp_path_factory):
    """Two rows of 256 tokens: one document alone, then three documents packed (the first token of each
    carries no label, so the two halves of the packed row hold different numbers of label tokens)."""
    folder = tmp_path_factory.mktemp("rows")
    for name, (start, n) in {"a": (0, 256), "b": (3, 60), "c": (100, 120), "d": (7, 76)}.items():
        (folder / f"{name}.txt").write_text(WORDS[start : start + n])
    return folder


@pytest.mark.slow
@pytest.mark.parametrize(
    "attention, method, zero",
    [
        ("s2", "lora+", False),
        ("full", "full", False),
        ("s2", "lora", True),
        ("s2-sink", "lora+", False),
        ("s2", "qlora", False),
    ],
    ids=["s2-lora+", "full-full", "s2-lora-zero2", "s2sink-lora+", "s2-qlora"],
)
def test_two_processes_sharing_rows_train_as_one_process(
    base_dir, rows_dir, tmp_path, attention, method, zero
):
    """Both rows in every step (batch 2): a one-document row and a packed one. DDP, or DeepSpeed ZeRO-2
    (which runs on a CPU too) for the processes' gradients."""
    common = ["--model", base_dir, "--data", rows_dir, "--context-length", "256", "--max-steps", "2"]
    common += ["--per-device-batch-size", "2", "--gradient-accumulation-steps", "1", "--warmup-steps", "0"]
    common += ["--learning-rate", "1e-2", "--dtype", "fp32", "--attention", attention, "--method", method]
    zero2 = (
        ["--deepspeed", Path(__file__).parents[1] / "configs" / "deepspeed" / "zero2.json"] if zero else []
    )
    _launch(*common, *zero2, "--sequence-parallel", "2", "--output-dir", tmp_path / "sp")
    assert main([*map(str, common), "--output-dir", str(tmp_path / "single")]) == 0
    _assert_same_training(tmp_path / "sp", tmp_path / "single")
    record = json.loads((tmp_path / "sp" / "longlora_args.json").read_text())["resolved"]
    assert record["world_size"] == 2 and record["sequence_parallel"] == 2
    assert [r["tokens"] for r in _log(tmp_path / "sp")] == [512, 512]  # each row counted once


@pytest.mark.slow
def test_sft_labels_on_one_process_and_resuming_a_one_process_checkpoint(base_dir, tmp_path, monkeypatch):
    """SFT rows of 245-ish tokens whose answer tokens (the only labels) all fall on the second process: the
    first one's loss is 0 tokens' worth, its gradient flows through the attention. The run resumes a
    checkpoint a one-process run wrote at step 1 and ends where the one-process run ends."""
    records = tmp_path / "qa.jsonl"
    question = "Below is a book.\n" + WORDS[:180] + "\nNow the material ends. Who?"
    lines = [
        {"instruction": question[i:], "output": ["Emma Woodhouse.", "Mr. Knightley."][i % 2]}
        for i in range(4)
    ]
    records.write_text("".join(json.dumps(r) + "\n" for r in lines))
    common = ["--model", base_dir, "--mode", "sft", "--data", records, "--context-length", "256"]
    common += ["--max-steps", "3", "--save-steps", "1", "--gradient-accumulation-steps", "1"]
    common += ["--warmup-steps", "0", "--learning-rate", "1e-2", "--dtype", "fp32", "--s2-group-size", "32"]
    common = [str(c) for c in common]
    assert main([*common, "--output-dir", str(tmp_path / "single")]) == 0

    real = finetune.lr_at

    def killed_after_step_1(done, *args):
        if done == 1:
            raise KeyboardInterrupt("killed")
        return real(done, *args)

    monkeypatch.setattr(finetune, "lr_at", killed_after_step_1)
    with pytest.raises(KeyboardInterrupt):
        main([*common, "--output-dir", str(tmp_path / "sp")])
    monkeypatch.undo()
    state = json.loads((tmp_path / "sp" / "checkpoints" / "step-1" / "trainer_state.json").read_text())
    assert state["sequence_parallel"] == 1 and state["world_size"] == 1

    res = _launch(*common, "--sequence-parallel", "2", "--output-dir", tmp_path / "sp", "--resume")
    assert (
        "written with --sequence-parallel 1; continuing with --sequence-parallel 2" in res.stdout + res.stderr
    )
    _assert_same_training(tmp_path / "sp", tmp_path / "single")


def test_a_zero_checkpoint_resumes_only_with_as_many_processes(tmp_path):
    state = {"step": 3, "world_size": 4, "sequence_parallel": 2}
    check_resume_processes(state, tmp_path, processes=2, deepspeed=False)  # DDP: whole state everywhere
    check_resume_processes(state, tmp_path, processes=4, deepspeed=True)
    check_resume_processes({"step": 3}, tmp_path, processes=2, deepspeed=True)  # written before the record
    with pytest.raises(
        InputError, match="written by 4 processes under DeepSpeed ZeRO.*resume with 4 processes"
    ):
        check_resume_processes(state, tmp_path, processes=2, deepspeed=True)

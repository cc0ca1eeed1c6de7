"""S2 with attention sinks (``--attention s2-sink``): parity with the slow reference, the guarantees of S2
(no future-token leakage, packed documents, GQA, odd heads, sliding windows, full attention at inference),
and the finetune flags that choose it."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import EMMA, make_char_tokenizer, tiny_model
from reference import s2_attention_masked_ref, s2_attention_ref

from longlora import s2flex
from longlora.s2attn import enable_s2_attention, group_size_for, s2_attention


def _qkv(batch, heads, kv_heads, seq_len, dim=8, seed=0, requires_grad=True, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    out = [torch.randn(batch, h, seq_len, dim, generator=g, dtype=dtype) for h in (heads, kv_heads, kv_heads)]
    return [x.requires_grad_(requires_grad) for x in out]


def _close(actual, expected, atol, what=""):
    diff = (actual.double() - expected.double()).abs()
    assert diff.max().item() <= atol, f"{what} max diff {diff.max().item():.3e} mean {diff.mean().item():.3e}"


def _check_grads(out, ref, leaves, atol=1e-4):
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(99))
    got = torch.autograd.grad(out, leaves, grad)
    want = torch.autograd.grad(ref, leaves, grad.to(ref.dtype))
    for name, a, b in zip("qkv", got, want):
        _close(a, b, atol, f"d{name}")


SHAPES = [
    # (B, H, H_kv, T, G, k)
    (1, 6, 2, 32, 8, 4),  # GQA, T % G == 0
    (2, 6, 2, 32, 8, 3),  # two rows of equal groups: one run of views across the row boundary
    (2, 9, 3, 37, 10, 4),  # the bundled model's head layout, odd H, last group short
    (1, 5, 5, 23, 6, 2),  # odd H, MHA
    (1, 8, 2, 50, 10, 7),  # k > G/2: the second shifted group holds some of the sinks already
    (2, 4, 1, 7, 16, 4),  # one group shorter than G (MQA): sinks add nothing
    (1, 6, 2, 45, 9, 1),  # odd G, a single sink
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}H{}kv{}T{}G{}k{}".format(*s))
def test_forward_and_gradients_match_the_reference(shape):
    batch, heads, kv_heads, seq_len, group, sinks = shape
    q, k, v = _qkv(batch, heads, kv_heads, seq_len)
    out = s2_attention(q, k, v, group, sink_tokens=sinks)
    ref = s2_attention_ref(q, k, v, group, sinks=sinks)
    _close(out, ref, 1e-5, "forward")
    _check_grads(out, ref, (q, k, v))


def test_sinks_change_s2_only_after_the_first_group():
    q, k, v = _qkv(1, 6, 2, 40, requires_grad=False)
    plain = s2_attention(q, k, v, 8)
    sink = s2_attention(q, k, v, 8, sink_tokens=4)
    # the first half-group is the first group of both head halves: it holds the sinks already
    assert torch.equal(sink[:, :, :4], plain[:, :, :4])
    assert torch.equal(sink[:, :3, :8], plain[:, :3, :8])  # unshifted heads: the whole first group
    # every later query sees the sinks (the shifted heads from token 4, where their second group starts)
    assert ((sink[:, :, 8:] - plain[:, :, 8:]).abs().amax(-1) > 0).all()
    assert ((sink[:, 3:, 4:] - plain[:, 3:, 4:]).abs().amax(-1) > 0).all()


def test_zero_sink_tokens_is_s2():
    q, k, v = _qkv(2, 9, 3, 37, requires_grad=False)
    cu = torch.tensor([0, 20, 37, 50, 74])
    for kwargs in ({}, {"cu_seqlens": cu}, {"sliding_window": 5}):
        assert torch.equal(
            s2_attention(q, k, v, 8, sink_tokens=0, **kwargs), s2_attention(q, k, v, 8, **kwargs)
        )


# ----------------------------------------------------------------------------- packed documents

LENGTHS = [13, 3, 20, 7, 30, 1, 16]  # documents shorter than k, than G/2 and G, longer than G


def _packed(lengths, heads=9, kv_heads=3, seed=1, requires_grad=True):
    q, k, v = _qkv(1, heads, kv_heads, sum(lengths), seed=seed, requires_grad=requires_grad)
    bounds = torch.tensor([0, *lengths]).cumsum(0)
    docs = [(int(a), n) for a, n in zip(bounds[:-1], lengths)]
    return q, k, v, bounds, docs


@pytest.mark.parametrize("sinks", [1, 4, 6])
def test_packed_documents_through_cu_seqlens_match_the_reference(sinks):
    # G = 8 and k = 6: the documents of 3 and 1 tokens are shorter than k, the one of 7 shorter than G
    q, k, v, cu, docs = _packed(LENGTHS)
    out = s2_attention(q, k, v, 8, cu_seqlens=cu, sink_tokens=sinks)
    ref = s2_attention_masked_ref(q, k, v, 8, docs=docs, sinks=sinks)
    _close(out, ref, 1e-5, "forward")
    _check_grads(out, ref, (q, k, v))
    # the per-token loop reference agrees with the masked one on sinks
    _close(s2_attention_ref(q, k, v, 8, docs=[docs], sinks=sinks), ref, 1e-6, "references")


def test_packed_documents_through_the_block_mask_equal_documents_one_by_one():
    # the 4-D block-diagonal mask transformers builds from restarting position_ids
    q, k, v, cu, docs = _packed(LENGTHS, requires_grad=False)
    total = sum(LENGTHS)
    doc_id = torch.repeat_interleave(torch.arange(len(LENGTHS)), torch.tensor(LENGTHS))
    block = (doc_id[:, None] == doc_id[None, :]) & torch.ones(total, total, dtype=torch.bool).tril()
    out = s2_attention(q, k, v, 8, attention_mask=block[None, None], sink_tokens=4)
    _close(out, s2_attention(q, k, v, 8, cu_seqlens=cu, sink_tokens=4), 1e-6, "mask vs cu_seqlens")
    for start, n in docs:
        part = [x[:, :, start : start + n] for x in (q, k, v)]
        _close(out[:, :, start : start + n], s2_attention(*part, 8, sink_tokens=4), 1e-6, f"doc at {start}")


def test_padded_rows_equal_sequences_one_by_one():
    q, k, v = _qkv(2, 6, 2, 40, requires_grad=False)
    keep = torch.ones(2, 40, dtype=torch.long)
    keep[1, :9] = 0  # left padding: the document starts at token 9, its sinks are tokens 9..12
    out = s2_attention(q, k, v, 8, attention_mask=keep, sink_tokens=4)
    _close(out[:1], s2_attention(q[:1], k[:1], v[:1], 8, sink_tokens=4), 1e-6, "row 0")
    alone = s2_attention(q[1:, :, 9:], k[1:, :, 9:], v[1:, :, 9:], 8, sink_tokens=4)
    _close(out[1:, :, 9:], alone, 1e-6, "row 1")
    assert out[1, :, :9].abs().max().item() == 0


@pytest.mark.parametrize("window", [1, 3, 7, 9, 15, 40])
@pytest.mark.parametrize("packed", [False, True], ids=["one-doc", "packed"])
def test_sliding_window_matches_the_reference(window, packed):
    # windows below G/2, between G/2 and G, at and above G (the window no longer clips the groups but
    # still hides sinks farther back than it)
    lengths = [30, 5, 18, 3, 44] if packed else [100]
    q, k, v, cu, docs = _packed(lengths, seed=2)
    out = s2_attention(q, k, v, 16, cu_seqlens=cu if packed else None, sliding_window=window, sink_tokens=4)
    ref = s2_attention_masked_ref(q, k, v, 16, docs=docs, window=window, sinks=4)
    _close(out, ref, 1e-5, "forward")
    _check_grads(out, ref, (q, k, v))


def test_sinks_older_than_the_window_are_not_seen():
    q, k, v = _qkv(1, 6, 2, 60, requires_grad=False)
    base = s2_attention(q, k, v, 16, sliding_window=20, sink_tokens=4)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, :4] += 5.0
    v2[:, :, :4] += 5.0
    out = s2_attention(q, k2, v2, 16, sliding_window=20, sink_tokens=4)
    # query 22 is the last within the window of sink 3 (22 - 3 < 20); from 23 on the sinks are out of reach
    assert torch.equal(out[:, :, 23:], base[:, :, 23:])
    assert ((out[:, :, 16:23] - base[:, :, 16:23]).abs().amax(-1) > 1e-3).all()


def test_softcap_with_sinks_matches_masked_attention():
    q, k, v, cu, docs = _packed([30, 11, 23], heads=6, kv_heads=2, requires_grad=False)
    q = q * 4  # large scores, so that the cap matters
    out = s2_attention(q, k, v, 8, cu_seqlens=cu, softcap=2.0, sink_tokens=3)
    mask = torch.stack(
        [
            _mask(64, 8, docs, shifted, 3)
            for shifted in (False, False, False, True, True, True)  # heads [0, 3) unshifted
        ]
    )[None]
    from longlora.s2sdpa import softcapped_attention

    want = softcapped_attention(q.double(), k.double(), v.double(), mask, 8**-0.5, 0.0, 2.0)
    _close(out, want, 1e-5)


def _mask(seq_len, group, docs, shifted, sinks):
    from reference import s2_mask_ref

    return s2_mask_ref(seq_len, group, docs=docs, shifted=shifted, sinks=sinks)


# ----------------------------------------------------------------------------- causality, precision


@pytest.mark.parametrize("group,sinks", [(4, 1), (7, 4), (16, 4)])
def test_no_future_token_leakage(group, sinks):
    q, k, v = _qkv(1, 6, 2, 40, seed=3, requires_grad=False)
    base = s2_attention(q, k, v, group, sink_tokens=sinks)
    for t in (0, 2, 3, 15, 38):
        q2, k2, v2 = q.clone(), k.clone(), v.clone()
        for x in (q2, k2, v2):
            x[:, :, t + 1 :] = torch.randn_like(x[:, :, t + 1 :]) * 5
        out = s2_attention(q2, k2, v2, group, sink_tokens=sinks)
        _close(out[:, :, : t + 1], base[:, :, : t + 1], 0, f"positions <= {t}")


def test_no_leak_across_packed_documents():
    q, k, v, cu, docs = _packed(LENGTHS, requires_grad=False)
    base = s2_attention(q, k, v, 8, cu_seqlens=cu, sink_tokens=4)
    a, n = docs[2]  # change every other document's keys and values, sinks included
    k2, v2 = k.clone(), v.clone()
    outside = torch.ones(q.shape[2], dtype=torch.bool)
    outside[a : a + n] = False
    k2[:, :, outside] += 3.0
    v2[:, :, outside] += 3.0
    out = s2_attention(q, k2, v2, 8, cu_seqlens=cu, sink_tokens=4)
    _close(out[:, :, a : a + n], base[:, :, a : a + n], 0, "document 2")


def test_bf16_error_within_twice_naive_bf16_error():
    q, k, v, cu, docs = _packed([70, 9, 33], heads=6, kv_heads=2, seed=4, requires_grad=False)
    exact = s2_attention_masked_ref(q, k, v, 16, docs=docs, sinks=4).float()
    lo = [x.bfloat16() for x in (q, k, v)]
    ours = s2_attention(*lo, 16, cu_seqlens=cu, sink_tokens=4).float()
    naive = s2_attention_masked_ref(*lo, 16, docs=docs, sinks=4, upcast=False).float()
    err_ours, err_naive = (ours - exact).abs().max().item(), (naive - exact).abs().max().item()
    assert err_ours <= 2 * err_naive + 1e-3, (err_ours, err_naive)


# ----------------------------------------------------------------------------- flex_attention path


@pytest.mark.skipif(not s2flex.flex_available(), reason="torch has no flex_attention")
@pytest.mark.parametrize("window", [None, 5, 40])
@pytest.mark.parametrize("lengths", [[100], LENGTHS, [150, 40, 77, 9]], ids=["one-doc", "packed", "tiles"])
def test_flex_forward_matches_the_reference(window, lengths):
    # on a CPU torch runs flex_attention forward only (gradients: the CUDA checks)
    group = 64 if len(lengths) == 4 else 8
    q, k, v, cu, docs = _packed(lengths, requires_grad=False)
    out = s2_attention(q, k, v, group, cu_seqlens=cu, sliding_window=window, sink_tokens=4, backend="flex")
    _close(out, s2_attention_masked_ref(q, k, v, group, docs=docs, window=window, sinks=4), 1e-5)


@pytest.mark.skipif(not s2flex.flex_available(), reason="torch has no flex_attention")
def test_flex_block_mask_cache_tells_sinks_apart():
    q, k, v, cu, _ = _packed([30, 50], requires_grad=False)
    plain = s2_attention(q, k, v, 16, cu_seqlens=cu, backend="flex")
    sink = s2_attention(q, k, v, 16, cu_seqlens=cu, sink_tokens=4, backend="flex")  # same layout
    assert (sink - plain).abs().max() > 1e-3
    _close(plain, s2_attention(q, k, v, 16, cu_seqlens=cu), 1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["sdpa", "flex"])
@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("stride", [0, 8])
def test_cuda_forward_and_gradients_match_the_reference(backend, window, stride):
    q, k, v, cu, docs = _packed([70, 1, 4, 2, 6, 30, 5], requires_grad=False)
    leaves = [x.cuda().requires_grad_(True) for x in (q, k, v)]
    out = s2_attention(
        *leaves,
        16,
        cu_seqlens=cu.cuda(),
        sliding_window=window,
        sink_tokens=4,
        sink_stride=stride,
        backend=backend,
    )
    ref_leaves = [x.double().requires_grad_(True) for x in (q, k, v)]
    ref = s2_attention_masked_ref(*ref_leaves, 16, docs=docs, window=window, sinks=4, stride=stride)
    _close(out.cpu(), ref, 1e-4, "forward")
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    got = torch.autograd.grad(out, leaves, grad.cuda())
    want = torch.autograd.grad(ref, ref_leaves, grad.double())
    for name, a, b in zip("qkv", got, want):
        _close(a.cpu(), b, 1e-3, f"d{name}")


def test_bad_sink_arguments_say_what_is_wrong():
    q, k, v = _qkv(1, 6, 2, 16, requires_grad=False)
    with pytest.raises(ValueError, match="sink_tokens must be an integer >= 0"):
        s2_attention(q, k, v, 8, sink_tokens=-1)
    with pytest.raises(ValueError, match="backend='flash' cannot attend to sink tokens"):
        s2_attention(q, k, v, 8, sink_tokens=4, backend="flash")
    with pytest.raises(ValueError, match=r"sink_tokens \(8\) must be below the group size \(8\)"):
        enable_s2_attention(tiny_model(), group_size=8, sink_tokens=8)


# ----------------------------------------------------------------------------- the transformers backend


def test_model_trains_with_sinks_and_evaluates_with_full_attention():
    torch.manual_seed(0)
    ids = torch.randint(6, 100, (2, 40))
    full = tiny_model("llama").train()
    sink = enable_s2_attention(tiny_model("llama"), group_size=8, sink_tokens=4).train()
    plain = enable_s2_attention(tiny_model("llama"), group_size=8).train()
    logits = sink(ids).logits
    assert (logits - plain(ids).logits)[:, 8:].abs().max() > 1e-3  # the sinks are really attended
    assert (logits - full(ids).logits).abs().max() > 1e-3  # and it is not full attention
    _close(logits[:, :4], full(ids).logits[:, :4], 1e-5, "first half-group")
    sink.eval()
    full.eval()
    assert torch.equal(sink(ids).logits, full(ids).logits)  # inference: full attention
    g1 = sink.generate(ids[:1, :10], max_new_tokens=6, do_sample=False)
    assert torch.equal(g1, full.generate(ids[:1, :10], max_new_tokens=6, do_sample=False))


def test_model_packed_row_equals_documents_one_by_one():
    # restarting position_ids: transformers builds the block-diagonal 4-D mask (use_cache=False)
    torch.manual_seed(0)
    m = enable_s2_attention(tiny_model("qwen2"), group_size=8, sink_tokens=4).train()
    a, b = torch.randint(6, 100, (1, 25)), torch.randint(6, 100, (1, 15))
    pid = torch.cat([torch.arange(25), torch.arange(15)])[None]
    out = m(torch.cat([a, b], dim=1), position_ids=pid, use_cache=False).logits
    _close(out[0, :25], m(a).logits[0], 1e-5, "packed doc 1")
    _close(out[0, 25:], m(b).logits[0], 1e-5, "packed doc 2")


def test_model_in_training_mode_is_causal_and_gradients_flow():
    m = enable_s2_attention(tiny_model("mistral", sliding_window=12), group_size=8, sink_tokens=2).train()
    ids = torch.randint(6, 100, (1, 36))
    base = m(ids).logits
    ids2 = ids.clone()
    ids2[:, 20:] = torch.randint(6, 100, (1, 16))
    _close(m(ids2).logits[:, :20], base[:, :20], 0, "model causality")
    m(ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in m.named_parameters() if "k_proj" in n]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_sink_tokens_are_saved_with_the_model(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    m = enable_s2_attention(tiny_model(), group_size_ratio=0.25, sink_tokens=3).train()
    m.save_pretrained(tmp_path)
    cfg = AutoConfig.from_pretrained(tmp_path)
    assert cfg.s2_sink_tokens == 3 and cfg.s2_shift is True and group_size_for(cfg, 64) == 16
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="s2_attention").train()
    ids = torch.randint(6, 100, (1, 64))
    assert torch.equal(reloaded(ids).logits, m(ids).logits)


# ----------------------------------------------------------------------------- python -m longlora.finetune


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "tiny-llama"
    tiny_model("llama").save_pretrained(out)
    make_char_tokenizer().save_pretrained(out)
    return out


def _finetune(base_dir, out, *extra):
    from longlora.finetune import main

    data = out.parent / "emma.txt"
    data.write_text(EMMA.read_text()[:6000])
    args = ["--model", base_dir, "--data", data, "--output-dir", out, "--dtype", "fp32", "--max-steps", "2"]
    args += ["--gradient-accumulation-steps", "1", "--warmup-steps", "0", *extra]
    return main([str(a) for a in args])


def test_finetune_with_s2_sink_records_the_attention_k_and_stride(base_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    out = tmp_path / "run"
    flags = ["--attention", "s2-sink", "--sink-tokens", "4", "--sink-stride", "8"]
    assert _finetune(base_dir, out, "--context-length", "512", *flags) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["s2_sink_tokens"] == 4 and config["s2_sink_stride"] == 8 and config["s2_shift"] is True
    assert config["s2_group_size_ratio"] == 0.25
    meta = json.loads((out / "longlora_args.json").read_text())
    assert meta["args"]["attention"] == "s2-sink" and meta["args"]["sink_tokens"] == 4
    assert meta["args"]["sink_stride"] == 8 and meta["resolved"]["s2_sink_stride"] == 8
    assert meta["resolved"]["s2_sink_tokens"] == 4 and meta["status"] == "complete"
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 2

    # the trained adapter on the S2 backend: strided S2 while training, full attention in eval mode
    def load(attn):
        base = AutoModelForCausalLM.from_pretrained(
            base_dir, config=AutoConfig.from_pretrained(out), attn_implementation=attn
        )
        return PeftModel.from_pretrained(base, out).eval()

    s2, full = load("s2_attention"), load("sdpa")
    ids = torch.randint(6, 100, (1, 96))
    assert torch.equal(s2(ids).logits, full(ids).logits)
    s2.train()
    assert (s2(ids).logits - full(ids).logits).abs().max() > 1e-4


def test_finetune_refuses_bad_sink_tokens(base_dir, tmp_path, capsys):
    from longlora.training.config import parse_args

    common = ["--data", "a.txt", "--output-dir", str(tmp_path / "o")]
    assert parse_args([*common, "--attention", "s2-sink"]).sink_tokens == 4  # the default
    assert parse_args(common).sink_tokens is None
    with pytest.raises(ValueError, match="--sink-tokens must be at least 1"):
        parse_args([*common, "--attention", "s2-sink", "--sink-tokens", "0", "--sink-stride", "0"])
    with pytest.raises(ValueError, match="--sink-tokens applies to --attention s2-sink only"):
        parse_args([*common, "--sink-tokens", "4"])
    with pytest.raises(
        ValueError, match=r"--sink-tokens 16 must be below the group size \(--s2-group-size 16\)"
    ):
        parse_args([*common, "--attention", "s2-sink", "--sink-tokens", "16", "--s2-group-size", "16"])
    # a group from the ratio is known once the context is: 0.25 x 256 = 64 tokens
    rc = _finetune(base_dir, tmp_path / "big-k", "--attention", "s2-sink", "--sink-tokens", "64")
    assert rc == 2
    assert "--sink-tokens 64 must be below the group size, 64 tokens at --context-length 256" in (
        capsys.readouterr().err
    )


# ----------------------------------------------------------------------------- strided keys (sink_stride)

STRIDE_SHAPES = [
    # (B, H, H_kv, T, G, k, s)
    (1, 6, 2, 48, 8, 4, 4),  # GQA, k = s: the first strided key is past the sinks
    (1, 6, 2, 48, 8, 0, 3),  # strided keys without sinks, a stride that does not divide G
    (2, 9, 3, 37, 10, 2, 4),  # the bundled model's head layout, odd H, last group short, two rows
    (1, 5, 5, 29, 6, 4, 8),  # odd H, MHA, a stride above the group size
    (1, 8, 2, 50, 10, 7, 2),  # k > G/2 and the smallest stride
    (1, 4, 1, 20, 8, 3, 64),  # a stride longer than the document: sinks only
    (1, 6, 2, 45, 9, 0, 5),  # the shifted heads' second group (at 4) has no strided key before it
]


@pytest.mark.parametrize("shape", STRIDE_SHAPES, ids=lambda s: "B{}H{}kv{}T{}G{}k{}s{}".format(*s))
def test_strided_keys_forward_and_gradients_match_the_reference(shape):
    batch, heads, kv_heads, seq_len, group, sinks, stride = shape
    q, k, v = _qkv(batch, heads, kv_heads, seq_len, seed=5)
    out = s2_attention(q, k, v, group, sink_tokens=sinks, sink_stride=stride)
    ref = s2_attention_ref(q, k, v, group, sinks=sinks, stride=stride)
    _close(out, ref, 1e-5, "forward")
    _check_grads(out, ref, (q, k, v))


def test_zero_stride_is_s2_with_sinks_and_a_stride_past_the_document_adds_nothing():
    q, k, v = _qkv(2, 9, 3, 37, requires_grad=False)
    cu = torch.tensor([0, 20, 37, 50, 74])
    for kwargs in ({}, {"cu_seqlens": cu}, {"sliding_window": 5}):
        sinks = s2_attention(q, k, v, 8, sink_tokens=4, **kwargs)
        assert torch.equal(s2_attention(q, k, v, 8, sink_tokens=4, sink_stride=0, **kwargs), sinks)
        assert torch.equal(s2_attention(q, k, v, 8, sink_tokens=4, sink_stride=38, **kwargs), sinks)


def test_only_keys_on_the_stride_reach_later_groups():
    # G = 16, s = 8, no sinks, heads [0, 3) unshifted: key 15 (15 % 8 == 7) reaches every later query, key
    # 14 only the queries of the groups that hold it ([0, 16) unshifted, [8, 24) shifted)
    q, k, v = _qkv(1, 6, 2, 64, seed=6, requires_grad=False)
    base = s2_attention(q, k, v, 16, sink_stride=8)

    def changed_by(position):  # (H, T): outputs that move when the key and value at position move
        k2, v2 = k.clone(), v.clone()
        k2[:, :, position] += 3.0
        v2[:, :, position] += 3.0
        return (s2_attention(q, k2, v2, 16, sink_stride=8) - base).abs().amax(-1)[0] > 1e-4

    strided = changed_by(15)
    assert strided[:, 15:].all() and not strided[:, :15].any()
    other = changed_by(14)
    assert other[:3, 14:16].all() and not other[:3, 16:].any()
    assert other[3:, 14:24].all() and not other[3:, 24:].any()
    assert not other[:, :14].any()


@pytest.mark.parametrize("sinks,stride", [(4, 8), (0, 3), (2, 5)])
def test_strided_keys_in_packed_documents_match_the_reference(sinks, stride):
    q, k, v, cu, docs = _packed(LENGTHS)
    out = s2_attention(q, k, v, 8, cu_seqlens=cu, sink_tokens=sinks, sink_stride=stride)
    ref = s2_attention_masked_ref(q, k, v, 8, docs=docs, sinks=sinks, stride=stride)
    _close(out, ref, 1e-5, "forward")
    _check_grads(out, ref, (q, k, v))
    _close(s2_attention_ref(q, k, v, 8, docs=[docs], sinks=sinks, stride=stride), ref, 1e-6, "references")


def test_strided_keys_through_the_block_mask_equal_documents_one_by_one():
    q, k, v, cu, docs = _packed(LENGTHS, requires_grad=False)
    total = sum(LENGTHS)
    doc_id = torch.repeat_interleave(torch.arange(len(LENGTHS)), torch.tensor(LENGTHS))
    block = (doc_id[:, None] == doc_id[None, :]) & torch.ones(total, total, dtype=torch.bool).tril()
    out = s2_attention(q, k, v, 8, attention_mask=block[None, None], sink_tokens=2, sink_stride=3)
    want = s2_attention(q, k, v, 8, cu_seqlens=cu, sink_tokens=2, sink_stride=3)
    _close(out, want, 1e-6, "mask vs cu_seqlens")
    for start, n in docs:
        part = [x[:, :, start : start + n] for x in (q, k, v)]
        alone = s2_attention(*part, 8, sink_tokens=2, sink_stride=3)
        _close(out[:, :, start : start + n], alone, 1e-6, f"doc at {start}")


@pytest.mark.parametrize("window", [3, 9, 40])
@pytest.mark.parametrize("packed", [False, True], ids=["one-doc", "packed"])
def test_strided_keys_with_a_sliding_window_match_the_reference(window, packed):
    lengths = [30, 5, 18, 3, 44] if packed else [100]
    q, k, v, cu, docs = _packed(lengths, seed=2)
    out = s2_attention(
        q, k, v, 16, cu_seqlens=cu if packed else None, sliding_window=window, sink_tokens=2, sink_stride=4
    )
    ref = s2_attention_masked_ref(q, k, v, 16, docs=docs, window=window, sinks=2, stride=4)
    _close(out, ref, 1e-5, "forward")
    _check_grads(out, ref, (q, k, v))


def test_softcap_with_strided_keys_matches_masked_attention():
    from reference import s2_mask_ref

    from longlora.s2sdpa import softcapped_attention

    q, k, v, cu, docs = _packed([30, 11, 23], heads=6, kv_heads=2, requires_grad=False)
    q = q * 4  # large scores, so that the cap matters
    out = s2_attention(q, k, v, 8, cu_seqlens=cu, softcap=2.0, sink_tokens=1, sink_stride=4)
    halves = [s2_mask_ref(64, 8, docs=docs, shifted=s, sinks=1, stride=4) for s in (False, True)]
    mask = torch.stack([halves[h >= 3] for h in range(6)])[None]
    want = softcapped_attention(q.double(), k.double(), v.double(), mask, 8**-0.5, 0.0, 2.0)
    _close(out, want, 1e-5)


@pytest.mark.parametrize("group,sinks,stride", [(4, 0, 2), (7, 4, 3), (16, 1, 8)])
def test_strided_keys_leak_no_future_token(group, sinks, stride):
    q, k, v = _qkv(1, 6, 2, 40, seed=3, requires_grad=False)
    base = s2_attention(q, k, v, group, sink_tokens=sinks, sink_stride=stride)
    for t in (0, 2, 3, 15, 38):
        q2, k2, v2 = q.clone(), k.clone(), v.clone()
        for x in (q2, k2, v2):
            x[:, :, t + 1 :] = torch.randn_like(x[:, :, t + 1 :]) * 5
        out = s2_attention(q2, k2, v2, group, sink_tokens=sinks, sink_stride=stride)
        _close(out[:, :, : t + 1], base[:, :, : t + 1], 0, f"positions <= {t}")


def test_strided_keys_leak_nothing_across_packed_documents():
    q, k, v, cu, docs = _packed(LENGTHS, requires_grad=False)
    base = s2_attention(q, k, v, 8, cu_seqlens=cu, sink_tokens=1, sink_stride=2)
    a, n = docs[4]  # the longest document; every other document's keys and values change
    k2, v2 = k.clone(), v.clone()
    outside = torch.ones(q.shape[2], dtype=torch.bool)
    outside[a : a + n] = False
    k2[:, :, outside] += 3.0
    v2[:, :, outside] += 3.0
    out = s2_attention(q, k2, v2, 8, cu_seqlens=cu, sink_tokens=1, sink_stride=2)
    _close(out[:, :, a : a + n], base[:, :, a : a + n], 0, "document 4")


@pytest.mark.skipif(not s2flex.flex_available(), reason="torch has no flex_attention")
@pytest.mark.parametrize(
    "lengths,window,sinks,stride",
    [([100], None, 4, 8), (LENGTHS, 5, 0, 3), ([150, 40, 77, 9], None, 2, 16)],
    ids=["one-doc", "packed-window", "tiles"],
)
def test_flex_forward_with_strided_keys_matches_the_reference(lengths, window, sinks, stride):
    group = 64 if len(lengths) == 4 else 8
    q, k, v, cu, docs = _packed(lengths, requires_grad=False)
    out = s2_attention(
        q,
        k,
        v,
        group,
        cu_seqlens=cu,
        sliding_window=window,
        sink_tokens=sinks,
        sink_stride=stride,
        backend="flex",
    )
    ref = s2_attention_masked_ref(q, k, v, group, docs=docs, window=window, sinks=sinks, stride=stride)
    _close(out, ref, 1e-5)
    # the cached block mask of the same layout without strided keys is not reused
    plain = s2_attention(
        q, k, v, group, cu_seqlens=cu, sliding_window=window, sink_tokens=sinks or 1, backend="flex"
    )
    assert (out - plain).abs().max() > 1e-3


def test_bad_sink_stride_says_what_is_wrong():
    q, k, v = _qkv(1, 6, 2, 16, requires_grad=False)
    for bad in (1, -2, 2.5):
        with pytest.raises(
            ValueError, match=rf"sink_stride must be 0 \(no strided keys\) or an integer >= 2, got {bad}"
        ):
            s2_attention(q, k, v, 8, sink_stride=bad)
    with pytest.raises(ValueError, match="backend='flash' cannot attend to sink tokens or strided keys"):
        s2_attention(q, k, v, 8, sink_stride=4, backend="flash")
    with pytest.raises(ValueError, match="s2 sink_stride must be 0 .* got 1 .*full attention"):
        enable_s2_attention(tiny_model(), group_size=8, sink_tokens=4, sink_stride=1)
    with pytest.raises(ValueError, match="s2 backend 'flash' cannot attend to sink tokens or strided keys"):
        enable_s2_attention(tiny_model(), group_size=8, sink_stride=4, backend="flash")


def test_model_trains_with_strided_keys_saves_them_and_evaluates_with_full_attention(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    ids = torch.randint(6, 100, (2, 64))
    full = tiny_model("llama").eval()
    sink = enable_s2_attention(tiny_model("llama"), group_size=16, sink_tokens=4).train()
    strided = enable_s2_attention(tiny_model("llama"), group_size=16, sink_tokens=4, sink_stride=8).train()
    logits = strided(ids).logits
    # the shifted heads' second group starts at 8, after the first strided key (7): it differs from there
    assert (logits - sink(ids).logits)[:, 8:].abs().amax(-1).min() > 1e-5
    _close(logits[:, :8], sink(ids).logits[:, :8], 1e-6, "before the first strided key is seen")
    strided.save_pretrained(tmp_path)
    cfg = AutoConfig.from_pretrained(tmp_path)
    assert cfg.s2_sink_stride == 8 and cfg.s2_sink_tokens == 4
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="s2_attention").train()
    assert torch.equal(reloaded(ids).logits, logits)
    strided.eval()
    assert torch.equal(strided(ids).logits, full(ids).logits)  # inference: full attention


def test_finetune_refuses_bad_sink_strides(tmp_path):
    from longlora.training.config import parse_args

    common = ["--data", "a.txt", "--output-dir", str(tmp_path / "o")]
    sink = [*common, "--attention", "s2-sink"]
    assert parse_args(sink).sink_stride == 8  # the default with s2-sink
    assert parse_args(common).sink_stride is None
    assert parse_args([*sink, "--sink-stride", "0"]).sink_stride == 0  # sinks only
    assert parse_args([*sink, "--sink-tokens", "0"]).sink_tokens == 0  # strided keys only
    for bad in ("1", "-4"):
        with pytest.raises(
            ValueError, match=f"--sink-stride must be 0 \\(no strided keys\\) or at least 2, got {bad}"
        ):
            parse_args([*sink, "--sink-stride", bad])
    with pytest.raises(
        ValueError, match="--sink-tokens must be at least 1, got 0 \\(0 only with a --sink-stride"
    ):
        parse_args([*sink, "--sink-tokens", "0", "--sink-stride", "0"])
    with pytest.raises(ValueError, match="--sink-stride applies to --attention s2-sink only"):
        parse_args([*common, "--sink-stride", "8"])

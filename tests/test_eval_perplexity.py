"""Perplexity: window protocols against hand computations and slow references, on tiny models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import EMMA, PRIDE_AND_PREJUDICE, make_char_tokenizer, tiny_model

from data_tools.errors import DataError
from longlora.eval import perplexity as ppl_mod
from longlora.eval.perplexity import (
    evaluate_perplexity,
    longlora_windows,
    main,
    prediction_nll,
    sliding_windows,
)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama").eval()


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(6, 128, size=157)


def _next_token_nll(model, context: np.ndarray, target: int) -> float:
    """Slow reference: NLL of one target given exactly ``context`` (one forward pass per target)."""
    with torch.no_grad():
        logits = model(torch.tensor(context)[None]).logits[0, -1].float()
    return float(-torch.log_softmax(logits, -1)[target])


@pytest.mark.parametrize("n,seq_len,stride", [(20, 8, 3), (17, 8, 8), (9, 8, 1), (100, 16, 5), (33, 32, 7)])
def test_sliding_windows_score_every_target_once_with_bounded_context(n, seq_len, stride):
    windows = sliding_windows(n, seq_len, stride)
    scored = [t for w in windows for t in range(w.first, w.last)]
    assert scored == list(range(1, n))  # every target 1..N-1, once, in order
    for i, w in enumerate(windows):
        assert w.stop - w.start == seq_len and w.start >= 0 and w.stop <= n - 1
        assert w.start < w.first and w.last == w.stop + 1
        lo_context = 1 if i == 0 else seq_len - stride + 1
        assert all(lo_context <= t - w.start <= seq_len for t in range(w.first, w.last))


def test_stride_equal_to_seq_len_is_exp_mean_cross_entropy_by_hand(model, tokens):
    seq_len = 39
    data = tokens[: 4 * seq_len + 1]  # four disjoint windows, nothing left over
    result = evaluate_perplexity(model, data, seq_len, stride=seq_len)
    chunks = []
    with torch.no_grad():
        for k in range(4):
            x = torch.tensor(data[k * seq_len : (k + 1) * seq_len])[None]
            y = torch.tensor(data[k * seq_len + 1 : (k + 1) * seq_len + 1])
            chunks.append(F.cross_entropy(model(x).logits[0].float(), y, reduction="none"))
    by_hand = math.exp(torch.cat(chunks).mean().item())
    assert result["tokens"] == 4 * seq_len and result["windows"] == 4
    assert result["ppl"] == pytest.approx(by_hand, rel=1e-5)


@pytest.mark.parametrize("seq_len,stride", [(24, 1), (48, 20), (48, 48), (40, 0.5)])
def test_sliding_window_equals_slow_per_token_reference(model, tokens, seq_len, stride):
    data = tokens[:150] if stride != 1 else tokens[:60]
    n = len(data)
    step = stride if isinstance(stride, int) else int(seq_len * stride)

    def context_start(t: int) -> int:
        # Written from the definition: windows end at seq_len, seq_len + step, ... (capped at N - 1)
        # and read the seq_len tokens before their end; target t belongs to the first window
        # ending at or after it.
        if t <= seq_len:
            return 0
        stop = min(seq_len + math.ceil((t - seq_len) / step) * step, n - 1)
        return stop - seq_len

    if stride == 1:  # every token gets exactly min(t, seq_len) tokens of context
        assert all(context_start(t) == max(0, t - seq_len) for t in range(1, n))
    nll = [_next_token_nll(model, data[context_start(t) : t], int(data[t])) for t in range(1, n)]
    expected = math.exp(sum(nll) / len(nll))
    result = evaluate_perplexity(model, data, seq_len, stride=stride)
    assert result["tokens"] == n - 1
    assert result["ppl"] == pytest.approx(expected, rel=1e-4)


def test_longlora_protocol_matches_the_original_eval_loop(model, tokens):
    seq_len, step = 32, 16
    data = tokens[:120]
    # Transcription of the original eval.py: get_as_batch (starts every `step`, last one dropped),
    # loss = model(input_ids=x, labels=x).loss per window, ppl = e ** mean(window losses).
    all_ix = list(range(0, len(data) - seq_len, step))
    all_ix.pop()
    losses = []
    with torch.no_grad():
        for i in all_ix:
            x = torch.from_numpy(data[i : i + seq_len].astype(np.int64))[None]
            losses.append(model(input_ids=x, labels=x).loss.item())
    expected = math.exp(sum(losses) / len(losses))
    result = evaluate_perplexity(model, data, seq_len, protocol="longlora", window_step=step)
    assert result["windows"] == len(all_ix)
    assert result["tokens"] == len(all_ix) * (seq_len - 1)
    assert result["ppl"] == pytest.approx(expected, rel=1e-5)
    assert [w.start for w in longlora_windows(len(data), seq_len, step)] == all_ix


def test_batching_and_logit_chunks_do_not_change_the_result(model, tokens, monkeypatch):
    one = evaluate_perplexity(model, tokens, 32, stride=8)
    batched = evaluate_perplexity(model, tokens, 32, stride=8, batch_size=3)
    monkeypatch.setattr(ppl_mod, "LOGITS_CHUNK", 5)
    chunked = evaluate_perplexity(model, tokens, 32, stride=8)
    assert batched["ppl"] == pytest.approx(one["ppl"], rel=1e-5)
    assert chunked["ppl"] == pytest.approx(one["ppl"], rel=1e-5)


def test_prediction_nll_matches_full_logits_for_untied_heads():
    model = tiny_model("qwen2", tie_word_embeddings=False).eval()
    ids = torch.randint(6, 128, (2, 30))
    targets = ids[:, 11:30]
    full = model(ids).logits[:, 10:29].float()
    expected = F.cross_entropy(full.transpose(1, 2), targets, reduction="none")
    torch.testing.assert_close(prediction_nll(model, ids, 10, 29, targets), expected, rtol=1e-5, atol=1e-5)


def test_too_short_data_and_bad_stride_are_explained(tokens):
    with pytest.raises(
        DataError, match=r"157 tokens, too few for --seq-len 200.*at least seq-len \+ 1 = 201"
    ):
        sliding_windows(157, 200)
    with pytest.raises(DataError, match=r"longlora protocol.*seq-len \+ window-step \+ 1 = 385"):
        longlora_windows(300, 128, 256)
    with pytest.raises(ValueError, match="--stride must be between 1 and --seq-len 16"):
        sliding_windows(100, 16, 17)


# ----------------------------------------------------------------------------- command line


@pytest.fixture
def book(tmp_path):
    path = tmp_path / "book.txt"
    text = open(PRIDE_AND_PREJUDICE, encoding="utf-8").read()[:6000]
    path.write_text(text, encoding="utf-8")
    return path


def test_cli_writes_table_json_and_plot(tiny_model_dir, book, tmp_path, capsys):
    out, png = tmp_path / "res" / "ppl.json", tmp_path / "ppl.png"
    args = f"--model {tiny_model_dir} --data {book} --seq-len 64 128 --max-tokens 600 --torch-dtype float32"
    rc = main([*args.split(), "--output", str(out), "--plot", str(png), "--no-progress"])
    assert rc == 0
    payload = json.loads(out.read_text())
    assert payload["kind"] == "perplexity"
    assert [r["seq_len"] for r in payload["results"]] == [64, 128]
    for r in payload["results"]:
        assert {"seq_len", "ppl", "tokens", "seconds"} <= set(r)
        assert r["tokens"] == 599 and math.isfinite(r["ppl"]) and r["ppl"] > 1
    assert payload["config"]["data_tokens"] == 600 and payload["config"]["protocol"] == "sliding"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "seq_len" in table and " 128 " in table


def test_cli_text_and_token_file_give_the_same_perplexity(tiny_model_dir, book, tmp_path):
    from data_tools import load_document
    from data_tools.tokenfile import write_token_file

    text = load_document(book).text  # the text the command reads (cleaned by data_tools)
    ids = make_char_tokenizer()(text[:1000], add_special_tokens=False)["input_ids"][:400]
    bin_path = tmp_path / "book.bin"
    write_token_file(bin_path, [ids], vocab_size=128, tokenizer="char")
    raw_path = tmp_path / "raw.bin"
    raw_path.write_bytes(np.asarray(ids, dtype="<u2").tobytes())
    ppl = {}
    for name, data, extra in [
        ("text", book, []),
        ("tokens", bin_path, []),
        ("raw", raw_path, ["--dtype", "uint16"]),
    ]:
        out = tmp_path / f"{name}.json"
        args = f"--model {tiny_model_dir} --data {data} --seq-len 100 --max-tokens 400 --torch-dtype float32"
        assert main([*args.split(), "--output", str(out), "--no-progress", *extra]) == 0
        ppl[name] = json.loads(out.read_text())["results"][0]["ppl"]
    assert ppl["tokens"] == pytest.approx(ppl["text"], rel=1e-6)
    assert ppl["raw"] == pytest.approx(ppl["text"], rel=1e-6)


def test_cli_errors_name_the_problem_and_the_fix(tiny_model_dir, book, tmp_path, capsys):
    base = ["--model", str(tiny_model_dir), "--torch-dtype", "float32", "--no-progress"]
    # seq-len above what the model addresses: suggest Position Interpolation
    assert main(base + ["--data", str(book), "--seq-len", "512"]) == 2
    assert "--context-length 512" in capsys.readouterr().err
    # too short for the requested seq-len
    assert main(base + ["--data", str(book), "--seq-len", "128", "--max-tokens", "100"]) == 2
    err = capsys.readouterr().err
    assert "too few for --seq-len 128" in err and "--max-tokens" in err
    # empty data
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert main(base + ["--data", str(empty), "--seq-len", "64"]) == 2
    assert "empty" in capsys.readouterr().err.lower()
    # raw token file without sidecar or --dtype, and one that is not whole uint16 values
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"\x01\x00" * 300)
    assert main(base + ["--data", str(raw), "--seq-len", "64"]) == 2
    assert "--dtype uint16" in capsys.readouterr().err
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x01" * 301)
    assert main(base + ["--data", str(odd), "--seq-len", "64", "--dtype", "uint16"]) == 2
    assert "wrong dtype or truncated" in capsys.readouterr().err
    # ids beyond the model's vocabulary
    big = tmp_path / "big.bin"
    big.write_bytes(np.full(300, 5000, dtype="<u2").tobytes())
    assert main(base + ["--data", str(big), "--seq-len", "64", "--dtype", "uint16"]) == 2
    assert "beyond the model's vocabulary of 128" in capsys.readouterr().err
    assert main(base + f"--data {book} --seq-len 64 --attention flash --device cpu".split()) == 2
    assert "use --attention sdpa on CPU" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--data", str(book), "--seq-len", "64", "--stride", "100"])
    assert "use a stride <= seq-len" in capsys.readouterr().err


def test_cli_position_interpolation_and_s2_ablation(tiny_model_dir, book, tmp_path):
    base = ["--model", str(tiny_model_dir), "--data", str(book), "--torch-dtype", "float32", "--no-progress"]
    pi = tmp_path / "pi.json"
    assert (
        main(base + "--seq-len 512 --context-length 512 --max-tokens 1025 --output".split() + [str(pi)]) == 0
    )
    payload = json.loads(pi.read_text())
    assert payload["config"]["max_position_embeddings"] == 512
    assert payload["config"]["rope_parameters"]["factor"] == 2
    full, s2 = tmp_path / "full.json", tmp_path / "s2.json"
    assert main(base + "--seq-len 128 --max-tokens 513 --output".split() + [str(full)]) == 0
    assert main(base + "--seq-len 128 --max-tokens 513 --attention s2 --output".split() + [str(s2)]) == 0
    full_ppl = json.loads(full.read_text())["results"][0]["ppl"]
    s2_result = json.loads(s2.read_text())
    assert s2_result["config"]["attention"] == "s2"
    assert math.isfinite(s2_result["results"][0]["ppl"])
    assert s2_result["results"][0]["ppl"] != pytest.approx(full_ppl, rel=1e-6)  # S2 really stays on in eval


def test_cli_longlora_protocol_records_its_windows(tiny_model_dir, book, tmp_path):
    out = tmp_path / "paper.json"
    args = f"--model {tiny_model_dir} --data {book} --seq-len 64 --max-tokens 400 --protocol longlora"
    assert main([*args.split(), "--window-step", "32", "--output", str(out), "--no-progress"]) == 0
    (entry,) = json.loads(out.read_text())["results"]
    starts = list(range(0, 400 - 64, 32))[:-1]
    assert entry["protocol"] == "longlora" and entry["window_step"] == 32
    assert entry["windows"] == len(starts) and entry["tokens"] == len(starts) * 63


# ----------------------------------------------------------------------------- real model


@pytest.mark.real_model
def test_real_model_perplexity_is_finite_and_falls_with_context():
    from data_tools import load_document
    from longlora.models import load_model

    model, tokenizer = load_model("default", dtype="auto")
    text = load_document(EMMA).text[:20000]
    ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"][: 1024 + 1])
    # The same 1024 targets scored with up to 256 vs up to 1024 tokens of context (the README
    # table, from the command, goes to 8k).
    short = evaluate_perplexity(model, ids, 256)
    long = evaluate_perplexity(model, ids, 1024)
    assert short["tokens"] == long["tokens"] == 1024
    assert math.isfinite(short["ppl"]) and math.isfinite(long["ppl"])
    assert long["ppl"] < short["ppl"]

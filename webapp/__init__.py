"""The browser app's parts that are not gradio event wiring (``app.py`` is the entry point).

- ``loading.py``: ``BackgroundEngine``, the model loading in a thread while the page is up
- ``cards.py``: Markdown for the document card and the status line
- ``chat.py``: per-browser-session state (``ChatState``, ``Turn``) and how answers are shown
- ``layout.py``: the page's components (no events)

- ``server.py``: the command-line flags and ``launch``

It sits beside ``app.py``, outside ``longlora``: importing ``longlora`` loads transformers, and the
page must come up before the model (``longlora.qa`` is imported by the loader thread). Only
``layout.py`` and ``server.py`` import gradio; the engine (``longlora.qa``) never does.
"""

"""The browser app's parts beside ``app.py`` (the entry point, with most handlers and their events).

- ``loading.py``: ``BackgroundEngine``, the model loading in a thread while the page is up
- ``cards.py``: Markdown for the document card and the status line
- ``chat.py``: per-browser-session state (``ChatState``, ``Turn``) and how answers are shown
- ``layout.py``: the page's components (no events)
- ``files.py``: uploads deleted once read, the private copy of a PDF kept for the page view
- ``pages.py``: the page view: cited pages listed after each answer, a page rendered as an image
  (its handlers and events, ``/page`` and ``/page_of``)
- ``server.py``: the command-line flags, ``launch`` and the quick events' queue settings

It sits beside ``app.py``, outside ``longlora``: importing ``longlora`` loads transformers, and the
page must come up before the model (``longlora.qa`` is imported by the loader thread). Only
``layout.py``, ``pages.py`` and ``server.py`` import gradio; the engine (``longlora.qa``) never does.
"""

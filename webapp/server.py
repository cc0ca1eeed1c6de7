"""Serving the app: the command-line flags, ``launch`` with the app's privacy settings, and the
queue settings of quick events (``LIGHT``)."""

from __future__ import annotations

import argparse

import gradio as gr

from .layout import CSS

DEFAULT_CONCURRENCY = 1
DEFAULT_MAX_UPLOAD_MB = 200  # uploads above it are refused (--max-upload-mb)

LIGHT = dict(concurrency_limit=None, show_progress="hidden")  # quick events: never queued behind answers


def launch(
    demo: gr.Blocks,
    *,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    share: bool = False,
    concurrency: int = DEFAULT_CONCURRENCY,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
    max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB,
):
    """Queue + launch with the app's privacy settings (no share link unless asked, no run history)."""
    demo.queue(default_concurrency_limit=concurrency, max_size=64)
    return demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        prevent_thread_lock=prevent_thread_lock,
        quiet=quiet,
        show_error=True,
        run_history=False,
        enable_monitoring=False,
        mcp_server=False,
        footer_links=["api"],
        max_file_size=f"{int(max_upload_mb)}mb",  # larger uploads are refused with the limit named
        # System fonts: the page must look right with no internet access.
        theme=gr.themes.Soft(
            font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
        ),
        css=CSS,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python app.py",
        description="Ask questions about a long document (PDF/TXT/MD) with a LongLoRA model in the browser.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    from longlora.model_flags import add_model_arguments  # torch-free: the page comes up before torch loads

    add_model_arguments(parser)  # --model, --adapter, --context-length, --dtype, --device, --load-in-4bit...
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0 exposes the app to your network)"
    )
    parser.add_argument("--port", type=int, default=7860, help="port to listen on")
    parser.add_argument("--share", action="store_true", help="also create a public gradio.live link")
    parser.add_argument(
        "--max-new-tokens", type=int, default=512, help="default answer length limit in tokens"
    )
    parser.add_argument(
        "--max-upload-mb",
        type=int,
        default=DEFAULT_MAX_UPLOAD_MB,
        help="largest upload accepted, in MB; a larger file is refused with a message naming the limit",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help="how many questions may be in progress at once; the model answers one at a time and the others show that they wait",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_new_tokens <= 0:
        parser.error(f"--max-new-tokens must be positive, got {args.max_new_tokens}")
    if args.concurrency < 1:
        parser.error(f"--concurrency must be at least 1, got {args.concurrency}")
    if args.max_upload_mb < 1:
        parser.error(f"--max-upload-mb must be at least 1, got {args.max_upload_mb}")
    if not 0 < args.port < 65536:
        parser.error(f"--port must be between 1 and 65535, got {args.port}")
    return args

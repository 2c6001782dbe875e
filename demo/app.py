"""Gradio demo: base, RL and Δlog p-extrapolated outputs side by side, every token coloured by Δlog p.

    python demo/app.py                                   # the project's toy pair (trained on first run)
    python demo/app.py --rl ORG/RL-MODEL --base ORG/BASE-MODEL --dtype bfloat16 --device-map auto

The models are fixed at launch: nothing a web user sends names a model or a path. The three outputs are
generated at once, each with its own random generator seeded by the same seed, and streamed; when an
output ends, its tokens are scored teacher-forced under both models for the colours and tooltips.

This file is the command line; `demo_models.py` (generation, validation, cancellation) and `demo_page.py` (the
page and its API) sit beside it, as a Hugging Face Space runs them.
"""

import argparse
import os
from pathlib import Path

from demo_models import DemoModels, Limits
from demo_page import build_app
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from hf_extrapolate.cli import HelpFormatter
from hf_extrapolate.commands import add_pair_arguments, dry_run, load_from_args, resolve_pair


def example_prompts(n: int = 4) -> list[str]:
    """Held-out toy problems, written as the toy pair was trained to read them."""
    try:  # the toy task lands with the toy pair
        from hf_extrapolate.evaluation.grading import user_message
        from hf_extrapolate.toy.task import make_problems
    except ImportError:
        return []
    return [user_message(p["problem"]) for p in make_problems("test", n, seed=0)]


def build_parser() -> argparse.ArgumentParser:
    """The demo's command line: the pair options `hf-extrapolate` commands share, the server, the limits."""
    env = os.environ  # a Hugging Face Space sets GRADIO_SERVER_NAME / GRADIO_SERVER_PORT
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_pair_arguments(p, settings=False)
    p.add_argument("--host", default=env.get("GRADIO_SERVER_NAME", "127.0.0.1"), help="address to serve on")
    p.add_argument("--port", type=int, default=int(env.get("GRADIO_SERVER_PORT", "7860")), help="port to serve on")
    p.add_argument("--concurrency", type=int, default=1, help="requests generating at once")
    p.add_argument("--max-queue", type=int, default=32, help="requests waiting at most")
    p.add_argument("--max-new-tokens", type=int, default=Limits.max_new_tokens, help="new tokens per output at most")
    p.add_argument("--max-prompt-tokens", type=int, default=Limits.max_prompt_tokens, help="prompt tokens at most")
    p.add_argument("--max-prompt-chars", type=int, default=Limits.max_prompt_chars, help="prompt characters at most")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    for option in ("concurrency", "max_queue", "max_new_tokens", "max_prompt_tokens", "max_prompt_chars"):
        if getattr(args, option) < 1:
            p.error(f"--{option.replace('_', '-')} must be at least 1")
    if (args.rl is None) != (args.base is None):
        p.error("give both --rl and --base, or neither for the toy pair")
    return args


class NoUploads:
    """ASGI middleware that answers every multipart (file upload) request with 413: the demo takes no files."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and Headers(scope=scope).get("content-type", "").startswith("multipart/"):
            await PlainTextResponse("This demo takes no file uploads.", status_code=413)(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _shown(name: str) -> str:
    """A model's name for the page: the hub id, or only the folder name of a local model (no server paths)."""
    return Path(name).name if Path(name).is_dir() else name


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.rl is None:
        print("using the toy pair")  # pair_paths announces a training, with its expected time, if one is needed
    try:
        if args.dry_run:
            raise SystemExit(dry_run(args, tokens=args.max_new_tokens))
        args.rl, args.base = resolve_pair(args)
        rl, base, tokenizer = load_from_args(args)
    except ValueError as err:  # a model or tokenizer that cannot be loaded: one clear line
        raise SystemExit(f"demo/app.py: error: {err}") from err
    limits = Limits(args.max_prompt_chars, args.max_prompt_tokens, args.max_new_tokens)
    models = DemoModels(rl, base, tokenizer, limits, args.concurrency)
    title = f"RL model `{_shown(args.rl)}` · base model `{_shown(args.base)}`"
    app = build_app(models, example_prompts(), title)
    app.queue(default_concurrency_limit=args.concurrency, max_size=args.max_queue)
    # the page takes no files: refuse every multipart request before gradio writes it to its temp folder
    app.launch(
        server_name=args.host,
        server_port=args.port,
        max_file_size=0,
        app_kwargs={"middleware": [Middleware(NoUploads)]},
    )


if __name__ == "__main__":
    main()

"""The demo's page: each output rendered as HTML (tokens coloured by Δlog p, with a card of alternatives), and the
Gradio Blocks with its private page event and its public `/generate` API."""

import html
from collections.abc import AsyncIterator
from typing import Any, Literal

import gradio as gr
from demo_models import (
    COLUMNS,
    DEMO_CRITERIA,
    GAMMA_RANGE,
    SETTING_HELP,
    TAU_RANGE,
    TEMPERATURE_RANGE,
    TOP_P_RANGE,
    Column,
    DemoModels,
    summary,
)

TITLES = {"base": "Base model π_B", "rl": "RL model π_R", "extrapolated": "Extrapolated π_X"}
DELTA_SCALE = 2.0  # |Δlog p| at which a token's colour saturates
BLUE, RED = (37, 99, 235), (220, 38, 38)


def _colour(delta: float) -> str:
    if delta != delta:  # NaN: not scored
        return "transparent"
    alpha = min(abs(delta) / DELTA_SCALE, 1.0) * 0.8
    r, g, b = BLUE if delta > 0 else RED
    return f"rgba({r},{g},{b},{alpha:.2f})"


def _tooltip(tok: dict, gamma: float) -> str:
    lines = [f"{tok['token']!r}   Δlog p = {tok['delta_logp']:+.3f}   (log p: base {tok['logp_base']:.3f}, "
             f"RL {tok['logp_rl']:.3f})"]  # fmt: skip
    labels = {"base": "base", "rl": "RL", "extrapolated": f"π_X (γ={gamma:g})"}
    for name, alternatives in tok["top"].items():
        lines.append(f"{labels[name]}: " + "  ".join(f"{t!r} {p:.0%}" for t, p in alternatives))
    if tok["resampled"] is not None:
        lines.append(f"resampled from π_X with probability {tok['resampled']:.2f}")
    return "\n".join(lines)


def _box(inner: str, note: str = "") -> str:
    note = f'<div class="hfx-note">{html.escape(note)}</div>' if note else ""
    return f'<div class="hfx-out">{inner}</div>{note}'


def render(column: Column, tokenizer: Any, gamma: float) -> str:
    """One output as HTML: plain text while streaming; once scored, coloured token spans whose card (shown on
    hover or click) lists the top alternatives under each model."""
    if column.tokens is None:
        return _box(html.escape(tokenizer.decode(column.ids)), "scoring…" if column.done else "generating…")
    spans = []
    for tok in column.tokens:
        text = "↵\n" if tok["token"] == "\n" else tok["token"]
        resampled = tok["resampled"] is not None and tok["resampled"] >= 0.5
        spans.append(
            f'<span class="hfx-tok{" hfx-resampled" if resampled else ""}" tabindex="0" '
            f'style="background:{_colour(tok["delta_logp"])}" data-tip="{html.escape(_tooltip(tok, gamma))}">'
            f"{html.escape(text)}</span>"
        )
    note = f"{len(column.tokens)} tokens"
    if column.resample_rate is not None:
        marked = sum(t["resampled"] >= 0.5 for t in column.tokens)
        note += (f" · {marked} marked as resampled · expected: {column.resample_rate:.1%} of tokens resampled from "
                 f"π_X, {column.changed_rate:.1%} changed from the base model's proposal")  # fmt: skip
    return _box("".join(spans), note)


# scoped to each output component by gr.HTML (a JS template string: no dollar-brace in here)
OUTPUT_CSS = """
.hfx-out { white-space: pre-wrap; font-family: ui-monospace, monospace; line-height: 1.7; min-height: 6em;
           padding: .5em; border: 1px solid #8884; border-radius: 6px; }
.hfx-note { opacity: .7; font-size: .85em; margin-top: .4em; }
.hfx-tok { border-radius: 3px; cursor: help; }
.hfx-tok:hover, .hfx-tok:focus { outline: 1px solid #000a; }
.hfx-resampled { outline: 2px solid currentColor; font-weight: 700; }
"""

# a token's card (its data-tip), shown on hover or focus: one fixed element, placed inside the window
CARD_JS = """
let card = document.getElementById('hfx-card');
if (!card) {
  card = document.createElement('div');
  card.id = 'hfx-card';
  card.style.cssText = 'position:fixed; z-index:1000; display:none; pointer-events:none; white-space:pre-wrap; ' +
    'overflow-wrap:anywhere; max-width:min(48em, calc(100vw - 16px)); background:#111e; color:#fff; ' +
    'font:12px/1.4 ui-monospace, monospace; padding:6px 8px; border-radius:6px;';
  document.body.appendChild(card);
  addEventListener('scroll', () => { card.style.display = 'none'; }, true);
}
const show = (event) => {
  const token = event.target.closest('.hfx-tok');
  if (!token) return;
  card.textContent = token.dataset.tip;
  card.style.display = 'block';
  const r = token.getBoundingClientRect(), w = card.offsetWidth, h = card.offsetHeight;
  const width = document.documentElement.clientWidth, height = document.documentElement.clientHeight;
  card.style.left = Math.max(8, Math.min(r.left, width - w - 8)) + 'px';
  card.style.top = (r.bottom + 4 + h <= height - 8 ? r.bottom + 4 : Math.max(8, r.top - h - 4)) + 'px';
};
const hide = (event) => { if (event.target.closest('.hfx-tok')) card.style.display = 'none'; };
element.addEventListener('mouseover', show);
element.addEventListener('focusin', show);
element.addEventListener('mouseout', hide);
element.addEventListener('focusout', hide);
"""


LEGEND = (
    "Each output token is coloured by <b>Δlog p = log π_R − log π_B</b> in its context: "
    f'<span style="background:rgba({",".join(map(str, BLUE))},.6);padding:0 .3em">blue</span> where RL raised it, '
    f'<span style="background:rgba({",".join(map(str, RED))},.6);padding:0 .3em">red</span> where RL lowered it '
    f"(full colour at |Δlog p| ≥ {DELTA_SCALE:g}). Hover over or click a token for its top alternatives "
    "under π_B, π_R and π_X. In selective mode, <b>outlined bold</b> tokens of the extrapolated output "
    "were resampled from π_X."
)


def build_app(models: DemoModels, examples: list[str], title: str) -> gr.Blocks:
    """The page and its `/generate` API; the caller launches it (with a queue)."""
    limits, tokenizer = models.limits, models.tokenizer
    with gr.Blocks(title="hf-extrapolate demo") as app:
        gr.Markdown(
            f"# Δlog p extrapolation\n{title}\n\n"
            "The **extrapolated** model decodes from π_X ∝ π_R · exp(γ · Δlog p): γ = 0 is the RL model. In "
            "**selective** mode the base model proposes each token and only flagged tokens are resampled from π_X."
        )
        prompt = gr.Textbox(label="Prompt", lines=3, max_length=limits.max_prompt_chars, elem_id="prompt")
        with gr.Row():
            gamma = gr.Slider(*GAMMA_RANGE, value=0.5, step=0.05, label="γ", info=SETTING_HELP["gamma"])
            mode = gr.Radio(["full", "selective"], value="full", label="mode")
            criterion = gr.Dropdown(DEMO_CRITERIA, value="delta_logp", label="criterion (selective)",
                                    info=SETTING_HELP["select"], interactive=False)  # fmt: skip
            tau = gr.Slider(*TAU_RANGE, value=-0.3, step=0.05, label="τ (selective; delta_logp flags Δlog p ≤ τ)",
                            info=SETTING_HELP["threshold"], interactive=False)  # fmt: skip
        with gr.Row():
            decoding = gr.Radio(["greedy", "sample"], value="greedy", label="decoding")
            temperature = gr.Slider(*TEMPERATURE_RANGE, value=1.0, step=0.05, label="temperature",
                                    info=SETTING_HELP["temperature"], interactive=False)  # fmt: skip
            top_p = gr.Slider(*TOP_P_RANGE, value=1.0, step=0.05, label="top-p", info=SETTING_HELP["top_p"],
                              interactive=False)  # fmt: skip
            max_new = gr.Slider(1, limits.max_new_tokens, value=min(128, limits.max_new_tokens), step=1,
                                label="max new tokens", elem_id="max-new")  # fmt: skip
            seed = gr.Number(0, precision=0, minimum=0, label="seed")
        with gr.Row():
            run = gr.Button("Generate", variant="primary", elem_id="run")
            stop = gr.Button("Stop", elem_id="stop")
        gr.HTML(f'<div style="font-size:.9em">{LEGEND}</div>')
        outputs = []
        with gr.Row(equal_height=False):
            for name in COLUMNS:
                with gr.Column():
                    gr.Markdown(f"### {TITLES[name]}")
                    outputs.append(
                        gr.HTML(_box(""), css_template=OUTPUT_CSS, js_on_load=CARD_JS, elem_id=f"out-{name}")
                    )
        with gr.Accordion("Per-token data (JSON)", open=False):
            details = gr.JSON(elem_id="details")
        if examples:
            gr.Examples([[e] for e in examples], inputs=[prompt], label="Examples from the toy task")

        async def show(
            prompt: str, gamma: float, mode: str, criterion: str, tau: float, decoding: str, temperature: float,
            top_p: float, max_new_tokens: float, seed: float,
        ) -> AsyncIterator[tuple]:  # fmt: skip
            yield (*(_box("") for _ in COLUMNS), None)  # clear the last request's outputs, also if this one fails
            config = models.config(gamma, mode, criterion, tau, decoding, temperature, top_p)
            async for columns in models.stream(prompt, config, max_new_tokens, seed):
                yield (*(render(columns[n], tokenizer, config.gamma) for n in COLUMNS), gr.skip())
            yield (*(gr.skip() for _ in COLUMNS), summary(columns, config, tokenizer))

        inputs = [prompt, gamma, mode, criterion, tau, decoding, temperature, top_p, max_new, seed]
        event = run.click(show, inputs, [*outputs, details], api_visibility="private", concurrency_id="models")
        stop.click(None, cancels=[event])
        private = {"queue": False, "api_visibility": "private"}
        mode.change(lambda m: [gr.update(interactive=m == "selective")] * 2, mode, [criterion, tau], **private)
        decoding.change(lambda d: [gr.update(interactive=d == "sample")] * 2, decoding, [temperature, top_p], **private)

        async def generate(
            prompt: str,
            gamma: float = 0.5,
            mode: Literal["full", "selective"] = "full",
            criterion: str = "delta_logp",
            tau: float = -0.3,
            decoding: Literal["greedy", "sample"] = "greedy",
            temperature: float = 1.0,
            top_p: float = 1.0,
            max_new_tokens: int = min(64, limits.max_new_tokens),
            seed: int = 0,
        ) -> tuple[str, str, str, dict]:
            """Base, RL and extrapolated completions of `prompt` (the user message; the chat template is applied),
            then a dict with the settings and, per output, its text and per-token statistics.

            Args:
                prompt: the user message.
                gamma: extrapolation strength γ; 0 is the RL model, −1 the base model.
                mode: "full" (every token from π_X) or "selective" (the base model proposes, flagged tokens are
                    resampled from π_X).
                criterion: selective mode's flag, e.g. "delta_logp" (flags Δlog p ≤ τ) or "kl" (flags KL ≥ τ).
                tau: selective mode's threshold τ.
                decoding: "greedy" or "sample".
                temperature: sampling temperature (sample only).
                top_p: nucleus sampling mass (sample only).
                max_new_tokens: tokens to generate per output, at most the server's limit.
                seed: the random seed, shared by the three outputs.
            """
            config = models.config(gamma, mode, criterion, tau, decoding, temperature, top_p)
            async for columns in models.stream(prompt, config, max_new_tokens, seed):  # noqa: B007 (the last is kept)
                pass
            result = summary(columns, config, tokenizer)
            return (*(result["outputs"][n]["text"] for n in COLUMNS), result)

        gr.api(generate, api_name="generate", concurrency_id="models")
    return app

"""The core sub-commands, `generate` and `export`, and the pair options every command shares."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any

from .configuration import ExtrapolationConfig, setting_fields


def add_pair_arguments(parser: argparse.ArgumentParser, *, settings: bool = True) -> None:
    """Model, loading and (optionally) extrapolation options, named alike in every command."""
    models = parser.add_argument_group("models")
    models.add_argument("--rl", help="RL-trained model: hub id or local folder (default: the toy pair)")
    models.add_argument("--base", help="its base model: hub id or local folder (default: the toy pair)")
    models.add_argument("--dtype", default="auto", help="torch dtype for both models (auto, bfloat16, float32, ...)")
    models.add_argument("--device-map", help="accelerate device map for both models, e.g. auto, cpu, cuda:0")
    models.add_argument("--base-device-map", help="device map for the base model alone, e.g. cuda:1")
    models.add_argument("--load-in-4bit", action="store_true", help="bitsandbytes 4-bit (NF4) weights (CUDA)")
    models.add_argument("--load-in-8bit", action="store_true", help="bitsandbytes 8-bit weights (CUDA)")
    models.add_argument("--trust-remote-code", action="store_true", help="allow the models' own code")
    models.add_argument(
        "--dry-run", action="store_true", help="print the pair's memory estimate from its configs and exit"
    )
    if not settings:
        return
    ex = parser.add_argument_group("extrapolation")
    for f in setting_fields():
        ex.add_argument(f"--{f.name.replace('_', '-')}", default=f.default, help=f.metadata["help"], **_argument(f))


def _argument(f: dataclasses.Field) -> dict[str, Any]:
    """argparse's ``type``/``choices``/``nargs``/``metavar`` for a setting, from its annotation."""
    kind = typing.get_type_hints(ExtrapolationConfig)[f.name]
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None: the option may be left out
        kind, args = args[0], list(typing.get_args(args[0]))
    if typing.get_origin(kind) is typing.Literal:
        return {"choices": tuple(args)}
    if typing.get_origin(kind) is tuple:
        return {"type": args[0], "nargs": len(args), "metavar": f.metadata.get("metavar")}
    return {"type": kind}


def settings_from_args(args: argparse.Namespace, temperature: float = 1.0, top_p: float = 1.0) -> ExtrapolationConfig:
    """The `ExtrapolationConfig` of the generated options, with the command's own temperature and top-p."""
    given = {f.name: getattr(args, f.name) for f in setting_fields()}
    given = {name: tuple(v) if isinstance(v, list) else v for name, v in given.items()}  # nargs gives lists
    return ExtrapolationConfig(**given, temperature=temperature, top_p=top_p)


def resolve_pair(args: argparse.Namespace) -> tuple[str, str]:
    """``(rl, base)`` from ``--rl/--base``, or the toy pair (trained on first use) when both are omitted.

    The loading options are checked first, so that a typo (``--dtype float33``, ``--device-map cuda:7`` on a
    machine without that GPU) fails at once, before the toy pair is trained or any weights are read.
    """
    from .loading import check_device_map, check_dtype, quantization

    check_dtype(args.dtype, "--dtype")
    if not args.dry_run:  # a memory estimate needs no GPU
        quantization(args.load_in_4bit, args.load_in_8bit, command_line=True)
    check_device_map(args.device_map, "--device-map")
    check_device_map(args.base_device_map, "--base-device-map")
    if args.rl and args.base:
        return args.rl, args.base
    if args.rl or args.base:
        raise ValueError("give both --rl and --base, or neither to use the toy pair")
    from .toy import pair_paths

    rl, base = pair_paths()
    return str(rl), str(base)


def load_from_args(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """``(rl_model, base_model, tokenizer)`` with the loading options of `add_pair_arguments`."""
    from .loading import load_pair

    rl, base = resolve_pair(args)
    return load_pair(
        rl, base, dtype=args.dtype, device_map=args.device_map, base_device_map=args.base_device_map,
        load_in_4bit=args.load_in_4bit, load_in_8bit=args.load_in_8bit, trust_remote_code=args.trust_remote_code,
    )  # fmt: skip


def dry_run(args: argparse.Namespace, tokens: int) -> int:
    from .loading import estimate_memory

    dtype = "nf4" if args.load_in_4bit else "int8" if args.load_in_8bit else args.dtype
    dtype = "bfloat16" if dtype == "auto" else dtype
    rl, base = resolve_pair(args)
    load = dict(tokens=tokens, trust_remote_code=args.trust_remote_code)
    if getattr(args, "backend", "hf") == "vllm":
        from .vllm.memory import vllm_memory

        report = vllm_memory(rl, base, dtype, gpu_gib=args.gpu_gib, **load)
    else:
        report = estimate_memory(rl, base, dtype, **load)
    print(json.dumps(report, indent=2))
    return 0


# -- generate ------------------------------------------------------------------------------------------

GENERATE_DESCRIPTION = """\
Generate one completion from the pair: the RL model's own distribution at the default --gamma 0, the
extrapolated one for γ > 0 (full mode), or the paper's selective mode with --select and --threshold.

The toy pair (used when --rl/--base are left out) answers prompts in its training format, a sum with the
paper's instruction:
  hf-extrapolate generate --prompt "Compute 12+3+5+9+7." --instruction --gamma 0.5 --temperature 0"""


def register_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate from an extrapolated pair, streamed",
                       description=GENERATE_DESCRIPTION)  # fmt: skip
    add_pair_arguments(p)
    p.add_argument("--prompt", required=True, help="the user message (chat template applied when there is one)")
    p.add_argument("--instruction", action="store_true",
                   help="append the paper's instruction on a new line (as the toy pair and the hfx_* tasks prompt)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens to generate at most")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling top-p; 1 = the whole distribution")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampling")
    p.add_argument("--no-chat-template", action="store_true", help="feed the prompt as raw text")
    engine = p.add_argument_group("backend")
    engine.add_argument(
        "--backend", choices=("hf", "vllm"), default="hf",
        help="hf: transformers generate, streamed; vllm: the pair as one vLLM model, printed when done",
    )  # fmt: skip
    engine.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm: GPUs to shard both models over")
    engine.add_argument(
        "--vllm-arg", type=engine_argument, action="append", default=[], metavar="NAME=VALUE", dest="vllm_args",
        help="vllm: another vllm.LLM argument, e.g. enforce_eager=true, max_model_len=4096 (repeatable)",
    )  # fmt: skip
    engine.add_argument("--gpu-gib", type=float, default=80.0, help="vllm --dry-run: memory of one GPU, GiB")
    p.set_defaults(func=run_generate)


def user_prompt(args: argparse.Namespace) -> str:
    """``--prompt``, with the paper's instruction appended under ``--instruction`` (`grading.user_message`)."""
    from .evaluation.grading import user_message

    return user_message(args.prompt) if args.instruction else args.prompt


def engine_argument(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` with VALUE read as JSON where it parses (``true``, ``4096``, ``0.85``), else as a string."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def run_generate(args: argparse.Namespace) -> int:
    if not args.prompt.strip():
        raise ValueError("--prompt is empty; give the text to generate from")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    settings = settings_from_args(args, args.temperature, args.top_p)  # validate before loading anything
    if args.dry_run:
        return dry_run(args, tokens=args.max_new_tokens)
    if args.backend == "vllm":
        return generate_vllm(args, settings)
    import torch
    from transformers import TextStreamer

    from .evaluation.grading import build_prompt
    from .processor import DeltaLogpExtrapolation

    rl, base, tokenizer = load_from_args(args)
    text = build_prompt(tokenizer, user_prompt(args), chat_template=not args.no_chat_template)
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=not tokenizer.chat_template).to(rl.device)
    proc = DeltaLogpExtrapolation(base, settings, tokenizer=tokenizer)
    torch.manual_seed(args.seed)
    # temperature and top-p live in the processor; generate_kwargs makes generate's own warpers (and the RL
    # model's generation_config defaults) neutral, so generate samples the processor's output as is
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    rl.generate(
        **proc.generate_kwargs(
            rl, **enc, do_sample=args.temperature > 0, max_new_tokens=args.max_new_tokens, streamer=streamer,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
    )  # fmt: skip
    if proc.resample_rate is not None:
        print(f"[in expectation: {proc.resample_rate:.1%} of tokens resampled, {proc.changed_rate:.1%} changed]")
    return 0


def generate_vllm(args: argparse.Namespace, settings: ExtrapolationConfig) -> int:
    """``generate --backend vllm``: the pair as one vLLM engine (`hf_extrapolate.vllm`), one completion printed."""
    placed = {"--device-map": args.device_map, "--base-device-map": args.base_device_map,
              "--load-in-4bit": args.load_in_4bit, "--load-in-8bit": args.load_in_8bit}  # fmt: skip
    if given := [flag for flag, value in placed.items() if value]:
        raise ValueError(f"{', '.join(given)}: transformers-backend options; vLLM places the pair itself "
                         "(--tensor-parallel-size, --vllm-arg quantization=...)")  # fmt: skip
    from .evaluation.grading import build_prompt
    from .loading import load_tokenizer
    from .vllm import import_vllm
    from .vllm.engine import pair_engine, pair_sampling_params

    vllm = import_vllm()
    rl, base = resolve_pair(args)
    tokenizer = load_tokenizer(rl, "RL", trust_remote_code=args.trust_remote_code)
    text = build_prompt(tokenizer, user_prompt(args), chat_template=not args.no_chat_template)
    ids = tokenizer(text, add_special_tokens=not tokenizer.chat_template).input_ids
    engine = {"dtype": args.dtype, "tensor_parallel_size": args.tensor_parallel_size, **dict(args.vllm_args)}
    llm = pair_engine(rl, base, settings, trust_remote_code=args.trust_remote_code, **engine)
    params = pair_sampling_params(settings, args.max_new_tokens, seed=args.seed)
    (out,) = llm.generate([vllm.TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)
    print(out.outputs[0].text)
    return 0


# -- export --------------------------------------------------------------------------------------------


def register_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a pair folder that AutoModelForCausalLM (and lm_eval) can load")
    add_pair_arguments(p)
    p.add_argument("--temperature", type=float, default=1.0, help="selective mode's sampling temperature (0 = greedy)")
    p.add_argument("--top-p", type=float, default=1.0, help="selective mode's top-p")
    p.add_argument("--out", required=True, help="folder to write (a new one, or pass --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already holds files")
    p.add_argument("--embed-models", action="store_true", help="copy both models' weights into the folder")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Write the pair folder into a temporary sibling of ``--out`` and rename it into place when complete.

    Without ``--embed-models`` only configs and tokenizers are read (a pair of 32B models exports in a second) and
    each model is recorded as `ExtrapolatedForCausalLM.save_pretrained` does: a hub id as is (a folder of the
    Hugging Face cache as its hub id and commit), any other local folder as its absolute path, so the folder loads
    on this machine; embed the models to move it elsewhere. ``--out`` may not be, contain or lie inside a model's
    folder (its files would be replaced), even with ``--overwrite``.
    """
    from pathlib import Path

    from .loading import check_tokenizers, load_tokenizer
    from .modeling import ExtrapolatedForCausalLM
    from .outputs import check_output_folder, output_folder
    from .pair_folder import Member, locate, model_card, overlap, write_pair_folder

    settings = settings_from_args(args, args.temperature, args.top_p)
    if args.dry_run:
        return dry_run(args, tokens=4096)
    rl, base = resolve_pair(args)
    for role, name in (("RL", rl), ("base", base)):
        relation = overlap(Path(args.out), Path(name)) if Path(name).expanduser().is_dir() else None
        if relation:
            raise ValueError(
                f"--out {args.out} {relation} the {role} model's folder {name}: exporting there would replace that "
                "model's files; choose another folder"
            )
    check_output_folder(args.out, overwrite=args.overwrite)  # before reading any model
    if args.embed_models:
        rl_model, base_model, tokenizer = load_from_args(args)
        with output_folder(args.out, overwrite=args.overwrite) as tmp:
            ExtrapolatedForCausalLM(rl_model, base_model, settings, tokenizer=tokenizer).save_pretrained(
                tmp, embed_models=True
            )
            card = model_card(Member("./rl"), Member("./base"), settings, Path(args.out).name)  # not the temporary's
            (tmp / "README.md").write_text(card)
    else:
        from transformers import AutoConfig, GenerationConfig

        from .pair_folder import context_length
        from .processor import neutral_generation_config

        tokenizer = load_tokenizer(rl, "RL", trust_remote_code=args.trust_remote_code)
        check_tokenizers(tokenizer, load_tokenizer(base, "base", trust_remote_code=args.trust_remote_code), rl, base)
        configs = [AutoConfig.from_pretrained(n, trust_remote_code=args.trust_remote_code) for n in (rl, base)]
        try:  # the RL model's special tokens and limits, with no sampling or penalty default of its own
            generation_config = neutral_generation_config(GenerationConfig.from_pretrained(rl))
        except OSError:
            generation_config = None
        with output_folder(args.out, overwrite=args.overwrite) as tmp:
            write_pair_folder(
                tmp, locate(rl), locate(base), settings, tokenizer, generation_config, context_length(*configs),
                name=Path(args.out).name,
            )  # fmt: skip
    print(f"wrote {args.out}: load it with AutoModelForCausalLM.from_pretrained({args.out!r}, trust_remote_code=True)")
    return 0

"""The pair folder: one `config.json` naming both models (hub id with revision and subfolder, or a path) with the
extrapolation settings, the tokenizer, a shim for ``trust_remote_code`` loaders and a model card, and no weights
unless they are embedded. What `ExtrapolatedForCausalLM.save_pretrained`, `hf-extrapolate export` and the vLLM
plugin write and read.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any, NamedTuple

from huggingface_hub import ModelCardData
from transformers import GenerationConfig, PretrainedConfig, PreTrainedModel

from .configuration import ExtrapolatedConfig, ExtrapolationConfig
from .loading import SOURCE_ATTR

ARCHITECTURE = "ExtrapolatedForCausalLM"  # config.json's `architectures`: the wrapper's class, the vLLM plugin's name
SHIM_FILE = "modeling_hf_extrapolate.py"
SHIM = '''"""Loads an hf-extrapolate pair: `pip install hf-extrapolate`, then
AutoModelForCausalLM.from_pretrained(this_folder, trust_remote_code=True)."""

from hf_extrapolate.configuration import ExtrapolatedConfig
from hf_extrapolate.modeling import ExtrapolatedForCausalLM

__all__ = ["ExtrapolatedConfig", "ExtrapolatedForCausalLM"]
'''



class Member(NamedTuple):
    """Where a model of a pair is loaded from: a hub id (with revision and subfolder), or a local folder."""

    name_or_path: str
    revision: str | None = None
    subfolder: str | None = None


def locate(name_or_path: str, revision: str | None = None, subfolder: str | None = None) -> Member:
    """A model location in its most portable form: a folder inside a Hugging Face cache snapshot
    (``…/models--ORG--NAME/snapshots/<commit>/[sub]``) becomes ``(ORG/NAME, commit, sub)``, any other existing
    local folder its absolute path; anything else is a hub id and stays as it is (local folders first, as in
    transformers)."""
    local = Path(name_or_path).expanduser() / (subfolder or "")
    if not local.is_dir():
        return Member(str(name_or_path), revision, subfolder or None)
    local = local.resolve()
    parts = local.parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "snapshots" and parts[i - 1].startswith("models--"):  # repo ids cannot contain "--"
            return Member(
                parts[i - 1][len("models--") :].replace("--", "/"), parts[i + 1], "/".join(parts[i + 2 :]) or None
            )
    return Member(str(local))


def member_of(model: PreTrainedModel) -> Member | None:
    """`locate` of where ``model`` was loaded from (`load_model` keeps revision and subfolder), None if in memory."""
    name, revision, subfolder = getattr(model, SOURCE_ATTR, None) or (model.name_or_path, None, None)
    return locate(name, revision, subfolder) if name else None


def overlap(folder: Path, model_folder: Path) -> str | None:
    """How an output ``folder`` overlaps a model's folder ("is", "lies inside", "contains"), or None."""
    folder, model_folder = folder.expanduser().resolve(), model_folder.expanduser().resolve()
    if folder == model_folder:
        return "is"
    if folder.is_relative_to(model_folder):
        return "lies inside"
    return "contains" if model_folder.is_relative_to(folder) else None


def relative_member(model_folder: Path, out: Path, role: str) -> Member | None:
    """``./path`` of a model folder inside ``out``; None if outside; refused if ``out`` is it or lies inside it."""
    relation = overlap(out, model_folder)
    if relation in ("is", "lies inside"):
        raise ValueError(
            f"{out} {relation} the {role} model's folder {model_folder}: writing the pair there would overwrite that "
            "model's files; choose another folder"
        )
    if relation is None:
        return None
    return Member("./" + model_folder.resolve().relative_to(out.expanduser().resolve()).as_posix())


def resolve_member(
    pair: str, pair_subfolder: str, pair_revision: str | None, name: str | None, revision: str | None,
    subfolder: str | None, role: str,
) -> Member:  # fmt: skip
    """Where to load a model named in a pair's config, without loading anything.

    A relative path (``./rl``, ``../x``; or a bare ``rl`` that is a folder beside a local config) is inside the pair:
    a local folder, or a subfolder of the pair's repository at the pair's own revision. Anything else is the model's
    own location. A model naming the pair folder itself is refused (loading it would recurse).
    """
    if not name:
        raise ValueError(f"{pair}: config.json names no {role} model")
    local_pair = Path(pair, pair_subfolder) if os.path.isdir(pair) else None
    inside = not os.path.isabs(name) and (
        name in (".", "..")
        or name.startswith(("./", "../"))
        or (local_pair is not None and (local_pair / name).is_dir())
    )
    itself = ValueError(
        f"{pair}: the {role} model {name!r} is this pair folder itself; name the {role} model's own folder or hub id"
    )
    if local_pair is not None:
        member = (
            Member(os.path.normpath(local_pair / name / (subfolder or "")))
            if inside else Member(name, revision, subfolder)
        )  # fmt: skip
        if (
            os.path.isdir(member.name_or_path)
            and overlap(Path(member.name_or_path, member.subfolder or ""), local_pair) == "is"
        ):
            raise itself
        return member
    if inside:
        inner = posixpath.normpath(posixpath.join(pair_subfolder, name, subfolder or ""))
        if inner == ".." or inner.startswith("../"):
            raise ValueError(f"{pair}: the {role} model {name!r} points outside the repository")
        member = Member(pair, pair_revision, None if inner == "." else inner)
    else:
        member = Member(name, revision, subfolder)
    if member.name_or_path == pair and (member.subfolder or "") == pair_subfolder.strip("/"):
        raise itself
    return member


def context_length(*configs: PretrainedConfig) -> int | None:
    """The shorter of the models' context lengths, where their configs state one."""
    lengths = [getattr(c.get_text_config(), "max_position_embeddings", None) for c in configs]
    return min((n for n in lengths if n), default=None)


def write_pair_folder(
    out: str | os.PathLike,
    rl: str | Member,
    base: str | Member,
    extrapolation: ExtrapolationConfig,
    tokenizer: Any = None,
    generation_config: GenerationConfig | None = None,
    max_position_embeddings: int | None = None,
    *,
    name: str | None = None,
) -> None:
    """Write a loadable pair folder (config naming both models, settings, tokenizer, shim, model card), no weights.

    `AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)` then loads both models from ``rl`` and
    ``base``: hub ids (a `Member` adds revision and subfolder), absolute paths, or paths relative to ``out`` written
    ``./rl``. ``max_position_embeddings`` (the shorter context of the two) is recorded so that tools such as
    lm-eval know the pair's context length. ``name`` (the hub repository, say) is what the model card tells to load.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rl, base = (Member(m) if isinstance(m, str) else m for m in (rl, base))
    config = ExtrapolatedConfig(
        rl_model_name_or_path=rl.name_or_path,
        rl_model_revision=rl.revision,
        rl_model_subfolder=rl.subfolder,
        base_model_name_or_path=base.name_or_path,
        base_model_revision=base.revision,
        base_model_subfolder=base.subfolder,
        extrapolation=extrapolation.to_dict(),
        architectures=[ARCHITECTURE],
        auto_map={
            "AutoConfig": f"{SHIM_FILE[:-3]}.ExtrapolatedConfig",
            "AutoModelForCausalLM": f"{SHIM_FILE[:-3]}.ExtrapolatedForCausalLM",
        },
        is_encoder_decoder=False,
        max_position_embeddings=max_position_embeddings,
    )
    config.save_pretrained(out)
    if generation_config is not None:
        generation_config.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    (out / SHIM_FILE).write_text(SHIM)
    (out / "README.md").write_text(model_card(rl, base, extrapolation, name or out.absolute().name))


def model_card(rl: Member, base: Member, extrapolation: ExtrapolationConfig, name: str) -> str:
    """README.md of a pair folder: what it is (both models, the settings) and how to load it."""

    def where(member: Member) -> str:
        extra = [f"{k} `{v}`" for k, v in (("revision", member.revision), ("subfolder", member.subfolder)) if v]
        return f"`{member.name_or_path}`" + (f" ({', '.join(extra)})" if extra else "")

    hub_ids = [m.name_or_path for m in (rl, base) if not m.name_or_path.startswith(("/", "."))]
    meta = ModelCardData(library_name="transformers", tags=["hf-extrapolate"], base_model=hub_ids or None)
    settings = "\n".join(f"| `{k}` | `{v}` |" for k, v in extrapolation.to_dict().items())
    local = [m.name_or_path for m in (rl, base) if m.name_or_path.startswith("/")]
    note = f"\nLocal folders ({', '.join(local)}): this pair loads only on a machine that has them.\n" if local else ""
    return f"""---
{meta.to_yaml()}
---

# {name}: Δlog p extrapolation

An hf-extrapolate pair: one causal LM whose next-token distribution is
the RL model's extrapolated along Δlog p = log π_RL − log π_base (full mode:
log π_X = (1 + γ) · log π_RL − γ · log π_base − log Z; selective mode resamples only the proposals that `select` flags).
This folder stores the settings; the weights are those of the two models below (a `./…` path is inside this folder).

| model | loaded from |
|---|---|
| RL | {where(rl)} |
| base | {where(base)} |
{note}
| setting | value |
|---|---|
{settings}

## Load

```python
# pip install hf-extrapolate
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained("{name}", trust_remote_code=True, device_map="auto")
```

Settings can be overridden at load time (`gamma=0.5`, `select="delta_logp"`, `threshold=-0.3`, ...).
"""

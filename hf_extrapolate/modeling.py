"""`ExtrapolatedForCausalLM`: one causal LM holding the RL and base models, with one cache for both.

The class is the file: its forward, generate hooks and cache, and its Hub-aware `save_pretrained` / `push_to_hub` /
`from_pretrained`; the folder format those share with `export` and the vLLM plugin is `hf_extrapolate.pair_folder`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    Cache,
    DynamicCache,
    GenerationConfig,
    GenerationMixin,
    PreTrainedModel,
    StaticCache,
)
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import resolve_revision

from .concurrency import ConcurrentForwards, cpu_plan, pays_off
from .configuration import ExtrapolatedConfig, ExtrapolationConfig, extrapolation_config
from .extrapolation import NEG_INF, check_finite_scores, combine, shared_vocab_size
from .loading import HUB_KWARGS, check_tokenizers, load_pair, model_device
from .pair_folder import (
    Member,
    context_length,
    member_of,
    relative_member,
    resolve_member,
    write_pair_folder,
)
from .processor import (
    CACHE_KWARG,
    NEUTRAL,
    WARPERS,
    call_settings,
    check_penalties,
    neutral_generation_config,
    requested_settings,
)
from .processor import position_ids as positions_of  # `forward` has a `position_ids` argument


@dataclass
class ExtrapolatedCausalLMOutput(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` (``hidden_states``, when asked for, are the RL model's) plus, in selective mode, each
    position's rates in closed form, ``[batch, positions]``: ``resampled``, the chance that the proposal is redrawn
    from π_X, and ``changed``, the chance that the emitted token differs from the proposal (see `SelectionRates`);
    both ``None`` in full mode."""

    resampled: torch.FloatTensor | None = None
    changed: torch.FloatTensor | None = None


class PairCache(Cache):
    """Both models' caches in one `Cache`, so that `generate` reorders, crops and selects them together."""

    def __init__(self, rl: Cache, base: Cache):
        self.rl, self.base = rl, base
        self.offloading = False
        self.layer_class_to_replicate = None

    @property
    def layers(self) -> list:
        return [*self.rl.layers, *self.base.layers]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.rl.get_seq_length(layer_idx)

    @property
    def is_compileable(self) -> bool:
        """False, so that `generate` passes the 2-D attention mask on (each member builds its own 4-D mask from it,
        static caches included) and does not compile the pair's forward as one graph."""
        return False

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.rl.reorder_cache(beam_idx.to(self._device(self.rl, beam_idx)))
        self.base.reorder_cache(beam_idx.to(self._device(self.base, beam_idx)))

    def crop(self, tokens_to_remove: int) -> None:
        self.rl.crop(tokens_to_remove)
        self.base.crop(tokens_to_remove)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.rl.batch_repeat_interleave(repeats)
        self.base.batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices: Tensor) -> None:
        self.rl.batch_select_indices(indices)
        self.base.batch_select_indices(indices)

    def reset(self) -> None:
        self.rl.reset()
        self.base.reset()

    @staticmethod
    def _device(cache: Cache, fallback: Tensor) -> torch.device:
        keys = getattr(cache.layers[0], "keys", None) if cache.layers else None
        return keys.device if isinstance(keys, Tensor) else fallback.device


class ExtrapolatedForCausalLM(PreTrainedModel, GenerationMixin):
    r"""A causal LM whose next-token distribution is the Δlog p-extrapolated policy of an RL/base pair.

    ``forward`` returns extrapolated *log-probabilities* as ``logits`` at every position (full or selective
    mode, see `ExtrapolationConfig`), so `generate` (greedy, sampling, beam search), `output_scores` and
    log-likelihood evaluation all work on the extrapolated policy. Both models keep their own cache inside
    one `PairCache`. Tokens beyond the shared vocabulary get −inf. The models are ``.rl`` and ``.base``
    (``.base_model`` is transformers' name for the backbone, here the RL model).

    Its generation config is the RL model's with every score-changing setting neutral (`NEUTRAL`): a Qwen
    config's temperature 0.7, top-k 20 and repetition penalty 1.05 were tuned for the RL model alone, and are
    ignored at generate time whatever ``generation_config`` the wrapper holds (e.g. one loaded from a folder).
    What a `generate` call passes applies once, after extrapolation: penalties and masks to the log-probs
    ``forward`` returns; warpers to π_X in full mode (temperature and top-p only when the extrapolation
    settings leave theirs at 1). In selective mode ``temperature`` and ``top_p`` passed to `generate` replace
    the extrapolation's for that call (the proposer and π_X are sampled with them, ``temperature=0`` is the
    greedy variant; ``do_sample=False`` alone takes the mixture's argmax) and other warpers (top-k, min-p,
    typical-p, ...) are refused, so `generate` samples the exact mixture. NaN or +inf logits of either model are
    refused. One wrapper serves one `generate` call at a time (a call's settings are held on the wrapper).

    ``concurrent`` runs the base model's forward beside the RL model's (`hf_extrapolate.concurrency`), with the
    same outputs as one after the other: ``None`` (the default) when it pays off (`pays_off`: the members on
    separate devices, or both on a CPU with ≥ 2 threads and ≥ 20M parameters each). ``cpu_threads`` = (RL, base)
    sets the CPU thread plan for it; by default, when both members are on the CPU, torch's thread count is split in
    two (`cpu_plan`).

    Example:

    ```python
    >>> from transformers import AutoModelForCausalLM
    >>> from hf_extrapolate import ExtrapolatedForCausalLM, load_pair
    >>> rl, base, tok = load_pair("BytedTsinghua-SIA/DAPO-Qwen-32B", "Qwen/Qwen2.5-32B", device_map="auto")
    >>> model = ExtrapolatedForCausalLM(rl, base, gamma=0.5, tokenizer=tok)
    >>> model.save_pretrained("dapo-x0.5")  # then, anywhere with hf-extrapolate installed:
    >>> model = AutoModelForCausalLM.from_pretrained("dapo-x0.5", trust_remote_code=True, device_map="auto")
    ```
    """

    config_class = ExtrapolatedConfig
    base_model_prefix = "rl"
    main_input_name = "input_ids"
    _supports_sdpa = True

    def __init__(
        self,
        rl_model: PreTrainedModel,
        base_model: PreTrainedModel,
        extrapolation: ExtrapolationConfig | float | None = None,
        *,
        tokenizer: Any = None,
        base_tokenizer: Any = None,
        concurrent: bool | None = None,
        cpu_threads: tuple[int, int] | None = None,
        **settings: Any,
    ):
        """``extrapolation``: an `ExtrapolationConfig`, or γ as a number; or give its fields as keywords."""
        for role, model in (("rl_model", rl_model), ("base_model", base_model)):
            if not isinstance(model, PreTrainedModel):
                raise ValueError(f"{role} must be a transformers PreTrainedModel, got {type(model).__name__}")
        if tokenizer is not None and base_tokenizer is not None:
            check_tokenizers(tokenizer, base_tokenizer, rl_model.name_or_path, base_model.name_or_path)
        extrapolation = extrapolation_config(extrapolation, **settings)
        rl_width = rl_model.get_output_embeddings().weight.shape[0]
        base_width = base_model.get_output_embeddings().weight.shape[0]
        config = ExtrapolatedConfig(
            rl_model_name_or_path=rl_model.name_or_path or None,
            base_model_name_or_path=base_model.name_or_path or None,
            extrapolation=extrapolation.to_dict(),
            vocab_size=rl_width,
            is_encoder_decoder=False,
        )
        super().__init__(config)
        self.rl, self.base = rl_model, base_model
        self.extrapolation = extrapolation
        self.tokenizer = tokenizer
        self.vocab_width = shared_vocab_size(rl_width, base_width, len(tokenizer) if tokenizer is not None else None)
        self.generation_config = neutral_generation_config(rl_model.generation_config)  # saved with the pair
        self.concurrent, self.cpu_threads = concurrent, cpu_threads
        if cpu_threads is not None:
            ConcurrentForwards(cpu_threads)  # one clear error now, not at the first forward
        self._prompt_length: int | None = None  # set while `generate` runs, for error messages
        self._forwards: ConcurrentForwards | None = None  # the concurrent session a `generate` call runs in
        self.post_init()  # gathers the members' _no_split_modules, tied keys, fp32 modules (device_map, saving)

    def init_weights(self) -> None:
        """Nothing to initialise or tie: both members arrive with their own weights, already tied as they say."""

    # -- transformers plumbing -------------------------------------------------------------------------
    def get_input_embeddings(self) -> torch.nn.Module:
        return self.rl.get_input_embeddings()

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.rl.get_output_embeddings()

    @property
    def device(self) -> torch.device:
        return model_device(self.rl)

    @property
    def dtype(self) -> torch.dtype:
        return self.rl.dtype

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | Tensor = 0,
        **kwargs: Any,
    ) -> ExtrapolatedCausalLMOutput:
        if inputs_embeds is not None or input_ids is None:
            raise ValueError("ExtrapolatedForCausalLM takes input_ids (the two models embed tokens separately)")
        cache = kwargs.pop(CACHE_KWARG, cache)  # `generate` of transformers < 5.24 passes `past_key_values`
        if cache is not None and not isinstance(cache, PairCache):
            raise ValueError(f"cache must be a PairCache holding both models' caches, got {type(cache).__name__}")
        use_cache = cache is not None if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = self.new_cache()
        if position_ids is None and attention_mask is not None:  # left padding: count real tokens only
            position_ids = positions_of(attention_mask)[:, -input_ids.shape[1] :]
        caches = (cache.rl, cache.base) if cache is not None else (None, None)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        hidden = bool(kwargs.pop("output_hidden_states", None) or self.config.output_hidden_states)
        rl_call, base_call = (
            functools.partial(
                model, **{k: v.to(model_device(model)) if v is not None else None for k, v in inputs.items()},
                use_cache=use_cache, logits_to_keep=logits_to_keep, **{CACHE_KWARG: sub_cache},
                output_hidden_states=hidden and model is self.rl,  # the pair's hidden states are the RL model's
            )
            for model, sub_cache in zip((self.rl, self.base), caches)
        )  # fmt: skip
        with self._concurrency():
            rl_out, base_out = self._forwards(rl_call, base_call) if self._forwards else (rl_call(), base_call())
        rl_logits, base_logits = rl_out.logits, base_out.logits.to(rl_out.logits.device)
        width = self.vocab_width
        past = cache.get_seq_length() - input_ids.shape[1] if cache is not None else 0
        where = f" at positions {past}..{past + input_ids.shape[1] - 1}"
        if self._prompt_length is not None:
            where = f" at generation step {past + input_ids.shape[1] - self._prompt_length}"
        rl_logits, base_logits = rl_logits[..., :width], base_logits[..., :width]
        checked = rl_logits, base_logits
        if attention_mask is not None and rl_logits.shape[1] > 1:  # (a decoding step's one position is real)
            real = attention_mask[:, -rl_logits.shape[1] :, None].to(rl_logits.device).bool()
            checked = tuple(x.where(real, 0.0) for x in checked)  # padding positions' logits are never used
        check_finite_scores(checked[0], "the RL model's logits", where)
        check_finite_scores(checked[1], "the base model's logits", where)
        logp, rates = combine(rl_logits, base_logits, self.extrapolation, check=False)
        if width < rl_out.logits.shape[-1]:
            logp = F.pad(logp, (0, rl_out.logits.shape[-1] - width), value=NEG_INF)
        loss = None
        if labels is not None:
            shift = logp[..., :-1, :].reshape(-1, logp.shape[-1])
            loss = F.nll_loss(shift, labels[..., 1:].reshape(-1).to(shift.device), ignore_index=-100)
        resampled, changed = rates if rates is not None else (None, None)
        return ExtrapolatedCausalLMOutput(
            loss=loss, logits=logp, resampled=resampled, changed=changed, hidden_states=rl_out.hidden_states,
            **{CACHE_KWARG: cache if use_cache else None},
        )

    @torch.no_grad()
    def generate(self, inputs: Tensor | None = None, generation_config: GenerationConfig | None = None, **kwargs: Any):
        """`GenerationMixin.generate`, with the sampling rules of the class docstring: in selective mode
        ``temperature`` / ``top_p`` given here (or in ``generation_config``) set the extrapolation's for this call."""
        settings, requested = self.extrapolation, requested_settings(generation_config, kwargs)
        self.extrapolation = call_settings(settings, requested, route="wrapper")
        check_penalties(self.extrapolation, requested)
        if settings.select is not None:  # taken by the extrapolation: generate itself must not see them
            kwargs = {k: v for k, v in kwargs.items() if k not in WARPERS}
            if generation_config is not None:
                generation_config = copy.deepcopy(generation_config)
                generation_config.temperature = generation_config.top_p = None
        prompt = inputs if inputs is not None else kwargs.get("input_ids")
        self._prompt_length = prompt.shape[-1] if isinstance(prompt, Tensor) else None
        try:
            with self._concurrency():
                return super().generate(inputs, generation_config, **kwargs)
        finally:
            self.extrapolation, self._prompt_length = settings, None

    @contextlib.contextmanager
    def _concurrency(self) -> Iterator[None]:
        """The concurrent-forwards session of a `generate` call or of a bare forward, when ``concurrent`` (or
        `pays_off`, for ``None``) says so; inside a session already, that one."""
        if self._forwards is not None or not (pays_off(self.rl, self.base) if self.concurrent is None
                                              else self.concurrent):  # fmt: skip
            yield
            return
        forwards = ConcurrentForwards(cpu_plan(self.rl, self.base, self.cpu_threads))
        with forwards.session():
            self._forwards = forwards
            try:
                yield
            finally:
                self._forwards = None

    def _prepare_generation_config(self, generation_config: GenerationConfig | None, **kwargs: Any):
        """Neutralise every score-changing setting the call does not ask for (the stored config's included)."""
        config, model_kwargs = super()._prepare_generation_config(generation_config, **kwargs)
        requested = requested_settings(generation_config, kwargs)
        selective = self.extrapolation.select is not None  # its temperature / top-p live in the extrapolation
        for name, neutral in NEUTRAL.items():
            keep = name in requested and not (selective and name in WARPERS)
            setattr(config, name, requested[name] if keep else neutral)
        return config, model_kwargs

    def new_cache(self, max_cache_len: int | None = None) -> PairCache:
        """Both models' caches: dynamic, or static ones of ``max_cache_len`` positions (fixed shapes, which
        ``torch.compile`` of the members needs)."""
        if max_cache_len is None:
            return PairCache(DynamicCache(config=self.rl.config), DynamicCache(config=self.base.config))
        return PairCache(*(StaticCache(config=m.config, max_cache_len=max_cache_len) for m in (self.rl, self.base)))

    def _prepare_cache_for_generation(
        self, generation_config: Any, model_kwargs: dict, generation_mode: Any, batch_size: int, max_cache_length: int
    ) -> None:
        """`generate`'s cache: a `PairCache` of dynamic caches, or of static ones (``cache_implementation="static"``,
        sized ``max_cache_length``)."""
        implementation = generation_config.cache_implementation
        if implementation not in (None, "dynamic", "static"):
            raise ValueError(
                f"cache_implementation={implementation!r} is not supported by ExtrapolatedForCausalLM; use "
                "'dynamic' (the default) or 'static' (one cache per model either way)"
            )
        if model_kwargs.get(CACHE_KWARG) is None and generation_config.use_cache is not False:
            model_kwargs[CACHE_KWARG] = self.new_cache(max_cache_length if implementation == "static" else None)

    # -- saving and loading ----------------------------------------------------------------------------
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        push_to_hub: bool = False,
        embed_models: bool | None = None,
        max_shard_size: int | str = "50GB",
        **kwargs: Any,
    ) -> Any:
        """Write the pair folder: config naming both models and the settings, generation config, tokenizer,
        loader shim and a model card (README.md); with ``embed_models``, both models' weights in ``rl/`` and ``base/``.

        Each model is recorded where it can be loaded from again:

        - built in memory (no ``name_or_path``): embedded (``embed_models=None``, the default);
        - from the Hub, or from a folder of the Hugging Face cache (``…/models--ORG--NAME/snapshots/<commit>/``):
          its hub id, with the revision and subfolder it was loaded with (`load_pair` and `from_pretrained` keep
          them; a model loaded by plain `AutoModelForCausalLM.from_pretrained` records only its id);
        - a local folder inside ``save_directory``: relative to it (``./rl``), so the folder can move;
        - any other local folder: its absolute path, so the pair loads on this machine only; ``push_to_hub``
          refuses it (pass ``embed_models=True``, or load that model by its hub id).

        ``embed_models=True`` embeds both models (one already inside the folder stays where it is), ``False``
        neither. ``save_directory`` may not be a model's folder or lie inside one (that model's files would be
        overwritten). Embedded models need the wrapper's tokenizer (saved beside each, as `from_pretrained` loads
        it from there): without one, saving refuses.

        ``push_to_hub=True`` uploads the folder with huggingface_hub's `HfApi.upload_folder`, with transformers'
        options ``repo_id`` (default: the folder's name), ``token``, ``private``, ``commit_message``, ``create_pr``
        and ``revision`` (a branch), and returns the commit info. With ``is_main_process=False`` only the embedded
        models' own ``save_pretrained`` run (as distributed saves need); nothing else is written or pushed.
        """
        hub = {key: kwargs.pop(key) for key in PUSH_KWARGS if key in kwargs}
        if kwargs:
            raise ValueError(f"save_pretrained got unknown option(s) {sorted(kwargs)}; known: {sorted(PUSH_KWARGS)}")
        out = Path(save_directory).expanduser()
        if out.exists() and not out.is_dir():
            raise ValueError(f"{out} is a file; save_pretrained writes a folder")
        members, embed = {}, []
        for role, model in (("rl", self.rl), ("base", self.base)):
            source = member_of(model)
            if source is not None and Path(source.name_or_path).is_absolute():
                relative = relative_member(Path(source.name_or_path), out, role)
                if relative is not None:  # already inside the folder (an embedded model saved again, say)
                    members[role] = relative
                    continue
            if embed_models or (embed_models is None and source is None):
                embed.append(role)
                members[role] = Member(f"./{role}")
            elif source is None:
                raise ValueError(
                    f"the {role} model was built in memory, so there is no folder or hub id to record; "
                    f"pass embed_models=True to save its weights in {out / role}"
                )
            elif push_to_hub and Path(source.name_or_path).is_absolute():
                raise ValueError(
                    f"the {role} model is the local folder {source.name_or_path}, which the Hub cannot reach; pass "
                    "embed_models=True to upload its weights too, or load that model by its hub id"
                )
            else:
                members[role] = source
        if embed and self.tokenizer is None:
            raise ValueError(
                f"cannot embed the {' and '.join(embed)} model(s) without a tokenizer (from_pretrained loads it from "
                "beside each model): build ExtrapolatedForCausalLM(..., tokenizer=tok), or save models that live "
                "in a folder or on the Hub"
            )
        api = repo_id = None
        if push_to_hub and is_main_process:  # create the repository first: a bad token fails before any writing
            from huggingface_hub import HfApi

            api = HfApi(token=hub.get("token"))
            repo_id = api.create_repo(hub.get("repo_id") or out.absolute().name, private=hub.get("private"),
                                      exist_ok=True).repo_id  # fmt: skip
        for role in embed:
            getattr(self, role).save_pretrained(
                out / role, is_main_process=is_main_process, max_shard_size=max_shard_size
            )
            if is_main_process:
                self.tokenizer.save_pretrained(out / role)
        if not is_main_process:
            return None
        write_pair_folder(
            out, members["rl"], members["base"], self.extrapolation, self.tokenizer, self.generation_config,
            context_length(self.rl.config, self.base.config), name=repo_id,
        )  # fmt: skip
        if api is None:
            return None
        branch = hub.get("revision")
        if branch and not branch.startswith("refs/pr"):
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id, folder_path=out, revision=branch, create_pr=hub.get("create_pr"),
            commit_message=hub.get("commit_message") or "Upload hf-extrapolate pair",
        )  # fmt: skip

    def push_to_hub(self, repo_id: str, *, embed_models: bool | None = None, **kwargs: Any) -> Any:
        """`save_pretrained` into a temporary folder with ``push_to_hub=True``: the same rules for where each model
        is recorded, and the same options (``token``, ``private``, ``commit_message``, ``create_pr``, ``revision``)."""
        with tempfile.TemporaryDirectory() as tmp:
            return self.save_pretrained(tmp, push_to_hub=True, repo_id=repo_id, embed_models=embed_models, **kwargs)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, config: Any = None, **kwargs: Any
    ) -> ExtrapolatedForCausalLM:
        """Load a saved pair folder (local, or a Hub repository): both models it names, with its settings and
        generation config.

        The Hub options (``revision``, ``subfolder``, ``cache_dir``, ``token``, ``local_files_only``,
        ``force_download``, ``proxies``) locate the folder itself. Models embedded in it are read from the same
        repository at the same commit; a model it names by hub id is read at the revision recorded for it (else
        its main branch), with the same ``cache_dir``, ``token`` and ``local_files_only``. ``trust_remote_code``
        reaches both models. The settings are checked, and a model naming the folder itself refused, before any
        weights load. Also accepts `load_pair`'s options (``dtype``, ``device_map``, ``base_device_map``,
        ``quantization_config``, ``load_in_4bit``, ``load_in_8bit``) and extrapolation settings (``gamma=``,
        ``select=``, ...) that override the saved ones, and the constructor's ``concurrent`` and ``cpu_threads``.
        """
        if args:
            raise ValueError(f"ExtrapolatedForCausalLM.from_pretrained takes no positional model arguments, got {args}")
        path = str(pretrained_model_name_or_path)
        hub = {key: kwargs.pop(key) for key in HUB_KWARGS if key in kwargs}
        subfolder = kwargs.pop("subfolder", None) or ""
        revision = resolve_revision(  # one commit for the config, the generation config and embedded models
            path, kwargs.pop("revision", None), token=hub.get("token"), cache_dir=hub.get("cache_dir"),
            local_files_only=bool(hub.get("local_files_only")),
        )  # fmt: skip
        trust_remote_code = bool(kwargs.pop("trust_remote_code", False))
        concurrency = {key: kwargs.pop(key) for key in ("concurrent", "cpu_threads") if key in kwargs}
        for key in ("code_revision", "_from_auto", "_commit_hash", "adapter_kwargs"):
            kwargs.pop(key, None)
        if not isinstance(config, ExtrapolatedConfig):
            config = ExtrapolatedConfig.from_pretrained(path, revision=revision, subfolder=subfolder, **hub)
        settings = config.settings(**{key: kwargs.pop(key) for key in SETTING_NAMES if key in kwargs})
        rl, base = (
            resolve_member(path, subfolder, revision, getattr(config, f"{role}_model_name_or_path"),
                           getattr(config, f"{role}_model_revision"), getattr(config, f"{role}_model_subfolder"), name)
            for role, name in (("rl", "RL"), ("base", "base"))
        )  # fmt: skip
        rl_model, base_model, tokenizer = load_pair(
            rl.name_or_path, base.name_or_path, revision=rl.revision, subfolder=rl.subfolder or "",
            base_revision=base.revision, base_subfolder=base.subfolder or "", trust_remote_code=trust_remote_code,
            **hub, **kwargs,
        )  # fmt: skip
        model = cls(rl_model, base_model, settings, tokenizer=tokenizer, **concurrency)
        with contextlib.suppress(OSError):  # a folder written without one keeps the constructor's
            model.generation_config = GenerationConfig.from_pretrained(
                path, revision=revision, subfolder=subfolder, **hub
            )
        return model


# transformers' `save_pretrained` / `push_to_hub` options for the upload
PUSH_KWARGS = ("repo_id", "token", "private", "commit_message", "create_pr", "revision")
SETTING_NAMES = tuple(f.name for f in fields(ExtrapolationConfig))


def register_auto_classes() -> None:
    """Let the Auto classes resolve ``model_type="hf_extrapolate"`` once this package is imported."""
    AutoConfig.register(ExtrapolatedConfig.model_type, ExtrapolatedConfig, exist_ok=True)
    AutoModelForCausalLM.register(ExtrapolatedConfig, ExtrapolatedForCausalLM, exist_ok=True)

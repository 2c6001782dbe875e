"""hf-extrapolate: amplify the RLVR direction Δlog p = log p_RL − log p_base at decoding time."""

from .configuration import ExtrapolatedConfig, ExtrapolationConfig
from .loading import load_pair
from .modeling import ExtrapolatedForCausalLM, PairCache, register_auto_classes
from .processor import DeltaLogpExtrapolation

register_auto_classes()

__all__ = [
    "DeltaLogpExtrapolation",
    "ExtrapolatedConfig",
    "ExtrapolatedForCausalLM",
    "ExtrapolationConfig",
    "PairCache",
    "load_pair",
]
__version__ = "0.1.0"

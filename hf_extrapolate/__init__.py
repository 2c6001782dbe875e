"""hf-extrapolate: amplify the RLVR direction Δlog p = log p_RL − log p_base at decoding time."""

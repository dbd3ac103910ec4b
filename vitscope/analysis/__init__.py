"""Pure analysis functions: Trace (and, for gradient methods, the model) in, arrays out."""
from .attention import attention_map, head_statistics, query_weights
from .rollout import attention_rollout, rollout_map

__all__ = ["attention_map", "head_statistics", "query_weights", "attention_rollout", "rollout_map"]

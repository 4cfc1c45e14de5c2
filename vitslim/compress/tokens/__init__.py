"""Training-free token reduction for timm Vision Transformers.

- ToMe-style merging (bipartite soft matching, size-weighted averages, proportional attention)
- EViT-style pruning (keep the tokens the class token attends to, fuse the rest)
- prune-and-merge at a few blocks (PPT / DiffRate: rank by class attention x value norm, merge
  the next into their most similar kept token, prune the tail)
- optionally, the last block for the class token only (class-token-pooled classifiers; exact)

Both are built from gather / top-k / one-hot matmul only, so with a static schedule the model
exports to ONNX with static shapes and no scatter-with-reduction (ONNX Runtime, TensorRT).

>>> from vitslim.compress.tokens import TokenMergeConfig, apply_token_reduction
>>> apply_token_reduction(model, TokenMergeConfig(r=8))          # doctest: +SKIP
>>> remove_token_reduction(model)                                # doctest: +SKIP
"""

from .config import (
    TOKEN_REDUCERS,
    TokenConfigError,
    TokenMergeConfig,
    TokenPruneConfig,
    TokenPruneMergeConfig,
    TokenReductionConfig,
    token_config_from_dict,
)
from .merge import MergePlan, bipartite_soft_matching, max_merge, merge_tokens, merge_wavg, unmerge_tokens
from .patch import (
    TokenReductionState,
    TokenTrace,
    apply_token_reduction,
    is_token_reduced,
    layer_plan,
    remove_token_reduction,
    token_reduction_state,
    trace_tokens,
)
from .prune import PrunePlan, evit_keep_count, evit_select, evit_tokens_out, prune_tokens
from .prune_merge import (
    PruneMergePlan,
    class_attention_score,
    prune_merge_counts,
    prune_merge_select,
    prune_merge_tokens,
)
from .schedule import (
    BlockCost,
    LayerReduction,
    block_costs,
    estimate_flops,
    merge_schedule,
    model_num_tokens,
    resolve_layer_ops,
    simulate_layers,
    tokens_per_layer,
)

__all__ = [
    "TokenMergeConfig",
    "TokenPruneConfig",
    "TokenPruneMergeConfig",
    "TokenReductionConfig",
    "TokenConfigError",
    "TOKEN_REDUCERS",
    "token_config_from_dict",
    "apply_token_reduction",
    "remove_token_reduction",
    "is_token_reduced",
    "token_reduction_state",
    "trace_tokens",
    "layer_plan",
    "TokenReductionState",
    "TokenTrace",
    "tokens_per_layer",
    "estimate_flops",
    "LayerReduction",
    "BlockCost",
    "block_costs",
    "merge_schedule",
    "model_num_tokens",
    "resolve_layer_ops",
    "simulate_layers",
    "MergePlan",
    "bipartite_soft_matching",
    "max_merge",
    "merge_tokens",
    "merge_wavg",
    "unmerge_tokens",
    "PrunePlan",
    "evit_keep_count",
    "evit_tokens_out",
    "evit_select",
    "prune_tokens",
    "PruneMergePlan",
    "class_attention_score",
    "prune_merge_counts",
    "prune_merge_select",
    "prune_merge_tokens",
]

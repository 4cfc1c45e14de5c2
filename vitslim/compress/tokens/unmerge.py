"""Unmerging: the full patch-token map of a model whose blocks merged or pruned tokens.

Every original token position is followed through the reductions to the row of the final
sequence that holds it (:class:`PositionTracker`): a merged token's positions all point at the
token they were averaged into (ToMe's "source" of a token, as dense users of merging need it);
a pruned (EViT-fused) position points at the fused token until :func:`nearest_kept` sends it to
the nearest position on the patch grid whose token was kept. :func:`unmerge_patches` then gives
each original patch position the value of its row, so the output has the unreduced shape
``[B, H*W, C]`` and equals the plain map when nothing was reduced.

Export: the rows are integer GatherElements on ``[B, N]`` index tensors (no index expansion) and
the final map is one 0/1 one-hot MatMul, with static shapes for a static schedule.
"""

from __future__ import annotations

import torch

from .merge import MergePlan
from .prune import PrunePlan

__all__ = ["merge_rows", "prune_rows", "PositionTracker", "nearest_kept", "unmerge_patches"]


def merge_rows(plan: MergePlan) -> torch.Tensor:
    """[B, N]: the output row of every input token of a merge (a merged token: its partner's row)."""
    target = plan.target
    position = torch.arange(plan.num_tokens, device=target.device)
    survivor_row = (target == position).long().cumsum(dim=-1) - 1  # rows of the survivors, in order
    return survivor_row.gather(1, target)


def prune_rows(plan: PrunePlan) -> torch.Tensor:
    """[B, N]: the output row of every input token of a pruning step (prefix, kept in order, one
    fused token last: dropped tokens point at the fused row)."""
    bsz = plan.keep.shape[0]
    p, t = plan.num_prefix, plan.num_tokens - plan.num_prefix
    device = plan.keep.device
    fused = torch.full((bsz, t), p + plan.keep_count, dtype=torch.long, device=device)
    kept_rows = (p + torch.arange(plan.keep_count, device=device)).expand(bsz, -1)
    patch_rows = fused.scatter(1, plan.keep, kept_rows)
    return torch.cat([torch.arange(p, device=device).expand(bsz, -1), patch_rows], dim=1)


class PositionTracker:
    """Where each original token position sits in the current (reduced) sequence."""

    def __init__(self) -> None:
        self.positions: torch.Tensor | None = None  # [B, N0]; None: nothing reduced yet (identity)

    def follow(self, rows: torch.Tensor) -> None:
        """Apply one reduction step whose input token ``i`` lands in output row ``rows[:, i]``."""
        self.positions = rows if self.positions is None else rows.gather(1, self.positions)


def unmerge_patches(x: torch.Tensor, positions: torch.Tensor | None, num_prefix: int) -> torch.Tensor:
    """The patch-token map ``[B, N0 - num_prefix, C]`` of the final tokens ``x`` [B, N, C]: each
    original patch position takes the value of the row it ended in (``positions`` [B, N0]; None:
    nothing was reduced, the patch tokens of ``x`` are returned as they are)."""
    if positions is None:
        return x[:, num_prefix:]
    rows = positions[:, num_prefix:]
    one_hot = (rows.unsqueeze(-1) == torch.arange(x.shape[1], device=x.device)).to(x.dtype)  # [B, HW, N]
    return one_hot @ x


def nearest_kept(positions: torch.Tensor, num_prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """``positions`` [B, N0] with every patch position whose row holds several positions (a fused
    token of pruning) pointed at the row of the nearest patch position (squared grid distance,
    ties to the lowest index) whose row holds it alone (a kept token)."""
    rows = positions[:, num_prefix:]
    hw = rows.shape[1]
    one_hot = (rows.unsqueeze(-1) == torch.arange(positions.shape[1], device=rows.device)).to(torch.float32)
    alone = one_hot.sum(dim=1).gather(1, rows) == 1  # [B, HW]: the position's row holds only it
    yx = torch.stack(torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij"), -1).reshape(hw, 2)
    dist = ((yx[:, None] - yx[None]) ** 2).sum(-1).to(torch.float32).to(rows.device)  # [HW, HW], a constant
    far = float(grid[0] ** 2 + grid[1] ** 2 + 1)
    cost = dist + far * (~alone).to(torch.float32).unsqueeze(1)  # [B, HW, HW]: only lone positions are near
    best = cost.amin(dim=-1, keepdim=True)
    from_end = torch.arange(hw, 0, -1, device=rows.device, dtype=torch.float32)
    nearest = (hw - ((cost == best).to(torch.float32) * from_end).amax(dim=-1)).long()  # first minimum
    filled = torch.where(alone, rows, rows.gather(1, nearest))
    return torch.cat([positions[:, :num_prefix], filled], dim=1)

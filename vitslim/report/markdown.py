"""Rendering a report dict (the report.json contract) as Markdown."""

from __future__ import annotations


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _num(value: float | None, fmt: str = ".4f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _mb(size: int | None) -> str:
    return "n/a" if size is None else f"{size / 1e6:.1f} MB"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def device_line(env: dict) -> str:
    device = env.get("cuda") or f"CPU {env.get('cpu')} ({env.get('logical_cores')} logical cores)"
    versions = ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items() if v)
    return f"{device}; {env.get('os')}; Python {env.get('python')}; {versions}"


def render_markdown(report: dict) -> str:
    """A human-readable report: what was measured, on what, and how the variants compare."""
    model, data, env = report["model"], report["data"], report["environment"]
    data_line = f"{data['name']}, {data['samples']} samples" + ("" if data.get("labelled", True) else " (unlabelled)")
    lines = [
        f"# vitslim report: {model['name']}",
        "",
        f"- **Model**: {model['name']} ({model.get('source', 'unknown source')}), "
        f"{model.get('parameters', 0) / 1e6:.2f} M parameters, input {'x'.join(map(str, model.get('input_size', [])))}",
        f"- **Data**: {data_line}",
        f"- **Device**: {device_line(env)}",
    ]
    if report.get("command"):
        lines.append(f"- **Command**: `{report['command']}`")
    if report.get("created"):
        lines.append(f"- **Created**: {report['created']}")

    lines += ["", f"## Accuracy ({data_line})", ""]
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
            _pct(v["top1"]),
            _pct(v["top5"]),
            _pct(v["agreement"]),
            _num(v.get("cosine")),
            _num(v.get("kl"), ".2e"),
            _mb(v["size_bytes"]),
        ]
        for v in report["variants"]
    ]
    if all("block_flops_per_image" in v for v in report["variants"]):
        header += ["tokens after last block", "block GFLOPs / image"]
        for row, v in zip(rows, report["variants"], strict=True):
            row += [str(v["tokens_per_layer"][-1]), f"{v['block_flops_per_image'] / 1e9:.2f}"]
    lines += _table(header, rows)

    parity = [(v["name"], v["onnx"]) for v in report["variants"] if v.get("onnx")]
    if parity:
        lines += ["", "## ONNX export parity (ONNX Runtime vs PyTorch, same inputs)", ""]
        lines += _table(
            ["variant", "file", "opset", "max abs diff", "top-1 agreement", "samples"],
            [
                [
                    name,
                    f"`{o['file']}`",
                    str(o["opset"]),
                    f"{o['max_abs_diff']:.2e}",
                    _pct(o["top1_agreement"]),
                    str(o["samples"]),
                ]
                for name, o in parity
            ],
        )

    rows, base = [], {}
    for v in report["variants"]:
        for lat in v["latency"]:
            key = (lat["runtime"], lat["batch"], lat["threads"])
            base.setdefault(key, lat["p50_ms"])
            rows.append(
                [
                    v["name"],
                    lat["runtime"],
                    str(lat["batch"]),
                    str(lat["threads"]),
                    f"{lat['p50_ms']:.2f}",
                    f"{lat['p90_ms']:.2f}",
                    f"{lat['images_per_s']:.1f}",
                    f"{base[key] / lat['p50_ms']:.2f}x",
                    str(lat.get("runs", "")),
                ]
            )
    if rows:
        device = env.get("cuda") or f"CPU {env.get('cpu')}"
        lines += ["", f"## Latency ({device}; random inputs; median and p90 of timed runs after warm-up)", ""]
        lines += _table(
            [
                "variant",
                "runtime",
                "batch",
                "threads",
                "p50 ms",
                "p90 ms",
                "images/s",
                "speed vs first variant",
                "runs",
            ],
            rows,
        )
        lines += ["", "Speed ratios compare p50 latencies measured in the same run, same runtime, batch and threads."]
    for note in report.get("notes", []):
        lines += ["", f"> {note}"]
    return "\n".join(lines) + "\n"

"""Sweeps (vitslim.sweep, `vitslim sweep`) and sharded evaluation, in-process and on a local Ray
cluster of one worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import assert_user_error, images, run_cli, tiny_vit
from vitslim.compress.quant import QuantConfig, quantize_
from vitslim.compress.tokens import TokenMergeConfig, apply_token_reduction
from vitslim.errors import UserError
from vitslim.evaluate.data import evaluate_onnx, evaluate_torch, load_eval_data, shard_eval_data
from vitslim.evaluate.sharded import OrtRunnerFactory, evaluate_sharded
from vitslim.executors import LocalExecutor, RayExecutor, make_executor
from vitslim.export.onnx_export import export_onnx
from vitslim.models.loaded import LoadedModel
from vitslim.sweep import build_candidates, parse_grid
from vitslim.sweep.summary import pareto_front

TINY = ["--model", "vit_tiny_patch16_224", "--random-init", "--num-classes", "2"]
TINY += [
    p
    for k, v in {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}.items()
    for p in ("--model-arg", f"{k}={v}")
]
SWEEP = ["--recipes", "w8a8,tome-r8", "--grid", "tokens.r=2", "--batch-sizes", "1,2", "--rounds", "1"]


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of one CPU for the module (skipped without Ray), shared by its tests.

    One CPU: one worker process, which imports torch, timm and vitslim once (10-20 s of CPU on a
    2-core machine) and runs every task in turn; a second worker would pay that again. Shards and
    candidates are still separate Ray tasks (pickled there, results shipped back); the merge in
    sample order whatever order shards finish in is checked with a reversing executor."""
    ray = pytest.importorskip("ray", reason="Ray is the optional extra vitslim[ray] (make test installs it)")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


class ReversedExecutor(LocalExecutor):
    """In this process, the items finishing last to first."""

    def map(self, fn, items):
        return reversed(list(super().map(fn, items)))


def _loaded() -> LoadedModel:
    model = tiny_vit("vit", num_classes=2)
    return LoadedModel(model=model, name="tiny", source="test", data_config={"input_size": (3, 32, 32)}, num_classes=2)


def _scores(folder: Path) -> dict:
    report = json.loads((folder / "report.json").read_text())
    return {v["name"]: (v["top1"], v["agreement"], v["kl"], v["onnx"]["top1_agreement"]) for v in report["variants"]}


# --------------------------------------------------------------------------- candidates


def test_candidates_from_recipes_and_a_grid() -> None:
    candidates = build_candidates(["w8a8", "tome-r8"], [parse_grid("tokens.r=2,4")])
    assert [c.name for c in candidates] == ["w8a8", "tome-r8", "tome-r8@tokens.r=2", "tome-r8@tokens.r=4"]
    assert candidates[2].recipe.stages["tokens"].r == 2 and candidates[2].base == "tome-r8"
    deep = build_candidates(["full"], [parse_grid("quant.mixed_precision.budget.avg_weight_bits=5")])
    assert deep[1].recipe.stages["quant"].to_dict()["mixed_precision"]["budget"]["avg_weight_bits"] == 5


@pytest.mark.parametrize(
    "grid,message",
    [
        ("tokens.r", "expected stage.key=value1,value2"),
        ("sparsity.method=magnitude", "none of the recipes (w8a8) has a sparsity stage"),
        ("quant.imagez=4", "unknown key 'imagez'"),
    ],
)
def test_bad_grids_fail_before_anything_runs(grid: str, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_candidates(["w8a8"], [parse_grid(grid)])


def test_pareto_front() -> None:
    points = {"a": (10.0, 80.0), "b": (5.0, 80.0), "c": (5.0, 70.0), "d": (20.0, 90.0)}
    assert pareto_front(points) == ["b", "d"]


# --------------------------------------------------------------------------- sharded evaluation


def test_sharded_evaluation_equals_one_process(tmp_path: Path, image_folder: Path, ray_cluster) -> None:
    loaded = _loaded()
    torch.set_num_threads(1)
    single = load_eval_data(loaded, str(image_folder), None, 0, 2)
    reference = evaluate_torch(loaded.model, single, threads=1, progress=False)
    onnx_path = export_onnx(loaded.model, tmp_path / "m.onnx", (3, 32, 32))
    onnx_reference = evaluate_onnx(onnx_path, single, threads=1, progress=False)
    for executor in (LocalExecutor(), ReversedExecutor(), RayExecutor()):
        data = shard_eval_data(load_eval_data(loaded, str(image_folder), None, 0, 2), executor, workers=2)
        assert len(data.sharding.shards) == 2 and [len(s.indices) for s in data.sharding.shards] == [4, 2]
        sharded = evaluate_torch(loaded.model, data, threads=1, progress=False)
        assert torch.equal(sharded.logits, reference.logits) and torch.equal(sharded.labels, reference.labels)
        assert torch.equal(evaluate_onnx(onnx_path, data, threads=1, progress=False).logits, onnx_reference.logits)
    broken = OrtRunnerFactory(b"not onnx", 1)  # a failing shard fails the evaluation, not silently
    with pytest.raises(Exception, match="(?i)protobuf|invalid|load"):
        evaluate_sharded(broken, shard_eval_data(single, LocalExecutor(), 2).sharding.shards, LocalExecutor())


def test_eval_and_compress_on_ray_give_the_single_process_figures(
    tmp_path: Path, image_folder: Path, ray_cluster
) -> None:
    onnx_path = tmp_path / "m.onnx"
    assert run_cli("export", *TINY, "--out", str(onnx_path)).exit_code == 0
    args = ["eval", *TINY, "--data", str(image_folder), "--batch-size", "2", "--threads", "1", "--onnx", str(onnx_path)]
    figures = []
    for extra in ([], ["--executor", "ray", "--workers", "2"]):
        result = run_cli(*args, *extra, "--json", str(tmp_path / "e.json"))
        assert result.exit_code == 0, result.output
        figures.append(json.loads((tmp_path / "e.json").read_text())["results"])
    assert figures[0] == figures[1]
    assert "2 shards on ray" in result.output
    reports = []
    for name, extra in (("local", []), ("ray", ["--executor", "ray", "--workers", "2"])):
        out = tmp_path / name
        compress = ["compress", *TINY, "--recipe", "w8a8", "--data", str(image_folder), "--calib", str(image_folder)]
        compress += ["--batch-size", "2", "--threads", "1", "--runtime", "onnxruntime", "--runs", "1", "--warmup", "0"]
        result = run_cli(*compress, "--batch-sizes", "1", *extra, "--out", str(out))
        assert result.exit_code == 0, result.output
        reports.append(_scores(out))
    assert reports[0] == reports[1]


def test_patched_models_unpickle_in_a_fresh_process(tmp_path: Path) -> None:
    """A Ray worker gets models by pickle: the classes the patches generate rebuild there."""
    model = tiny_vit("vit")
    apply_token_reduction(model, TokenMergeConfig(r=2))
    quantize_(model, QuantConfig.preset("w8a8-cpu"), [images(4)], search="minmax", progress=False)
    x = images(3, seed=5)
    with torch.no_grad():
        expected = model(x)
    torch.save({"model": model, "x": x, "expected": expected}, tmp_path / "m.pt")
    code = (
        "import torch, sys; d = torch.load(sys.argv[1], weights_only=False); "
        "print(type(d['model'].blocks[0].attn).__name__, torch.equal(d['model'](d['x']), d['expected']))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.pt")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [
        "TokenReduced_vitslim_compress_quant_placement_Quant_timm_layers_attention_Attention",
        "True",
    ]


def test_executor_errors_are_user_errors() -> None:
    with pytest.raises(UserError, match="--ray-address needs --executor ray"):
        make_executor("local", "ray://nowhere:1")
    with pytest.raises(UserError, match="unknown executor"):
        make_executor("dask")


@pytest.mark.parametrize("auth_mode", [None, "token"])
def test_joining_a_cluster_that_refuses_says_why(monkeypatch: pytest.MonkeyPatch, auth_mode: str | None) -> None:
    ray = pytest.importorskip("ray")

    def refuse(**_: object) -> None:
        raise ConnectionError("ray client connection timeout")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    if auth_mode is None:
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    else:
        monkeypatch.setenv("RAY_AUTH_MODE", auth_mode)
    with pytest.raises(UserError, match="cannot start or join the Ray cluster at ray://head:10001") as caught:
        make_executor("ray", "ray://head:10001")
    assert ("RAY_AUTH_MODE=token" in str(caught.value)) == (auth_mode is None)


# --------------------------------------------------------------------------- the sweep


def test_sweep_in_process_and_on_ray_agree_and_resume(tmp_path: Path, image_folder: Path, ray_cluster) -> None:
    data = ["--data", str(image_folder), "--calib", str(image_folder), "--threads", "1"]
    local, remote = tmp_path / "local", tmp_path / "ray"
    result = run_cli(
        "sweep", *TINY, *SWEEP, *data, "--max-drop", "50", "--out", str(local), "--json", str(tmp_path / "s.json")
    )
    assert result.exit_code == 0, result.output
    sweep = json.loads((tmp_path / "s.json").read_text())
    names = ["w8a8", "tome-r8", "tome-r8@tokens.r=2"]
    assert [c["name"] for c in sweep["summary"]["candidates"]] == names
    assert all(c["status"] == "ok" and set(c["latency"]) == {"1", "2"} for c in sweep["summary"]["candidates"])
    assert sweep["summary"]["best"] in names and sweep["summary"]["pareto"]
    assert {p.name for p in local.iterdir()} >= {"sweep.json", "sweep.md", "sweep.html", *names}
    assert "Fastest candidate with a drop of at most 50 pt" in (local / "sweep.md").read_text()
    assert (local / "sweep.html").read_text().count("data:image/png;base64,") == 1

    # on Ray: the tome-r8 candidates (w8a8 left out: the mechanism is the same for every candidate)
    on_ray = ["--recipes", "tome-r8", "--grid", "tokens.r=2", "--batch-sizes", "1,2", "--rounds", "1"]
    result = run_cli("sweep", *TINY, *on_ray, *data, "--executor", "ray", "--out", str(remote))
    assert result.exit_code == 0, result.output
    for name in names[1:]:  # the same accuracy figures, variant by variant, whichever executor ran them
        assert _scores(local / name) == _scores(remote / name), name

    # resume: a finished candidate is kept, a missing one (a killed task) is run again
    kept = (local / "w8a8" / "report.json").stat().st_mtime_ns
    for path in (local / "tome-r8@tokens.r=2").iterdir():
        path.unlink()
    (local / "tome-r8@tokens.r=2").rmdir()
    result = run_cli("sweep", *TINY, *SWEEP, *data, "--out", str(local), "--json", str(tmp_path / "again.json"))
    assert result.exit_code == 0, result.output
    assert (local / "w8a8" / "report.json").stat().st_mtime_ns == kept
    assert (local / "tome-r8@tokens.r=2" / "report.json").is_file()
    assert json.loads((tmp_path / "again.json").read_text())["resumed"] == names[:2]

    # another configuration in the same folder is refused
    other = run_cli("sweep", *TINY, "--recipes", "w8a8", *data, "--out", str(local))
    assert_user_error(other, "holds a sweep of another model, data or candidates")


def test_a_failed_candidate_is_recorded_and_retried(tmp_path: Path, image_folder: Path) -> None:
    data = ["--data", str(image_folder), "--calib", str(image_folder), "--threads", "1", "--rounds", "1"]
    out = tmp_path / "out"
    # evit-0.7 prunes at blocks 3, 6, 9: out of range for a depth-2 model, found by the preflight
    args = ["sweep", *TINY, "--recipes", "w8a8,evit-0.7", "--batch-sizes", "1", *data, "--out", str(out)]
    for _ in range(2):
        result = run_cli(*args)
        assert result.exit_code == 0, result.output
        error = json.loads((out / "evit-0.7.error.json").read_text())
        assert error["user_error"] and "out of range" in error["error"]
    sweep = json.loads((out / "sweep.json").read_text())
    rows = {c["name"]: c for c in sweep["summary"]["candidates"]}
    assert rows["evit-0.7"]["status"] == "failed" and rows["w8a8"]["status"] == "ok"
    assert "failed: TokenConfigError: prune layers [3, 6, 9] are out of range" in (out / "sweep.md").read_text()
    assert not (out / "evit-0.7").exists()


def test_sweep_mistakes_are_one_line(tmp_path: Path) -> None:
    assert_user_error(
        run_cli("sweep", *TINY, "--recipes", "w8a8", "--grid", "r=2", "--out", str(tmp_path / "o")),
        "expected stage.key=value1,value2",
    )
    assert not (tmp_path / "o").exists()

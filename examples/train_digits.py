"""The main job (`make demo`): a colour-equivariant network of rollconv layers against a plain
CNN, on scikit-learn's handwritten digits painted in colour.

Every digit (scikit-learn's 8x8 images, bundled, no download; upsampled to 16x16) is painted
with one colour drawn from a training palette of reddish hues on a dark background. Both
networks train on that palette only, and are tested on the training palette and on the two
rolled palettes, (R, G, B) -> (B, R, G) and (G, B, R): the same test digits with their colour
channels rolled, i.e. their hues rotated by 120 and 240 degrees (red digits become green,
then blue).

- The plain CNN (torch.nn layers) has never seen those hues, and scores what it scores.
- The rollconv network (a lifting RollConv2d on RGB with shift=1, hidden RollConv2d layers
  with shift = the previous layer's filters, max pooling, RollPool over the rolls, a linear
  classifier) is invariant to rolling its input's channels, exactly, by construction: it
  gives the same logits (up to float rounding) and the same accuracy on all three palettes.

Prints a progress bar per epoch, a table of test accuracy per palette for both networks,
the time per epoch of the rollconv network against the same network (same parameters) with
its rolling convolutions computed by the filter-bank method (rollconv.reference: roll, cat,
conv2d), and writes the table (results.md) and a figure (equivariant_digits.png: example
images per palette and the accuracy bars) to --out.

    python examples/train_digits.py [--epochs 12] [--threads 2] [--device cuda|cpu] [--out DIR]
"""
import argparse
import os
import sys
import time

# OpenMP threads spin while they wait for the next parallel region. On a machine shared with
# other processes (more runnable threads than cores) a spinning thread holds a core that the
# thread it waits for needs, and this small network's thousands of short parallel regions per
# epoch run many times slower. PASSIVE makes waiting threads sleep. It must be set before torch
# loads the OpenMP runtime (not when this file is imported after torch); a value already in the
# environment wins.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import matplotlib

matplotlib.use("Agg")  # files only: the demo runs on machines without a display

import matplotlib.colors
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from tqdm import tqdm

import rollconv
from rollconv import reference

HERE = os.path.dirname(os.path.abspath(__file__))

#: The test palettes: k = how many channels the training palette's colours are rolled by
#: (torch.roll(rgb, k): k=1 maps (R, G, B) to (B, R, G), a hue rotation by 120 degrees).
PALETTES = (("training palette", 0), ("rolled: B,R,G (hue +120)", 1), ("rolled: G,B,R (hue +240)", 2))


# --------------------------------------------------------------------------------------- data
def training_palette(n, generator):
    """n colours (n, 3) in [0, 1]: reddish hues (hue within 30 degrees of red, HSV), saturation
    0.6-1, value 0.7-1. Only their red channel is always bright: orange digits are (1, .5, 0),
    pink ones (1, 0, .5)."""
    u = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    hsv = torch.stack([((u[:, 0] - 0.5) / 6) % 1.0, 0.6 + 0.4 * u[:, 1], 0.7 + 0.3 * u[:, 2]], dim=1)
    return torch.from_numpy(matplotlib.colors.hsv_to_rgb(hsv.numpy())).float()


def paint(ink, colours):
    """ink (N, 1, H, W) in [0, 1] (the digit's strokes), colours (N, 3) -> (N, 3, H, W): each
    digit drawn in its colour on a black background.

    The background stays black, which is black under every palette, so the test palettes
    differ from the training one in the digits' hue and nothing else. (A painted background
    would keep the property too: a rolled palette still gives the rolled image.) No
    per-channel normalization either: channel means taken on red digits would not be the
    rolled images' means, and the test images would no longer be the rolled training-palette
    images."""
    return ink * colours[:, :, None, None]


def load(size, samples, seed):
    """sklearn's digits as ink in [0, 1], bilinearly upsampled to size x size, split 75/25
    (stratified), painted with training-palette colours. Returns (x_train, y_train,
    tests) with tests = {palette name: x_test painted with that palette}, y_test."""
    digits = load_digits()
    ink = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size != 8:
        ink = F.interpolate(ink, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)
    labels = torch.tensor(digits.target)
    ink_train, ink_test, y_train, y_test = train_test_split(
        ink, labels, test_size=0.25, random_state=seed, stratify=labels
    )
    if samples:  # a small setting for tests: the first `samples` training and test images
        ink_train, y_train, ink_test, y_test = ink_train[:samples], y_train[:samples], ink_test[:samples], y_test[:samples]
    gen = torch.Generator().manual_seed(seed)
    x_train = paint(ink_train, training_palette(len(ink_train), gen))
    test_colours = training_palette(len(ink_test), gen)
    tests = {name: paint(ink_test, torch.roll(test_colours, k, dims=1)) for name, k in PALETTES}
    return x_train, y_train, tests, y_test


# ----------------------------------------------------------------------------------- networks
class BlockLocalResponseNorm(nn.Module):
    """Local response normalization across the F filters of each roll block, never across
    blocks: (N, rolls * F, H, W) is normalized as (N * rolls, F, H, W).

    LRN across all channels would put the last filters of block r and the first of block
    r + 1 into one window, and the outer blocks against zero padding: rolling the blocks
    would change what each channel is normalized by, and the network would lose its
    invariance. Within a block every roll is normalized alike, so rolling the blocks
    commutes with it."""

    def __init__(self, rolls, size, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__()
        self.rolls = rolls
        self.norm = rollconv.nn.LocalResponseNorm(size, alpha, beta, k)

    def forward(self, x):
        n, c, h, w = x.shape
        return self.norm(x.reshape(n * self.rolls, c // self.rolls, h, w)).reshape(n, c, h, w)


def rollconv_network(f1=8, f2=16, f3=16, size=16):
    """The colour-equivariant network. Channels are roll-major (r * F + f), three rolls
    throughout: the lifting layer rolls its filters over R, G, B one channel at a time
    (shift=1), so rolling the image's channels by one rolls its 3 blocks of f1 channels by
    one; each hidden layer rolls its filters by the previous layer's F channels (shift=F),
    which keeps that going; max pooling acts per channel; RollPool (max over the rolls)
    makes the features invariant, and the classifier reads those."""
    rolls = 3
    return nn.Sequential(
        rollconv.nn.RollConv2d(3, f1, 3, padding=1, shift=1, activation="relu"),  # 3 * f1 channels
        BlockLocalResponseNorm(rolls, size=5, alpha=1e-3),
        rollconv.nn.RollConv2d(rolls * f1, f2, 3, padding=1, shift=f1, activation="relu"),  # 3 * f2
        rollconv.nn.MaxPool2d(2),
        rollconv.nn.RollConv2d(rolls * f2, f3, 3, padding=1, shift=f2, activation="relu"),  # 3 * f3
        rollconv.nn.MaxPool2d(2),
        rollconv.nn.RollPool(rolls, "max"),  # f3 channels, invariant
        nn.Flatten(),
        nn.Linear(f3 * (size // 4) ** 2, 10),
    )


def plain_network(c1=16, c2=24, c3=24, size=16):
    """A plain CNN of torch.nn layers with about as many parameters as rollconv_network."""
    return nn.Sequential(
        nn.Conv2d(3, c1, 3, padding=1),
        nn.ReLU(),
        nn.LocalResponseNorm(5, alpha=1e-3),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c2, c3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c3 * (size // 4) ** 2, 10),
    )


class FilterBankRollConv2d(nn.Module):
    """A RollConv2d computed by the filter-bank method (rollconv.reference.roll_conv2d:
    roll the weight, concatenate the copies, one conv2d), sharing the layer's parameters."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        m = self.layer
        return reference.roll_conv2d(
            x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.rolls, m.shift, m.activation
        )


def with_filter_bank(net):
    """The same network, same parameter tensors, its RollConv2d layers by the filter-bank method."""
    return nn.Sequential(*[FilterBankRollConv2d(m) if isinstance(m, rollconv.nn.RollConv2d) else m for m in net])


def parameter_count(net):
    return sum(p.numel() for p in net.parameters())


# ----------------------------------------------------------------------------------- training
def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_epoch(net, opt, x, y, batch_size, generator, desc=None):
    """One epoch of Adam on shuffled minibatches; a tqdm bar when desc is given. Returns the mean loss."""
    net.train()
    order = torch.randperm(len(x), generator=generator).to(x.device)
    total = 0.0
    with tqdm(range(0, len(x), batch_size), desc=desc, disable=desc is None, leave=True, unit="batch") as bar:
        for start in bar:
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            bar.set_postfix(loss=f"{total / (start + len(idx)):.3f}")
    return total / len(x)


@torch.no_grad()
def logits(net, x, batch_size=512):
    net.eval()
    return torch.cat([net(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def train(name, net, x, y, args, device):
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    times = []
    for epoch in range(1, args.epochs + 1):
        synchronize(device)
        t0 = time.perf_counter()
        train_epoch(net, opt, x, y, args.batch_size, gen, f"{name} epoch {epoch}/{args.epochs}")
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def shown(path):
    """path relative to the working directory when it lies below it, else absolute."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def plural(n, noun):
    return f"{n} {noun}" + ("" if n == 1 else "s")


def load_average():
    """The 1-minute load average as text ('n/a' where the OS has none)."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except (AttributeError, OSError):
        return "n/a"


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def time_epochs(variants, x, y, args, device, rounds):
    """Seconds per training epoch of each (name, make_model) pair: each round trains one epoch
    of a fresh copy of every variant in turn (interleaved, so that a change of load hits all
    alike); the median over rounds."""
    times = {name: [] for name, _ in variants}
    for r in range(rounds):
        for name, make in variants:
            model = make()
            opt = torch.optim.Adam(model.parameters(), lr=args.lr)
            synchronize(device)
            t0 = time.perf_counter()
            train_epoch(model, opt, x, y, args.batch_size, torch.Generator().manual_seed(r))
            synchronize(device)
            times[name].append(time.perf_counter() - t0)
    return {name: median(t) for name, t in times.items()}


# ------------------------------------------------------------------------------------ results
def accuracy_table(rows):
    """rows: [(network, params, {palette: accuracy})] -> a Markdown table."""
    head = "| network | parameters | " + " | ".join(name for name, _ in PALETTES) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(PALETTES)]
    for network, params, acc in rows:
        lines.append(f"| {network} | {params:,} | " + " | ".join(f"{100 * acc[name]:.1f}%" for name, _ in PALETTES) + " |")
    return "\n".join(lines)


def figure(path, tests, y_test, rows):
    """One test image of each class per palette (top) and the accuracy bars (bottom)."""
    examples = [i for c in range(10) for i in (y_test == c).nonzero().flatten()[:1].tolist()]
    fig = plt.figure(figsize=(8.0, 6.4), dpi=90)
    grid = fig.add_gridspec(len(PALETTES) + 1, len(examples), height_ratios=[1] * len(PALETTES) + [3.6], hspace=0.25)
    for row, (name, _) in enumerate(PALETTES):
        for col, i in enumerate(examples):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(tests[name][i].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name.replace("rolled: ", "").replace(" (", "\n("), rotation=0, ha="right", va="center", fontsize=8)
    ax = fig.add_subplot(grid[len(PALETTES), :])
    width = 0.8 / len(rows)
    for i, (network, params, acc) in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(PALETTES))]
        bars = ax.bar(xs, [100 * acc[name] for name, _ in PALETTES], width, label=f"{network}, {params:,} parameters")
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(range(len(PALETTES)), [name for name, _ in PALETTES], fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 125)
    ax.set_yticks(range(0, 101, 20))
    ax.legend(loc="upper center", ncol=len(rows), fontsize=8, frameon=False)
    fig.suptitle("Trained on digits in reddish hues, tested on the same digits with rolled colour channels", fontsize=10)
    fig.savefig(path, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


# --------------------------------------------------------------------------------------- main
def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--size", type=int, default=16, help="image size after upsampling (multiple of 4)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU threads of every op)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=0, help="use only this many training and test images (0: all)")
    parser.add_argument("--timing-rounds", type=int, default=3, help="interleaved epochs per variant for the timing (0: skip)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="directory for results.md and the figure")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.size % 4:
        raise SystemExit(f"--size must be a multiple of 4 (two 2x2 max poolings), but got {args.size}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    x_train, y_train, tests, y_test = load(args.size, args.samples, args.seed)
    x_train, y_train, y_test = x_train.to(device), y_train.to(device), y_test.to(device)
    tests = {name: x.to(device) for name, x in tests.items()}
    setting = (
        f"digits: {len(x_train)} training / {len(y_test)} test images ({args.size}x{args.size} RGB), {plural(args.epochs, 'epoch')}, "
        f"device {device}, {torch.get_num_threads()} CPU threads (OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'not set')})"
    )
    load_at_start = load_average()
    print(setting)

    nets = {
        "plain CNN (torch.nn)": plain_network(size=args.size).to(device),
        "rollconv (equivariant)": rollconv_network(size=args.size).to(device),
    }
    for name, net in nets.items():
        print(f"{name}: {parameter_count(net):,} parameters")

    epoch_times = {name: train(name, net, x_train, y_train, args, device) for name, net in nets.items()}

    rows, out_logits = [], {}
    for name, net in nets.items():
        out_logits[name] = {p: logits(net, x) for p, x in tests.items()}
        acc = {p: (z.argmax(1) == y_test).float().mean().item() for p, z in out_logits[name].items()}
        rows.append((name, parameter_count(net), acc))
    table = accuracy_table(rows)
    print("\ntest accuracy per palette (trained on the training palette only)\n" + table)
    lines = []
    for name, by_palette in out_logits.items():
        base = by_palette[PALETTES[0][0]]
        diff = max((z - base).abs().max().item() for z in by_palette.values())
        same = all(torch.equal(z.argmax(1), base.argmax(1)) for z in by_palette.values())
        lines.append(
            f"{name}: largest logit difference between palettes {diff:.2g}; "
            f"predictions {'identical' if same else 'differ'} across palettes"
        )
    lines.append(
        "median time per training epoch: "
        + ", ".join(f"{name} {median(t):.3f} s" for name, t in epoch_times.items())
    )

    timing = {}
    if args.timing_rounds:
        trained = nets["rollconv (equivariant)"]

        def fresh_copy():
            net = rollconv_network(size=args.size).to(device)
            net.load_state_dict(trained.state_dict())
            return net

        variants = (
            ("rollconv ops (RollConv2d, algorithm='auto')", fresh_copy),
            ("filter-bank method (rollconv.reference: roll + cat + conv2d)", lambda: with_filter_bank(fresh_copy())),
        )
        timing = time_epochs(variants, x_train, y_train, args, device, args.timing_rounds)
        ours, bank = timing.values()
        lines.append(
            f"time per training epoch of the rollconv network, median of {plural(args.timing_rounds, 'interleaved epoch')} "
            f"({len(x_train)} images, batch {args.batch_size}, forward + backward + Adam):"
        )
        lines += [f"  {name:<62} {t:.3f} s" for name, t in timing.items()]
        lines.append(f"  filter-bank time / rollconv time: {bank / ours:.2f}x")
    lines.append(
        f"load average (1 min) at start / end: {load_at_start} / {load_average()} on {os.cpu_count()} CPUs "
        "(other processes' load slows every time above)"
    )
    print("\n".join(lines))

    os.makedirs(args.out, exist_ok=True)
    figure_path = os.path.join(args.out, "equivariant_digits.png")
    figure(figure_path, {p: x.cpu() for p, x in tests.items()}, y_test.cpu(), rows)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(
            setting + "\n\n" + table + "\n\n" + "\n".join(lines) + "\n"
        )
    print(f"\nwrote {shown(figure_path)} and {shown(os.path.join(args.out, 'results.md'))}")

    return {"rows": rows, "logits": out_logits, "y_test": y_test, "figure": figure_path, "timing": timing,
            "epoch_times": epoch_times}


if __name__ == "__main__":
    result = main()
    rollconv_acc = dict((name, acc) for name, _, acc in result["rows"])["rollconv (equivariant)"]
    if min(rollconv_acc.values()) < 0.9:
        raise SystemExit(f"the rollconv network's test accuracy {min(rollconv_acc.values()):.2%} is below 90%")

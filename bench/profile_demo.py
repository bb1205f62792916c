"""Where one training epoch of the demo's rollconv network spends its time.

Profiles (torch.profiler) one training epoch of ``examples/train_digits.py``'s rollconv
network (1,347 images of 16x16, batch 64, Adam) after one warm-up epoch, and prints a
Markdown report:

1. each layer's forward and backward time and its share of the epoch (a layer's backward is
   the autograd nodes of the ops its forward recorded, matched by the profiler's sequence
   numbers), the loss, the optimizer step, and the rest (Python, batching, the profiler);
   for the rolling convolutions also the rate in GFLOP/s (2 flops per multiply-add);
2. the operators by self time (the time in an operator less that in the operators it calls);
3. the layers around the convolutions (max pooling, local response normalization, ReLU's
   backward) against the same torch operators on the same tensors, forward+backward,
   medians of interleaved rounds.

    python bench/profile_demo.py [--threads 2] [--device cpu|cuda] [--out FILE]

Times under the profiler are longer than without it (each operator call is recorded); the
shares are what this reports.
"""
import argparse
import importlib.util
import os
import sys
import time

if "torch" not in sys.modules:  # as in the demo: sleeping, not spinning, OpenMP threads
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

import rollconv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_demo():
    spec = importlib.util.spec_from_file_location("train_digits", os.path.join(ROOT, "examples", "train_digits.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Labelled(nn.Module):
    """Runs a layer inside a profiler range named 'forward <label>'."""

    def __init__(self, label, layer):
        super().__init__()
        self.label, self.layer = label, layer

    def forward(self, x):
        with record_function("forward " + self.label):
            return self.layer(x)


def describe(layer):
    if isinstance(layer, rollconv.nn.RollConv2d):
        return f"RollConv2d({layer.in_channels}, {layer.filters}, shift={layer.shift}), ReLU fused"
    if isinstance(layer, nn.Linear):
        return f"Linear({layer.in_features}, {layer.out_features})"
    return type(layer).__name__


def epoch(net, opt, x, y, batch_size, generator):
    order = torch.randperm(len(x), generator=generator).to(x.device)
    for start in range(0, len(x), batch_size):
        idx = order[start : start + batch_size]
        xb, yb = x[idx], y[idx]
        out = net(xb)
        with record_function("forward loss"):
            loss = F.cross_entropy(out, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    loss.item()


def descendants(event):
    for child in event.cpu_children:
        yield child
        yield from descendants(child)


def convolution_flops(net, labels, x):
    """{label: (forward, backward) multiply-adds times 2 over one epoch of x} for the rolling
    convolutions: forward 2*H_out*W_out*(rolls*F)*C*kh*kw per image; backward the same for dK,
    and again for dX except in the first layer (the images need no gradient)."""
    shapes, hooks = {}, []

    def record(label):
        def hook(layer, args, out):
            shapes[label] = (layer, out.shape)
        return hook

    for label, layer in zip(labels, net):
        if isinstance(layer, rollconv.nn.RollConv2d):
            hooks.append(layer.register_forward_hook(record(label)))
    with torch.no_grad():
        net(x[:1])
    for hook in hooks:
        hook.remove()
    flops = {}
    for i, (label, (m, shape)) in enumerate(shapes.items()):
        forward = 2 * shape[1] * shape[2] * shape[3] * m.weight[0].numel() * len(x)
        flops[label] = (forward, forward * (1 if i == 0 else 2))
    return flops


def layer_table(events, labels, wall_ms, flops):
    """Per layer: forward and backward milliseconds (CPU time of the calling thread), and for
    the convolutions the rate in GFLOP/s."""
    layer_of_sequence, forward = {}, {label: 0.0 for label in labels}
    for e in events:
        if e.name.startswith("forward ") and e.cpu_parent is None:
            label = e.name[len("forward "):]
            forward[label] += e.cpu_time_total / 1e3
            for d in descendants(e):
                if d.sequence_nr >= 0:
                    layer_of_sequence[d.sequence_nr] = label
    backward = {label: 0.0 for label in labels}
    accumulate = 0.0
    step = zero_grad = 0.0
    for e in events:
        if e.cpu_parent is not None:
            continue
        if e.name.startswith("autograd::engine::evaluate_function: "):
            if "AccumulateGrad" in e.name:
                accumulate += e.cpu_time_total / 1e3
            else:
                backward[layer_of_sequence.get(e.sequence_nr, "loss")] += e.cpu_time_total / 1e3
        elif e.name.startswith("Optimizer.step"):
            step += e.cpu_time_total / 1e3
        elif e.name.startswith("Optimizer.zero_grad"):
            zero_grad += e.cpu_time_total / 1e3
    rows = [(label, forward[label], backward[label]) for label in labels]
    rows.append(("gradient accumulation into .grad", 0.0, accumulate))
    rows.append(("Adam step, zero_grad", step + zero_grad, 0.0))
    counted = sum(f + b for _, f, b in rows)
    rows.append(("the rest: Python, batch indexing, the profiler", wall_ms - counted, 0.0))
    lines = ["| layer | forward ms | backward ms | share of the epoch | GFLOP/s forward, backward |", "|---|---:|---:|---:|---:|"]
    for label, f, b in rows:
        rate = ""
        if label in flops:
            rate = f"{flops[label][0] / f / 1e6:.0f}, {flops[label][1] / b / 1e6:.0f}"
        lines.append(f"| {label} | {f:.0f} | {b:.0f} | {100 * (f + b) / wall_ms:.0f}% | {rate} |")
    return "\n".join(lines)


def operator_table(prof, wall_ms, limit):
    averages = sorted(prof.key_averages(), key=lambda a: a.self_cpu_time_total, reverse=True)
    lines = ["| operator | calls | self ms | share of the epoch |", "|---|---:|---:|---:|"]
    for a in averages[:limit]:
        lines.append(f"| `{a.key}` | {a.count} | {a.self_cpu_time_total / 1e3:.0f} | {100 * a.self_cpu_time_total / 1e3 / wall_ms:.0f}% |")
    return "\n".join(lines)


def fwd_bwd_ms(fn, x, rounds):
    """Median milliseconds of forward + backward of fn on a copy of x (a sum as the loss)."""
    times = []
    for _ in range(rounds):
        xi = x.detach().clone().requires_grad_(True)
        t0 = time.perf_counter()
        fn(xi).sum().backward()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


def around_the_convolutions(device, rounds):
    """The demo's non-convolution layers on their tensors of one batch, ours against torch's."""
    g = torch.Generator().manual_seed(0)
    cases = [
        ("local response norm, size 5, (192, 8, 16, 16)", torch.rand(192, 8, 16, 16, generator=g),
         lambda t: rollconv.functional.local_response_norm(t, 5, alpha=1e-3),
         lambda t: F.local_response_norm(t, 5, alpha=1e-3)),
        ("max pool 2x2, (64, 48, 16, 16)", torch.rand(64, 48, 16, 16, generator=g),
         lambda t: rollconv.functional.max_pool2d(t, 2), lambda t: F.max_pool2d(t, 2)),
        ("max pool 2x2, (64, 48, 8, 8)", torch.rand(64, 48, 8, 8, generator=g),
         lambda t: rollconv.functional.max_pool2d(t, 2), lambda t: F.max_pool2d(t, 2)),
        ("ReLU (its backward is the mask), (64, 48, 16, 16)", torch.randn(64, 48, 16, 16, generator=g),
         torch.relu, torch.relu),
    ]
    lines = ["| layer on one batch's tensor, forward+backward | rollconv ms | torch ms |", "|---|---:|---:|"]
    for name, x, ours, theirs in cases:
        x = x.to(device)
        for fn in (ours, theirs):  # warm-up
            fwd_bwd_ms(fn, x, 2)
        a, b = [], []
        for _ in range(rounds):  # interleaved, so that a change of load hits both alike
            a.append(fwd_bwd_ms(ours, x, 1))
            b.append(fwd_bwd_ms(theirs, x, 1))
        lines.append(f"| {name} | {sorted(a)[len(a) // 2]:.2f} | {sorted(b)[len(b) // 2]:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=21, help="rounds of the per-layer comparison")
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    demo = load_demo()
    x, y, _, _ = demo.load(16, 0, 0)
    x, y = x.to(device), y.to(device)
    net = demo.rollconv_network(size=16).to(device)
    labels = [f"{i}: {describe(layer)}" for i, layer in enumerate(net)]
    labelled = nn.Sequential(*[Labelled(label, layer) for label, layer in zip(labels, net)])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    epoch(labelled, opt, x, y, 64, gen)  # warm-up: 'auto' choices, allocations, lazy imports
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    load_before = os.getloadavg()[0]
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        epoch(labelled, opt, x, y, 64, gen)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall_ms = (time.perf_counter() - t0) * 1e3
    events = prof.events()
    report = [
        f"One training epoch of the demo's rollconv network under torch.profiler: {len(x)} images "
        f"16x16, batch 64, Adam, device {device}, {torch.get_num_threads()} threads "
        f"(OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'not set')}), {wall_ms:.0f} ms wall-clock; "
        f"load average (1 min) {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs.",
        "",
        layer_table(events, labels + ["loss"], wall_ms, convolution_flops(net, labels, x)),
        "",
        operator_table(prof, wall_ms, 15),
        "",
        around_the_convolutions(device, args.rounds),
    ]
    text = "\n".join(report) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()

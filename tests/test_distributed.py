"""DistributedDataParallel over gloo: two CPU processes, each on half the batch, train a
model of rollconv layers exactly as one process does on the whole batch (eager, and the
DDP model under torch.compile)."""
import socket

import pytest
import torch
import torch.distributed as dist

import rollconv

WORLD_SIZE = 2
STEPS = 3
BATCH = 8


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        rollconv.nn.RollConv2d(3, 2, 3, padding=1, activation="relu"),
        rollconv.nn.MaxPool2d(2),
        rollconv.nn.LocalResponseNorm(3),
        rollconv.nn.Conv2d(6, 4, 3, padding=1),
        rollconv.nn.ConvTranspose2d(4, 2, 2, stride=2),
        torch.nn.Flatten(),
        torch.nn.Linear(2 * 8 * 8, 3),
    ).double()


def make_data():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, BATCH, 3, 8, 8, dtype=torch.float64, generator=generator)
    target = torch.randn(STEPS, BATCH, 3, dtype=torch.float64, generator=generator)
    return x, target


def train(model, x, target, rank=0, world_size=1):
    """STEPS of SGD on each rank's share of every batch; the first step's gradients and the
    final parameters. With a mean loss per rank and DDP averaging the gradients across the
    ranks, this equals training on the whole batch in one process."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    first_grads = None
    for step in range(STEPS):
        share = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x[step, share]), target[step, share])
        loss.backward()
        if first_grads is None:
            first_grads = [p.grad.clone() for p in model.parameters()]
        optimizer.step()
    return first_grads, [p.detach().clone() for p in model.parameters()]


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        x, target = make_data()
        results = {}
        for mode in ("eager", "compiled"):
            ddp = torch.nn.parallel.DistributedDataParallel(make_model())
            model = torch.compile(ddp, backend="aot_eager") if mode == "compiled" else ddp
            results[mode] = train(model, x, target, rank, WORLD_SIZE)
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_ddp_two_processes_match_one_process(tmp_path):
    torch.multiprocessing.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    reference_grads, reference_params = train(make_model(), *make_data())
    for rank in range(WORLD_SIZE):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        for mode, (grads, params) in results.items():
            torch.testing.assert_close(grads, reference_grads, msg=lambda m: f"rank {rank} {mode} gradients: {m}")
            torch.testing.assert_close(params, reference_params, msg=lambda m: f"rank {rank} {mode} parameters: {m}")

"""A 2-process gloo DDP training step with fasttx norms gives the gradients of one process
running the whole batch."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fasttx

from .conftest import runnable_backends

WORLD = 2


def _model(backend):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(24, 40), fasttx.nn.LayerNorm(40, backend=backend),
        torch.nn.GELU(), torch.nn.Linear(40, 40), fasttx.nn.RMSNorm(40, backend=backend),
    )


def _batch():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 24, generator=generator), torch.randn(8, 40, generator=generator)


def _loss(model, x, target):
    return torch.nn.functional.mse_loss(model(x), target)


def _ddp_worker(rank, backend, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model = torch.nn.parallel.DistributedDataParallel(_model(backend))
        x, target = (t.chunk(WORLD)[rank] for t in _batch())
        _loss(model, x, target).backward()
        if rank == 0:
            torch.save([p.grad for p in model.module.parameters()], out_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("backend", runnable_backends("cpu"))  # gloo: CPU tensors
def test_ddp_gradients_equal_single_process(backend, tmp_path):
    out_file = str(tmp_path / "grads.pt")
    mp.spawn(_ddp_worker, args=(backend, str(tmp_path / "init"), out_file), nprocs=WORLD)
    ddp_grads = torch.load(out_file)
    model = _model(backend)
    _loss(model, *_batch()).backward()
    assert len(ddp_grads) == len(list(model.parameters()))
    for got, param in zip(ddp_grads, model.parameters()):
        assert got.abs().sum() > 0  # a gradient that is all zeros would hide a broken sync
        torch.testing.assert_close(got, param.grad, rtol=1e-5, atol=1e-6)

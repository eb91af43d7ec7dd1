"""Checks shared by the tests of library models under fasttx.patch (timm, torchvision): a model's output
and every parameter gradient, against the stock model's in fp32, and in fp16 against an fp32 reference
within FlashAttention's rule."""

import copy

import torch

import fasttx
from fasttx.testing import TOLERANCE, rel_error

from ..conftest import DEVICE


def logits_and_grads(model, inputs, run=None):
    """``run(inputs)`` (default: the model) and every parameter's gradient of a weighted sum of it."""
    logits = (model if run is None else run)(inputs)
    (logits * torch.linspace(-1, 1, logits.shape[-1], device=logits.device)).sum().backward()
    return logits, {name: p.grad for name, p in model.named_parameters()}


def assert_matches_stock(fast, stock, inputs, run=None):
    """fp32: the patched model's output and gradients equal the stock model's to rounding."""
    logits_fast, grads_fast = logits_and_grads(fast, inputs, run)
    logits_stock, grads_stock = logits_and_grads(stock, inputs)
    torch.testing.assert_close(logits_fast, logits_stock, rtol=1e-4, atol=1e-5)
    for name, grad in grads_stock.items():
        torch.testing.assert_close(grads_fast[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def assert_half_within_twice_stock(reference, inputs, backend):
    """The output and every parameter gradient in fp16 of ``reference`` patched with ``backend`` (on
    DEVICE: the Triton interpreter on CPU), against the fp32 model on CPU: error at most twice the stock
    fp16 model's on DEVICE, plus one rounding."""
    stock_half = copy.deepcopy(reference).half().to(DEVICE)
    fast = fasttx.patch(copy.deepcopy(reference).half().to(DEVICE), backend=backend)
    results = {}
    for label, model in (("reference", reference), ("stock", stock_half), ("fasttx", fast)):
        logits, grads = logits_and_grads(model, inputs if label == "reference" else inputs.half().to(DEVICE))
        results[label] = {"logits": logits, **grads}
    for what, expected in results["reference"].items():
        errors = {label: rel_error(results[label][what], expected) for label in ("stock", "fasttx")}
        assert errors["fasttx"] <= 2 * errors["stock"] + TOLERANCE[torch.float16], (what, errors)

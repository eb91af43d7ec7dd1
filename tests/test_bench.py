"""The benchmark checks correctness on its own inputs: a fast wrong kernel shows as FAIL."""

import torch

from fasttx.benchmarks.common import Case, run_case


def test_wrong_implementation_is_flagged():
    right = lambda x: torch.softmax(x, -1)  # noqa: E731
    wrong = lambda x: torch.softmax(x * 1.01, -1)  # noqa: E731
    x = torch.randn(16, 50, requires_grad=True)
    case = Case({"rows": 16, "cols": 50}, [x], {"torch eager": right, "wrong": wrong}, right, (1, 2))
    rows = run_case("softmax", case, "cpu", torch.float32, {"GB/s": None})
    verdicts = {(r["provider"], r["pass"]): r["correct"] for r in rows}
    assert verdicts == {("torch eager", "fwd"): True, ("torch eager", "fwd+bwd"): True,
                        ("wrong", "fwd"): False, ("wrong", "fwd+bwd"): False}
    assert all(r["ms"] > 0 and r["speed-up"] > 0 for r in rows)

"""softmax(scale * x + mask) along ``dim``, accumulated in fp32, with optional causal masking.

A row where nothing is kept gives 0 output and 0 gradient instead of torch's NaN: the row max is
taken as 0 there, every exp is 0 and the normaliser 0 is replaced by 1.
"""

import torch


def softmax(input, dim=-1, scale=None, mask=None, is_causal=False, dtype=None):
    z = input.to(torch.float64 if input.dtype == torch.float64 else torch.float32)
    if scale is not None:
        z = z * scale
    if mask is not None:
        z = z.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else z + mask.to(z.dtype)
    if is_causal:  # keep column j <= row i of the last two dims (top-left aligned)
        rows, cols = z.shape[-2:]
        keep = torch.ones(rows, cols, dtype=torch.bool, device=z.device).tril()
        z = z.masked_fill(~keep, float("-inf"))
    row_max = z.detach().amax(dim, keepdim=True)  # softmax is shift-invariant: no gradient
    exp = torch.exp(z - row_max.masked_fill(row_max == float("-inf"), 0.0))
    total = exp.sum(dim, keepdim=True)
    return (exp / total.masked_fill(total == 0, 1.0)).to(dtype or input.dtype)

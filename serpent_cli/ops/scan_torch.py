"""Vectorised selective scan in plain PyTorch: the portable (CPU, MPS, CUDA) backend.

Why this shape of algorithm: a step-by-step loop over L = H*W positions is far too slow
in Python, and the fully parallel (quadratic-in-chunk) form costs T times more work.
Instead the sequence is cut into *segments* of bounded size, processed one after the
other with a carried state, so memory does not grow with L.  Inside a segment the
sequence is cut into chunks of length T:

1. a local scan inside every chunk at once (T vectorised steps, zero initial state),
2. a short sequential carry across chunks that gives each chunk its true initial state,
3. a correction ``h_t += (prod of decays up to t) * h_start`` and the output ``y = C . h``.

All arithmetic is fp32.  Every decay factor exp(delta * A) is <= 1 for the usual
A < 0, delta >= 0, so nothing overflows.  Training memory is bounded the same way:
the autograd function keeps only the segment-boundary states and recomputes one
segment at a time in the backward pass.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# State elements (segment x channels x N) processed at once: 4 MiB in fp32, so the
# handful of work tensors of a segment stay in a core's L2 cache.  Tuned on 2 CPU cores.
SEGMENT_BUDGET = 1024 * 1024
MIN_CHUNK, MAX_CHUNK = 4, 64


def _plan(length: int, batch: int, channels: int, n_state: int) -> tuple[int, int]:
    """Chunk and segment lengths for a scan.

    The segment holds about SEGMENT_BUDGET state elements so the work tensors stay in
    cache; the chunk is near sqrt(segment) to balance in-chunk steps against carry steps.
    """
    per_step = max(1, batch * channels * n_state)
    steps = max(1, min(length, SEGMENT_BUDGET // per_step))
    chunk = int(min(MAX_CHUNK, max(MIN_CHUNK, 2 ** round(math.log2(math.sqrt(steps))))))
    seg = max(chunk, steps // chunk * chunk)
    return chunk, min(seg, math.ceil(length / chunk) * chunk)


def _scan_segment(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scan one segment.

    u, delta: (b, g, dg, s) with s a multiple of ``chunk`` (delta already biased and
    activated); A: (g, dg, n); B, C: (b, g, n, s); h0: (b, g, n, dg).
    Returns y (b, g, dg, s) and the final state (b, g, n, dg).

    Work tensors are laid out (T, b, g, n, dg, nc): time-in-chunk first so each step's
    slice is contiguous, the state axis n outside so the sum over it adds whole slabs.
    """
    b, g, dg, s = u.shape
    nc = s // chunk

    def time_major(x: torch.Tensor) -> torch.Tensor:
        # (b, g, k, s) -> contiguous (T, b, g, k, nc); products of these come out contiguous.
        return x.reshape(b, g, x.shape[2], nc, chunk).permute(4, 0, 1, 2, 3).contiguous()

    d_t = time_major(delta).unsqueeze(3)  # (T, b, g, 1, dg, nc)
    du_t = time_major(delta * u).unsqueeze(3)
    B_t = time_major(B).unsqueeze(4)  # (T, b, g, n, 1, nc)
    C_t = time_major(C).unsqueeze(4)
    A_t = A.permute(0, 2, 1).unsqueeze(-1).contiguous()  # (g, n, dg, 1)
    grad_mode = torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C, h0))
    # Local (zero-start) states, one recurrence step at a time for all chunks at once;
    # alongside, decay becomes the running product from the chunk start ("prefix").
    decay = torch.exp(d_t * A_t)  # (T, b, g, n, dg, nc)
    states = du_t * B_t
    if grad_mode:
        # unbind (not indexing) so that autograd's backward is one stack, not T full-size scatters.
        inputs, factors = states.unbind(0), decay.unbind(0)
        rows, prods = [inputs[0]], [factors[0]]
        for t in range(1, chunk):
            rows.append(torch.addcmul(inputs[t], rows[-1], factors[t]))
            prods.append(prods[-1] * factors[t])
        states, prefix = torch.stack(rows), torch.stack(prods)
    else:
        for t in range(1, chunk):
            torch.addcmul(states[t], states[t - 1], decay[t], out=states[t])
            decay[t].mul_(decay[t - 1])
        prefix = decay
    # Carry across chunks: the true initial state of chunk c.
    h = h0
    starts = []
    last_local, last_prefix = states[-1].unbind(-1), prefix[-1].unbind(-1)
    for c in range(nc):
        starts.append(h)
        h = torch.addcmul(last_local[c], last_prefix[c], h)
    h_start = torch.stack(starts, dim=-1)  # (b, g, n, dg, nc)
    if grad_mode:
        states = states + prefix * h_start
        y = (states * C_t).sum(3)
    else:
        y = states.addcmul_(prefix, h_start).mul_(C_t).sum(3)  # (T, b, g, dg, nc)
    y = y.permute(1, 2, 3, 4, 0).reshape(b, g, dg, s)
    return y, h


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(x)) in a form that vectorises well on CPU (F.softplus does not)."""
    return torch.log1p(torch.exp(-x.abs())).add_(x.clamp(min=0))


def _prepare(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
) -> tuple[torch.Tensor, ...]:
    b, d, _ = u.shape
    g = B.shape[1]
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[None, :, None]
    if delta_softplus:
        delta = softplus(delta)
    return (
        u.float().reshape(b, g, d // g, -1),
        delta.reshape(b, g, d // g, -1),
        A.float().reshape(g, d // g, -1),
        B.float(),
        C.float(),
    )


def _run_segments(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    keep_states: bool,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Scan the whole (prepared) sequence segment by segment; optionally keep boundary states."""
    b, g, dg, length = u.shape
    n = A.shape[-1]
    chunk, seg = _plan(length, b, g * dg, n)
    h = u.new_zeros(b, g, n, dg)
    ys, boundaries = [], []
    for start in range(0, length, seg):
        stop = min(start + seg, length)
        size = stop - start
        padded = math.ceil(size / chunk) * chunk
        pad = padded - size
        parts = [u[..., start:stop], delta[..., start:stop], B[..., start:stop], C[..., start:stop]]
        if pad:
            # delta = 0 on padding: decay 1 and no input, so the carried state is unchanged.
            parts = [F.pad(p, (0, pad)) for p in parts]
        if keep_states:
            boundaries.append(h)
        y, h = _scan_segment(parts[0], parts[1], A, parts[2], parts[3], h, chunk)
        ys.append(y[..., :size])
    return torch.cat(ys, dim=-1), boundaries


class _ChunkedScan(torch.autograd.Function):
    """Bounded-memory autograd: keep segment-boundary states, recompute segments backwards."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus):  # type: ignore[override]
        with torch.no_grad():
            prepared = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
            y, boundaries = _run_segments(*prepared, keep_states=True)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias)
        ctx.boundaries = boundaries
        ctx.delta_softplus = delta_softplus
        b, d, length = u.shape
        y = y.reshape(b, d, length)
        if D is not None:
            y = y + D.float()[None, :, None] * u.float()
        return y.to(u.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):  # type: ignore[override]
        u, delta, A, B, C, D, delta_bias = ctx.saved_tensors
        b, d, length = u.shape
        g = B.shape[1]
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(t is not None and ctx.needs_input_grad[i])
                      if t is not None else None
                      for i, t in enumerate((u, delta, A, B, C))]
            bias_leaf = delta_bias.detach().requires_grad_(ctx.needs_input_grad[6]) if delta_bias is not None else None
            u_p, delta_p, A_p, B_p, C_p = _prepare(*leaves, bias_leaf, ctx.delta_softplus)
        grad_y32 = grad_y.float().reshape(b, g, d // g, length)
        chunk, seg = _plan(length, b, d, A_p.shape[-1])
        starts = list(range(0, length, seg))
        grad_h = None
        grads_prepared = [torch.zeros_like(t) for t in (u_p, delta_p, A_p, B_p, C_p)]
        for index in reversed(range(len(starts))):
            start = starts[index]
            stop = min(start + seg, length)
            size = stop - start
            padded = math.ceil(size / chunk) * chunk
            with torch.enable_grad():
                window = (u_p, delta_p, A_p, B_p, C_p)
                pieces = [(p if i == 2 else p[..., start:stop]).detach().requires_grad_() for i, p in enumerate(window)]
                h0 = ctx.boundaries[index].detach().requires_grad_()
                args = [pieces[0], pieces[1], pieces[3], pieces[4]]
                if padded != size:
                    args = [F.pad(p, (0, padded - size)) for p in args]
                y_seg, h_end = _scan_segment(args[0], args[1], pieces[2], args[2], args[3], h0, chunk)
                outputs, grads = [y_seg[..., :size]], [grad_y32[..., start:stop]]
                if grad_h is not None:
                    outputs.append(h_end)
                    grads.append(grad_h)
                found = torch.autograd.grad(outputs, [*pieces, h0], grads, allow_unused=True)
            for slot, (target, got) in enumerate(zip(grads_prepared, found[:5])):
                if got is None:
                    continue
                if slot == 2:
                    target += got
                else:
                    target[..., start:stop] += got
            grad_h = found[5]
        with torch.enable_grad():
            prepared_outputs = [u_p, delta_p, A_p, B_p, C_p]
            wanted = [t for t in [*leaves, bias_leaf] if t is not None and t.requires_grad]
            found = torch.autograd.grad(prepared_outputs, wanted, grads_prepared, allow_unused=True) if wanted else []
        lookup = dict(zip([id(t) for t in wanted], found))
        grad_u, grad_delta, grad_A, grad_B, grad_C = [
            (lookup.get(id(t)) if t is not None else None) for t in leaves
        ]
        grad_bias = lookup.get(id(bias_leaf)) if bias_leaf is not None else None
        grad_D = None
        if D is not None:
            if ctx.needs_input_grad[5]:
                grad_D = (grad_y.float() * u.float()).sum(dim=(0, 2)).to(D.dtype)
            if ctx.needs_input_grad[0]:
                extra = grad_y.float() * D.float()[None, :, None]
                grad_u = extra if grad_u is None else grad_u + extra
        cast = [(grad_u, u), (grad_delta, delta), (grad_A, A), (grad_B, B), (grad_C, C)]
        out = [gr.to(ref.dtype) if gr is not None else None for gr, ref in cast]
        bias_out = grad_bias.to(delta_bias.dtype) if grad_bias is not None else None
        return (*out, grad_D, bias_out, None)


def selective_scan_torch(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Chunked selective scan; same contract as :func:`serpent_cli.ops.selective_scan`."""
    return _ChunkedScan.apply(u, delta, A, B, C, D, delta_bias, delta_softplus)

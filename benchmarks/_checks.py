"""Device correctness of every launch path of the Triton op, before any timing (kernel_bench.py and
gpu_check.py run it; on CPU under --cpu-smoke with the interpreter).

Against the torch reference op on the same device: the standard launch, the fast launch (its first
call runs the standard launch plus the fast path's self-check; later calls the fast path), CUDA-graph
capture and replay; one style per row and 4-column blends; the history source from device memory
(int32, int64) and from UVA pinned host memory (int32, as vLLM keeps it), bit-identical to the
context source; and the entropy kernel against adaptive.adaptive_scale (standard and fast). Whether
the fast path proved itself on this Triton is reported separately: falling back is correct, only
slower. Steered positions: 2e-5 absolute + 1e-5 relative; untouched positions bit for bit; entropy
1e-5 absolute (the GPU's exp/log are approximate instructions).
"""
from __future__ import annotations

import numpy as np
import torch

from _uva import check_uva, token_history  # noqa: E402  (benchmarks/ is on sys.path)


def _contexts(variants, rng, rows: int, m: int, variant_np) -> np.ndarray:
    """[rows, m] contexts of each row's style (as generated text meets them), some cut short."""
    from vllm_ngram_style.kernels.synthetic import sample_contexts

    ctx = np.full((rows, m), -1, dtype=np.int64)
    col = variant_np if variant_np.ndim == 1 else variant_np[:, 0]
    for i, style in enumerate(variants):
        sel = np.flatnonzero(np.maximum(col, 0) == i)
        if sel.size and style.max_order > 1:
            c = sample_contexts(style, rng, sel.size)
            ctx[sel, m - c.shape[1]:] = c
    for i in range(rows):
        if rng.random() < 0.2:  # a short history
            keep = int(rng.integers(0, m + 1))
            ctx[i, :m - keep] = -1
    return ctx


def history_from_context(ctx: torch.Tensor, hist_len: int, dtype, device, where: str):
    """The same rows in MRV2 form: slot r holds row r's known tokens at positions 0..k-1, row_last_pos = k-1.
    Returns (all_token_ids as the kernel sees it, row_slot, row_last_pos, how the history is held)."""
    c = ctx.cpu().numpy()
    rows = c.shape[0]
    hist = np.random.default_rng(1).integers(0, 100, size=(rows, hist_len)).astype(np.int64)
    pos = np.full(rows, -1, dtype=np.int64)
    for r in range(rows):
        known = c[r][c[r] >= 0]
        hist[r, :known.size] = known
        pos[r] = known.size - 1
    view, host, how = token_history((rows, hist_len), dtype, device, where)
    if host is not None:
        how = check_uva(view, host) + "; " + how
        host.copy_(torch.from_numpy(hist).to(dtype))  # written on the host, read by the kernel through the view
    else:
        view.copy_(torch.from_numpy(hist).to(dtype))
    return view, torch.arange(rows, device=device), torch.as_tensor(pos, device=device), how


def check_op(variants, device, rng, vocab: int, rows: int = 64, uva: bool = True):
    """Returns (problems, what was checked, fast-path status lines)."""
    from vllm_ngram_style.adaptive import adaptive_scale
    from vllm_ngram_style.kernels.launcher import TritonSteering
    from vllm_ngram_style.kernels.reference import ReferenceSteering

    problems, checked = [], []
    cuda = device.type == "cuda"
    ref = ReferenceSteering(variants, device)
    ts = TritonSteering(variants, device)
    m = ts.max_order - 1
    base = torch.randn(rows, vocab, device=device)  # [R, V]
    scale = torch.as_tensor(rng.uniform(0.0, 1.0, rows).astype(np.float32), device=device)  # [R]

    def case(k):
        shape = (rows,) if k == 1 else (rows, k)
        v_np = rng.integers(-1, len(variants), size=shape)
        s_np = rng.uniform(0.1, 1.0, size=shape).astype(np.float32)
        s_np[::7] = 0.0
        ctx = torch.as_tensor(_contexts(variants, rng, rows, m, v_np), device=device)
        return torch.as_tensor(v_np, device=device), torch.as_tensor(s_np, device=device), ctx

    def compare(name, got, want, touched):
        if not torch.allclose(got, want, atol=2e-5, rtol=1e-5):
            problems.append(f"{name}: max |kernel - reference| = {float((got - want).abs().max()):.3g}")
        if not torch.equal(got.view(torch.int32)[~touched], base.view(torch.int32)[~touched]):
            problems.append(f"{name}: a position the reference leaves alone was written")

    steered = 0
    for k in (1, 4):
        variant, strength, ctx = case(k)
        eff = strength * (scale if k == 1 else scale[:, None])
        want = ref.apply(base.clone(), variant, eff, ctx)
        r_, t_, _ = ref.entries(variant, eff, ctx)
        keep = t_ < vocab
        touched = torch.zeros(rows, vocab, dtype=torch.bool, device=device)
        touched[r_[keep], t_[keep]] = True
        steered += int(touched.sum())
        for path in ("standard", "fast") if cuda else ("standard",):
            ts.launch_path = path
            for call in range(2):  # the fast path's first call is the standard launch + its self-check
                compare(f"K={k} {path} call {call}", ts.apply(base.clone(), variant, strength, ctx, row_scale=scale),
                        want, touched)
        if cuda:
            ts.launch_path, ts.graphs = "fast", True
            out = base.clone()
            for call in range(4):  # eager, capture + replay, replay, replay
                out.copy_(base)
                compare(f"K={k} graph call {call}", ts.apply(out, variant, strength, ctx, row_scale=scale), want, touched)
            ts.graphs = False
        # History source: the same rows as MRV2 token history, bit-identical to the context source.
        via_ctx = ts.apply(base.clone(), variant, strength, ctx, row_scale=scale)
        sources = [("device", torch.int32), ("device", torch.int64)] + ([("uva", torch.int32)] if cuda and uva else [])
        for where, dtype in sources:
            hist, row_slot, row_pos, how = history_from_context(ctx, 32, dtype, device, where)
            via_hist = ts.apply_from_history(base.clone(), row_slot, row_pos, hist, variant, strength, row_scale=scale)
            if not torch.equal(via_hist.view(torch.int32), via_ctx.view(torch.int32)):
                problems.append(f"K={k} history source ({where}, {dtype}) differs from the context source")
            if where == "uva" and k == 1:
                checked.append(how)
        checked.append(f"K={k}: " + ", ".join(["standard", "fast", "CUDA-graph replay"] if cuda else ["standard"])
                       + " launches vs reference; history source " + ", ".join(f"{w} {str(d)[6:]}" for w, d in sources)
                       + " bit-identical to context source")
    # Entropy kernel
    z = torch.randn(rows, vocab, device=device) * 3  # [R, V]
    z[::5, : vocab // 3] = float("-inf")
    z[1] = 0.0
    want_h = adaptive_scale(z)
    for path in ("standard", "fast") if cuda else ("standard",):
        ts.launch_path = path
        for call in range(2):
            got_h = ts.normalised_entropy(z)
            err = float((got_h - want_h).abs().max())
            if not err <= 1e-5:
                problems.append(f"entropy {path} call {call}: max |kernel - adaptive_scale| = {err:.3g}")
    checked.append(f"entropy kernel vs adaptive_scale ({', '.join(['standard', 'fast'] if cuda else ['standard'])})")
    if steered == 0:
        problems.append("nothing was steered: the check is vacuous")
    checked.append(f"{rows} rows x {vocab} vocab, {len(variants)} variant(s), {steered} steered logits")
    return problems, checked, fast_path_status(ts)


def fast_path_status(ts) -> list[str]:
    """One line per launcher: did the fast path prove itself (and how often did it run), or why not."""
    import triton

    lines = []
    for name, launcher in ts.launchers.items():
        if launcher.failure:
            lines.append(f"{name}: FELL BACK to the standard launch on triton {triton.__version__}: {launcher.failure}")
        elif launcher.compiled:
            lines.append(f"{name}: fast path proven on triton {triton.__version__} ({len(launcher.compiled)} "
                         f"signature(s), {launcher.fast_launches} fast launches)")
        else:
            lines.append(f"{name}: {launcher.path} path (no fast launch tried)")
    return lines

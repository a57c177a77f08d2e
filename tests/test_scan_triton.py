"""The Triton scan kernels against the step-by-step oracle, run on CPU by Triton's interpreter.

``TRITON_INTERPRET=1`` must be set before triton is first imported, so the kernels run in a
subprocess (this file run as a script); it computes every case once and reports the largest
errors as JSON, and the tests below assert on them.  Shapes are tiny (the interpreter runs
each scan element in Python) but cover several chunks, L not a multiple of the chunk, one
step, groups > 1 (also with an odd number of channels per group), softplus on and off,
optional D / delta_bias absent, a carry pass over several blocks, bf16 inputs, both ways of
reversing a tile in the backward (tl.flip, tl.gather), the public
``selective_scan(backend="triton")`` entry point, and a small Serpent network on a real photo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")

# name: (batch, channels, N, L, groups, softplus, chunk, with D and bias, dtype)
CASES: dict[str, tuple[Any, ...]] = {
    "softplus_groups": (2, 8, 3, 37, 2, True, 16, True, "fp32"),
    "plain_no_optional": (1, 4, 2, 45, 1, False, 16, False, "fp32"),
    "odd_group_size": (1, 6, 2, 21, 2, True, 8, True, "fp32"),
    "single_step": (2, 4, 2, 1, 2, True, 16, True, "fp32"),
    "exact_multiple": (1, 4, 4, 32, 4, True, 16, True, "fp32"),
    "bf16": (1, 8, 3, 29, 2, True, 16, True, "bf16"),
}
# Relative tolerance on the largest error, scaled by the largest reference value.
TOL = {"fp32": 1e-5, "bf16": 3e-2}


def _inputs(b: int, d: int, n: int, length: int, g: int, softplus: bool, optional: bool, seed: int) -> list:
    gen = torch.Generator().manual_seed(seed)
    delta = torch.randn(b, d, length, generator=gen) if softplus else torch.rand(b, d, length, generator=gen)
    tensors = [
        torch.randn(b, d, length, generator=gen),
        delta,
        -torch.rand(d, n, generator=gen) * 2 - 0.1,
        torch.randn(b, g, n, length, generator=gen),
        torch.randn(b, g, n, length, generator=gen),
        torch.randn(d, generator=gen) if optional else None,
        torch.randn(d, generator=gen) * 0.5 if optional else None,
    ]
    return tensors


def _max_errors(got: list, want: list) -> dict[str, list[float]]:
    """name -> [largest abs error, largest abs reference value]."""
    return {
        name: [(a.float() - w.float()).abs().max().item(), w.float().abs().max().item()]
        for name, a, w in zip(("y", *NAMES), got, want)
        if w is not None
    }


def _run_case(b: int, d: int, n: int, length: int, g: int, softplus: bool, chunk: int, optional: bool,
              dtype: str) -> dict[str, Any]:
    from serpent_cli.ops.scan_reference import selective_scan_reference
    from serpent_cli.ops.scan_triton import selective_scan_triton

    raw = _inputs(b, d, n, length, g, softplus, optional, seed=length * 31 + d)
    if dtype == "bf16":  # u, delta, B, C in bf16 (as under autocast); A, D, bias stay fp32
        raw = [t.bfloat16() if i in (0, 1, 3, 4) else t for i, t in enumerate(raw)]
    ins = [t.clone().requires_grad_() if t is not None else None for t in raw]
    ref_ins = [t.float().clone().requires_grad_() if t is not None else None for t in raw]
    y = selective_scan_triton(*ins, softplus, chunk=chunk)
    ref = selective_scan_reference(*ref_ins, softplus)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    live = [t for t in ins if t is not None]
    grads = iter(torch.autograd.grad(y, live, gy.to(y.dtype)))
    got = [next(grads) if t is not None else None for t in ins]
    ref_live = [t for t in ref_ins if t is not None]
    ref_grads = iter(torch.autograd.grad(ref, ref_live, gy))
    want = [next(ref_grads) if t is not None else None for t in ref_ins]
    dtypes_ok = y.dtype == raw[0].dtype and all(
        gr.dtype == t.dtype for gr, t in zip(got, raw) if t is not None
    )
    return {"errors": _max_errors([y, *got], [ref, *want]), "dtype": dtype, "dtypes_ok": dtypes_ok,
            "shape_ok": y.shape == raw[0].shape}


def _run_multi_block_carry() -> dict[str, Any]:
    """13 chunks carried in blocks of 4: the carry kernel's loop and its block-to-block state."""
    import serpent_cli.ops.scan_triton as st

    st.MAX_CARRY_BLOCK = 4
    try:
        return _run_case(1, 4, 2, 100, 2, True, 8, True, "fp32")
    finally:
        st.MAX_CARRY_BLOCK = 1024


def _run_gather_reverse() -> dict[str, Any]:
    """The backward's alternative way of reversing the h tile (tl.gather instead of tl.flip)."""
    import serpent_cli.ops.scan_triton as st

    st.REVERSE_VIA = "gather"
    try:
        return _run_case(2, 8, 3, 37, 2, True, 16, True, "fp32")
    finally:
        st.REVERSE_VIA = "flip"


def _run_public_api() -> dict[str, Any]:
    """selective_scan(backend="triton") on CPU tensors works only because the interpreter is on."""
    from serpent_cli.ops import _triton_verified, available_backends, resolve_backend, selective_scan
    from serpent_cli.ops.scan_reference import selective_scan_reference

    ins = _inputs(1, 4, 2, 300, 1, True, True, seed=5)
    y = selective_scan(*ins, True, backend="triton")
    ref = selective_scan_reference(*ins, True)
    return {
        "error": (y - ref).abs().max().item(),
        "scale": ref.abs().max().item(),
        "available": available_backends("cpu"),
        "auto": resolve_backend("auto", "cpu"),
        "self_check": _triton_verified(torch.device("cpu")),  # what "auto" runs once per CUDA device
    }


def _run_model(image_path: str) -> dict[str, Any]:
    """A small Serpent network on a real photo crop: triton and torch backends agree, with gradients."""
    import numpy as np
    from PIL import Image

    import serpent_cli.ops.scan_triton as st
    from serpent_cli.factory import create_model

    # The interpreter's cost grows with the number of programs: wide channel tiles keep it quick.
    st.FWD_STATE = st.FWD_OUT = st.BWD_STATE = st.BWD_MAIN = st.KernelConfig(block_d=64, num_warps=4)
    with Image.open(image_path) as im:
        crop = np.asarray(im.convert("RGB").crop((0, 0, 16, 16)), dtype=np.float32) / 255.0
    image = torch.from_numpy(crop).permute(2, 0, 1)[None].contiguous()
    torch.manual_seed(0)
    model = create_model("serpent-b", embed_dim=8, num_scales=2, blocks_per_stage=1)
    results = {}
    for backend in ("triton", "torch"):
        os.environ["SERPENT_SCAN_BACKEND"] = backend
        model.zero_grad()
        out = model(image)
        out.square().mean().backward()
        results[backend] = (out.detach(), {k: p.grad.clone() for k, p in model.named_parameters()})
    (y_t, g_t), (y_r, g_r) = results["triton"], results["torch"]
    grad_err = max((g_t[k] - g_r[k]).abs().max().item() / (g_r[k].abs().max().item() + 1e-12) for k in g_r)
    return {"out_error": (y_t - y_r).abs().max().item(), "grad_rel_error": grad_err}


def _main(image_path: str) -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1"
    torch.set_num_threads(1)
    report: dict[str, Any] = {name: _run_case(*case) for name, case in CASES.items()}
    report["multi_block_carry"] = _run_multi_block_carry()
    report["gather_reverse"] = _run_gather_reverse()
    report["public_api"] = _run_public_api()
    report["model"] = _run_model(image_path)
    print(json.dumps(report))


# ----------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def report(data_dir: Path) -> dict[str, Any]:
    pytest.importorskip("triton")
    image = sorted((data_dir / "kodak24").glob("*.png"))[0]
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    env.pop("SERPENT_SCAN_BACKEND", None)
    proc = subprocess.run([sys.executable, __file__, str(image)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", [*CASES, "multi_block_carry", "gather_reverse"])
def test_output_and_gradients_match_oracle(report: dict[str, Any], case: str) -> None:
    result = report[case]
    assert result["shape_ok"] and result["dtypes_ok"], "output / gradient dtypes must follow the inputs"
    tol = TOL[result["dtype"]]
    expected = {"y", *NAMES} if CASES.get(case, (None,) * 8)[7] is not False else {"y", "u", "delta", "A", "B", "C"}
    assert set(result["errors"]) == expected
    for name, (err, scale) in result["errors"].items():
        assert err <= tol * max(scale, 1.0), f"{case}: {name} off by {err:.3g} (scale {scale:.3g})"


def test_public_entry_point_and_auto_choice(report: dict[str, Any]) -> None:
    api = report["public_api"]
    assert api["error"] <= 1e-5 * max(api["scale"], 1.0)
    assert api["available"] == ["numba", "torch", "triton"]  # triton on CPU only under the interpreter ...
    assert api["auto"] == "numba"  # ... and never chosen by auto there
    assert api["self_check"] is True


def test_failed_self_check_warns_and_auto_skips_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Triton that computes wrong numbers (or fails to compile) must never be picked by auto."""
    import serpent_cli.ops as ops

    def wrong(*args, **kwargs):  # type: ignore[no-untyped-def]
        return ops.selective_scan_torch(*args, **kwargs) * 1.01

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("PTX assembly failed")

    for fake, message in ((wrong, "self-check"), (broken, "unusable")):
        monkeypatch.setattr(ops, "_triton_fn", lambda fake=fake: fake)
        with pytest.warns(RuntimeWarning, match=message):
            assert ops._triton_verified.__wrapped__(torch.device("cpu")) is False
    monkeypatch.setattr(ops, "_triton_verified", lambda device: False)
    monkeypatch.setattr(ops, "available_backends", lambda device: ["triton", "torch"])
    monkeypatch.delenv("SERPENT_SCAN_BACKEND", raising=False)
    assert ops.resolve_backend("auto", "cpu") == "torch"


def test_serpent_network_same_with_triton_backend(report: dict[str, Any]) -> None:
    assert report["model"]["out_error"] < 1e-4
    assert report["model"]["grad_rel_error"] < 1e-3


def test_forcing_triton_on_cpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from serpent_cli.errors import UsageError
    from serpent_cli.ops import BackendUnavailable, resolve_backend, selective_scan

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("SERPENT_SCAN_BACKEND", "triton")
    with pytest.raises(BackendUnavailable, match="SERPENT_SCAN_BACKEND") as info:
        resolve_backend("auto", "cpu")
    message = str(info.value)
    assert "\n" not in message and ("CUDA" in message or "not installed" in message)
    assert isinstance(info.value, UsageError)  # the CLI prints it as one line, exit code 2
    u = torch.randn(1, 2, 5)
    with pytest.raises(BackendUnavailable):
        selective_scan(u, u, -torch.ones(2, 1), torch.randn(1, 1, 1, 5), torch.randn(1, 1, 1, 5), backend="triton")


def test_chunk_must_be_power_of_two() -> None:
    st = pytest.importorskip("serpent_cli.ops.scan_triton")
    u = torch.randn(1, 2, 5)
    with pytest.raises(ValueError, match="power of two"):
        st.selective_scan_triton(u, u, -torch.ones(2, 1), torch.randn(1, 1, 1, 5), torch.randn(1, 1, 1, 5), chunk=12)


if __name__ == "__main__":
    _main(sys.argv[1])

"""benchmarks/profile_step.py at tiny size on the CPU (the GPU check runs it on CUDA), its grouping of
kernel and operator names, and bench_compile.py's verdict on when compiling repays itself."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_compile  # noqa: E402  (benchmarks/ is no package)
import profile_step  # noqa: E402


@pytest.mark.parametrize("names, group", [
    (["aten::cudnn_convolution", "aten::convolution"], "convolution"),
    (["sm90_xmma_fprop_implicit_gemm_bf16", "aten::cudnn_convolution"], "convolution"),
    (["void at::native::elementwise_kernel", "aten::native_group_norm", "aten::group_norm"], "normalisation"),
    (["triton_red_fused_native_group_norm_silu_3", "CompiledFunction"], "normalisation"),
    (["triton_poi_fused_add_convolution_silu_7", "CompiledFunction"], "other elementwise"),  # a fused bias add, not a conv
    (["flash_fwd_kernel", "aten::_flash_attention_forward", "aten::scaled_dot_product_attention"], "attention"),
    (["aten::copy_", "aten::_to_copy", "aten::to"], "layout and casts"),
    (["aten::copy_", "aten::_to_copy", "aten::scaled_dot_product_attention"], "attention"),
    (["multi_tensor_apply_kernel", "aten::_fused_adamw_", "Optimizer.step#AdamW.step"], "optimizer + EMA"),
    (["aten::_foreach_lerp_", "ema.update"], "optimizer + EMA"),
    (["aten::silu", "aten::silu"], "other elementwise"),
])
def test_kernels_and_operators_fall_into_their_groups(names, group):
    assert profile_step.classify(names) == group


def test_a_tiny_profile_on_the_cpu(tmp_path):
    out = tmp_path / "profile.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "profile_step.py"), "--device", "cpu", "--preset", "demo",
                        "--batch", "2", "--sample-batch", "2", "--steps", "1", "--sample-steps", "1", "--reps", "1",
                        "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got = json.loads(out.read_text())
    for kind in ("train", "sample"):
        p = got[kind]
        assert set(p["groups"]) <= set(profile_step.GROUPS)
        assert p["groups"]["convolution"] > 0 and p["conv_floor_ms"] > 0
        assert sum(p["groups"].values()) + p["idle_ms"] == pytest.approx(p["wall_ms"], rel=1e-6) or p["idle_ms"] == 0
        shapes = p["conv_floor"]["shapes"]
        assert shapes and all(s["count"] >= 1 and s["forward"] > 0 for s in shapes)
    assert got["train"]["groups"]["optimizer + EMA"] > 0 and "optimizer + EMA" not in got["sample"]["groups"]
    assert all(s["input_grad"] > 0 and s["weight_grad"] > 0 for s in got["train"]["conv_floor"]["shapes"])
    assert "convolution floor" in r.stdout and "idle" in r.stdout


def test_the_convolution_shapes_of_the_demo_unet_are_counted():
    import torch

    from ddpmkit.nn import UNet
    from ddpmkit.settings import build_settings

    model = UNet.from_config(build_settings(preset="demo").model)
    shapes = profile_step.conv_shapes(model, 8, (3, 32, 32))
    n_convs = sum(1 for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert sum(shapes.values()) == n_convs  # each Conv2d runs once per forward
    assert all(s.batch == 8 for s in shapes)
    assert any(s.stride == (2, 2) for s in shapes) and any(s.kernel == (1, 1) for s in shapes)


@pytest.mark.parametrize("eager, compiled, cost, planned, says", [
    (1.0, 0.5, 100.5, 2600, "after 201 steps"),
    (1.0, 0.5, 100.5, 2600, "within the preset's planned 2,600 steps"),
    (1.0, 0.99, 97.0, 2600, "not within"),  # 97 s for 1.01x: 9,700 steps to repay
    (1.0, 1.01, 97.0, 2600, "never repays"),
])
def test_compiling_repays_itself_after_its_cost_over_its_saving(eager, compiled, cost, planned, says):
    r = {"eager_s_per_step": eager, "compiled_s_per_step": compiled, "compile_cost_s": cost, "speedup": eager / compiled}
    assert says in bench_compile.verdict(r, planned)

"""The ε-prediction U-Net: shapes, size of the CelebA-64 model, conditioning, gradients, batching."""

from __future__ import annotations

import math

import pytest
import torch

from ddpmkit.errors import DdpmkitError
from ddpmkit.nn import UNet, count_parameters
from ddpmkit.nn.embeddings import timestep_embedding
from ddpmkit.settings import ModelConfig, build_settings

torch.set_num_threads(2)


def small_cfg(**kw) -> ModelConfig:
    base = dict(
        image_size=16, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), num_groups=4, dropout=0.0
    )
    base.update(kw)
    return ModelConfig(**base)


def perturbed(model: UNet, seed: int = 0) -> UNet:
    """Add noise to every parameter: a fresh U-Net outputs exactly 0 (zero-initialised conv_out)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def inputs(cfg: ModelConfig, batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    return x, t


@pytest.mark.parametrize(
    "size, ch_mult", [(32, (1, 2, 2)), (64, (1, 2, 2, 2)), (128, (1, 1, 2, 2, 2))]
)
def test_output_shape_matches_input(size: int, ch_mult: tuple[int, ...]) -> None:
    cfg = ModelConfig(
        image_size=size, ch=32, ch_mult=ch_mult, num_res_blocks=1, attn_resolutions=(16,), num_groups=8
    )
    model = UNet.from_config(cfg).eval()
    assert any(type(m).__name__ == "AttnBlock" for m in model.down.modules())  # 16 px level reached
    x, t = inputs(cfg)
    with torch.no_grad():
        eps = model(x, t)
    assert eps.shape == x.shape and eps.dtype == torch.float32


def test_celeba64_has_the_ddim_parameter_count() -> None:
    cfg = build_settings(preset="celeba64").model
    with torch.device("meta"):
        model = UNet.from_config(cfg)
    n = count_parameters(model)
    # diffusers' UNet2DModel in the DDIM CelebA-64 shape has exactly 78,700,803.
    assert abs(n - 78.7e6) < 0.5e6, n
    assert n == 78_700_803


def test_timestep_embedding_is_ddpm_sinusoid() -> None:
    t = torch.tensor([0, 1, 999])
    emb = timestep_embedding(t, 8)
    assert emb.shape == (3, 8) and emb.dtype == torch.float32
    assert torch.equal(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    # ω_i = 10000^(-i/(half-1)): ω_0 = 1 and ω_{half-1} = 1e-4.
    assert emb[2, 0].item() == pytest.approx(math.sin(999.0), abs=1e-4)
    assert emb[2, 3].item() == pytest.approx(math.sin(999.0 * 1e-4), abs=1e-6)
    assert emb[2, 7].item() == pytest.approx(math.cos(999.0 * 1e-4), abs=1e-6)
    assert torch.allclose(timestep_embedding(t.float(), 8), emb)
    assert timestep_embedding(t, 9)[:, 8].abs().max() == 0  # odd dim: padded zero column


def test_fresh_model_predicts_zero() -> None:
    # DDPM's init: conv_out (and every residual branch's last layer) starts at zero.
    cfg = small_cfg()
    x, t = inputs(cfg)
    with torch.no_grad():
        assert UNet.from_config(cfg)(x, t).abs().max() == 0


def test_time_changes_output() -> None:
    cfg = small_cfg()
    model = perturbed(UNet.from_config(cfg)).eval()
    x, _ = inputs(cfg)
    with torch.no_grad():
        a = model(x, torch.tensor([10, 10]))
        b = model(x, torch.tensor([500, 500]))
        c = model(x, torch.tensor(10))  # a scalar t is broadcast to the batch
    assert (a - b).abs().max() > 1e-3
    assert torch.equal(a, c)


@pytest.mark.parametrize("scale_shift", [False, True])
def test_condition_changes_output_and_null_embedding(scale_shift: bool) -> None:
    cfg = small_cfg(cond_dim=5, scale_shift=scale_shift)
    model = perturbed(UNet.from_config(cfg)).eval()
    x, t = inputs(cfg)
    c1 = torch.zeros(2, 5)
    c2 = torch.ones(2, 5)
    with torch.no_grad():
        y1, y2, y_null = model(x, t, c1), model(x, t, c2), model(x, t)
        y_drop = model(x, t, c2, drop_cond=torch.tensor([True, False]))
    assert (y1 - y2).abs().max() > 1e-3
    assert (y_null - y1).abs().max() > 1e-3  # the null embedding is not the all-zero condition
    assert torch.allclose(y_drop[0], y_null[0]) and torch.allclose(y_drop[1], y2[1])
    with pytest.raises(ValueError, match="cond"):
        model(x, t, torch.zeros(2, 4))


def test_condition_rejected_without_cond_dim() -> None:
    cfg = small_cfg()
    model = UNet.from_config(cfg)
    assert model.cond_proj is None
    x, t = inputs(cfg)
    with pytest.raises(ValueError, match="cond_dim"):
        model(x, t, torch.zeros(2, 3))


@pytest.mark.parametrize("with_cond,scale_shift", [(False, False), (True, False), (True, True)])
def test_every_parameter_gets_a_gradient(with_cond: bool, scale_shift: bool) -> None:
    cfg = small_cfg(cond_dim=3, dropout=0.1, scale_shift=scale_shift)
    model = perturbed(UNet.from_config(cfg)).train()
    x, t = inputs(cfg, batch=4)
    cond = torch.randn(4, 3) if with_cond else None
    drop = torch.tensor([True, False, True, False]) if with_cond else None
    model(x, t, cond, drop_cond=drop).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing  # DDP without find_unused_parameters needs every parameter in the graph
    if with_cond:  # a mixed batch trains both the condition projection and the null embedding
        dead = [n for n, p in model.named_parameters() if p.grad.abs().max() == 0]
        assert not dead


def test_samples_do_not_interact() -> None:
    cfg = small_cfg()
    model = perturbed(UNet.from_config(cfg)).eval()
    x, t = inputs(cfg, batch=3)
    with torch.no_grad():
        full = model(x, t)
        x2 = x.clone()
        x2[1:] = torch.randn_like(x2[1:])
        changed = model(x2, t)
        alone = model(x[:1], t[:1])
    assert torch.allclose(full[0], changed[0], atol=1e-5)
    assert torch.allclose(full[:1], alone, atol=1e-5)
    assert (full[1] - changed[1]).abs().max() > 1e-3


def test_multi_head_attention_and_bad_head_channels() -> None:
    cfg = small_cfg(head_channels=8)
    model = perturbed(UNet.from_config(cfg)).eval()
    assert model.mid_attn.heads == 4  # 32 channels / 8
    x, t = inputs(cfg)
    with torch.no_grad():
        assert torch.isfinite(model(x, t)).all()
    with pytest.raises(ValueError, match="head_channels"):
        UNet.from_config(small_cfg(head_channels=12))
    # the settings refuse it before a model is built, with one line naming the key
    with pytest.raises(DdpmkitError, match="head_channels"):
        build_settings(preset="demo", sets=["model.head_channels=12"]).check_model()


def test_bad_input_shapes_raise() -> None:
    cfg = small_cfg()
    model = UNet.from_config(cfg)
    t = torch.zeros(1, dtype=torch.long)
    with pytest.raises(ValueError, match="multiples of 2"):
        model(torch.zeros(1, 3, 15, 16), t)
    with pytest.raises(ValueError, match="x must be"):
        model(torch.zeros(1, 1, 16, 16), t)


@pytest.mark.parametrize("scale_shift", [False, True])
def test_channels_last_bf16_autocast_and_compile(scale_shift: bool) -> None:
    cfg = small_cfg(cond_dim=2, scale_shift=scale_shift)
    model = perturbed(UNet.from_config(cfg)).eval()
    x, t = inputs(cfg)
    cond = torch.randn(2, 2)
    with torch.no_grad():
        ref = model(x, t, cond)
        cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last), t, cond)
        assert torch.allclose(cl, ref, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, t, cond)
        assert low.dtype == torch.bfloat16
        assert (low.float() - ref).norm() < 0.05 * ref.norm()
        # fullgraph=True fails on any graph break (.item(), data-dependent Python branches).
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        assert torch.allclose(compiled(x, t, cond), ref, atol=1e-5)


def test_scale_shift_scales_and_shifts_the_normalised_features() -> None:
    """ResBlock(scale_shift=True): GN(h)·(1 + s) + b with (s, b) from the embedding; off, a bias before GN."""
    from ddpmkit.nn.blocks import ResBlock

    torch.manual_seed(0)
    x, emb = torch.randn(2, 8, 4, 4), torch.randn(2, 6)
    on, off = ResBlock(8, 8, 6, 2, 0.0, scale_shift=True).eval(), ResBlock(8, 8, 6, 2, 0.0).eval()
    assert on.emb_proj.out_features == 16 and off.emb_proj.out_features == 8
    for block in (on, off):
        torch.nn.init.normal_(block.conv2.weight)  # zero-initialised: the branch would vanish
    off.load_state_dict({k: v for k, v in on.state_dict().items() if not k.startswith("emb_proj")}, strict=False)
    with torch.no_grad():
        h = on.conv1(torch.nn.functional.silu(on.norm1(x)))
        scale, shift = on.emb_proj(torch.nn.functional.silu(emb))[:, :, None, None].chunk(2, dim=1)
        want = x + on.conv2(torch.nn.functional.silu(on.norm2(h) * (1 + scale) + shift))
        assert torch.allclose(on(x, emb), want, atol=1e-5)
        bias = off.emb_proj(torch.nn.functional.silu(emb))[:, :, None, None]
        assert torch.allclose(off(x, emb), x + off.conv2(torch.nn.functional.silu(off.norm2(h + bias))), atol=1e-5)


def test_scale_shift_is_a_setting_and_off_by_default() -> None:
    plain, ss = UNet.from_config(small_cfg()), UNet.from_config(small_cfg(scale_shift=True))
    assert not ModelConfig(image_size=32).scale_shift
    # every ResBlock's embedding projection doubles: c_out more weights per embedding input and bias
    extra = sum(m.out_features // 2 * (m.in_features + 1) for n, m in ss.named_modules() if n.endswith("emb_proj"))
    assert count_parameters(ss) - count_parameters(plain) == extra > 0

"""The U-Net of sfs.unet: shapes, attention, class conditioning, size of the default."""

import pytest
import torch

from sfs.unet import (Downsample, ResBlock, SelfAttention, TimeEmbedding, UNet, UNetConfig,
                      Upsample, count_params)

TINY = dict(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1, num_heads=2, dropout=0.0)



def _randomize_zero_inits(model: torch.nn.Module) -> None:
    """Zero-initialised convs make a fresh block the identity; give them weights to probe."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("cfg", [UNetConfig(**TINY), UNetConfig(**TINY, num_classes=10),
                                 UNetConfig(**TINY, attn_resolutions=(14, 7), in_channels=3)])
def test_output_shape_and_dtype(cfg):
    torch.manual_seed(0)
    model = UNet(cfg).eval()
    x_t = torch.randn(3, cfg.in_channels, 28, 28)
    t = torch.tensor([0, 500, 999])
    eps_hat = model(x_t, t)
    assert eps_hat.shape == x_t.shape and eps_hat.dtype == torch.float32


def test_fresh_model_predicts_zero_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = UNet(UNetConfig(**TINY, num_classes=10))
    x_t, t, y = torch.randn(4, 1, 28, 28), torch.randint(0, 1000, (4,)), torch.tensor([0, 1, 2, 10])
    out = model(x_t, t, y)
    assert torch.all(out == 0)  # zero-initialised output conv
    # The zero-initialised convs pass gradient on one layer per step; after three SGD steps
    # every parameter must get a gradient (none is disconnected from the output).
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        (model(x_t, t, y) - 1).pow(2).mean().backward()
        opt.step()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_resblock_is_identity_at_init_and_uses_time_embedding():
    torch.manual_seed(0)
    block = ResBlock(8, 8, emb_dim=16, groups=4)
    x, emb = torch.randn(2, 8, 7, 7), torch.randn(2, 16)
    assert torch.equal(block(x, emb), x)
    _randomize_zero_inits(block)
    assert not torch.allclose(block(x, emb), block(x, emb + 1.0))
    assert ResBlock(8, 16, emb_dim=16, groups=4)(x, emb).shape == (2, 16, 7, 7)


def test_attention_reaches_far_away_pixels():
    torch.manual_seed(0)
    attn = SelfAttention(8, num_heads=2, groups=4).eval()
    x = torch.randn(1, 8, 7, 7)
    x2 = x.clone()
    x2[0, :, 0, 0] += 1.0  # change the top-left pixel
    delta = (attn(x2) - attn(x)).abs().sum(1)[0]  # (7, 7)
    assert delta[6, 6] > 1e-4  # the bottom-right output moved: attention is global
    # A conv stack's receptive field is local: a 3x3 conv cannot do that.
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    assert torch.equal(conv(x2)[..., 6, 6], conv(x)[..., 6, 6])


def test_attention_is_permutation_equivariant():
    torch.manual_seed(0)
    attn = SelfAttention(8, num_heads=2, groups=4).eval()
    tokens = torch.randn(2, 49, 8)  # (B, L, C)
    perm = torch.randperm(49)
    out = attn.attend(tokens)
    assert torch.allclose(attn.attend(tokens[:, perm]), out[:, perm], atol=1e-6)


def test_attention_matches_explicit_softmax_formula():
    torch.manual_seed(0)
    attn = SelfAttention(8, num_heads=2, groups=4)
    tokens = torch.randn(2, 10, 8)
    q, k, v = attn.qkv(tokens).chunk(3, dim=-1)  # (B, L, C) each, heads interleaved as head-major
    q, k, v = (a.view(2, 10, 2, 4).transpose(1, 2) for a in (q, k, v))  # (B, heads, L, head_dim)
    w = torch.softmax(q @ k.transpose(-1, -2) / 4 ** 0.5, dim=-1)
    expected = attn.proj((w @ v).transpose(1, 2).reshape(2, 10, 8))
    assert torch.allclose(attn.attend(tokens), expected, atol=1e-5)


def test_down_and_up_sample_shapes():
    x = torch.randn(2, 8, 28, 28)
    assert Downsample(8)(x).shape == (2, 8, 14, 14)
    assert Downsample(8)(torch.randn(2, 8, 14, 14)).shape == (2, 8, 7, 7)
    assert Upsample(8)(torch.randn(2, 8, 7, 7)).shape == (2, 8, 14, 14)


def test_time_embedding_distinguishes_timesteps():
    torch.manual_seed(0)
    emb = TimeEmbedding(8, 32)(torch.tensor([0, 1, 999]))
    assert emb.shape == (3, 32)
    assert not torch.allclose(emb[0], emb[1]) and not torch.allclose(emb[1], emb[2])


def test_class_labels_change_output_and_none_is_the_null_label():
    torch.manual_seed(0)
    model = UNet(UNetConfig(**TINY, num_classes=10)).eval()
    _randomize_zero_inits(model)
    x_t, t = torch.randn(2, 1, 28, 28), torch.tensor([300, 300])
    out3 = model(x_t, t, torch.tensor([3, 3]))
    out7 = model(x_t, t, torch.tensor([7, 7]))
    assert not torch.allclose(out3, out7)
    assert torch.equal(model(x_t, t, None), model(x_t, t, torch.tensor([10, 10])))
    assert model.class_embed.num_embeddings == 11


def test_unconditional_model_rejects_labels():
    model = UNet(UNetConfig(**TINY))
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.randn(1, 1, 28, 28), torch.tensor([0]), torch.tensor([1]))


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="num_heads"):
        UNet(UNetConfig(**{**TINY, "num_heads": 3}))
    with pytest.raises(ValueError, match="norm_groups"):
        UNet(UNetConfig(**{**TINY, "base_channels": 12}))


def test_default_config_is_small():
    n = count_params(UNet(UNetConfig()))
    assert 1_000_000 <= n <= 3_000_000, n
    assert UNet(UNetConfig(num_classes=10)).class_embed is not None


@pytest.mark.parametrize("channels, size, mults, attn", [(3, 48, (1, 2, 2), (12,)), (4, 12, (1, 2, 2), (3,))])
def test_capstone_shapes_rgb_48_and_latent_12(channels, size, mults, attn):
    """The capstone's pixel model (3 x 48 x 48) and latent model (4 x 12 x 12): any channel count and
    any image size the levels divide; attention at a resolution the net has."""
    cfg = UNetConfig(in_channels=channels, image_size=size, base_channels=8, channel_mults=mults,
                     num_res_blocks=1, attn_resolutions=attn, num_heads=2, num_classes=10)
    model = UNet(cfg).eval()
    _randomize_zero_inits(model)
    x_t = torch.randn(2, channels, size, size)
    with torch.no_grad():
        out = model(x_t, torch.tensor([3, 700]), torch.tensor([1, 10]))
    assert out.shape == x_t.shape and torch.isfinite(out).all() and out.abs().sum() > 0
    with pytest.raises(ValueError, match=rf"x_t must be .*= \(\*, {channels}, {size}, {size}\)"):
        model(torch.randn(2, channels, 28, 28), torch.tensor([3, 700]))
    with pytest.raises(ValueError, match=r"attn_resolutions=\(7,\) must be among the resolutions"):
        UNetConfig(in_channels=channels, image_size=size, channel_mults=mults, attn_resolutions=(7,))


def test_config_changed_after_construction_is_checked_again():
    cfg = UNetConfig(**TINY)
    cfg.num_classes = 0  # what train() does (with the data set's class count), but wrong
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        UNet(cfg)


def test_attention_is_sdpa_and_runs_in_float32_under_cpu_bf16_autocast():
    """sfs.unet.attention: F.scaled_dot_product_attention, but in float32 on a CPU under bf16
    autocast (bf16's backward there was ~10x slower); the result comes back in bf16, gradients flow."""
    import torch.nn.functional as F
    from sfs.unet import attention
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 9, 8, generator=g, requires_grad=True) for _ in range(3))
    keep = torch.tensor([[True] * 5 + [False] * 4, [True] * 9])[:, None, None, :]
    assert torch.equal(attention(q, k, v, keep), F.scaled_dot_product_attention(q, k, v, attn_mask=keep))
    want = F.scaled_dot_product_attention(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float(),
                                          attn_mask=keep)
    with torch.autocast("cpu", torch.bfloat16):
        qb, kb, vb = (x.bfloat16() for x in (q, k, v))
        out = attention(qb, kb, vb, keep)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), want, atol=1e-2)  # float32 math on the bf16 inputs, rounded once
    out.float().sum().backward()
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in (q, k, v))

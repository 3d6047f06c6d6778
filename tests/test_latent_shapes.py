"""The U-Net, the samplers and guidance work on any (B, C, H, W) the levels divide: RGB 48x48
canvases and 4x12x12 latents of the autoencoder (book ch. 10)."""

import pytest
import torch

from sfs.guidance import CFGModel
from sfs.samplers import ddim_sample, ddpm_sample, dpm_solver_2m_sample
from sfs.schedules import cosine_schedule
from sfs.unet import UNet, UNetConfig


@pytest.mark.parametrize("channels, size, mults, attn", [(4, 12, (1, 2), (6,)), (3, 48, (1, 2, 2), (12,)),
                                                         (4, 12, (1, 2, 2), (3,))])
def test_unet_keeps_any_channel_count_and_size(channels, size, mults, attn):
    torch.manual_seed(0)
    net = UNet(UNetConfig(in_channels=channels, image_size=size, base_channels=8,
                          channel_mults=mults, num_res_blocks=1, attn_resolutions=attn,
                          num_heads=2, num_classes=5))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    x = torch.randn(2, channels, size, size)
    out = net(x, torch.tensor([3, 900]), torch.tensor([1, 5]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_every_sampler_and_cfg_run_on_4x12x12_latents():
    torch.manual_seed(0)
    net = UNet(UNetConfig(in_channels=4, image_size=12, base_channels=8, channel_mults=(1, 2),
                          num_res_blocks=1, attn_resolutions=(6,), num_heads=2, num_classes=3)).eval()
    sched = cosine_schedule(50)
    x_T = torch.randn(3, 4, 12, 12, generator=torch.Generator().manual_seed(0))
    cond = torch.tensor([0, 1, 2])
    guided = CFGModel(net, 3.0)
    for out in (ddim_sample(guided, x_T, sched, steps=5, cond=cond),
                dpm_solver_2m_sample(guided, x_T, sched, steps=5, cond=cond),
                ddpm_sample(net, x_T, sched, cond=cond, generator=torch.Generator().manual_seed(1))):
        assert out.shape == (3, 4, 12, 12) and torch.isfinite(out).all()
    with pytest.raises(ValueError):
        ddim_sample(net, torch.randn(3, 3, 12, 12), sched, steps=5)  # channels the net does not have

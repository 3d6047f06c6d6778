"""The U-Net that predicts the noise: eps_hat = model(x_t, t, cond).

Book ch. 5, sec. "The U-Net". A small version of the DDPM network (Ho et al. 2020, appendix B; the
same layout as improved-diffusion) sized for 28x28 images:

    x_t (B, 1, 28, 28) -> conv -> [ResBlock x N, (attention)] at 28x28 -> down -> ... 14x14 ... 7x7
                       -> middle: ResBlock, attention, ResBlock at 7x7
                       -> up path mirroring the down path, each block fed the matching skip
                       -> GroupNorm, SiLU, conv -> eps_hat (B, 1, 28, 28)

The timestep t enters every residual block as an embedding (sinusoidal features + an MLP). For
classifier-free guidance a learned class embedding is added to it; its last entry, index
``num_classes``, is the "no class" label that ``cond=None`` stands for (Book ch. 8,
sec. "Classifier-free guidance"). Each piece is its own small module, so a chapter can build and
probe it alone.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from sfs.embeddings import timestep_embedding
from sfs.validate import check_float, check_int, check_ints, check_range, check_tensor, check_type

MAX_T = 10_000  # timesteps t in [0, MAX_T): the sinusoids' max_period, so each t is told apart


@dataclass
class UNetConfig:
    """Architecture of the U-Net. The defaults: 1.6 M parameters, 3.3 MB in fp16.

    Checked when made and again when a ``UNet`` is built from it (``check_config``): a bad field
    raises TypeError or ValueError naming it.
    """

    in_channels: int = 1  # 1 for MNIST / Fashion-MNIST; any count (e.g. 4 for latents)
    image_size: int = 28  # must be divisible by 2 ** (len(channel_mults) - 1)
    base_channels: int = 32  # channels at full resolution
    channel_mults: tuple[int, ...] = (1, 2, 2)  # per resolution: 28x28, 14x14, 7x7
    num_res_blocks: int = 2  # residual blocks per resolution on the way down
    attn_resolutions: tuple[int, ...] = (7,)  # image sizes that get self-attention (of the above)
    num_heads: int = 4  # attention heads; channels must be divisible by it
    dropout: float = 0.1  # inside each residual block, in [0, 1)
    norm_groups: int = 8  # GroupNorm groups; channels must be divisible by it
    num_classes: int | None = None  # None: unconditional; else labels 0..num_classes-1
    context_dim: int | None = None  # D of the text states for cross-attention (ch. 11); None: none
    cross_attn_resolutions: tuple[int, ...] = ()  # image sizes whose blocks cross-attend to the text
    cross_attn_pos: bool = False  # cross-attention queries see a learned position embedding, eq. (11.6)

    def __post_init__(self):
        check_config(self)  # also when a UNet is built: fields may be changed after this

    def to_dict(self) -> dict:
        """Plain JSON-able dict (tuples become lists)."""
        d = asdict(self)
        for k in ("channel_mults", "attn_resolutions", "cross_attn_resolutions"):
            d[k] = list(getattr(self, k))
        return d


def check_config(cfg: UNetConfig) -> UNetConfig:
    """Check every field of ``cfg`` and how they fit together; lists become tuples. Returns ``cfg``.

    Counts are ints >= 1 (bools and floats refused), channel_mults a non-empty tuple of them,
    attn_resolutions among the net's resolutions (image_size halved at each level), every level's
    channel count divisible by norm_groups (and by num_heads where there is attention), dropout in
    [0, 1), num_classes None or an int >= 1, cross_attn_pos a bool. TypeError for a wrong kind, ValueError for a wrong value.
    """
    for name in ("in_channels", "image_size", "base_channels", "num_res_blocks", "num_heads",
                 "norm_groups"):
        setattr(cfg, name, check_int(name, getattr(cfg, name), low=1))
    cfg.channel_mults = check_ints("channel_mults", cfg.channel_mults, low=1, nonempty=True)
    cfg.attn_resolutions = check_ints("attn_resolutions", cfg.attn_resolutions, low=1)
    cfg.cross_attn_resolutions = check_ints("cross_attn_resolutions", cfg.cross_attn_resolutions, low=1)
    if cfg.context_dim is not None:
        check_int("context_dim", cfg.context_dim, 1, None, "width of the text states, or None")
    cfg.dropout = check_float("dropout", cfg.dropout, 0, 1, high_open=True)
    if cfg.num_classes is not None:
        cfg.num_classes = check_int("num_classes", cfg.num_classes, low=1,
                                    hint="or None for an unconditional model")
    levels = len(cfg.channel_mults)
    if cfg.image_size % 2 ** (levels - 1):
        raise ValueError(f"image_size={cfg.image_size} must be divisible by 2 ** (len(channel_mults) - 1)"
                         f" = {2 ** (levels - 1)}: the net halves it {levels - 1} times")
    res = tuple(cfg.image_size // 2 ** level for level in range(levels))  # (28, 14, 7) by default
    if not set(cfg.attn_resolutions) <= set(res):
        raise ValueError(f"attn_resolutions={cfg.attn_resolutions} must be among the resolutions of "
                         f"this net, {res} (image_size halved at each of the {levels} levels)")
    if not set(cfg.cross_attn_resolutions) <= set(res):
        raise ValueError(f"cross_attn_resolutions={cfg.cross_attn_resolutions} must be among the "
                         f"resolutions of this net, {res}")
    if cfg.cross_attn_resolutions and cfg.context_dim is None:
        raise ValueError("cross_attn_resolutions needs context_dim (the width of the text states)")
    check_type("cross_attn_pos", cfg.cross_attn_pos, bool, "True or False")
    for level, mult in enumerate(cfg.channel_mults):
        ch = mult * cfg.base_channels
        if ch % cfg.norm_groups or cfg.base_channels % cfg.norm_groups:
            raise ValueError(f"base_channels * channel_mults = {cfg.base_channels} * {cfg.channel_mults} "
                             f"must all be divisible by norm_groups={cfg.norm_groups}")
        if (res[level] in cfg.attn_resolutions or level == levels - 1) and ch % cfg.num_heads:  # + middle
            raise ValueError(f"base_channels * channel_mults[{level}] = {ch} (attention at "
                             f"{res[level]}x{res[level]}) must be divisible by num_heads={cfg.num_heads}")
    return cfg


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm over (B, C, H, W) in ``groups`` groups. Book ch. 5, sec. "Residual blocks"."""
    if channels % groups:
        raise ValueError(f"channels={channels} is not divisible by norm_groups={groups}")
    return nn.GroupNorm(groups, channels)


class TimeEmbedding(nn.Module):
    """t (B,) int64 -> (B, emb_dim): sinusoidal features of width ``dim``, then a 2-layer MLP.

    Book ch. 5, sec. "Telling the network the time": the sinusoids (``sfs.embeddings``) are
    fixed; the MLP learns what each block needs to know about t.
    """

    def __init__(self, dim: int, emb_dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.dim))  # (B, emb_dim)


class ResBlock(nn.Module):
    """Residual block with the embedding added inside: (B, C_in, H, W), (B, E) -> (B, C_out, H, W).

    h = conv1(SiLU(GN(x))) + proj(SiLU(emb));  out = skip(x) + conv2(dropout(SiLU(GN(h)))).

    Book ch. 5, sec. "Residual blocks". The time (and class) embedding is added to every channel after
    the first conv. The last conv starts at zero, so a fresh block is the identity (or the 1x1
    skip conv when the channel count changes) and a deep stack trains stably.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0, groups: int = 8):
        super().__init__()
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = group_norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out_ch, H, W)
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]  # broadcast (B, out_ch, 1, 1)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              keep: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over the keys that ``keep`` allows: Vaswani et al. 2017, eq. (1),
    book eq. (5.5) (and the mask of eq. (11.4)). q (B, heads, Lq, d), k and v (B, heads, Lk, d),
    keep None or a bool mask broadcastable to (B, heads, Lq, Lk); returns (B, heads, Lq, d).

    ``F.scaled_dot_product_attention`` does the work. On a CPU it runs in float32 even under bf16
    autocast: there its bf16 kernel's backward was about 10x slower than float32's (measured on an
    AMX Xeon, torch 2.14.1, with the text-to-image U-Net), which made bf16 training 3x slower
    than float32 although every convolution got faster. The result comes back in q's dtype.
    """
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=keep).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W pixels: (B, C, H, W) -> (B, C, H, W), residual.

    Book ch. 5, sec. "Self-attention". Each pixel is a token of C features; every token looks at every
    other, softmax(q k^T / sqrt(head_dim)) v (Vaswani et al. 2017, eq. (1)), which is what
    ``F.scaled_dot_product_attention`` computes. Without position information it is
    permutation-equivariant: shuffle the tokens and the outputs shuffle the same way.
    """

    def __init__(self, channels: int, num_heads: int = 4, groups: int = 8):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels={channels} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def attend(self, tokens: torch.Tensor) -> torch.Tensor:
        """The attention itself on a token sequence: (B, L, C) -> (B, L, C), no norm, no residual."""
        B, L, C = tokens.shape
        head_dim = C // self.num_heads
        qkv = self.qkv(tokens).view(B, L, 3, self.num_heads, head_dim)  # (B, L, 3, heads, head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, L, head_dim)
        out = attention(q, k, v)  # (B, heads, L, head_dim)
        out = out.transpose(1, 2).reshape(B, L, C)  # (B, L, heads * head_dim)
        return self.proj(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        tokens = self.norm(x).view(B, C, H * W).transpose(1, 2)  # (B, L=H*W, C)
        out = self.attend(tokens).transpose(1, 2).reshape(B, C, H, W)
        return x + out


class CrossAttention(nn.Module):
    """Cross-attention from the image to the text: (B, C, H, W), TextContext -> (B, C, H, W), residual.

    Book eqs. (11.3)-(11.4); Rombach et al. 2022, sec. 3.3, eq. (3). Queries come from the H*W image
    positions, keys and values from the L text tokens:
    softmax(Q K^T / sqrt(head_dim), over the tokens that are not padding) V. The output
    projection starts at zero, so a fresh block passes the image through unchanged. With
    ``store_attention = True`` the weights of the last call, averaged over heads, are kept in
    ``attention`` (B, H*W, L): which word each image position looked at.

    With ``size`` (the block's image size H = W) the queries also see where they are, book eq.
    (11.6): a learned embedding G (C, H, W), added to the normalized image before the query
    projection, Q = (norm(x) + G) W_Q. A query then carries its position on the canvas, so "left"
    can draw the left half's queries towards an object's words. G starts at zero: a fresh block
    (or one added to a trained model, ``init_from``) computes what it did without it.
    """

    def __init__(self, channels: int, context_dim: int, num_heads: int = 4, groups: int = 8,
                 size: int | None = None):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels={channels} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm = group_norm(channels, groups)
        self.pos = nn.Parameter(torch.zeros(channels, size, size)) if size else None  # G (C, H, W)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.store_attention = False
        self.attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, context) -> torch.Tensor:
        B, C, H, W = x.shape
        states, mask = context  # (B, L, D), (B, L) bool
        L, heads, head_dim = states.shape[1], self.num_heads, C // self.num_heads
        h = self.norm(x) if self.pos is None else self.norm(x) + self.pos  # (B, C, H, W)
        tokens = h.view(B, C, H * W).transpose(1, 2)  # (B, HW, C)
        q = self.q(tokens).view(B, H * W, heads, head_dim).transpose(1, 2)  # (B, heads, HW, hd)
        k, v = self.kv(states).view(B, L, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, L, hd)
        keep = mask[:, None, None, :]  # (B, 1, 1, L): attend to tokens, never to padding
        if self.store_attention:
            scores = (q @ k.transpose(-2, -1)) / head_dim ** 0.5  # (B, heads, HW, L)
            weights = scores.masked_fill(~keep, float("-inf")).softmax(-1)
            self.attention = weights.mean(1).detach()  # (B, HW, L)
            out = weights @ v
        else:
            out = attention(q, k, v, keep)  # (B, heads, HW, hd)
        out = self.proj(out.transpose(1, 2).reshape(B, H * W, C))  # (B, HW, C)
        return x + out.transpose(1, 2).reshape(B, C, H, W)


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 conv: (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2)).

    Book ch. 5, sec. "Going down and up".
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour copy, then a 3x3 conv. (B, C, H, W) -> (B, C, 2H, 2W).

    Book ch. 5, sec. "Going down and up".
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """eps_hat = UNet(x_t, t, cond): (B, C, H, W), (B,) int64, (B,) int64 or None -> (B, C, H, W).

    Book ch. 5, sec. "The U-Net" (and ch. 8 for ``cond``). ``cond=None`` means "no class" for every
    image, the same as passing the null label ``config.num_classes``. The inputs are checked
    (``check_inputs``): x_t a float tensor (B, in_channels, image_size, image_size); t an integer
    tensor (B,) or a scalar (a 0-d tensor or an int) in [0, MAX_T) = [0, 10000), the code timesteps
    of any schedule with T <= 10,000; cond None or an integer tensor (B,) in [0, num_classes]. The
    value ranges of t and cond are read on CPU tensors only (no device sync per step on a GPU).
    """

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        if config is not None and not isinstance(config, UNetConfig):
            hint = ": use UNetConfig(**d)" if isinstance(config, dict) else ""
            raise TypeError(f"config must be a UNetConfig or None, got {type(config).__name__}{hint}")
        self.config = cfg = check_config(config or UNetConfig())  # again: fields may have been set
        ch, emb_dim, g = cfg.base_channels, 4 * cfg.base_channels, cfg.norm_groups
        self.time_embed = TimeEmbedding(ch, emb_dim)
        # num_classes + 1 rows: the last one is the learned "no class" embedding for CFG.
        self.class_embed = (nn.Embedding(cfg.num_classes + 1, emb_dim)
                            if cfg.num_classes is not None else None)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        def pos(res: int) -> int | None:  # the size of cross-attention's position embedding, if any
            return res if cfg.cross_attn_pos else None

        def block(in_ch: int, out_ch: int, res: int) -> nn.ModuleList:
            layers = [ResBlock(in_ch, out_ch, emb_dim, cfg.dropout, g)]
            if res in cfg.attn_resolutions:
                layers.append(SelfAttention(out_ch, cfg.num_heads, g))
            if cfg.context_dim is not None and res in cfg.cross_attn_resolutions:
                layers.append(CrossAttention(out_ch, cfg.context_dim, cfg.num_heads, g, pos(res)))
            return nn.ModuleList(layers)

        # Down path: remember the channel count of every output that becomes a skip connection.
        self.down, skip_chs, res = nn.ModuleList(), [ch], cfg.image_size
        for level, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.num_res_blocks):
                self.down.append(block(ch, mult * cfg.base_channels, res))
                ch = mult * cfg.base_channels
                skip_chs.append(ch)
            if level < len(cfg.channel_mults) - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skip_chs.append(ch)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, cfg.dropout, g),
                                  SelfAttention(ch, cfg.num_heads, g),
                                  *([CrossAttention(ch, cfg.context_dim, cfg.num_heads, g, pos(res))]
                                    if cfg.context_dim is not None else []),
                                  ResBlock(ch, ch, emb_dim, cfg.dropout, g)])
        # Up path: one more block per level than on the way down, each eating one skip.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            for i in range(cfg.num_res_blocks + 1):
                layers = block(ch + skip_chs.pop(), mult * cfg.base_channels, res)
                ch = mult * cfg.base_channels
                if level > 0 and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    res *= 2
                self.up.append(layers)
        self.norm_out = group_norm(ch, g)
        self.conv_out = nn.Conv2d(ch, cfg.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # a fresh model predicts eps_hat = 0
        nn.init.zeros_(self.conv_out.bias)

    def check_cond(self, cond, batch_size: int) -> None:
        """cond must be None or an integer tensor (B,) of labels in [0, num_classes]
        (num_classes: the null label), and only a conditional model takes labels."""
        if cond is None:
            return
        if self.class_embed is None:
            raise ValueError("cond must be None: this UNet is unconditional (num_classes=None)")
        K = self.config.num_classes
        check_tensor("cond", cond, "int", (batch_size,), "(B,)")
        check_range("cond", cond, 0, K, "labels", f"num_classes = {K}: the null label, no class")

    def check_inputs(self, x_t, t) -> torch.Tensor:
        """Check x_t and t (see the class docstring; ``embed`` checks cond); returns t as (B,)."""
        C, S = self.config.in_channels, self.config.image_size
        check_tensor("x_t", x_t, "float", (None, C, S, S), "(B, in_channels, image_size, image_size)")
        B = x_t.shape[0]
        hint = f"code timesteps of any schedule with T <= {MAX_T}"
        if isinstance(t, numbers.Integral) and not isinstance(t, bool):  # one t for the whole batch
            return torch.full((B,), check_int("t", t, 0, MAX_T - 1, hint), device=x_t.device)
        check_tensor("t", t, "int")
        if t.ndim:  # a 0-d t is used for the whole batch
            check_tensor("t", t, "int", (B,), "(B,)")
        check_range("t", t, 0, MAX_T - 1, "timesteps", hint)
        return t.expand(B) if t.ndim == 0 else t

    def embed(self, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Time plus class embedding: (B,), (B,) or None -> (B, 4 * base_channels).

        Book ch. 8, sec. "Classifier-free guidance".
        """
        self.check_cond(cond, t.shape[0])
        emb = self.time_embed(t)
        if self.class_embed is not None:
            if cond is None:  # no label: every image gets the null entry
                cond = torch.full_like(t, self.config.num_classes)
            emb = emb + self.class_embed(cond)
        return emb

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | int, cond=None) -> torch.Tensor:
        """cond: labels (B,) for a class-conditional net, a ``TextContext`` (states (B, L, D),
        mask (B, L)) for a text-conditional one (``context_dim`` set), None for no condition."""
        t = self.check_inputs(x_t, t)
        context = None
        if self.config.context_dim is not None:
            if cond is None or not (isinstance(cond, tuple) and len(cond) == 2):
                raise TypeError("cond must be a TextContext (states, mask): this UNet cross-attends "
                                "to text (context_dim is set); for 'no prompt' encode the empty prompt")
            context, cond = cond, None
        emb = self.embed(t, cond)  # (B, emb_dim)

        def apply(layer, h):
            if isinstance(layer, ResBlock):
                return layer(h, emb)
            return layer(h, context) if isinstance(layer, CrossAttention) else layer(h)
        h = self.conv_in(x_t)  # (B, base_channels, H, W)
        skips = [h]
        for layers in self.down:
            for layer in layers:
                h = apply(layer, h)
            skips.append(h)
        for layer in self.mid:
            h = apply(layer, h)
        for layers in self.up:
            h = torch.cat([h, skips.pop()], dim=1)  # (B, ch + skip_ch, H, W)
            for layer in layers:
                h = apply(layer, h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, in_channels, H, W)


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or frozen, e.g. an EMA copy)."""
    return sum(p.numel() for p in model.parameters())

"""CustomCSPPAN with SPP and the SOD transformer encoder on the deepest feature map.

Follows PaddleDetection's ``ppdet/modeling/necks/custom_pan.py`` (names included).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import BasicBlock, ConvBNLayer, get_act


class SPP(nn.Module):
    """Max-pool pyramid (5, 9, 13) concatenated with the input, then a ConvBN."""

    def __init__(self, ch_in: int, ch_out: int, k: int, pool_size: tuple[int, ...], act: str):
        super().__init__()
        self.pool_sizes = tuple(pool_size)
        for i, size in enumerate(self.pool_sizes):
            self.add_module(f"pool{i}", nn.MaxPool2d(size, stride=1, padding=size // 2))
        self.conv = ConvBNLayer(ch_in, ch_out, k, padding=k // 2, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [x] + [getattr(self, f"pool{i}")(x) for i in range(len(self.pool_sizes))]
        return self.conv(torch.cat(outs, dim=1))


class CSPStage(nn.Module):
    """CSP stage of non-residual BasicBlocks, with SPP after the middle block when asked."""

    def __init__(
        self, ch_in: int, ch_out: int, n: int, act: str, spp: bool = False, use_alpha: bool = False
    ) -> None:
        super().__init__()
        ch_mid = int(ch_out // 2)
        self.conv1 = ConvBNLayer(ch_in, ch_mid, 1, act=act)
        self.conv2 = ConvBNLayer(ch_in, ch_mid, 1, act=act)
        convs: list[tuple[str, nn.Module]] = []
        next_ch_in = ch_mid
        for i in range(n):
            convs.append(
                (
                    str(i),
                    BasicBlock(next_ch_in, ch_mid, act=act, shortcut=False, use_alpha=use_alpha),
                )
            )
            if i == (n - 1) // 2 and spp:
                convs.append(("spp", SPP(ch_mid * 4, ch_mid, 1, (5, 9, 13), act=act)))
            next_ch_in = ch_mid
        self.convs = nn.Sequential(OrderedDict(convs))
        self.conv3 = ConvBNLayer(ch_mid * 2, ch_out, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y1 = self.conv1(x)
        y2 = self.convs(self.conv2(x))
        return self.conv3(torch.cat([y1, y2], dim=1))


class MultiHeadAttention(nn.Module):
    """ppdet's MultiHeadAttention: packed q/k/v projection, scaled dot product, out_proj.

    ``in_proj_weight`` is stored as [3E, E] (torch Linear layout); Paddle stores [E, 3E] and the
    converter transposes it.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError("embed_dim must be divisible by num_heads")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def _project(self, x: torch.Tensor, index: int) -> torch.Tensor:
        e = self.embed_dim
        w = self.in_proj_weight[index * e : (index + 1) * e]
        b = self.in_proj_bias[index * e : (index + 1) * e]
        y = F.linear(x, w, b)
        bsz, length, _ = y.shape
        return y.reshape(bsz, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        q, k, v = self._project(query, 0), self._project(key, 1), self._project(value, 2)
        weights = torch.softmax((q @ k.transpose(-2, -1)) * self.head_dim**-0.5, dim=-1)
        if self.dropout and self.training:
            weights = F.dropout(weights, self.dropout)
        out = (weights @ v).transpose(1, 2)
        return self.out_proj(out.reshape(out.shape[0], out.shape[1], self.embed_dim))


class TransformerEncoderLayer(nn.Module):
    """Post-norm encoder layer; the position embedding is added to queries and keys only."""

    def __init__(
        self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, activation: str
    ) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, nhead, dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = get_act(activation)

    def forward(self, src: torch.Tensor, pos_embed: torch.Tensor | None = None) -> torch.Tensor:
        q = k = src if pos_embed is None else src + pos_embed
        src = self.norm1(src + self.dropout1(self.self_attn(q, k, src)))
        ff = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout2(ff))


class TransformerEncoder(nn.Module):
    """A stack of identical (independently initialised) encoder layers."""

    def __init__(self, num_layers: int, **layer_kwargs: object) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [TransformerEncoderLayer(**layer_kwargs) for _ in range(num_layers)]  # type: ignore[arg-type]
        )

    def forward(self, src: torch.Tensor, pos_embed: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            src = layer(src, pos_embed)
        return src


def build_2d_sincos_position_embedding(
    w: int, h: int, embed_dim: int, temperature: float = 10000.0
) -> torch.Tensor:
    """PaddleDetection's 2-D sin-cos embedding, shape [1, w*h, embed_dim].

    Faithful quirk: Paddle builds the grid with ``meshgrid(grid_w, grid_h)`` ('ij' indexing), so
    rows run w-major while the flattened feature map runs h-major. Reproduced as is, otherwise
    official weights would see transposed positions.
    """
    if embed_dim % 4:
        raise ValueError("embed dimension must be divisible by 4 for 2D sin-cos embedding")
    grid_w = torch.arange(int(w), dtype=torch.float32)
    grid_h = torch.arange(int(h), dtype=torch.float32)
    grid_w, grid_h = torch.meshgrid(grid_w, grid_h, indexing="ij")
    pos_dim = embed_dim // 4
    omega = torch.arange(pos_dim, dtype=torch.float32) / pos_dim
    omega = 1.0 / (temperature**omega)
    out_w = grid_w.flatten()[:, None] @ omega[None]
    out_h = grid_h.flatten()[:, None] @ omega[None]
    return torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)[None]


class CustomCSPPAN(nn.Module):
    """FPN top-down + PAN bottom-up over three levels; outputs ordered stride 32, 16, 8."""

    def __init__(
        self,
        in_channels: list[int],
        out_channels: tuple[int, ...] = (768, 384, 192),
        act: str = "swish",
        stage_num: int = 1,
        block_num: int = 3,
        spp: bool = True,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        use_alpha: bool = False,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "gelu",
        nhead: int = 4,
        num_layers: int = 4,
        use_trans: bool = True,
    ) -> None:
        super().__init__()
        out_channels = [max(round(c * width_mult), 1) for c in out_channels]
        block_num = max(round(block_num * depth_mult), 1)
        self.num_blocks = len(in_channels)
        self.out_channels = list(out_channels)
        self.hidden_dim = in_channels[-1]
        in_channels = in_channels[::-1]
        self.use_trans = use_trans
        if use_trans:
            self.encoder = TransformerEncoder(
                num_layers,
                d_model=self.hidden_dim,
                nhead=nhead,
                dim_feedforward=dim_feedforward,
                dropout=dropout,
                activation=activation,
            )

        fpn_stages, fpn_routes = [], []
        ch_pre = 0
        for i, (ch_in, ch_out) in enumerate(zip(in_channels, out_channels, strict=True)):
            if i > 0:
                ch_in += ch_pre // 2
            stage = nn.Sequential(
                *[
                    CSPStage(
                        ch_in if j == 0 else ch_out,
                        ch_out,
                        block_num,
                        act=act,
                        spp=(spp and i == 0),
                        use_alpha=use_alpha,
                    )
                    for j in range(stage_num)
                ]
            )
            fpn_stages.append(stage)
            if i < self.num_blocks - 1:
                fpn_routes.append(ConvBNLayer(ch_out, ch_out // 2, 1, 1, padding=0, act=act))
            ch_pre = ch_out
        self.fpn_stages = nn.ModuleList(fpn_stages)
        self.fpn_routes = nn.ModuleList(fpn_routes)

        pan_stages, pan_routes = [], []
        for i in reversed(range(self.num_blocks - 1)):
            pan_routes.append(
                ConvBNLayer(out_channels[i + 1], out_channels[i + 1], 3, 2, padding=1, act=act)
            )
            ch_in = out_channels[i] + out_channels[i + 1]
            ch_out = out_channels[i]
            pan_stages.append(
                nn.Sequential(
                    *[
                        CSPStage(ch_in if j == 0 else ch_out, ch_out, block_num, act=act)
                        for j in range(stage_num)
                    ]
                )
            )
        self.pan_stages = nn.ModuleList(pan_stages[::-1])
        self.pan_routes = nn.ModuleList(pan_routes[::-1])

    def forward(self, blocks: list[torch.Tensor]) -> list[torch.Tensor]:
        blocks = list(blocks)
        if self.use_trans:
            last = blocks[-1]
            n, c, h, w = last.shape
            src = last.flatten(2).transpose(1, 2)
            pos = build_2d_sincos_position_embedding(w, h, self.hidden_dim).to(src)
            memory = self.encoder(src, pos_embed=pos)
            blocks[-1] = memory.transpose(1, 2).reshape(n, c, h, w)

        blocks = blocks[::-1]
        fpn_feats = []
        route = None
        for i, block in enumerate(blocks):
            if i > 0:
                block = torch.cat([route, block], dim=1)
            route = self.fpn_stages[i](block)
            fpn_feats.append(route)
            if i < self.num_blocks - 1:
                route = self.fpn_routes[i](route)
                route = F.interpolate(route, scale_factor=2.0, mode="nearest")

        pan_feats = [fpn_feats[-1]]
        route = fpn_feats[-1]
        for i in reversed(range(self.num_blocks - 1)):
            route = self.pan_routes[i](route)
            route = self.pan_stages[i](torch.cat([route, fpn_feats[i]], dim=1))
            pan_feats.append(route)
        return pan_feats[::-1]

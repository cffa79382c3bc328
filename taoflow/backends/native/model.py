"""SSD with TAO's ResNet backbone, in PyTorch.

Built as TAO 5 builds it (nvidia_tao_tf1/core/templates/resnet.py, cv/ssd/models/ssd_backbones.py,
cv/ssd/architecture/ssd_arch.py): conv1 7x7/2 with BN, no max-pool, so block 1 has stride 2, blocks 2 and 3 stride 2
and block 4 stride 1; every residual subblock has a 1x1 projection shortcut (`all_projections`, which keeps every
conv prunable); no conv biases in the backbone; Keras' BatchNorm epsilon (see _bn for the momentum).
The SSD taps a block-2 map (38x38 at 300x300) and adds expansion blocks down to 2x2, then six 3x3 heads
`ssd_conf_i` / `ssd_loc_i`. Layer names follow TAO's so checkpoints, pruning reports and exports read alike.

Channel counts come from a `widths` dict (conv name -> output channels), so a pruned model is rebuilt from its
checkpoint by the same code.
"""

import math

import torch
from torch import nn

# TAO's subblock layout per depth: (repeats per block, bottleneck?)
RESNET_BLOCKS = {10: ([1, 1, 1, 1], False), 18: ([2, 2, 2, 2], False), 34: ([3, 4, 6, 3], False),
                 50: ([3, 4, 6, 3], True)}
BLOCK_CHANNELS = [64, 128, 256, 512]
BLOCK_STRIDES = [2, 2, 2, 1]  # no pooling after conv1 (use_pooling=False): block 1 takes stride 2, block 4 keeps 1
TAP = {10: "block_2a", 18: "block_2b", 34: "block_2d", 50: "block_2d"}
# ssd_backbones.py expansion configs: per feature map, convs of (filters, kernel, stride, batchnorm)
SMALL = [[], [(64, 1, 1, False), (128, 3, 2, True)], [(64, 1, 1, False), (128, 3, 2, True)],
         [(64, 1, 1, False), (128, 3, 2, True)], [(64, 1, 1, False), (128, 3, 2, True)]]
MID = [[(256, 1, 1, False), (256, 3, 1, True)], [(128, 1, 1, False), (256, 3, 2, True)],
       [(64, 1, 1, False), (128, 3, 2, True)], [(64, 1, 1, False), (128, 3, 2, True)],
       [(64, 1, 1, False), (128, 3, 2, True)]]
LARGE = [[(512, 1, 1, False), (512, 3, 1, True)], [(256, 1, 1, False), (512, 3, 2, True)],
         [(128, 1, 1, False), (256, 3, 2, True)], [(128, 1, 1, False), (256, 3, 2, True)],
         [(128, 1, 1, False), (256, 3, 2, True)]]
EXPANSION = {10: SMALL, 18: MID, 34: MID, 50: LARGE}


def _bn(channels):
    # Keras' epsilon (1e-3). Momentum is PyTorch's default 0.1 (Keras notation 0.9), not TAO's 0.99: with 0.99 the
    # running statistics trail the weights for the first few hundred steps, so a short run (the CPU demo) evaluates
    # with stale statistics (mAP 0.04 vs 1.0 with batch statistics on an overfit check); long runs do not care.
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.1)


def _conv(cin, cout, k, stride=1, bias=False):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=bias)


class Subblock(nn.Module):
    """One residual subblock (basic 3x3-3x3 or bottleneck 1x1-3x3-1x1) with a projection shortcut."""

    def __init__(self, name, cin, kernels, widths, stride):
        super().__init__()
        self.convs, self.bns = nn.ModuleList(), nn.ModuleList()
        c = cin
        for i, k in enumerate(kernels):
            cout = widths[f"{name}_conv_{i + 1}"]
            self.convs.append(_conv(c, cout, k, stride if i == 0 else 1))
            self.bns.append(_bn(cout))
            c = cout
        self.conv_shortcut = _conv(cin, c, 1, stride)
        self.bn_shortcut = _bn(c)
        self.out_channels = c

    def forward(self, x):
        y = x
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            y = bn(conv(y))
            if i < len(self.convs) - 1:
                y = torch.relu(y)
        return torch.relu(y + self.bn_shortcut(self.conv_shortcut(x)))


def default_widths(nlayers):
    """TAO's channel count of every conv, by TAO layer name."""
    repeats, bottleneck = RESNET_BLOCKS[nlayers]
    widths = {"conv1": 64}
    for b, (n, ch) in enumerate(zip(repeats, BLOCK_CHANNELS), 1):
        for r in range(n):
            name = f"block_{b}{chr(ord('a') + r)}"
            outs = [ch, ch, 4 * ch] if bottleneck else [ch, ch]
            for i, cout in enumerate(outs):
                widths[f"{name}_conv_{i + 1}"] = cout
    for b, block in enumerate(EXPANSION[nlayers]):
        for c, (cout, _, _, _) in enumerate(block):
            widths[f"ssd_expand_block_{b}_conv_{c}"] = cout
    return widths


class SSD(nn.Module):
    """SSD-ResNet returning (confidence logits [B, A, C+1], box offsets [B, A, 4]) in TAO's anchor order."""

    def __init__(self, nlayers, n_classes, boxes_per_layer, widths=None, in_channels=3):
        super().__init__()
        if nlayers not in RESNET_BLOCKS:
            raise ValueError(f"resnet{nlayers} is not supported; use one of {sorted(RESNET_BLOCKS)}")
        self.nlayers, self.n_classes = nlayers, n_classes  # n_classes includes background
        self.boxes_per_layer = list(boxes_per_layer)
        self.widths = dict(widths or default_widths(nlayers))
        w = self.widths
        repeats, bottleneck = RESNET_BLOCKS[nlayers]
        kernels = [1, 3, 1] if bottleneck else [3, 3]

        self.conv1 = _conv(in_channels, w["conv1"], 7, 2)
        self.bn_conv1 = _bn(w["conv1"])
        self.blocks = nn.ModuleDict()
        c = w["conv1"]
        for b, n in enumerate(repeats, 1):
            for r in range(n):
                name = f"block_{b}{chr(ord('a') + r)}"
                self.blocks[name] = Subblock(name, c, kernels, w, BLOCK_STRIDES[b - 1] if r == 0 else 1)
                c = self.blocks[name].out_channels
        self.tap = TAP[nlayers]
        tap_channels = self.blocks[self.tap].out_channels

        self.expansion = nn.ModuleList()
        fmap_channels = [tap_channels]
        for b, block in enumerate(EXPANSION[nlayers]):
            layers = []
            for ci, (_, k, s, bn) in enumerate(block):
                cout = w[f"ssd_expand_block_{b}_conv_{ci}"]
                layers += [_conv(c, cout, k, s, bias=not bn)] + ([_bn(cout)] if bn else []) + [nn.ReLU()]
                c = cout
            self.expansion.append(nn.Sequential(*layers))
            fmap_channels.append(c)

        self.ssd_conf = nn.ModuleList(_conv(ch, nb * n_classes, 3, bias=True)
                                      for ch, nb in zip(fmap_channels, self.boxes_per_layer))
        self.ssd_loc = nn.ModuleList(_conv(ch, nb * 4, 3, bias=True)
                                     for ch, nb in zip(fmap_channels, self.boxes_per_layer))
        for head in list(self.ssd_conf) + list(self.ssd_loc):  # Keras he_normal, zero bias
            nn.init.normal_(head.weight, std=math.sqrt(2.0 / (head.in_channels * 9)))
            nn.init.zeros_(head.bias)

    def features(self, x):
        x = torch.relu(self.bn_conv1(self.conv1(x)))
        tapped = None
        for name, block in self.blocks.items():
            x = block(x)
            if name == self.tap:
                tapped = x
        fmaps = [tapped]
        for block in self.expansion:
            x = block(x)
            fmaps.append(x)
        return fmaps

    def forward(self, x):
        conf, loc = [], []
        for fmap, conf_head, loc_head in zip(self.features(x), self.ssd_conf, self.ssd_loc):
            # (B, boxes*C, H, W) -> (B, H, W, boxes*C) -> (B, H*W*boxes, C): TAO's Permute + Reshape order
            conf.append(conf_head(fmap).permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.n_classes))
            loc.append(loc_head(fmap).permute(0, 2, 3, 1).reshape(x.shape[0], -1, 4))
        return torch.cat(conf, 1), torch.cat(loc, 1)

    def current_widths(self):
        """Output channels of every conv as built now (after pruning they differ from TAO's defaults)."""
        out = {"conv1": self.conv1.out_channels}
        for name, block in self.blocks.items():
            for i, conv in enumerate(block.convs):
                out[f"{name}_conv_{i + 1}"] = conv.out_channels
        for b, block in enumerate(self.expansion):
            convs = [m for m in block if isinstance(m, nn.Conv2d)]
            for ci, conv in enumerate(convs):
                out[f"ssd_expand_block_{b}_conv_{ci}"] = conv.out_channels
        return out


def feature_map_sizes(nlayers, height, width):
    """(H, W) of the six predictor maps: every stride-2 conv maps n to ceil(n / 2), as TF's 'same' padding does."""
    def down(n, times):
        for _ in range(times):
            n = (n + 1) // 2
        return n
    tap_stride = 3  # conv1, block 1, block 2
    sizes = [(down(height, tap_stride), down(width, tap_stride))]
    h, w = down(height, 4), down(width, 4)  # after block 3; block 4 keeps stride 1
    for block in EXPANSION[nlayers]:
        for _, _, s, _ in block:
            if s == 2:
                h, w = (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    return sizes

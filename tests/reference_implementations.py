"""Independent counts of the three reference implementations, transcribed from their own code.

Re-typed layer by layer from each repository's model definition (not from mbv2_search), so the
tests compare our analytic costs with theirs:
- tonylins/pytorch-mobilenet-v2 MobileNetV2.py @99f2136 (make_divisible rounds up to 8, stem fixed at 32,
  t = 1 row unscaled, int(inp * t), Linear classifier with bias);
- shicai/MobileNet-Caffe mobilenet_v2_deploy.prototxt (read layer by layer);
- neuleaf/MobileNetV2 mobilenet_v2.py @55597bd with ops.py (variant "B" below; the other variants are
  earlier states of that repository, kept for the record).
params = conv weights (+ biases where the implementation has them) + BatchNorm gamma and beta +
classifier; MAdds = conv and classifier multiply-accumulates at batch 1 (paper convention).
"""

from __future__ import annotations

import math


class Net:
    def __init__(self, name, hw=224):
        self.name = name
        self.h = hw
        self.w = hw
        self.conv_w = 0  # conv weights
        self.conv_b = 0  # conv biases
        self.bn = 0  # BN gamma+beta
        self.fc_w = 0
        self.fc_b = 0
        self.macs = 0
        self.layers = []

    # padding: 'sym' = PyTorch/Caffe pad=(k-1)//2 ; 'same' = TF SAME (ceil(H/s))
    def conv(self, cin, cout, k, s=1, groups=1, bias=False, bn=True, pad="sym", tag="", update_hw=True, hw=None):
        h, w = (self.h, self.w) if hw is None else hw
        if pad == "same":
            ho, wo = math.ceil(h / s), math.ceil(w / s)
        else:
            p = (k - 1) // 2
            ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        wparams = k * k * (cin // groups) * cout
        self.conv_w += wparams
        if bias:
            self.conv_b += cout
        if bn:
            self.bn += 2 * cout
        macs = ho * wo * wparams
        self.macs += macs
        self.layers.append((tag, cin, cout, k, s, groups, bias, bn, h, ho, macs))
        if update_hw:
            self.h, self.w = ho, wo
        return ho, wo

    def fc(self, cin, cout, bias=True, tag="fc"):
        self.fc_w += cin * cout
        if bias:
            self.fc_b += cout
        self.macs += cin * cout
        self.layers.append((tag, cin, cout, 1, 1, 1, bias, False, 1, 1, cin * cout))

    @property
    def params(self):
        return self.conv_w + self.conv_b + self.bn + self.fc_w + self.fc_b

    @property
    def params_no_bn(self):
        return self.params - self.bn


SETTING = [  # t, c, n, s  (tonylins interverted_residual_setting, identical in all its versions)
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


# ---------------------------------------------------------------- tonylins, newest (99f21365)
def make_divisible(x, divisible_by=8):
    # int(np.ceil(x * 1. / divisible_by) * divisible_by)   (np.ceil == math.ceil on float64)
    return int(math.ceil(x * 1.0 / divisible_by) * divisible_by)


def tonylins_new(width_mult=1.0, n_class=1000, input_size=224):
    net = Net(f"tonylins new (99f21365) w={width_mult}", input_size)
    input_channel = 32  # never scaled ("first channel is always 32!")
    last_channel = 1280
    last = make_divisible(last_channel * width_mult) if width_mult > 1.0 else last_channel
    net.conv(3, input_channel, 3, 2, tag="features.0")
    idx = 1
    chans = []
    for t, c, n, s in SETTING:
        output_channel = make_divisible(c * width_mult) if t > 1 else c
        chans.append(output_channel)
        for i in range(n):
            stride = s if i == 0 else 1
            inp, oup = input_channel, output_channel
            hidden = int(inp * t)
            if t == 1:
                net.conv(hidden, hidden, 3, stride, groups=hidden, tag=f"features.{idx}.dw")
                net.conv(hidden, oup, 1, 1, tag=f"features.{idx}.pwl")
            else:
                net.conv(inp, hidden, 1, 1, tag=f"features.{idx}.pw")
                net.conv(hidden, hidden, 3, stride, groups=hidden, tag=f"features.{idx}.dw")
                net.conv(hidden, oup, 1, 1, tag=f"features.{idx}.pwl")
            input_channel = output_channel
            idx += 1
    net.conv(input_channel, last, 1, 1, tag=f"features.{idx}")
    net.fc(last, n_class, bias=True, tag="classifier")
    net.chans = [32] + chans + [last]
    return net


# ---------------------------------------------------------------- shicai mobilenet_v2_deploy.prototxt
# (name, expand, out, dw_stride, eltwise)  -- read layer by layer from the prototxt
SHICAI_BLOCKS = [
    ("conv2_1", 32, 16, 1, False),
    ("conv2_2", 96, 24, 2, False),
    ("conv3_1", 144, 24, 1, True),
    ("conv3_2", 144, 32, 2, False),
    ("conv4_1", 192, 32, 1, True),
    ("conv4_2", 192, 32, 1, True),
    ("conv4_3", 192, 64, 1, False),  # stride 1 here (paper v3/TF: 2)
    ("conv4_4", 384, 64, 1, True),
    ("conv4_5", 384, 64, 1, True),
    ("conv4_6", 384, 64, 1, True),
    ("conv4_7", 384, 96, 2, False),  # stride 2 here (paper v3/TF: 1)
    ("conv5_1", 576, 96, 1, True),
    ("conv5_2", 576, 96, 1, True),
    ("conv5_3", 576, 160, 2, False),
    ("conv6_1", 960, 160, 1, True),
    ("conv6_2", 960, 160, 1, True),
    ("conv6_3", 960, 320, 1, False),
]


def shicai(n_class=1000):
    net = Net("shicai caffe (mobilenet_v2_deploy.prototxt)")
    net.conv(3, 32, 3, 2, tag="conv1")
    cin = 32
    for name, e, out, s, _ in SHICAI_BLOCKS:
        net.conv(cin, e, 1, 1, tag=name + "/expand")
        net.conv(e, e, 3, s, groups=e, tag=name + "/dwise")
        net.conv(e, out, 1, 1, tag=name + "/linear")
        cin = out
    net.conv(cin, 1280, 1, 1, tag="conv6_4")
    # pool6: global AVE; fc7: 1x1 Convolution with bias (bias_term default true), 1x1 spatial
    net.conv(1280, n_class, 1, 1, bias=True, bn=False, tag="fc7", hw=(1, 1), update_hw=False)
    return net


# ---------------------------------------------------------------- neuleaf (TF1)
def neuleaf(n_class=1000):
    """neuleaf/MobileNetV2 mobilenet_v2.py @55597bd with ops.py: res_block always has its 1x1 `pw` (t = 1 too),
    hidden `round(t * inp)`; `ex_dim` (1x1, no BN, no bias) where stride 1 and the width changes, but res8_1
    has shortcut=False; padding 'SAME'; logits a 1x1 conv without bias after the global average."""
    net = Net("neuleaf mobilenet_v2.py@55597bd")
    net.conv(3, 32, 3, 2, pad="same", tag="conv1_1")
    rows = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    cin, count, k = 32, sum(r[2] for r in rows), 0
    for t, c, n, s in rows:
        for i in range(n):
            k += 1
            stride = s if i == 0 else 1
            hidden = round(t * cin)
            h_in = (net.h, net.w)
            net.conv(cin, hidden, 1, 1, pad="same", tag=f"blk{k}/pw")
            net.conv(hidden, hidden, 3, stride, groups=hidden, pad="same", tag=f"blk{k}/dw")
            net.conv(hidden, c, 1, 1, pad="same", tag=f"blk{k}/pw_linear")
            if k < count and stride == 1 and cin != c:  # ex_dim on the block input
                net.conv(cin, c, 1, 1, bn=False, pad="same", tag=f"blk{k}/ex_dim", update_hw=False, hw=h_in)
            cin = c
    net.conv(cin, 1280, 1, 1, pad="same", tag="conv9_1")
    net.conv(1280, n_class, 1, 1, bn=False, pad="same", tag="logits", hw=(1, 1), update_hw=False)
    return net

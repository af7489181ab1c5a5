"""PyTorch twins of timeprest's convolutional model zoo (crates/nn/src/zoo.rs, block.rs).

Each twin has the same layers in the same order as timeprest's block sequence: kernel sizes,
strides, padding, biases, batch norms, poolings, residual shortcuts and the `--width` channel
rounding (`round(channels * width)`, halves away from zero as Rust's `f64::round`, at least
1; the classifier is never scaled). Parameter counts (buffers excluded) therefore equal
`timeprest partition`'s; bench/torch/conv_compare.py --check-params checks that.

  lenet5    conv5x5(6)-ReLU-pool-conv5x5(16)-ReLU-pool-fc120-fc84-fc (pad 2 below 32x32)
  alexnet   CIFAR AlexNet: conv11x11/4 pad 5, conv5x5, 3x conv3x3, three max pools, one fc
  vgg11/16  conv3x3 (with bias)-BN-ReLU, max pools, global average pool, fc on 512 features
  resnet18/50  3x3 stem (no bias)-BN-ReLU, basic/bottleneck blocks, global average pool, fc

Run as a script to print parameter counts as one JSON object, or with --state every model's
state-dict tensor shapes (parameters and BN running statistics, by name):
  zoo.py [--state] lenet5:0.25:1x28x28 resnet50:1 ...   (MODEL:WIDTH[:CxHxW], default 3x32x32)
"""

import argparse
import json
import math

import torch
import torch.nn as nn

MODELS = ["lenet5", "alexnet", "vgg11", "vgg16", "resnet18", "resnet50"]
VGG = {
    "vgg11": [64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0],
    "vgg16": [64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0],
}
RESNET_DEPTH = {"resnet18": [2, 2, 2, 2], "resnet50": [3, 4, 6, 3]}
BOTTLENECK_EXPANSION = 4


def scaled(channels, width):
    """`channels * width` rounded half away from zero (Rust's `f64::round`), at least 1."""
    x = channels * width
    whole = math.floor(x)
    return max(1, int(whole + 1 if x - whole >= 0.5 else whole))


def window(size, kernel, stride, padding):
    """Output side of a convolution or pooling window (floor, as PyTorch and burn)."""
    return (size + 2 * padding - kernel) // stride + 1


class Builder:
    """Appends layers while tracking the sample shape [c, h, w], as zoo.rs's Builder."""

    def __init__(self, input_shape, width):
        self.shape = list(input_shape)
        self.width = width
        self.layers = []

    def conv(self, channels, kernel, stride, padding, bias, relu):
        out = scaled(channels, self.width)
        c, h, w = self.shape
        self.layers.append(nn.Conv2d(c, out, kernel, stride, padding, bias=bias))
        if relu:
            self.layers.append(nn.ReLU())
        self.shape = [out, window(h, kernel, stride, padding), window(w, kernel, stride, padding)]

    def norm_relu(self):
        self.layers += [nn.BatchNorm2d(self.shape[0]), nn.ReLU()]

    def max_pool(self, kernel):
        c, h, w = self.shape
        self.layers.append(nn.MaxPool2d(kernel, kernel))
        self.shape = [c, window(h, kernel, kernel, 0), window(w, kernel, kernel, 0)]

    def global_pool(self):
        self.layers.append(nn.AdaptiveAvgPool2d(1))
        self.shape = [self.shape[0], 1, 1]

    def linear(self, output, classifier):
        """A linear layer of `output` features (scaled unless it is the classifier); the
        first one flattens its input (row-major c, h, w, as timeprest's messages)."""
        if not any(isinstance(layer, nn.Linear) for layer in self.layers):
            self.layers.append(nn.Flatten())
        features = math.prod(self.shape)
        output = output if classifier else scaled(output, self.width)
        self.layers.append(nn.Linear(features, output))
        if not classifier:
            self.layers.append(nn.ReLU())
        self.shape = [output, 1, 1]

    def push(self, module, shape):
        self.layers.append(module)
        self.shape = shape


class BasicBlock(nn.Module):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN, plus the input (1x1 conv + BN when the shape
    changes), then ReLU (block.rs `BasicBlock`)."""

    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = projection(in_planes, planes, stride)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(x4)-BN, plus the input (projected when
    the shape changes), then ReLU (block.rs `Bottleneck`)."""

    def __init__(self, in_planes, planes, stride):
        super().__init__()
        out = BOTTLENECK_EXPANSION * planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, 1, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, 1, 0, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.shortcut = projection(in_planes, out, stride)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


def projection(channels, out, stride):
    """The shortcut: identity, or 1x1 conv (no bias) + BN when stride or channels change."""
    if stride != 1 or channels != out:
        return nn.Sequential(nn.Conv2d(channels, out, 1, stride, 0, bias=False),
                             nn.BatchNorm2d(out))
    return nn.Sequential()


def lenet5(b, classes):
    padding = 2 if b.shape[1] < 32 or b.shape[2] < 32 else 0
    b.conv(6, 5, 1, padding, True, True)
    b.max_pool(2)
    b.conv(16, 5, 1, 0, True, True)
    b.max_pool(2)
    b.linear(120, False)
    b.linear(84, False)
    b.linear(classes, True)


def alexnet(b, classes):
    b.conv(64, 11, 4, 5, True, True)
    b.max_pool(2)
    b.conv(192, 5, 1, 2, True, True)
    b.max_pool(2)
    b.conv(384, 3, 1, 1, True, True)
    b.conv(256, 3, 1, 1, True, True)
    b.conv(256, 3, 1, 1, True, True)
    b.max_pool(2)
    b.linear(classes, True)


def vgg(b, classes, layers):
    for channels in layers:
        if channels == 0:
            b.max_pool(2)
        else:
            b.conv(channels, 3, 1, 1, True, False)
            b.norm_relu()
    b.global_pool()
    b.linear(classes, True)


def resnet(b, classes, depth, bottleneck):
    b.conv(64, 3, 1, 1, False, False)
    b.norm_relu()
    for group, (blocks, planes) in enumerate(zip(depth, [64, 128, 256, 512])):
        planes = scaled(planes, b.width)
        for i in range(blocks):
            stride = 2 if group > 0 and i == 0 else 1
            c, h, w = b.shape
            kind = Bottleneck if bottleneck else BasicBlock
            out = BOTTLENECK_EXPANSION * planes if bottleneck else planes
            b.push(kind(c, planes, stride), [out, window(h, 3, stride, 1), window(w, 3, stride, 1)])
    b.global_pool()
    b.linear(classes, True)


def build(name, width=1.0, input_shape=(3, 32, 32), classes=10, depth=None):
    """The twin of `timeprest --model NAME --width WIDTH` for CxHxW inputs, as nn.Sequential."""
    b = Builder(input_shape, width)
    if name == "lenet5":
        lenet5(b, classes)
    elif name == "alexnet":
        alexnet(b, classes)
    elif name in VGG:
        vgg(b, classes, VGG[name])
    elif name in RESNET_DEPTH:
        resnet(b, classes, depth or RESNET_DEPTH[name], name == "resnet50")
    else:
        raise ValueError(f"unknown model {name}; valid: {', '.join(MODELS)}")
    if min(b.shape) < 1:
        raise ValueError(f"model {name} cannot take {input_shape} inputs")
    return nn.Sequential(*b.layers)


def param_count(model):
    """Trainable scalars, buffers (BN running statistics) excluded, as timeprest counts."""
    return sum(p.numel() for p in model.parameters())


def state_shapes(model):
    """{name: shape} of the state dict (BN batch counters left out: timeprest has none)."""
    return {name: list(t.shape) for name, t in model.state_dict().items()
            if not name.endswith("num_batches_tracked")}


def parse_spec(spec):
    """`MODEL:WIDTH[:CxHxW]` -> (model, width, (c, h, w))."""
    parts = spec.split(":")
    shape = tuple(int(s) for s in parts[2].split("x")) if len(parts) > 2 else (3, 32, 32)
    return parts[0], float(parts[1]), shape


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", action="store_true",
                        help="state-dict tensor shapes instead of parameter counts")
    parser.add_argument("specs", nargs="*", metavar="MODEL:WIDTH[:CxHxW]")
    options = parser.parse_args()
    describe = state_shapes if options.state else param_count
    out = {}
    for spec in options.specs:
        name, width, shape = parse_spec(spec)
        out[spec] = describe(build(name, width, shape))
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""PyTorch side of `benchmarks/train_throughput.py`: time one training run.

Runs in its own interpreter (a venv with a CPU build of torch; this file
imports neither kpjax nor absl) and prints one JSON line:
``{"images_per_s": ..., "threads": ..., "torch": ...}``.

The models are the PyTorch originals kpjax mirrors: ShrinkBench's MnistNet
and akamaster's CIFAR ResNet-20 with option-A shortcuts, network slimming's
CIFAR VGG-16 with BatchNorm, NCHW float32,
trained with torch.optim.SGD (momentum 0.9) on the mean cross-entropy, BN in
training mode. Batches are random tensors made before the clock starts.

  /work/venv-torch/bin/python benchmarks/torch_train_worker.py \
      --model=resnet20 --batch_size=128 --steps=30 --warmup=3 --threads=2
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn
from torch.nn import functional as F


class MnistNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if stride != 1 or in_planes != planes else 0

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.pad:
            shortcut = F.pad(x[:, :, ::2, ::2],
                             (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + shortcut)


class ResNet(nn.Module):
    def __init__(self, num_blocks=3, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for stage, planes in enumerate((16, 32, 64)):
            blocks = []
            for block in range(num_blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.linear(x)


class VGG16(nn.Module):
    """Network slimming's CIFAR VGG-16 (conv-BN-ReLU, no conv bias)."""

    def __init__(self, num_classes=10):
        super().__init__()
        layers, c = [], 3
        for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.feature = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        x = F.avg_pool2d(self.feature(x), 2).flatten(1)
        return self.classifier(x)


MODELS = {"mnistnet": (MnistNet, (1, 28, 28)),
          "resnet20": (ResNet, (3, 32, 32)),
          "vgg16": (VGG16, (3, 32, 32))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch.set_num_threads; 0 keeps torch's default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model_cls, shape = MODELS[args.model]
    model = model_cls().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    n = args.warmup + args.steps
    images = torch.randn(n, args.batch_size, *shape)
    labels = torch.randint(0, 10, (n, args.batch_size))
    for i in range(n):
        if i == args.warmup:
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images[i]), labels[i])
        loss.backward()
        opt.step()
    loss.item()
    elapsed = time.perf_counter() - start
    print(json.dumps({"images_per_s": args.steps * args.batch_size / elapsed,
                      "threads": torch.get_num_threads(),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()

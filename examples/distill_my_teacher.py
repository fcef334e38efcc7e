"""Distil a teacher you hold as a plain torch module into a student, on your own tensors, with kdx.

    python examples/distill_my_teacher.py            # scikit-learn's digits, about a minute on 2 CPU cores
    python examples/distill_my_teacher.py --tiny     # a few seconds (what CI runs)

Neither model is a kdx model: any module mapping inputs to (N, classes) logits works. The teacher here is
trained by this script in plain PyTorch, the way your own training code would.
"""
import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn

import kdx


def teacher_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))


class Student(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU())
        self.classifier = nn.Linear(32, 10)

    def forward(self, x):
        return self.classifier(self.body(x))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="a smoke-sized run")
    args = ap.parse_args()
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    y = torch.tensor(digits.target)
    x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]

    teacher = teacher_net()  # your own training loop, nothing from kdx
    opt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    for _ in range(3 if args.tiny else 30):
        for i in range(0, len(x_train), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(teacher(x_train[i:i + 64]), y_train[i:i + 64]).backward()
            opt.step()
    teacher.eval()

    data = kdx.data.from_tensors(x_train, y_train, x_test, y_test, lo=0.0, hi=1.0)
    result = kdx.distill_student(teacher, Student(), data, source="train", samples=2_000 if args.tiny else 40_000,
                                 batch_size=128, lr=0.05, **{"eval.n": 200, "eval.bootstrap": 200,
                                 "eval.distributions": ["test", "gaussian_noise-2", "uniform_noise"]})
    print(result.table())


if __name__ == "__main__":
    main()

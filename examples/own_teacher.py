"""Make what a user arrives with: an image folder and a Hugging Face teacher saved with `save_pretrained`,
trained here in plain PyTorch + transformers (not by kdx). Then distil it with kdx:

    python examples/own_teacher.py --out runs/own-teacher          # Fashion-MNIST (or digits) images, ~1 min
    kdx study configs/studies/own_teacher.yaml                      # sources x 3 seeds, report.html

The study's base config (configs/own_teacher.yaml) reads runs/own-teacher/images and runs/own-teacher/hf-vit.
"""
import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def images(tiny: bool):
    """(x_train, y_train, x_test, y_test, classes) as uint8 (N, H, W): Fashion-MNIST where Debian has it."""
    from kdx.data import load_dataset
    from kdx.errors import KdxError

    try:
        if tiny:
            raise KdxError("tiny")
        d = load_dataset({"name": "fashion_mnist"})
        n_train, n_test = 6000, 1000
    except KdxError:
        d = load_dataset({"name": "digits"})
        n_train, n_test = len(d.x_train), len(d.x_test)
    return d.x_train[:n_train, 0], d.y_train[:n_train], d.x_test[:n_test, 0], d.y_test[:n_test], d.classes


def write_folder(root: Path, x, y, classes) -> None:
    for i, (img, label) in enumerate(zip(x.numpy(), y.tolist())):
        folder = root / classes[label].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:05d}.png")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("runs/own-teacher"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="digits, 1.4k images (what the tests run)")
    args = ap.parse_args()
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    x_train, y_train, x_test, y_test, classes = images(args.tiny)
    names = [c.replace("/", "-") for c in classes]
    write_folder(args.out / "images" / "train", x_train, y_train, classes)
    write_folder(args.out / "images" / "test", x_test, y_test, classes)

    side = x_train.shape[-1]
    size = 16 if side <= 16 else 32  # the teacher's own input size: kdx resizes to it inside the model
    processor = ViTImageProcessor(do_resize=True, size={"height": size, "width": size}, do_rescale=True,
                                  do_normalize=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    config = ViTConfig(image_size=size, patch_size=4, num_channels=3, hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=128, num_labels=len(names),
                       id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    model = ViTForImageClassification(config)

    def pixels(x_u8: torch.Tensor) -> torch.Tensor:
        batch = [Image.fromarray(a).convert("RGB") for a in x_u8.numpy()]
        return processor(images=batch, return_tensors="pt")["pixel_values"]

    px_train, px_test = pixels(x_train), pixels(x_test)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(15 if args.tiny else args.epochs):
        perm = torch.randperm(len(px_train))
        for i in range(0, len(perm), 128):
            idx = perm[i:i + 128]
            loss = model(pixel_values=px_train[idx], labels=y_train[idx]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(pixel_values=px_test).logits.argmax(1) == y_test).float().mean())
    model.save_pretrained(args.out / "hf-vit")
    processor.save_pretrained(args.out / "hf-vit")
    print(f"wrote {args.out / 'images'} ({len(x_train)} train, {len(x_test)} test images, {len(names)} classes) and "
          f"{args.out / 'hf-vit'} (ViT, test accuracy {acc:.3f})")
    print("distil it: kdx run configs/own_teacher.yaml   or   kdx study configs/studies/own_teacher.yaml")


if __name__ == "__main__":
    np.random.seed(0)
    main()

#!/usr/bin/env python3
"""Synthetic document pages for distilling a document-orientation classifier.

  python3 tools/synth_documents.py OUT_DIR COUNT [SEED]

Writes COUNT PNG pages (doc-000.png, ...) of random words in Pillow's built-in font at random
sizes, margins, line spacings, paper and ink shades: the kind of image a document-orientation
network is made for, where its original is confident and its answer depends on how the text is
turned. `peregrine finetune --images OUT_DIR` then draws random crops, quarter turns and mirror
images of them, and the original network labels each crop. Nothing is downloaded; needs Pillow
(>= 10.1, for the scalable built-in font) and nothing else. Pages are reproducible from SEED.
"""

import os
import random
import sys

from PIL import Image, ImageDraw, ImageFilter, ImageFont

LETTERS = "etaoinshrdlcumwfgypbvkjxqz"
WEIGHTS = [12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8, 2.4, 2.4, 2.2, 2.0, 2.0, 1.9,
           1.5, 1.0, 0.8, 0.2, 0.2, 0.1, 0.1]


def word(rng):
    n = max(1, min(12, int(rng.gauss(5, 2.5))))
    w = "".join(rng.choices(LETTERS, WEIGHTS, k=n))
    if rng.random() < 0.1:
        w = w.capitalize()
    if rng.random() < 0.08:
        w += rng.choice(",.;:")
    if rng.random() < 0.03:
        w = str(rng.randint(1, 9999))
    return w


def page(rng):
    width = rng.randint(480, 900)
    height = int(width * rng.uniform(1.2, 1.5))
    paper = tuple(rng.randint(215, 255) for _ in range(3))
    ink = tuple(rng.randint(0, 70) for _ in range(3))
    img = Image.new("RGB", (width, height), paper)
    draw = ImageDraw.Draw(img)
    margin = rng.randint(20, 80)
    y = margin
    size = rng.randint(11, 30)
    while y < height - margin:
        if rng.random() < 0.12:  # a heading
            font = ImageFont.load_default(size=int(size * rng.uniform(1.3, 2.0)))
        else:
            font = ImageFont.load_default(size=size)
        line_height = int(font.size * rng.uniform(1.15, 1.6))
        x = margin + (rng.randint(10, 40) if rng.random() < 0.2 else 0)
        right = width - margin
        words = 0
        while True:
            w = word(rng)
            box = draw.textbbox((x, y), w, font=font)
            if box[2] > right:
                break
            draw.text((x, y), w, fill=ink, font=font)
            x = box[2] + int(font.size * rng.uniform(0.25, 0.45))
            words += 1
            if rng.random() < 0.02 and words > 2:  # a short line ending a paragraph
                break
        y += line_height
        if rng.random() < 0.15:
            y += line_height // 2
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return img


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    out, count = sys.argv[1], int(sys.argv[2])
    rng = random.Random(int(sys.argv[3]) if len(sys.argv) == 4 else 1)
    os.makedirs(out, exist_ok=True)
    for k in range(count):
        page(rng).save(os.path.join(out, f"doc-{k:03}.png"))
    print(f"{count} synthetic pages in {out}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Draw the sample pictures offered on the first-run screen ("try it on one of these").

    python resources/samples/make_samples.py     # rewrites the PNGs and samples.json beside it

Drawn with Pillow rather than downloaded, so they have no licence or privacy question and can
be rebuilt bit for bit. Each is simple enough for a small model to describe (a house, a sign
with words, a fruit bowl) and comes with a question that shows what the app can do.
samples.json lists them for the UI: file, title, prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
W, H = 640, 480


def house() -> Image.Image:
    im = Image.new("RGB", (W, H), (135, 196, 240))                       # sky
    d = ImageDraw.Draw(im)
    d.ellipse((500, 40, 580, 120), fill=(255, 204, 51))                   # sun
    d.rectangle((0, 330, W, H), fill=(96, 168, 72))                       # grass
    d.rectangle((150, 210, 370, 380), fill=(236, 224, 200))               # walls
    d.polygon([(130, 215), (260, 110), (390, 215)], fill=(196, 58, 46))   # roof
    d.rectangle((235, 290, 285, 380), fill=(110, 70, 40))                 # door
    for x in (170, 305):                                                  # windows
        d.rectangle((x, 240, x + 45, 280), fill=(170, 215, 245), outline=(90, 90, 90), width=3)
    d.rectangle((470, 250, 495, 380), fill=(120, 80, 45))                 # trunk
    d.ellipse((420, 150, 545, 280), fill=(46, 125, 50))                   # crown
    return im


def sign() -> Image.Image:
    im = Image.new("RGB", (W, H), (178, 110, 80))                         # brick wall
    d = ImageDraw.Draw(im)
    for row, y in enumerate(range(0, H, 30)):
        d.line((0, y, W, y), fill=(150, 90, 65), width=3)
        for x in range(-60 if row % 2 else 0, W, 120):
            d.line((x, y, x, y + 30), fill=(150, 90, 65), width=3)
    d.rounded_rectangle((110, 120, 530, 360), radius=24, fill=(250, 250, 245),
                        outline=(30, 90, 60), width=10)
    big = ImageFont.load_default(size=96)  # Pillow's built-in font: the same on every machine
    small = ImageFont.load_default(size=40)
    d.text((320, 205), "OPEN", font=big, fill=(30, 90, 60), anchor="mm")
    d.text((320, 300), "Mon-Fri 9-17", font=small, fill=(40, 40, 40), anchor="mm")
    return im


def fruit() -> Image.Image:
    im = Image.new("RGB", (W, H), (240, 236, 228))                        # wall
    d = ImageDraw.Draw(im)
    d.rectangle((0, 330, W, H), fill=(150, 105, 70))                      # table
    d.ellipse((210, 150, 310, 250), fill=(200, 30, 40))                   # apple
    d.ellipse((300, 160, 400, 260), fill=(120, 180, 40))                  # green apple
    d.ellipse((250, 120, 350, 220), fill=(255, 150, 20))                  # orange
    d.chord((140, 170, 500, 400), 0, 180, fill=(60, 90, 160))             # bowl
    d.arc((370, 110, 550, 290), 100, 190, fill=(250, 215, 50), width=28)   # banana
    return im


SAMPLES = [
    ("house.png", "A house and a tree", "Describe this picture.", house),
    ("sign.png", "A shop sign", "What does the sign say?", sign),
    ("fruit.png", "A fruit bowl", "Which fruits are in the bowl?", fruit),
]


def main() -> None:
    index = []
    for name, title, prompt, draw in SAMPLES:
        draw().save(HERE / name, optimize=True)
        index.append({"file": name, "title": title, "prompt": prompt})
        print(HERE / name)
    (HERE / "samples.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

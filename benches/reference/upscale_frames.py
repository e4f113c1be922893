"""Makes larger test frames for the `end_to_end` benchmark: upscales JPEGs with Pillow.

Usage: upscale_frames.py --size 2592x1944 --quality 90 --out DIR FILE...
Each FILE is resized (bicubic) to the size and written to DIR under its own name.
"""

import argparse
import os

from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", required=True, help="WIDTHxHEIGHT")
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--out", required=True)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    os.makedirs(args.out, exist_ok=True)
    for path in args.files:
        with Image.open(path) as image:
            large = image.resize((width, height), Image.Resampling.BICUBIC)
        large.save(os.path.join(args.out, os.path.basename(path)), quality=args.quality)


if __name__ == "__main__":
    main()

"""Compose a labelled side-by-side picture (README figure) from images of the same size.

    python scripts/side_by_side.py OUT.png "label=path" "label=path" ...

Each argument is one column; several examples stack as rows when given as ROW/label=path.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

LABEL_HEIGHT = 18
GAP = 4


def compose(columns: list[tuple[str, Path]], rows: int = 1) -> Image.Image:
    """Grid of images (row-major, ``rows`` rows) with a label strip above each column."""
    images = [Image.open(path).convert("RGB") for _, path in columns]
    per_row = len(images) // rows
    w, h = images[0].size
    sheet = Image.new("RGB", (per_row * (w + GAP) - GAP, LABEL_HEIGHT + rows * (h + GAP) - GAP), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, ((label, _), image) in enumerate(zip(columns, images)):
        row, col = divmod(i, per_row)
        x, y = col * (w + GAP), LABEL_HEIGHT + row * (h + GAP)
        sheet.paste(image.resize((w, h)), (x, y))
        if row == 0:
            draw.text((x + 4, 3), label, fill="black", font=font)
    return sheet


def compose_labelled(rows: list[list[tuple[str, Image.Image]]]) -> Image.Image:
    """Rows of images, each image with its own label strip above it (labels differ per row)."""
    images = [[image.convert("RGB") for _, image in row] for row in rows]
    w, h = images[0][0].size
    per_row = max(len(row) for row in rows)
    cell_h = LABEL_HEIGHT + h
    sheet = Image.new("RGB", (per_row * (w + GAP) - GAP, len(rows) * (cell_h + GAP) - GAP), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for r, (row, row_images) in enumerate(zip(rows, images)):
        for c, ((label, _), image) in enumerate(zip(row, row_images)):
            x, y = c * (w + GAP), r * (cell_h + GAP)
            draw.text((x + 4, y + 3), label, fill="black", font=font)
            sheet.paste(image.resize((w, h)), (x, y + LABEL_HEIGHT))
    return sheet


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    out, specs = Path(argv[1]), argv[2:]
    rows = {spec.split("/", 1)[0] for spec in specs if "/" in spec.split("=", 1)[0]} or {"0"}
    columns = []
    for spec in specs:
        label, path = spec.split("=", 1)
        columns.append((label.split("/", 1)[-1], Path(path)))
    compose(columns, rows=len(rows)).save(out, optimize=True)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))

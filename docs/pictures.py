"""Draw the README's picture of the input spreadsheet: `python docs/pictures.py`.

The picture shows the seed's own example as Excel shows it (column letters, row numbers, the
header row, a separator row), with notes on what each kind of row means to convtune.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

ROWS = [
    ("Human", "AI", "the two actors: user, then assistant"),
    ("Hello", "I'm an AI", "one exchange: a message and its reply"),
    ("Open the pod bay doors please", "No", ""),
    ("Open the pod bay doors!", "Well, if you insist", ""),
    ("###", "###", "separator row: the conversation ends"),
    ("Good morning", "Hey", "a new conversation"),
    ("Can you read me the news?", "", "no reply: context for the next row"),
    ("Is there something you can do?", "You should know", ""),
]


def draw(path: Path) -> None:
    widths = [0.45, 3.3, 2.2]  # row numbers, column A, column B (inches)
    height = 0.36
    fig = plt.figure(figsize=(9.6, height * (len(ROWS) + 1) + 0.2), dpi=130)
    ax = fig.add_axes((0, 0, 1, 1))
    total_w = 9.6
    ax.set_xlim(0, total_w)
    ax.set_ylim(0, height * (len(ROWS) + 1) + 0.2)
    ax.axis("off")
    top = height * (len(ROWS) + 1) + 0.1
    grey, border = "#e8e8e8", "#b0b0b0"

    def cell(x, y, w, text, *, fill="white", bold=False, color="black", align="left"):
        ax.add_patch(Rectangle((x, y), w, height, facecolor=fill, edgecolor=border, lw=0.8))
        tx = x + (w / 2 if align == "center" else 0.08)
        ax.text(
            tx,
            y + height / 2,
            text,
            va="center",
            ha=align,
            fontsize=10.5,
            fontweight="bold" if bold else "normal",
            color=color,
            family="DejaVu Sans",
        )

    x0 = 0.1
    y = top - height
    cell(x0, y, widths[0], "", fill=grey)
    cell(x0 + widths[0], y, widths[1], "A", fill=grey, align="center")
    cell(x0 + widths[0] + widths[1], y, widths[2], "B", fill=grey, align="center")
    for number, (a, b, note) in enumerate(ROWS, start=1):
        y = top - height * (number + 1)
        header = number == 1
        separator = a == "###"
        fill = "#dbe9f7" if header else "#fdf1d6" if separator else "white"
        cell(x0, y, widths[0], str(number), fill=grey, align="center")
        cell(x0 + widths[0], y, widths[1], a, fill=fill, bold=header)
        cell(x0 + widths[0] + widths[1], y, widths[2], b, fill=fill, bold=header)
        if note:
            ax.annotate(
                note,
                xy=(x0 + sum(widths) + 0.05, y + height / 2),
                xytext=(x0 + sum(widths) + 0.35, y + height / 2),
                va="center",
                fontsize=9.5,
                color="#444444",
                arrowprops={"arrowstyle": "-", "color": "#999999", "lw": 0.8},
            )
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("spreadsheet.png")
    draw(target)
    print(target)

"""Evaluation report: Markdown to read in a diff or on a forge, self-contained HTML with training curves.

The evaluate stage builds one `report` dict (see `render_markdown`) and writes what these functions return;
this module only formats. Charts are hand-made SVG so the HTML opens offline, from an artifact store or an
e-mail, and the project needs no plotting library.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

DEFAULT_TAGS = ("train/loss", "eval/loss", "train/learning_rate")
LOSS_TAGS = ("train/loss", "eval/loss")
LR_TAGS = ("train/learning_rate",)
DEFAULT_TITLE = "kotune evaluation"
MISSING = "—"
# Tableau 10: distinct on white and under the common colour-vision deficiencies.
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac")
MARKERS_UP_TO = 30  # dots on each point of short series (eval/loss has a few); on long ones they hide the line

Series = dict[str, list[tuple[int, float]]]
Table = tuple[list[str], list[list[str]]]  # header, rows: plain text, escaped only by the renderer


# --- TensorBoard ------------------------------------------------------------------------------------------

def read_curves(tensorboard_dir: str | Path, tags: tuple[str, ...] = DEFAULT_TAGS) -> Series:
    """Scalar series `tag -> [(step, value)]`, sorted by step, from every event-file folder under the dir.

    A tag never logged, or a folder that does not exist, is simply absent: a report is still written for a
    run that logged nothing. Folders are read in name order (Trainer's default run folders start with the
    date) and a later folder's value wins a step both logged.
    """
    merged: dict[str, dict[int, float]] = {}
    for run_dir in _event_dirs(Path(tensorboard_dir)):
        for tag, by_step in _read_run(run_dir, tags).items():
            merged.setdefault(tag, {}).update(by_step)
    return {tag: sorted(by_step.items()) for tag, by_step in merged.items()}


def _event_dirs(root: Path) -> list[Path]:
    # EventAccumulator reads the event files of one folder only, not its subfolders.
    if not root.is_dir():
        return []
    return sorted({path.parent for path in root.rglob("events.out.tfevents.*")})


def _read_run(run_dir: Path, tags: Iterable[str]) -> dict[str, dict[int, float]]:
    # Imported here so that rendering a report does not pay for importing TensorBoard.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})  # 0 keeps all
    accumulator.Reload()
    available = accumulator.Tags()
    found: dict[str, dict[int, float]] = {}
    for tag in tags:
        if tag in available.get("scalars", []):
            found[tag] = {event.step: float(event.value) for event in accumulator.Scalars(tag)}
        elif tag in available.get("tensors", []):  # SummaryWriter.add_scalar(..., new_style=True) logs tensors
            found[tag] = {event.step: float(make_ndarray(event.tensor_proto)) for event in accumulator.Tensors(tag)}
    return found


# --- SVG chart --------------------------------------------------------------------------------------------

def svg_line_chart(series: Series, title: str, width: int = 640, height: int = 280) -> str:
    """An inline SVG line chart: one polyline per non-empty series, rounded axis ticks, legend and title.

    Non-finite points (a diverged loss) are dropped rather than stretching the axes to infinity.
    """
    clean = {name: points for name, points in ((str(n), _finite(p)) for n, p in series.items()) if points}
    if not clean:
        return _no_data_svg(title, width)
    x_ticks = _nice_ticks([x for points in clean.values() for x, _ in points], whole=True)
    y_ticks = _nice_ticks([y for points in clean.values() for _, y in points])
    frame = _Frame(width, height, x_ticks, y_ticks)
    parts = [_svg_open(width, height, title), _svg_title(title, width), *frame.axes()]
    for index, points in enumerate(clean.values()):
        parts += frame.line(points, PALETTE[index % len(PALETTE)])
    parts += _legend(list(clean), height)
    parts.append("</svg>")
    return "\n".join(parts)


def _finite(points: Iterable) -> list[tuple[float, float]]:
    # Points may come back from JSON as lists rather than tuples.
    pairs = [(float(x), float(y)) for x, y in points]
    return [(x, y) for x, y in pairs if math.isfinite(x) and math.isfinite(y)]


def _nice_ticks(values: list[float], count: int = 4, whole: bool = False) -> list[float]:
    """Ticks on a 1-2-5 step that enclose the values, so the axis ends are rounded numbers.

    `whole` keeps the step at 1 or more, for training steps: a tick at step 1.5 names nothing.
    """
    low, high = min(values), max(values)
    if high == low:  # a single point, or a flat line: give it room instead of dividing by zero
        pad = 1.0 if whole else abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    step = _nice_step((high - low) / count)
    step = max(step, 1) if whole else step
    first, last = math.floor(low / step) * step, math.ceil(high / step) * step
    return [first + i * step for i in range(round((last - first) / step) + 1)]


def _nice_step(raw: float) -> float:
    exponent = math.floor(math.log10(raw))
    fraction = raw / 10**exponent
    nice = 1 if fraction <= 1 else 2 if fraction <= 2 else 5 if fraction <= 5 else 10
    return nice * 10**exponent


class _Frame:
    """Maps data to pixels inside the margins that hold the title, tick labels and legend."""

    left, right, top, bottom = 72, 16, 32, 60  # left fits a y label such as 1.5e-05

    def __init__(self, width: int, height: int, x_ticks: list[float], y_ticks: list[float]):
        self.width, self.height = width, height
        self.x_ticks, self.y_ticks = x_ticks, y_ticks
        self.plot_w = max(width - self.left - self.right, 1)
        self.plot_h = max(height - self.top - self.bottom, 1)

    def px(self, x: float) -> float:
        low, high = self.x_ticks[0], self.x_ticks[-1]
        return self.left + (x - low) / (high - low) * self.plot_w

    def py(self, y: float) -> float:
        low, high = self.y_ticks[0], self.y_ticks[-1]
        return self.top + self.plot_h - (y - low) / (high - low) * self.plot_h

    def axes(self) -> list[str]:
        x0, x1, y0, y1 = self.left, self.left + self.plot_w, self.top + self.plot_h, self.top
        parts = []
        for y in self.y_ticks:
            py = self.py(y)
            parts.append(f'<line x1="{x0}" y1="{py:.1f}" x2="{x1}" y2="{py:.1f}" stroke="#e5e5e5"/>')
            parts.append(f'<text x="{x0 - 6}" y="{py + 4:.1f}" text-anchor="end">{_esc(_number(y))}</text>')
        for x in self.x_ticks:
            px = self.px(x)
            parts.append(f'<line x1="{px:.1f}" y1="{y0}" x2="{px:.1f}" y2="{y0 + 4}" stroke="#333"/>')
            parts.append(f'<text x="{px:.1f}" y="{y0 + 18}" text-anchor="middle">{_esc(_number(x))}</text>')
        # A <path>, not a <polyline>, so that polylines are the data series only.
        parts.append(f'<path d="M{x0},{y1} V{y0} H{x1}" fill="none" stroke="#333"/>')
        return parts

    def line(self, points: list[tuple[float, float]], color: str) -> list[str]:
        coords = [(self.px(x), self.py(y)) for x, y in points]
        joined = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        parts = [f'<polyline points="{joined}" fill="none" stroke="{color}" stroke-width="2"/>']
        if len(coords) <= MARKERS_UP_TO:  # a single point draws no line: the dot is all there is to see
            parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in coords]
        return parts


def _svg_open(width: int, height: int, title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}" '
            'font-family="sans-serif" font-size="12">')


def _svg_title(title: str, width: int) -> str:
    return (f'<text x="{width / 2:.0f}" y="20" text-anchor="middle" font-size="14" font-weight="bold">'
            f'{_esc(title)}</text>')


def _legend(names: list[str], height: int) -> list[str]:
    # One row under the x tick labels; the width of each entry is estimated, as SVG cannot measure text.
    parts, x, y = [], _Frame.left, height - 14
    for index, name in enumerate(names):
        color = PALETTE[index % len(PALETTE)]
        parts.append(f'<rect x="{x}" y="{y - 9}" width="14" height="10" fill="{color}"/>')
        parts.append(f'<text x="{x + 18}" y="{y}">{_esc(name)}</text>')
        x += 30 + 7 * len(name)
    return parts


def _no_data_svg(title: str, width: int) -> str:
    return "\n".join([
        _svg_open(width, 60, title), _svg_title(title, width),
        f'<text x="{width / 2:.0f}" y="44" text-anchor="middle" fill="#888">no data</text>', "</svg>"])


# --- Tables shared by both renderers ----------------------------------------------------------------------

def _number(value: float, digits: int = 4) -> str:
    """`digits` significant digits, without an exponent for everyday magnitudes (12350, not 1.235e+04)."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    exponent = math.floor(math.log10(abs(value)))
    if not -4 <= exponent < 6:
        mantissa, power = f"{value:.{digits - 1}e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{power}"
    decimals = digits - 1 - exponent
    text = f"{round(value, decimals):.{max(decimals, 0)}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _cell(value) -> str:
    if value is None:
        return MISSING
    if isinstance(value, bool):  # before int: bool is an int
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _number(value)
    return str(value)


def _metrics_table(metrics: Mapping) -> Table:
    names = _ordered_union(row.keys() for row in metrics.values() if isinstance(row, Mapping))
    rows = [[str(model), *(_cell(row.get(name) if isinstance(row, Mapping) else None) for name in names)]
            for model, row in metrics.items()]
    return ["model", *names], rows


def _mc_table(mc: list[Mapping]) -> Table:
    header = ["task", "model", "accuracy", "chance", "above chance", "items"]
    return header, [[_cell(r.get("task")), _cell(r.get("model")), _cell(r.get("accuracy")),
                     _cell(r.get("chance")), _above_chance(r), _cell(r.get("items"))] for r in mc]


def _above_chance(row: Mapping) -> str:
    accuracy, chance = row.get("accuracy"), row.get("chance")
    if not isinstance(accuracy, int | float) or not isinstance(chance, int | float):
        return MISSING
    difference = accuracy - chance
    return ("+" if difference > 0 else "") + _number(float(difference))


def _provenance_table(provenance: Mapping) -> Table:
    return ["key", "value"], [[str(key), _cell(value)] for key, value in provenance.items()]


def _generation_models(generations: list[Mapping]) -> list[str]:
    # Every table gets the same columns, so a model missing from one prompt shows as "—" instead of shifting.
    return _ordered_union(
        [*(g.get("outputs") or {}).keys(), *(g.get("stopped") or {}).keys()] for g in generations)


def _generation_table(generation: Mapping, models: list[str]) -> Table:
    outputs, stopped = generation.get("outputs") or {}, generation.get("stopped") or {}
    return ["", *models], [["output", *(_cell(outputs.get(m)) for m in models)],
                           ["stopped at EOS", *(_cell(stopped.get(m)) for m in models)]]


def _generation_heading(index: int, generation: Mapping) -> str:
    settings = generation.get("settings")
    return f"Prompt {index}" + (f" · {settings}" if settings else "")


def _ordered_union(groups: Iterable[Iterable]) -> list[str]:
    seen: dict[str, None] = {}
    for group in groups:
        seen.update((str(key), None) for key in group)
    return list(seen)


# --- Markdown ---------------------------------------------------------------------------------------------

def render_markdown(report: Mapping) -> str:
    """Markdown report. `report` keys, all optional: title, notes, metrics, mc, generations, provenance.

    metrics: model -> metric -> number or None; mc: [{task, model, accuracy, chance, items}];
    generations: [{prompt, settings, outputs: model -> text, stopped: model -> bool}];
    provenance: str -> str; curves: tag -> [(step, value)] (charted in the HTML report only).
    """
    parts = [f"# {_md_text(report.get('title') or DEFAULT_TITLE)}", _md_notes(report.get("notes") or [])]
    parts.append(_md_section("Metrics", _md_table(_metrics_table(report["metrics"]))
                             if report.get("metrics") else None))
    parts.append(_md_section("Multiple choice", _md_table(_mc_table(report["mc"])) if report.get("mc") else None))
    parts.append(_md_generations(report.get("generations") or []))
    parts.append(_md_section("Training curves", "The loss and learning-rate charts are in the HTML report "
                                                "written beside this file."))
    parts.append(_md_section("Provenance", _md_table(_provenance_table(report["provenance"]))
                             if report.get("provenance") else None))
    return "\n\n".join(part for part in parts if part) + "\n"


def _md_text(text) -> str:
    # Model output such as <|eot_id|> would otherwise be read as an HTML tag and vanish when rendered.
    return html.escape(str(text), quote=False)


def _md_cell(text: str) -> str:
    # A bare | ends the cell and a newline ends the row; <br> is how GitHub-flavoured tables break lines.
    return _md_text(text).replace("|", "\\|").replace("\r\n", "\n").replace("\n", "<br>")


def _md_table(table: Table) -> str:
    header, rows = table
    lines = [_md_row(header), "|" + "---|" * len(header)]
    return "\n".join(lines + [_md_row(row) for row in rows])


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(_md_cell(cell) for cell in cells) + " |"


def _md_section(title: str, body: str | None) -> str:
    return f"## {title}\n\n{body or '_None recorded._'}"


def _md_notes(notes: list) -> str:
    return "\n".join(f"- {_md_text(note).replace(chr(10), ' ')}" for note in notes)


def _md_generations(generations: list[Mapping]) -> str:
    if not generations:
        return _md_section("Generations", None)
    models = _generation_models(generations)
    parts = ["## Generations"]
    for index, generation in enumerate(generations, 1):
        quoted = "\n".join(f"> {_md_text(line)}" for line in str(generation.get("prompt", "")).splitlines())
        parts += [f"### {_md_text(_generation_heading(index, generation))}", quoted or f"> {MISSING}",
                  _md_table(_generation_table(generation, models))]
    return "\n\n".join(parts)


# --- HTML -------------------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, "Apple SD Gothic Neo", "Malgun Gothic", "Noto Sans KR", sans-serif;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top;
         white-space: pre-wrap; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
table.generation { table-layout: fixed; width: 100%; }
table.generation td:first-child, table.generation th:first-child { width: 9em; }
blockquote { margin: 0.5em 0; padding: 0.3em 1em; border-left: 4px solid #ccc; white-space: pre-wrap; }
svg { display: block; margin: 0.5em 0 1em; }
"""

PAGE = """<!DOCTYPE html>
<html lang="ko">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
{body}
</body>
</html>
"""


def render_html(report: Mapping) -> str:
    """Self-contained HTML report: the Markdown report's content plus SVG training curves; nothing external."""
    title = _esc(report.get("title") or DEFAULT_TITLE)
    body = [f"<h1>{title}</h1>", _html_notes(report.get("notes") or [])]
    body.append(_html_section("Metrics", _html_table(_metrics_table(report["metrics"]))
                              if report.get("metrics") else None))
    body.append(_html_section("Multiple choice", _html_table(_mc_table(report["mc"])) if report.get("mc") else None))
    body.append(_html_generations(report.get("generations") or []))
    body.append(_html_section("Training curves", _html_curves(report.get("curves") or {})))
    body.append(_html_section("Provenance", _html_table(_provenance_table(report["provenance"]))
                              if report.get("provenance") else None))
    return PAGE.format(title=title, css=CSS, body="\n".join(part for part in body if part))


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def _html_table(table: Table, css_class: str = "") -> str:
    header, rows = table
    head = "<tr>" + "".join(f"<th>{_esc(cell)}</th>" for cell in header) + "</tr>"
    body = ["<tr>" + "".join(f"<td>{_esc(cell)}</td>" for cell in row) + "</tr>" for row in rows]
    opening = f'<table class="{css_class}">' if css_class else "<table>"
    return "\n".join([opening, f"<thead>{head}</thead>", "<tbody>", *body, "</tbody>", "</table>"])


def _html_section(title: str, body: str | None) -> str:
    return f"<section>\n<h2>{_esc(title)}</h2>\n{body or '<p><em>None recorded.</em></p>'}\n</section>"


def _html_notes(notes: list) -> str:
    if not notes:
        return ""
    return "<ul>\n" + "\n".join(f"<li>{_esc(note)}</li>" for note in notes) + "\n</ul>"


def _html_generations(generations: list[Mapping]) -> str:
    models = _generation_models(generations)
    parts = []
    for index, generation in enumerate(generations, 1):
        parts += [f"<h3>{_esc(_generation_heading(index, generation))}</h3>",
                  f"<blockquote>{_esc(generation.get('prompt', MISSING))}</blockquote>",
                  _html_table(_generation_table(generation, models), "generation")]
    return _html_section("Generations", "\n".join(parts) or None)


def _html_curves(curves: Mapping) -> str:
    # Losses share one chart so overfitting (eval rising while train falls) shows at a glance.
    charts = [svg_line_chart(_pick(curves, LOSS_TAGS), "Loss"),
              svg_line_chart(_pick(curves, LR_TAGS), "Learning rate")]
    charts += [svg_line_chart({tag: points}, tag) for tag, points in curves.items() if tag not in LOSS_TAGS + LR_TAGS]
    return "\n".join(charts)


def _pick(curves: Mapping, tags: tuple[str, ...]) -> Series:
    return {tag: curves[tag] for tag in tags if tag in curves}

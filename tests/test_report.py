import re

import pytest

from kotune.report import read_curves, render_html, render_markdown, svg_line_chart

pytestmark = pytest.mark.unit
KOREAN_PROMPT = "운영체제가 뭐하는 거야?"
KOREAN_ANSWER = "운영체제는 하드웨어를 관리하는 프로그램입니다.\n둘째 줄"


def sample_report() -> dict:
    return {
        "title": "kotune evaluation",
        "provenance": {"git_commit": "abc123", "base_model": "models/tiny-ko", "adapter": "models/adapter"},
        "metrics": {
            "base": {"eval_loss": 6.1, "perplexity": 445.8, "eos_stop_rate": 0.0},
            "adapter": {"eval_loss": 2.345678, "perplexity": 10.44, "eos_stop_rate": None},
            "merged": {"eval_loss": 2.345679, "perplexity": 12345.6},
        },
        "mc": [{"task": "builtin", "model": "base", "accuracy": 0.3, "chance": 0.25, "items": 40}],
        "generations": [
            {"prompt": KOREAN_PROMPT, "settings": "greedy",
             "outputs": {"base": "a | b <script>alert(1)</script>", "merged": KOREAN_ANSWER},
             "stopped": {"base": False, "merged": True}},
            {"prompt": "두 번째", "settings": "sampled", "outputs": {"merged": "only merged"}},  # base missing
        ],
        "curves": {"train/loss": [(1, 4.0), (2, 3.5), (3, 3.0)], "eval/loss": [(3, 3.25)],
                   "train/learning_rate": [[1, 2e-4], [2, 1e-4]]},  # lists, as after a JSON round trip
        "notes": ["tiny model: numbers are a smoke test"],
    }


# --- svg_line_chart ---------------------------------------------------------------------------------------

def test_chart_has_one_polyline_per_non_empty_series():
    svg = svg_line_chart({"train/loss": [(1, 3.0), (2, 2.0)], "eval/loss": [(2, 2.5)], "empty": []}, "Loss")
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<polyline") == 2
    assert "train/loss" in svg and "eval/loss" in svg and "empty" not in svg  # legend names drawn series only


def test_chart_escapes_title_and_series_names():
    svg = svg_line_chart({"a<b": [(0, 1.0), (1, 2.0)]}, 'loss <&> "quoted"')
    assert "loss &lt;&amp;&gt; &quot;quoted&quot;" in svg
    assert "a&lt;b" in svg and "<&>" not in svg and "a<b" not in svg


@pytest.mark.parametrize("series", [{}, {"train/loss": []}, {"train/loss": [(1, float("nan"))]}])
def test_chart_without_data_says_so(series):
    svg = svg_line_chart(series, "Loss")
    assert "no data" in svg and "<polyline" not in svg and svg.endswith("</svg>")


def test_chart_single_point_is_visible_and_finite():
    svg = svg_line_chart({"eval/loss": [(5, 2.0)]}, "Loss")
    assert svg.count("<polyline") == 1 and svg.count("<circle") == 1
    assert "nan" not in svg and "inf" not in svg  # a zero range must not divide by zero


def test_chart_ticks_are_rounded_and_enclose_the_data():
    svg = svg_line_chart({"train/loss": [(1, 2.37), (97, 6.81)]}, "Loss")
    y_labels = re.findall(r'text-anchor="end">([^<]+)</text>', svg)
    x_labels = re.findall(r'y="\d+" text-anchor="middle">([^<]+)</text>', svg)
    assert y_labels == ["2", "4", "6", "8"]  # a 1-2-5 step, ends rounded outward from 2.37 and 6.81
    assert x_labels == ["0", "50", "100"]


def test_chart_points_stay_inside_the_canvas():
    svg = svg_line_chart({"lr": [(0, 0.0), (10, 2e-4), (100, 1e-5)]}, "Learning rate", width=400, height=200)
    points = re.search(r'<polyline points="([^"]+)"', svg).group(1)
    for pair in points.split():
        x, y = map(float, pair.split(","))
        assert 0 <= x <= 400 and 0 <= y <= 200


# --- read_curves ------------------------------------------------------------------------------------------

def test_read_curves_round_trips_tensorboard_scalars(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    losses = [4.0, 3.5, 3.0, 2.75, 2.5]  # exact in float32, which is how event files store scalars
    writer = SummaryWriter(log_dir=str(tmp_path / "tb"))
    for step, loss in enumerate(losses, 1):
        writer.add_scalar("train/loss", loss, step)
    writer.add_scalar("eval/loss", 3.25, 5)
    writer.close()
    curves = read_curves(tmp_path / "tb")
    assert curves == {"train/loss": list(enumerate(losses, 1)), "eval/loss": [(5, 3.25)]}  # lr never logged


def test_read_curves_reads_run_subfolders(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path / "tb" / "run1"))  # Trainer's default runs/<date>_<host>
    writer.add_scalar("train/learning_rate", 0.5, 1)
    writer.close()
    assert read_curves(tmp_path / "tb", tags=("train/learning_rate",)) == {"train/learning_rate": [(1, 0.5)]}


def test_read_curves_missing_or_empty_folder_is_empty(tmp_path):
    assert read_curves(tmp_path / "absent") == {}
    assert read_curves(tmp_path) == {}


# --- render_markdown --------------------------------------------------------------------------------------

def test_markdown_tables_and_missing_values():
    markdown = render_markdown(sample_report())
    assert markdown.startswith("# kotune evaluation\n")
    assert "| model | eval_loss | perplexity | eos_stop_rate |" in markdown
    assert "| base | 6.1 | 445.8 | 0 |" in markdown
    assert "| adapter | 2.346 | 10.44 | — |" in markdown
    assert "| merged | 2.346 | 12350 | — |" in markdown  # 4 significant digits, no exponent; absent -> —
    assert "| builtin | base | 0.3 | 0.25 | +0.05 | 40 |" in markdown
    assert "| git_commit | abc123 |" in markdown
    assert "HTML report" in markdown


def test_markdown_generation_cells_escape_pipes_and_newlines():
    markdown = render_markdown(sample_report())
    assert f"> {KOREAN_PROMPT}" in markdown and "### Prompt 1 · greedy" in markdown
    escaped = "a \\| b &lt;script&gt;alert(1)&lt;/script&gt;"
    assert f"| output | {escaped} | 운영체제는 하드웨어를 관리하는 프로그램입니다.<br>둘째 줄 |" in markdown
    assert "| stopped at EOS | no | yes |" in markdown
    assert "| output | — | only merged |" in markdown  # the second prompt has no base output
    for line in markdown.splitlines():
        if line.startswith("| output"):
            assert len(re.findall(r"(?<!\\)\|", line)) == 4  # 3 columns: no unescaped | from the text


def test_markdown_tolerates_missing_keys():
    markdown = render_markdown({})
    assert markdown.startswith("# kotune evaluation")
    assert "## Metrics" in markdown and "None recorded" in markdown


# --- render_html ------------------------------------------------------------------------------------------

def test_html_keeps_korean_through_a_utf8_file(tmp_path):
    path = tmp_path / "eval.html"
    path.write_text(render_html(sample_report()), encoding="utf-8")
    page = path.read_text(encoding="utf-8")
    assert '<meta charset="utf-8">' in page
    assert KOREAN_PROMPT in page and "운영체제는 하드웨어를 관리하는 프로그램입니다." in page


def test_html_escapes_user_text():
    page = render_html(sample_report())
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_html_tables_and_charts():
    page = render_html(sample_report())
    assert page.count("<table") == 5  # metrics, mc, two generations, provenance
    assert "<td>—</td>" in page and "<td>12350</td>" in page
    assert page.count("<svg") == 2 and page.count("<polyline") == 3  # Loss (train + eval), Learning rate
    assert "Learning rate" in page and "git_commit" in page


def test_html_is_self_contained():
    page = render_html(sample_report())
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert "<link" not in page.lower() and "<script" not in page.lower()
    assert "@import" not in page and "url(" not in page


def test_html_tolerates_missing_keys():
    page = render_html({"generations": [{"prompt": "질문"}]})
    assert page.startswith("<!DOCTYPE html>") and "질문" in page
    assert "no data" in page  # curves absent: charts say so instead of failing

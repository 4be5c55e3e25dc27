"""Korean multiple-choice tasks, scored by the log-likelihood a model gives each option.

An item is a context and the options that continue it; the model's answer is the option whose summed
log-probability given the context is highest (lm-evaluation-harness's `acc`). Options start with a
space so that context + option reads as one text and the tokenizer sees the word boundary.

`load_task` reads, telling the layout from the file itself:
  - KoBEST v1.0 TSV (COPA, HellaSwag, BoolQ, SentiNeg, WiC), by header;
  - KMMLU-style JSON/JSONL: question, A..D, answer as a letter or a 1-based int (KMMLU's CSV);
  - CLIcK-style JSON/JSONL: question, choices, answer as the choice's text or a 0-based int,
    optional paragraph. The built-in set (`builtin_task`) has this layout.

    from kotune.mctasks import builtin_task, score_task
    score_task(builtin_task(), loglikelihood)  # {"accuracy": ..., "chance": 0.25, "items": 40}
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from kotune.errors import KotuneError

BUILTIN = "data/ko_mc_builtin.json"  # relative to the kotune package
KMMLU_LETTERS = ("A", "B", "C", "D")
YES_NO = (" 아니오", " 예")  # index 0 = false, 1 = true, as KoBEST's 0/1 labels
ANSWER_CUE = "\n정답:"  # ends every JSON-layout context, so the options continue the answer slot


@dataclass(frozen=True)
class MCItem:
    context: str  # the text the options continue
    options: tuple[str, ...]
    answer: int  # 0-based index into options

    def __post_init__(self):
        if len(self.options) < 2 or not 0 <= self.answer < len(self.options):
            raise ValueError(f"MCItem needs >= 2 options and 0 <= answer < {len(self.options)}, got {self.answer}")


@dataclass(frozen=True)
class MCTask:
    name: str
    items: tuple[MCItem, ...]

    def __post_init__(self):
        if not self.items:
            raise ValueError(f"MCTask {self.name!r} has no items")

    @property
    def chance(self) -> float:
        """Expected accuracy of a uniform random guess (items may have different option counts)."""
        return sum(1 / len(item.options) for item in self.items) / len(self.items)


def load_task(path: str | Path) -> MCTask:
    """A KoBEST TSV or a KMMLU/CLIcK JSON(L) file; a malformed record raises KotuneError naming it."""
    path = Path(path)
    text = _read_text(path)
    if not text.strip():
        raise KotuneError(f"{path}: empty file")
    if text.lstrip()[:1] in ("[", "{"):
        return MCTask(path.stem, _nonempty(path, _json_items(path, text)))
    # KoBEST names its files train/dev/test inside one folder per task: keep the task in the name.
    name = f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem
    return MCTask(name, _nonempty(path, _tsv_items(path, text)))


def score_task(task: MCTask, loglikelihood: Callable[[str, str], float], limit: int | None = None) -> dict:
    """Accuracy of argmax-log-likelihood choices over the first `limit` items (all when None)."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be None or >= 1, got {limit}")
    items = task.items[:limit]
    correct = sum(_predict(item, loglikelihood) == item.answer for item in items)
    # Chance of the items actually scored, so a limited run compares against its own baseline.
    chance = MCTask(task.name, items).chance
    return {"accuracy": correct / len(items), "chance": chance, "items": len(items)}


def builtin_task() -> MCTask:
    """kotune's own 40 four-option Korean items (CLIcK layout), shipped inside the package."""
    with resources.as_file(resources.files("kotune").joinpath(BUILTIN)) as path:
        return load_task(path)


def _predict(item: MCItem, loglikelihood: Callable[[str, str], float]) -> int:
    scores = [float(loglikelihood(item.context, option)) for option in item.options]
    # A NaN compares false with everything, so argmax would silently depend on option order.
    if any(math.isnan(s) for s in scores):
        raise ValueError(f"loglikelihood returned NaN for context {item.context[:60]!r}")
    return max(range(len(scores)), key=scores.__getitem__)  # max keeps the first: ties -> lowest index


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")  # utf-8-sig also drops a leading BOM
    except FileNotFoundError:
        raise KotuneError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise KotuneError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None


def _nonempty(path: Path, items: list[MCItem]) -> tuple[MCItem, ...]:
    if not items:
        raise KotuneError(f"{path}: no items")
    return tuple(items)


@dataclass(frozen=True)
class _Record:
    """One input record with where it came from, so every error names file, line/item and field."""

    path: Path
    where: str  # ":12" (line) or " item 3" (0-based index in a JSON array)
    values: dict[str, Any]

    def fail(self, field: str, problem: str) -> KotuneError:
        return KotuneError(f"{self.path}{self.where}: field '{field}' {problem}")

    def text(self, field: str) -> str:
        value = self.values.get(field)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(field, "is missing or empty")
        return value.strip()

    def index(self, field: str, base: int, count: int) -> int:
        """An int field counted from `base` (0 or 1), checked against `count` options, as 0-based."""
        value = self.values.get(field)
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                pass  # reported below with the original text
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(field, f"must be an integer, got {value!r}")
        if not base <= value < base + count:
            raise self.fail(field, f"is {value}, outside {base}..{base + count - 1}")
        return value - base

    def boolean(self, field: str) -> int:
        # KoBEST writes True/False, TRUE/FALSE (BoolQ, WiC) or 0/1 (SentiNeg), even within one file.
        value = self.text(field).lower()
        if value not in ("true", "false", "1", "0"):
            raise self.fail(field, f"must be True/False or 1/0, got {self.values[field]!r}")
        return int(value in ("true", "1"))


# --- KoBEST TSV ---------------------------------------------------------------------------------


def _copa(r: _Record) -> MCItem:
    connectors = {"결과": " 그래서", "원인": " 왜냐하면"}  # effect: "so", cause: "because" (as lm-eval's)
    question = r.text("question")  # text() strips: COPA/train has "원인 " with a trailing space
    if question not in connectors:
        raise r.fail("question", f"must be 원인 or 결과, got {question!r}")
    # The sentence keeps its final "."; lm-eval's kobest_copa does the same.
    options = (" " + r.text("1"), " " + r.text("2"))
    return MCItem(r.text("sentence") + connectors[question], options, r.index("Answer", 1, 2))


def _hellaswag(r: _Record) -> MCItem:
    options = tuple(" " + r.text(f"choice{i}") for i in range(1, 5))
    return MCItem(r.text("context"), options, r.index("label", 0, 4))


def _boolq(r: _Record) -> MCItem:
    context = f"{r.text('Text')}\n질문: {r.text('Question')}\n답변:"
    return MCItem(context, YES_NO, r.boolean("Answer"))


def _sentineg(r: _Record) -> MCItem:
    # SentiNeg/test also has Label_origin/Text_origin; Label/Text are the negated sentences it tests.
    return MCItem(f"문장: {r.text('Text')}\n긍정 또는 부정?", (" 부정", " 긍정"), r.index("Label", 0, 2))


def _wic(r: _Record) -> MCItem:
    context = (
        f"문장 1: {r.text('SENTENCE1')}\n문장 2: {r.text('SENTENCE2')}\n"
        f"두 문장에서 '{r.text('Target')}'의 의미가 같은가?"
    )
    return MCItem(context, YES_NO, r.boolean("ANSWER"))


# First layout whose columns the header contains wins; BoolQ precedes SentiNeg (both have Text).
TSV_LAYOUTS: tuple[tuple[frozenset[str], Callable[[_Record], MCItem]], ...] = (
    (frozenset({"sentence", "question", "1", "2", "Answer"}), _copa),
    (frozenset({"context", "choice1", "choice2", "choice3", "choice4", "label"}), _hellaswag),
    (frozenset({"Text", "Question", "Answer"}), _boolq),
    (frozenset({"Target", "SENTENCE1", "SENTENCE2", "ANSWER"}), _wic),
    (frozenset({"Text", "Label"}), _sentineg),
)


def _tsv_items(path: Path, text: str) -> list[MCItem]:
    header, rows = _tsv_rows(path, text)
    parse = next((parse for columns, parse in TSV_LAYOUTS if columns <= set(header)), None)
    if parse is None:
        raise KotuneError(
            f"{path}: unknown TSV layout, header {header}; expected a KoBEST COPA, HellaSwag, "
            "BoolQ, SentiNeg or WiC file"
        )
    items = []
    for line, row in rows:
        if len(row) != len(header):
            raise KotuneError(f"{path}:{line}: {len(row)} tab-separated fields, the header has {len(header)}")
        items.append(parse(_Record(path, f":{line}", dict(zip(header, row, strict=True)))))
    return items


def _tsv_rows(path: Path, text: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header (names stripped) and (line, fields) for each non-blank row after it."""
    # KoBEST quotes nothing but has '"' inside BoolQ/HellaSwag texts: QUOTE_NONE keeps them literal
    # and one record per physical line, so line_num is the record's line. CRLF endings (most KoBEST
    # files) are handled by the csv module itself, hence newline="".
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        header = [name.strip() for name in next(reader, [])]
        rows = [(reader.line_num, row) for row in reader if any(field.strip() for field in row)]
    except csv.Error as exc:
        raise KotuneError(f"{path}:{reader.line_num}: {exc}") from None
    return header, rows


# --- KMMLU / CLIcK JSON -------------------------------------------------------------------------


def _json_items(path: Path, text: str) -> list[MCItem]:
    return [_json_item(record) for record in _json_records(path, text)]


def _json_records(path: Path, text: str) -> Iterator[_Record]:
    if text.lstrip().startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KotuneError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
        for index, value in enumerate(values):
            yield _json_record(path, f" item {index}", value)
        return
    for line, raw in enumerate(text.splitlines(), 1):
        if raw.strip():
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise KotuneError(f"{path}:{line}: malformed JSON ({exc.msg})") from None
            yield _json_record(path, f":{line}", value)


def _json_record(path: Path, where: str, value: Any) -> _Record:
    if not isinstance(value, dict):
        raise KotuneError(f"{path}{where}: expected a JSON object, got {type(value).__name__}")
    return _Record(path, where, value)


def _json_item(r: _Record) -> MCItem:
    if "choices" in r.values:
        return _click(r)
    if "A" in r.values:
        return _kmmlu(r)
    raise r.fail("choices", "is missing (nor are there KMMLU's A..D fields)")


def _kmmlu(r: _Record) -> MCItem:
    options = tuple(" " + r.text(letter) for letter in KMMLU_LETTERS)
    answer = r.values.get("answer")
    if isinstance(answer, str) and answer.strip().upper() in KMMLU_LETTERS:
        index = KMMLU_LETTERS.index(answer.strip().upper())
    else:
        index = r.index("answer", 1, len(KMMLU_LETTERS))  # KMMLU's CSV counts answers from 1
    return MCItem(r.text("question") + ANSWER_CUE, options, index)


def _click(r: _Record) -> MCItem:
    choices = r.values["choices"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
        raise r.fail("choices", "must be a list of at least 2 non-empty strings")
    choices = [c.strip() for c in choices]
    paragraph = r.values.get("paragraph")
    prefix = paragraph.strip() + "\n" if isinstance(paragraph, str) and paragraph.strip() else ""
    context = prefix + r.text("question") + ANSWER_CUE
    return MCItem(context, tuple(" " + c for c in choices), _click_answer(r, choices))


def _click_answer(r: _Record, choices: list[str]) -> int:
    answer = r.values.get("answer")
    if not isinstance(answer, str):
        return r.index("answer", 0, len(choices))  # an int answer is 0-based here, unlike KMMLU's
    matches = [i for i, choice in enumerate(choices) if choice == answer.strip()]
    if len(matches) != 1:
        raise r.fail("answer", f"{answer!r} matches {len(matches)} of the choices, not exactly one")
    return matches[0]

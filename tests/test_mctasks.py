import json
from collections import Counter

import pytest

from kotune.errors import KotuneError
from kotune.mctasks import MCItem, MCTask, builtin_task, load_task, score_task

pytestmark = pytest.mark.unit


def write_tsv(path, rows, newline="\n"):
    """Rows joined with tabs, no quoting, like KoBEST (whose files mostly end lines with CRLF)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(newline.join("\t".join(row) for row in rows).encode("utf-8"))
    return path


def write_json(path, records, lines=False):
    if lines:
        text = "\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n"
    else:
        text = json.dumps(records, ensure_ascii=False, indent=2)
    path.write_text(text, encoding="utf-8")
    return path


# --- KoBEST TSV layouts ------------------------------------------------------------------------


def test_copa_connects_cause_and_effect_and_counts_answers_from_one(tmp_path):
    # 2 items: an effect (결과) and a cause (원인, with COPA/train's stray trailing space)
    path = write_tsv(
        tmp_path / "COPA" / "dev.tsv",
        [
            ["ID", "sentence", "question", "1", "2", "Answer"],
            ["1", "전쟁이 시작되었다.", "결과", "병사들이 집으로 돌아왔다.", "병사들이 전투에 파견되었다.", "2"],
            ["2", "바닥이 젖었다.", "원인 ", "누가 물을 쏟았다.", "해가 떴다.", "1"],
        ],
        newline="\r\n",
    )
    task = load_task(path)
    assert task.name == "COPA/dev"
    assert task.items == (
        MCItem("전쟁이 시작되었다. 그래서", (" 병사들이 집으로 돌아왔다.", " 병사들이 전투에 파견되었다."), 1),
        MCItem("바닥이 젖었다. 왜냐하면", (" 누가 물을 쏟았다.", " 해가 떴다."), 0),
    )
    assert task.chance == 0.5


def test_hellaswag_has_four_options_and_zero_based_labels(tmp_path):
    # a '"' inside a field must stay literal: KoBEST does not quote
    path = write_tsv(
        tmp_path / "HellaSwag" / "dev.tsv",
        [
            ["context", "choice1", "choice2", "choice3", "choice4", "label"],
            ['그가 "안녕"이라고 말한다.', "가", "나", "다", "라", "3"],
        ],
    )
    task = load_task(path)
    assert task.name == "HellaSwag/dev"
    assert task.items == (MCItem('그가 "안녕"이라고 말한다.', (" 가", " 나", " 다", " 라"), 3),)
    assert task.chance == 0.25


def test_boolq_reads_true_false_in_any_case(tmp_path):
    # KoBEST BoolQ writes True/False and TRUE/FALSE (train, test), never 0/1 -- accept both
    path = write_tsv(
        tmp_path / "BoolQ" / "dev.tsv",
        [
            ["ID", "Text", "Question", "Answer"],
            ["1", "하늘은 파랗다.", "하늘은 파란가?", "True"],
            ["2", "물은 차갑다.", "물은 뜨거운가?", "FALSE"],
            ["3", "불은 뜨겁다.", "불은 뜨거운가?", "1"],
        ],
    )
    items = load_task(path).items
    assert items[0] == MCItem("하늘은 파랗다.\n질문: 하늘은 파란가?\n답변:", (" 아니오", " 예"), 1)
    assert [item.answer for item in items] == [1, 0, 1]


@pytest.mark.parametrize("header", [["ID", "Label", "Text"], ["ID", "Text", "Label"]])
def test_sentineg_reads_either_column_order(tmp_path, header):
    values = {"ID": "7", "Label": "0", "Text": "별로예요"}
    path = write_tsv(tmp_path / "SentiNeg" / "train.tsv", [header, [values[h] for h in header]])
    task = load_task(path)
    assert task.name == "SentiNeg/train"
    assert task.items == (MCItem("문장: 별로예요\n긍정 또는 부정?", (" 부정", " 긍정"), 0),)


def test_sentineg_test_layout_uses_the_negated_label_and_text(tmp_path):
    path = write_tsv(
        tmp_path / "SentiNeg" / "test.tsv",
        [
            ["ID", "Label_origin", "Text_origin", "Label", "Text", "Category_neg"],
            ["3394", "0", "마음에 안 들어요", "1", "마음에 들어요", "1"],
        ],
    )
    assert load_task(path).items == (MCItem("문장: 마음에 들어요\n긍정 또는 부정?", (" 부정", " 긍정"), 1),)


def test_wic_asks_whether_the_target_means_the_same(tmp_path):
    header = ["ID", "Target", "SENTENCE1", "Dictionary 1", "Link 1", "SENTENCE2", "Dictionary 2", "Link2", "ANSWER"]
    path = write_tsv(
        tmp_path / "WiC" / "dev.tsv",
        [
            header,
            ["1", "배", "[배]가 고프다.", "1", "http://a", "[배]를 타고 간다.", "2", "http://b", "False"],
            ["2", "눈", "[눈]이 온다.", "1", "http://a", "[눈]이 쌓였다.", "1", "http://a", "TRUE"],
        ],
        newline="\r\n",
    )
    items = load_task(path).items
    assert items[0] == MCItem(
        "문장 1: [배]가 고프다.\n문장 2: [배]를 타고 간다.\n두 문장에서 '배'의 의미가 같은가?", (" 아니오", " 예"), 0
    )
    assert items[1].answer == 1  # upper-case TRUE (10 of WiC/dev's answers) is true too


def test_tsv_with_bom_and_blank_trailing_line(tmp_path):
    path = tmp_path / "HellaSwag" / "dev.tsv"
    path.parent.mkdir()
    path.write_bytes("\ufeffcontext\tchoice1\tchoice2\tchoice3\tchoice4\tlabel\n문맥\t가\t나\t다\t라\t0\n\n".encode())
    assert len(load_task(path).items) == 1


# --- KMMLU / CLIcK JSON layouts -----------------------------------------------------------------


def test_kmmlu_json_with_letter_answers(tmp_path):
    path = write_json(
        tmp_path / "kmmlu.json",
        [
            {"question": "1+1은?", "A": "1", "B": "2", "C": "3", "D": "4", "answer": "B"},
            {"question": "2+2는?", "A": "4", "B": "2", "C": "3", "D": "5", "answer": "A"},
        ],
    )
    task = load_task(path)
    assert task.name == "kmmlu"
    assert task.items[0] == MCItem("1+1은?\n정답:", (" 1", " 2", " 3", " 4"), 1)
    assert [item.answer for item in task.items] == [1, 0]
    assert task.chance == 0.25


def test_kmmlu_jsonl_with_one_based_int_answers(tmp_path):
    # KMMLU's CSV counts answers 1..4; "3" as text (CSV converted without types) reads the same
    path = write_json(
        tmp_path / "kmmlu.jsonl",
        [
            {"question": "가?", "A": "a", "B": "b", "C": "c", "D": "d", "answer": 1},
            {"question": "나?", "A": "a", "B": "b", "C": "c", "D": "d", "answer": 4},
            {"question": "다?", "A": "a", "B": "b", "C": "c", "D": "d", "answer": "3"},
        ],
        lines=True,
    )
    assert [item.answer for item in load_task(path).items] == [0, 3, 2]


def test_click_json_with_text_answers_and_optional_paragraph(tmp_path):
    path = write_json(
        tmp_path / "click.json",
        [
            {
                "paragraph": "서울은 대한민국의 수도이다.",
                "question": "대한민국의 수도는?",
                "choices": ["부산", "서울", "대구"],
                "answer": "서울",
            },
            {"question": "1+2는?", "choices": ["3", "4"], "answer": "3"},
            {"paragraph": "", "question": "빨간 과일은?", "choices": ["바나나", "사과"], "answer": 1},
        ],
    )
    items = load_task(path).items
    assert items == (
        MCItem("서울은 대한민국의 수도이다.\n대한민국의 수도는?\n정답:", (" 부산", " 서울", " 대구"), 1),
        MCItem("1+2는?\n정답:", (" 3", " 4"), 0),  # a digit text answer matches the choice's text
        MCItem("빨간 과일은?\n정답:", (" 바나나", " 사과"), 1),  # an int answer is 0-based for CLIcK
    )
    assert load_task(path).chance == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)


def test_json_with_bom(tmp_path):
    path = tmp_path / "click.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"question": "q", "choices": ["a", "b"], "answer": 0}]).encode())
    assert len(load_task(path).items) == 1


# --- malformed input names file, line or item, and field -----------------------------------------


@pytest.mark.parametrize(
    ("rows", "where", "field"),
    [
        ([["1", "문장.", "결과", "가", "나", "3"]], ":2", "Answer"),  # answer out of 1..2
        ([["1", "문장.", "결과", "가", "나", "2"], ["2", "문장.", "이유", "가", "나", "1"]], ":3", "question"),
        ([["1", "문장.", "결과", "", "나", "1"]], ":2", "1"),  # empty option
        ([["1", "문장.", "결과", "가", "나", "둘"]], ":2", "Answer"),  # not a number
    ],
)
def test_malformed_copa_row(tmp_path, rows, where, field):
    path = write_tsv(tmp_path / "COPA" / "dev.tsv", [["ID", "sentence", "question", "1", "2", "Answer"], *rows])
    with pytest.raises(KotuneError, match=rf"dev\.tsv{where}: field '{field}'"):
        load_task(path)


def test_tsv_row_with_missing_column_names_its_line(tmp_path):
    path = write_tsv(tmp_path / "BoolQ" / "dev.tsv", [["ID", "Text", "Question", "Answer"], ["1", "글", "질문?"]])
    with pytest.raises(KotuneError, match=r"dev\.tsv:2: 3 tab-separated fields, the header has 4"):
        load_task(path)


def test_boolq_answer_that_is_not_a_boolean(tmp_path):
    path = write_tsv(tmp_path / "BoolQ" / "dev.tsv", [["ID", "Text", "Question", "Answer"], ["1", "글", "질문?", "예"]])
    with pytest.raises(KotuneError, match=r"dev\.tsv:2: field 'Answer' must be True/False"):
        load_task(path)


def test_unknown_tsv_header_names_file_and_header(tmp_path):
    path = write_tsv(tmp_path / "other.tsv", [["id", "prompt", "completion"], ["1", "a", "b"]])
    with pytest.raises(KotuneError, match=r"other\.tsv: unknown TSV layout, header \['id', 'prompt', 'completion'\]"):
        load_task(path)


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"question": "q", "A": "a", "B": "b", "C": "c", "answer": "A"}, "D"),  # missing option
        ({"question": "q", "A": "a", "B": "b", "C": "c", "D": "d", "answer": "E"}, "answer"),  # bad letter
        ({"question": "q", "A": "a", "B": "b", "C": "c", "D": "d", "answer": 0}, "answer"),  # 1-based: 0 is out
        ({"question": "q", "A": "a", "B": "b", "C": "c", "D": "d"}, "answer"),  # missing answer
        ({"A": "a", "B": "b", "C": "c", "D": "d", "answer": 1}, "question"),
        ({"question": "q", "choices": ["a", "b"], "answer": 2}, "answer"),  # 0-based: 2 is out
        ({"question": "q", "choices": ["a", "b"], "answer": "c"}, "answer"),  # text not among choices
        ({"question": "q", "choices": "a, b", "answer": "a"}, "choices"),
        ({"question": "q", "options": ["a", "b"], "answer": 0}, "choices"),  # neither layout
    ],
)
def test_malformed_json_record_names_item_and_field(tmp_path, record, field):
    good = {"question": "q", "choices": ["a", "b"], "answer": 0}
    array = write_json(tmp_path / "t.json", [good, record])
    with pytest.raises(KotuneError, match=rf"t\.json item 1: field '{field}'"):
        load_task(array)
    lines = write_json(tmp_path / "t.jsonl", [good, good, record], lines=True)
    with pytest.raises(KotuneError, match=rf"t\.jsonl:3: field '{field}'"):
        load_task(lines)


def test_malformed_json_text_names_the_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n{"question": \n', encoding="utf-8")
    with pytest.raises(KotuneError, match=r"t\.jsonl:2: malformed JSON"):
        load_task(path)
    path = tmp_path / "t.json"
    path.write_text('[\n  {"question": "q"},\n  {"question": }\n]\n', encoding="utf-8")
    with pytest.raises(KotuneError, match=r"t\.json:3: malformed JSON"):
        load_task(path)


def test_json_array_item_that_is_not_an_object(tmp_path):
    path = write_json(tmp_path / "t.json", [{"question": "q", "choices": ["a", "b"], "answer": 0}, ["q"]])
    with pytest.raises(KotuneError, match=r"t\.json item 1: expected a JSON object, got list"):
        load_task(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(KotuneError, match=r"absent\.json: no such file"):
        load_task(tmp_path / "absent.json")
    (tmp_path / "latin1.tsv").write_bytes("context\tchoice1\n\xe9".encode("latin-1"))
    with pytest.raises(KotuneError, match=r"latin1\.tsv: not UTF-8"):
        load_task(tmp_path / "latin1.tsv")
    (tmp_path / "empty.json").write_text("[]", encoding="utf-8")
    with pytest.raises(KotuneError, match=r"empty\.json: no items"):
        load_task(tmp_path / "empty.json")
    (tmp_path / "blank.tsv").write_text("\n", encoding="utf-8")
    with pytest.raises(KotuneError, match=r"blank\.tsv: empty file"):
        load_task(tmp_path / "blank.tsv")


# --- scoring ------------------------------------------------------------------------------------

# answers 0, 1, 2, 0 over 4 + 4 + 2 + 2 options: chance (1/4 + 1/4 + 1/2 + 1/2) / 4 = 0.375
TASK = MCTask(
    "toy",
    (
        MCItem("c0", (" a", " b", " c", " d"), 0),
        MCItem("c1", (" a", " b", " c", " d"), 1),
        MCItem("c2", (" a", " b"), 1),
        MCItem("c3", (" a", " b"), 0),
    ),
)


def oracle(context, option):
    """0 for the right option, -1 for the others: a perfect model."""
    item = next(item for item in TASK.items if item.context == context)
    return 0.0 if option == item.options[item.answer] else -1.0


def test_oracle_scores_one_and_reports_chance():
    assert score_task(TASK, oracle) == {"accuracy": 1.0, "chance": 0.375, "items": 4}


def test_constant_loglikelihood_picks_the_first_option():
    # ties go to the lowest index, so accuracy is the share of items whose answer is 0: 2 of 4
    assert score_task(TASK, lambda context, option: -3.0)["accuracy"] == 0.5


def test_argmax_picks_the_highest_loglikelihood():
    assert score_task(TASK, lambda context, option: -ord(option[1]))["accuracy"] == 0.5  # always " a"
    assert score_task(TASK, lambda context, option: ord(option[1]))["accuracy"] == 0.25  # last option: c2 only


def test_limit_scores_the_first_items_with_their_own_chance():
    calls = []

    def ll(context, option):
        calls.append(context)
        return 0.0

    assert score_task(TASK, ll, limit=2) == {"accuracy": 0.5, "chance": 0.25, "items": 2}
    assert set(calls) == {"c0", "c1"}
    assert score_task(TASK, ll, limit=100)["items"] == 4
    with pytest.raises(ValueError, match="limit"):
        score_task(TASK, ll, limit=0)


def test_nan_loglikelihood_is_an_error_not_a_silent_guess():
    with pytest.raises(ValueError, match="NaN"):
        score_task(TASK, lambda context, option: float("nan"))


def test_items_and_tasks_reject_impossible_shapes():
    with pytest.raises(ValueError):
        MCItem("c", (" a", " b"), 2)
    with pytest.raises(ValueError):
        MCItem("c", (" a",), 0)
    with pytest.raises(ValueError):
        MCTask("empty", ())


# --- the built-in set ---------------------------------------------------------------------------


def test_builtin_task_has_40_balanced_four_option_items():
    task = builtin_task()
    assert task.name == "ko_mc_builtin"
    assert len(task.items) == 40
    assert all(len(item.options) == 4 and len(set(item.options)) == 4 for item in task.items)
    assert Counter(item.answer for item in task.items) == {0: 10, 1: 10, 2: 10, 3: 10}
    assert len({item.context for item in task.items}) == 40
    assert all(item.context.endswith("\n정답:") and all(o.startswith(" ") for o in item.options) for item in task.items)
    assert task.chance == 0.25
    assert score_task(task, lambda context, option: 0.0) == {"accuracy": 0.25, "chance": 0.25, "items": 40}


# --- the real KoBEST dev files (../shared/data/kobest; skipped when absent) ---------------------


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("task_dir", "items", "chance", "answers"),
    [
        # answer counts from the files themselves: COPA 1/2 = 248/252, BoolQ False/True = 374/326, ...
        ("COPA", 500, 0.5, {0: 248, 1: 252}),
        ("HellaSwag", 500, 0.25, {0: 111, 1: 125, 2: 145, 3: 119}),
        ("BoolQ", 700, 0.5, {0: 374, 1: 326}),
        ("SentiNeg", 400, 0.5, {0: 200, 1: 200}),
        ("WiC", 610, 0.5, {0: 349, 1: 261}),  # 343 False + 6 FALSE, 257 True + 4 TRUE
    ],
)
def test_real_kobest_dev_files(shared_data, task_dir, items, chance, answers):
    path = shared_data / "kobest" / task_dir / "dev.tsv"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    task = load_task(path)
    assert task.name == f"{task_dir}/dev"
    assert len(task.items) == items
    assert task.chance == chance
    assert Counter(item.answer for item in task.items) == answers
    assert all(option.startswith(" ") and option.strip() for item in task.items for option in item.options)
    assert not any("\r" in item.context for item in task.items)  # CRLF line ends did not leak into texts

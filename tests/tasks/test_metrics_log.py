from tasks import metrics_log

ROWS = [{"round": r, "train_loss": 1.0 / r, "round_seconds": 0.5} for r in (1, 2, 3, 4)]


def write_rows(path, rows):
    for row in rows:
        metrics_log.append_row(path, row)


def test_appended_rows_read_back_in_order(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"

    write_rows(path, ROWS)

    assert metrics_log.read_rows(path) == ROWS


def test_a_missing_file_has_no_rows(tmp_path):
    assert metrics_log.read_rows(tmp_path / "metrics.jsonl") == []


def test_a_torn_last_line_is_ignored(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_rows(path, ROWS[:2])
    with open(path, "a") as f:
        f.write('{"round": 3, "train_lo')  # the writer was killed mid-row

    assert metrics_log.read_rows(path) == ROWS[:2]


def test_a_complete_json_last_line_without_its_newline_is_still_torn(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_rows(path, ROWS[:1])
    with open(path, "a") as f:
        f.write('{"round": 2}')

    assert metrics_log.read_rows(path) == ROWS[:1]


def test_truncate_after_drops_later_rounds_and_reports_how_many(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_rows(path, ROWS)

    dropped = metrics_log.truncate_after(path, 2)

    assert dropped == 2
    assert metrics_log.read_rows(path) == ROWS[:2]


def test_truncate_after_the_last_round_keeps_everything(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_rows(path, ROWS)

    assert metrics_log.truncate_after(path, 4) == 0
    assert metrics_log.read_rows(path) == ROWS


def test_truncate_after_removes_a_torn_line_so_later_appends_are_readable(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_rows(path, ROWS[:2])
    with open(path, "a") as f:
        f.write('{"round": 3, "train_lo')

    assert metrics_log.truncate_after(path, 2) == 0
    metrics_log.append_row(path, ROWS[2])

    assert metrics_log.read_rows(path) == ROWS[:3]


def test_truncate_after_on_a_missing_file_drops_nothing(tmp_path):
    assert metrics_log.truncate_after(tmp_path / "metrics.jsonl", 5) == 0

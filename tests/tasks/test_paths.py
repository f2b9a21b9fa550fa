"""Run directories are named safely and never shared by two Airflow runs."""

from tasks.paths import safe_name


def test_run_ids_that_differ_only_in_unsafe_characters_get_different_run_directories():
    assert safe_name("reference") == "reference"
    a, b = safe_name("manual__2026-01-01T00:00:00+00:00"), safe_name("manual__2026-01-01T00_00_00_00_00")
    assert a != b and "/" not in a and ":" not in a
    assert safe_name("../../etc") not in ("..", "../../etc") and "/" not in safe_name("../../etc")

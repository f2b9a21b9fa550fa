from tasks import metrics_log, plots


def test_plots_are_drawn_for_the_metrics_a_run_has(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    for r in range(1, 7):
        row = {"round": r, "train_loss": 2.0 / r, "train_accuracy": 0.1 * r, "epsilon": 0.3 * r}
        if r % 2 == 0:
            row |= {"test_loss": 2.2 / r, "test_accuracy": 0.1 * r - 0.05}
        metrics_log.append_row(metrics, row)

    written = plots.render(metrics, tmp_path / "plots", title="fedavg, dp")

    assert sorted(p.name for p in written) == ["accuracy.png", "epsilon.png", "loss.png"]  # no compression: none
    for png in written:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_series_skips_rounds_without_the_metric():
    rows = [{"round": 1, "a": 1.0}, {"round": 2}, {"round": 3, "a": None}, {"round": 4, "a": 4}]

    assert plots.series(rows, "a") == ([1, 4], [1.0, 4.0])

"""What `make run` prints at the end: the run's headline numbers named for what they measure."""

from __future__ import annotations

from tasks import report, steps

SUMMARY = {"rounds": 3, "final_test_accuracy": 0.5, "final_test_loss": 1.25, "mlflow_run_id": "r", "experiment": "e",
           "tracking_uri": "sqlite:///x", "registered_model_name": "m", "version": "1", "model_uri": "models:/m/1",
           "run_dir": "/tmp/run"}


def test_a_classifiers_summary_reports_test_accuracy_and_loss():
    text = report.render({**SUMMARY, "algorithm": "fedavg"}, seconds=75)
    assert "3 rounds of fedavg finished in 1 min 15 s." in text
    assert "final test accuracy  0.5000   (test loss 1.2500)" in text


def test_a_run_that_is_not_a_classifier_reports_what_its_numbers_measure():
    final = {"test_accuracy": 0.38, "test_loss": 1.06, "test_accuracy_label": "test rating accuracy",
             "test_loss_label": "test MSE"}
    assert steps.metric_labels(final) == ("test rating accuracy", "test MSE")
    assert steps.metric_labels({"test_accuracy": 0.9}) == ("test accuracy", "test loss")
    labels = dict(zip(("test_accuracy_label", "test_loss_label"), steps.metric_labels(final), strict=True))
    text = report.render({**SUMMARY, "algorithm": "fed_recon", **labels})
    assert "rounds of fed_recon finished." in text and "final test rating accuracy  0.5000   (test MSE 1.2500)" in text
    assert "federated averaging" in report.render(SUMMARY)  # a summary written before the labels existed

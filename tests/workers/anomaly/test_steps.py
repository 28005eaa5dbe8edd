"""When a model trained in steps stops (StepBudget, shared by EfficientAD, STFPM and the
autoencoder), and what it reports."""

from workers.anomaly.steps import StepBudget


def test_the_step_budget_stops_at_its_steps_and_reports_each():
    seen = []
    budget = StepBudget(3, lambda f, m: seen.append((round(f, 3), m)))
    assert [budget.done_step(loss) for loss in (1.0, 0.5, 0.25)] == [False, False, True]
    assert seen[-1] == (1.0, "step 3/3 loss 0.2500") and len(seen) == 3
    assert not budget.stopped_early and budget.last == 0.25
    assert budget.ema == 0.9 * (0.9 * 1.0 + 0.1 * 0.5) + 0.1 * 0.25
    summary = budget.summary()  # what each model puts in its metrics
    assert (summary["steps_done"], summary["last_loss"], summary["stopped_early"]) == (
        3,
        0.25,
        False,
    )
    assert summary["final_loss"] == budget.ema and summary["fit_seconds"] >= 0


def test_patience_stops_when_the_smoothed_loss_no_longer_improves_by_one_percent():
    budget = StepBudget(100, lambda f, m: None, patience=3)
    stops = [budget.done_step(loss) for loss in (1.0, 0.5)]  # improving
    stops += [budget.done_step(0.62) for _ in range(3)]  # the average still falls: improving
    assert not any(stops)
    flat = [budget.done_step(budget.ema) for _ in range(3)]  # no 1 % gain for 3 steps
    assert flat == [False, False, True] and budget.stopped_early and budget.done == 8

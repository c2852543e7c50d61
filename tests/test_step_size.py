import numpy as np
import pytest

from keepset.training.step_size import probe_learning_rate


def test_step_is_scale_over_mean_squared_feature_norm():
    f = np.array([[3.0, 4.0], [0.0, 0.0]])  # squared norms 25 and 0, mean 12.5
    assert probe_learning_rate(f) == pytest.approx(10 / 12.5)
    assert probe_learning_rate(f, scale=2.5) == pytest.approx(0.2)
    assert probe_learning_rate(2 * f) == pytest.approx(probe_learning_rate(f) / 4)  # longer features, smaller step


def test_bad_features_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        probe_learning_rate(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        probe_learning_rate(np.ones(3))
    with pytest.raises(ValueError, match="scale"):
        probe_learning_rate(np.ones((2, 2)), scale=0)

import pytest
import torch

from gradaudit.data.sampling import class_spread


def test_class_spread_covers_classes_before_repeating():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 5)
    idx = class_spread(labels, 6, seed=1)
    assert len(set(idx)) == 6
    assert sorted(int(labels[i]) for i in idx[:3]) == [0, 1, 2]
    assert sorted(int(labels[i]) for i in idx) == [0, 0, 1, 1, 2, 2]
    assert idx == class_spread(labels, 6, seed=1) and idx != class_spread(labels, 6, seed=2)


def test_class_spread_exhausts_small_classes_and_refuses_too_many():
    labels = torch.tensor([0] * 4 + [1])
    assert sorted(class_spread(labels, 5)) == list(range(5))
    with pytest.raises(ValueError):
        class_spread(labels, 6)

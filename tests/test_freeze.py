"""model.freeze keeps the first backbone stages fixed: weights and BatchNorm statistics."""

import pytest
import torch

from facelab.errors import ConfigError
from facelab.models.model import AttributeModel


def test_frozen_stages_do_not_change_but_the_rest_trains():
    torch.manual_seed(0)
    model = AttributeModel("mobilenet_v2", "", "multitask", 0.0, freeze=4)
    frozen = [p for s in model.backbone.stages()[:4] for p in s.state_dict().values()]
    before_frozen = [t.clone() for t in frozen]
    later = model.backbone.stages()[10].state_dict()
    before_later = {k: v.clone() for k, v in later.items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    out = model(torch.rand(4, 3, 64, 64))
    sum(o.sum() for o in out.values()).backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before_frozen, frozen))  # incl. BN running stats
    after_later = model.backbone.stages()[10].state_dict()
    assert any(not torch.equal(before_later[k], after_later[k]) for k in before_later)


def test_freezing_more_stages_than_exist_is_a_clear_error():
    with pytest.raises(ConfigError, match="only 19 stages"):
        AttributeModel("mobilenet_v2", "", "multitask", freeze=40)

"""DP-SGD through train_task: empty Poisson batches still take (noise-only) accounted steps."""

from __future__ import annotations

import torch

from tests.unicon_core.training.test_learning import TINY, DictDataset
from unicon_core.config import TaskSpec, TrainConfig
from unicon_core.federation.config import PrivacyConfig
from unicon_core.model import UniconModel
from unicon_core.privacy import DPSGD
from unicon_core.training import make_loader, train_task

SURV = TaskSpec(name="surv", kind="survival", modality="clinical", spatial_dims=0,
                feature_names=["a", "b"])


def test_every_poisson_batch_is_a_counted_step_even_when_empty() -> None:
    # Prepare: 4 examples at batch size 1 -> sample rate 0.25, so empty draws are frequent
    g = torch.Generator().manual_seed(0)
    data = DictDataset(input=torch.randn(4, 2, generator=g), time=torch.rand(4, generator=g) + 0.1,
                       event=torch.ones(4))
    model = UniconModel(TINY, seed=0)
    model.add_task(SURV)
    before = model.skill_state_dict("surv")
    dp = DPSGD(PrivacyConfig(enabled=True, noise_multiplier=1.0, max_grad_norm=1.0), seed=0)
    sizes: list[int] = []

    def spy(module, optimizer, loader):  # record the drawn batch sizes
        module, optimizer, loader = dp(module, optimizer, loader)
        original = optimizer.pre_step  # the scheduler wraps step(); pre_step runs inside it

        def pre_step(*args, **kwargs):
            sizes.append(int(optimizer.grad_samples[0].shape[0]) if optimizer.grad_samples else -1)
            return original(*args, **kwargs)

        optimizer.pre_step = pre_step
        return module, optimizer, loader

    # Execute
    result = train_task(model, "surv", make_loader(data, 1, shuffle=True, seed=0),
                        TrainConfig(epochs=5, batch_size=1, progress=False), make_private=spy)
    dp.close()
    # Assert: 5 epochs x 4 expected batches, each one a step the accountant knows about
    assert result.steps == 20 == len(sizes)
    assert 0 in sizes, "the test needs at least one empty Poisson draw to mean anything"
    assert sum(s for _, _, s in dp.history) == 20
    after = model.skill_state_dict("surv")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_dp_training_keeps_and_resumes_its_optimiser_state() -> None:
    """Under DP the kept moments are the wrapped optimiser's (derived from noised gradients
    only), and a second DP run resumes them."""
    g = torch.Generator().manual_seed(0)
    data = DictDataset(input=torch.randn(8, 2, generator=g), time=torch.rand(8, generator=g) + 0.1,
                       event=torch.ones(8))
    model = UniconModel(TINY, seed=0)
    model.add_task(SURV)
    cfg = TrainConfig(epochs=1, batch_size=4, progress=False, keep_optimizer_state=True)
    states = []
    for _ in range(2):
        dp = DPSGD(PrivacyConfig(enabled=True, noise_multiplier=1.0, max_grad_norm=1.0), seed=0)
        result = train_task(model, "surv", make_loader(data, 4, shuffle=True, seed=0), cfg,
                            make_private=dp, optimizer_state=states[-1] if states else None)
        dp.close()
        assert result.state_refused == ""
        states.append(result.optimizer_state)
    steps = [float(s[k]) for s in states for k in s if k.endswith("/step")]
    assert steps and max(steps) == 2 * min(steps)  # the second run counted on from the first

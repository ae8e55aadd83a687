"""Training: checkpoints, configuration, EMA, LR schedule, data order, and the HiDiff trainer end to end.

The trainer tests use the real models at tiny widths (UNet base 8, BBDM width 32) on 32x32 synthetic images, with
torch limited to one thread: these tests share a small machine, where OpenMP threads fighting for cores are far
slower than one thread.
"""

from __future__ import annotations

import csv
import json
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from hidiff.checkpoint import load_checkpoint, save_checkpoint
from hidiff.config import TrainingConfig
from hidiff.data import build_dataset
from hidiff.factory import build_model
from hidiff.losses import discriminative_loss
from hidiff.training import EMA, PolyLambda, Trainer, distributed, poly_scheduler, run_training
from hidiff.training.sampler import EpochSeededDataset, ResumableBatchSampler
from hidiff.training.seeding import get_rng_state, set_rng_state

IMAGE_SIZE = 32


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(output_dir, pretrain=1, alternate=2, batch_size=2, **optim) -> TrainingConfig:
    return TrainingConfig.from_dict(
        {
            "data": {"image_size": IMAGE_SIZE, "batch_size": batch_size, "num_workers": 0, "val_split": None},
            "model": {"segmentor": "unet", "segmentor_kwargs": {"base_channels": 8}, "refiner_channels": 32},
            "optim": {"lr": 1e-3, **optim},
            "train": {
                "pretrain_iterations": pretrain,
                "alternate_iterations": alternate,
                "log_interval": 1,
                "eval_interval": 0,
                "checkpoint_interval": 0,
            },
            "output_dir": str(output_dir),
        }
    )


def _dataset(length: int):
    return build_dataset("synthetic", None, "train", image_size=IMAGE_SIZE, length=length)


def _trainer(config: TrainingConfig, dataset, seed: int = 0, **kwargs) -> Trainer:
    torch.manual_seed(seed)
    return Trainer(config, build_model(config, 3, 1), dataset, device="cpu", **kwargs)


def _batch(dataset, indices) -> tuple[torch.Tensor, torch.Tensor]:
    samples = [dataset[i] for i in indices]
    return torch.stack([s["image"] for s in samples]), torch.stack([s["mask"] for s in samples])


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: nn.Module, params_only: bool = False) -> list[str]:
    names = dict(module.named_parameters()) if params_only else module.state_dict()
    return [name for name in names if not torch.equal(before[name], module.state_dict()[name])]


# ---------------------------------------------------------------------------------------------- checkpoints


class _Exploding:
    """Serialisation fails on this object, after the tensors before it were written."""

    def __reduce__(self):
        raise RuntimeError("disk full (simulated)")


def test_checkpoint_round_trip_loads_with_weights_only(tmp_path):
    state = {
        "model": nn.Linear(3, 2).state_dict(),
        "steps": {"pretrain": 3, "alternate": 0},
        "rng": get_rng_state(),
        "config": TrainingConfig().to_dict(),
        "best": {"value": None, "step": None},
    }
    path = save_checkpoint(tmp_path / "sub" / "latest.pt", state)
    loaded = load_checkpoint(path)
    torch.testing.assert_close(loaded["model"]["weight"], state["model"]["weight"])
    assert loaded["steps"] == state["steps"] and loaded["config"] == state["config"]
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])


def test_checkpoint_with_arbitrary_objects_is_refused_on_load(tmp_path):
    path = save_checkpoint(tmp_path / "bad.pt", {"optimizer": torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1)})
    with pytest.raises(ValueError, match="cannot load checkpoint"):
        load_checkpoint(path)


def test_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    save_checkpoint(path, {"step": 1, "weight": torch.ones(1000)})

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"step": 2, "weight": torch.zeros(1000), "bad": _Exploding()})
    assert load_checkpoint(path)["step"] == 1

    def failing_replace(src, dst):
        raise OSError("rename failed (simulated)")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        save_checkpoint(path, {"step": 3, "weight": torch.zeros(1000)})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]  # no temporary files left behind


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        load_checkpoint(tmp_path / "nothere.pt")


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    save_checkpoint(tmp_path / "rng.pt", {"rng": get_rng_state()})
    expected = (random.random(), np.random.randn(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    got = (random.random(), np.random.randn(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


# ---------------------------------------------------------------------------------------------- configuration


def test_config_yaml_round_trip(tmp_path):
    config = TrainingConfig.from_dict(
        {"data": {"name": "kvasir", "root": "/data/kvasir", "kwargs": {"augment": False}}, "optim": {"lr": 3e-4}}
    )
    path = config.save_yaml(tmp_path / "config.yaml")
    assert TrainingConfig.load_yaml(path) == config
    assert TrainingConfig.from_dict(config.to_dict()) == config


def test_config_defaults_follow_the_paper():
    config = TrainingConfig()
    assert config.optim.lambda_diff == 1.0  # not the public code's 0, which disables the collaboration
    assert (config.optim.lr, config.optim.poly_power, config.optim.ema_decay) == (1e-4, 0.9, 0.9999)
    assert (config.optim.dice_weight, config.train.pretrain_iterations, config.diffusion.num_steps) == (1.0, 40000, 10)


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    with pytest.raises(ValueError, match=r"optim\.lrr"):
        TrainingConfig.from_dict({"optim": {"lrr": 1e-4}})
    with pytest.raises(ValueError, match="unknown configuration key trainer"):
        TrainingConfig.from_dict({"trainer": {}})
    with pytest.raises(ValueError, match=r"data\.batch_size must be an integer"):
        TrainingConfig.from_dict({"data": {"batch_size": 2.5}})
    with pytest.raises(ValueError, match=r"optim\.lr must be > 0"):
        TrainingConfig.from_dict({"optim": {"lr": -1.0}})
    with pytest.raises(ValueError, match="must be a mapping"):
        TrainingConfig.from_dict({"optim": [1, 2]})
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-4\n  weight_decay: 0\ntrain:\n  seed: 7\n")  # YAML reads 1e-4 as a string
    config = TrainingConfig.load_yaml(path)
    assert config.optim.lr == 1e-4 and config.optim.weight_decay == 0.0 and config.train.seed == 7
    (tmp_path / "empty.yaml").write_text("")
    assert TrainingConfig.load_yaml(tmp_path / "empty.yaml") == TrainingConfig()
    with pytest.raises(FileNotFoundError):
        TrainingConfig.load_yaml(tmp_path / "missing.yaml")


# ---------------------------------------------------------------------------------------------- EMA and schedule


def test_ema_math_buffers_and_swap(tmp_path):
    module = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = EMA(module, decay=0.9)
    start = module[0].weight.detach().clone()
    with torch.no_grad():
        module[0].weight.fill_(1.0)
        module[1].running_mean.fill_(5.0)
    ema.update(module)
    torch.testing.assert_close(ema.shadow["0.weight"], 0.9 * start + 0.1)
    torch.testing.assert_close(ema.shadow["1.running_mean"], torch.full((2,), 5.0))  # copied, not averaged
    with torch.no_grad():
        module[0].weight.fill_(3.0)
    ema.update(module)
    expected = 0.9 * (0.9 * start + 0.1) + 0.1 * 3.0
    torch.testing.assert_close(ema.shadow["0.weight"], expected)

    with ema.apply_to(module):
        torch.testing.assert_close(module[0].weight.detach(), expected)
    torch.testing.assert_close(module[0].weight.detach(), torch.full((2, 2), 3.0))

    save_checkpoint(tmp_path / "ema.pt", {"ema": ema.state_dict()})
    restored = EMA(module, decay=0.5)
    restored.load_state_dict(load_checkpoint(tmp_path / "ema.pt")["ema"])
    assert restored.decay == 0.9 and restored.num_updates == 2
    torch.testing.assert_close(restored.shadow["0.weight"], expected)


def test_ema_warmup_decay():
    ema = EMA(nn.Linear(1, 1), decay=0.9999, warmup=True)
    assert ema.current_decay() == pytest.approx(1 / 10)
    ema.num_updates = 90
    assert ema.current_decay() == pytest.approx(91 / 100)
    ema.num_updates = 10**6
    assert ema.current_decay() == 0.9999
    with pytest.raises(ValueError, match="decay"):
        EMA(nn.Linear(1, 1), decay=1.0)


def test_poly_learning_rate(tmp_path):
    optimizer = torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=0.1)
    scheduler = poly_scheduler(optimizer, iterations=10, power=0.9)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.1 * (1 - i / 10) ** 0.9 for i in range(10)])
    assert optimizer.param_groups[0]["lr"] == 0.0
    # The scheduler state (with the PolyLambda's attributes) is weights_only-loadable.
    save_checkpoint(tmp_path / "s.pt", {"scheduler": scheduler.state_dict()})
    other = poly_scheduler(torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=0.1), iterations=10)
    other.load_state_dict(load_checkpoint(tmp_path / "s.pt")["scheduler"])
    assert other.last_epoch == 10
    with pytest.raises(ValueError, match="iterations"):
        PolyLambda(0)


# ---------------------------------------------------------------------------------------------- data order


def test_resumable_sampler_order_shards_and_batch_composition():
    full = ResumableBatchSampler(10, batch_size=2, seed=3)
    stream = iter(full)
    first = [next(stream) for _ in range(12)]  # 5 batches per epoch: crosses two epoch boundaries
    resumed = iter(ResumableBatchSampler(10, batch_size=2, seed=3, start=7))
    assert [next(resumed) for _ in range(5)] == first[7:]
    epoch0 = sorted(i for batch in first[:5] for _, i in batch)
    assert epoch0 == list(range(10)) and [k for k, _ in first[5]] == [1, 1]
    assert [i for b in first[:5] for _, i in b] != [i for b in first[5:10] for _, i in b]  # reshuffled per epoch

    # Ranks take disjoint shards of the same permutation (DistributedSampler's convention).
    shards = [ResumableBatchSampler(8, batch_size=2, seed=3, rank=r, world_size=2) for r in range(2)]
    seen = [[i for n in range(2) for _, i in shard.batch(n)] for shard in shards]
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(8))

    # A batch of 4 is the concatenation of two consecutive batches of 2 (what gradient accumulation relies on).
    big, small = ResumableBatchSampler(12, 4, seed=5), ResumableBatchSampler(12, 2, seed=5)
    for n in range(5):
        assert big.batch(n) == small.batch(2 * n) + small.batch(2 * n + 1)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        ResumableBatchSampler(3, batch_size=4)


class _GlobalRandomDataset(torch.utils.data.Dataset):
    def __init__(self):
        self.epochs = []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.rand(1).item() + np.random.rand() + random.random()


def test_epoch_seeded_dataset_is_order_independent_and_leaves_global_rng_alone():
    inner = _GlobalRandomDataset()
    dataset = EpochSeededDataset(inner, seed=1)
    torch.manual_seed(0)
    a = [dataset[(0, i)] for i in range(4)]
    after = torch.rand(1)
    torch.manual_seed(0)
    b = [dataset[(0, i)] for i in reversed(range(4))][::-1]
    assert a == b and torch.equal(after, torch.rand(1))
    assert dataset[(1, 0)] != a[0] and inner.epochs[-1] == 1


# ---------------------------------------------------------------------------------------------- trainer


def test_pretraining_reduces_the_discriminative_loss(tmp_path):
    # One fixed batch (4 samples, no augmentation) that a small U-Net can fit.
    dataset = build_dataset("synthetic", None, "train", image_size=IMAGE_SIZE, length=4, augment=False)
    config = _config(tmp_path, pretrain=25, alternate=0, batch_size=4, lr=1e-2, poly_power=0.0)
    trainer = _trainer(config, dataset)
    rows = trainer.pretrain_segmentor()
    losses = [row["loss_disc"] for row in rows]
    assert len(losses) == 25 and trainer.steps == {"pretrain": 25, "alternate": 0}
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert trainer.pretrain_segmentor() == []  # the phase is complete


def test_each_alternate_step_leaves_the_frozen_network_unchanged(tmp_path):
    dataset = _dataset(4)
    trainer = _trainer(_config(tmp_path), dataset)
    batches = [_batch(dataset, [0, 1])]

    segmentor, refiner = _snapshot(trainer.segmentor), _snapshot(trainer.refiner)
    losses = trainer.refiner_step(batches)
    assert set(losses) == {"loss_diff_refiner", "loss_kl_refiner", "loss_focal_refiner"}
    assert _changed(segmentor, trainer.segmentor) == []  # weights and BatchNorm statistics
    assert _changed(refiner, trainer.refiner, params_only=True)
    assert trainer.ema.num_updates == 1

    segmentor, refiner = _snapshot(trainer.segmentor), _snapshot(trainer.refiner)
    trainer.segmentor_step(batches)
    assert _changed(refiner, trainer.refiner) == []
    assert _changed(segmentor, trainer.segmentor, params_only=True)
    assert all(p.grad is None for p in trainer.refiner.parameters())  # the frozen refiner got no gradients
    assert all(p.requires_grad for p in trainer.model.parameters())  # and is trainable again afterwards


def test_lambda_diff_sends_the_diffusion_gradient_into_the_segmentor(tmp_path):
    dataset = _dataset(4)
    image, y0 = _batch(dataset, [0, 1])
    grads = {}
    for lambda_diff in (1.0, 0.0):
        trainer = _trainer(_config(tmp_path / str(lambda_diff), lambda_diff=lambda_diff), dataset)
        losses = trainer.segmentor_step([(image, y0)], update=False)
        assert losses["loss_diff_segmentor"] > 0
        assert losses["loss_hybrid"] == pytest.approx(losses["loss_disc"] + lambda_diff * losses["loss_diff_segmentor"])
        grads[lambda_diff] = {n: p.grad.clone() for n, p in trainer.segmentor.named_parameters()}

    # lambda_diff = 0: exactly the gradient of L_Disc.
    torch.manual_seed(0)
    reference = build_model(_config(tmp_path), 3, 1).segmentor.train()
    logits, _ = reference(image)
    discriminative_loss(logits, y0).backward()
    for name, param in reference.named_parameters():
        torch.testing.assert_close(grads[0.0][name], param.grad, rtol=1e-5, atol=1e-7)

    # lambda_diff = 1: L_Diff adds a gradient through the prior and the features.
    difference = sum((grads[1.0][n] - grads[0.0][n]).norm() ** 2 for n in grads[0.0]) ** 0.5
    total = sum(g.norm() ** 2 for g in grads[0.0].values()) ** 0.5
    assert difference > 1e-3 * total
    # Features-only paths (the deepest encoder level feeds the X-Former condition) also receive it.
    deepest = [n for n in grads[0.0] if n.startswith("encoder.5.")]
    assert deepest and any(not torch.allclose(grads[1.0][n], grads[0.0][n]) for n in deepest)


def _freeze_batch_statistics(model: nn.Module) -> None:
    """Makes every BatchNorm use its running statistics even in train mode (a per-sample affine map).

    Train-mode BatchNorm normalises with the statistics of the micro-batch, so two micro-batches of 2 can never
    compute what one batch of 4 computes; with fixed statistics the networks are per-sample functions, and the
    comparison below tests the accumulation itself.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
            module.train = lambda mode=True, m=module: m


def test_gradient_accumulation_matches_the_large_batch(tmp_path):
    dataset = _dataset(4)
    image, y0 = _batch(dataset, range(4))
    results = []
    for batches, accum in (([(image[:2], y0[:2]), (image[2:], y0[2:])], 2), ([(image, y0)], 1)):
        torch.manual_seed(0)
        config = _config(tmp_path / str(accum), batch_size=4 // accum, grad_accum_steps=accum)
        model = build_model(config, 3, 1)
        _freeze_batch_statistics(model)
        trainer = Trainer(config, model, dataset, device="cpu")
        losses = trainer.pretrain_step(batches, update=False)
        grads = {f"pre.{n}": p.grad.clone() for n, p in trainer.segmentor.named_parameters()}
        losses |= trainer.refiner_step(batches, update=False)
        grads |= {f"ref.{n}": p.grad.clone() for n, p in trainer.refiner.named_parameters() if p.grad is not None}
        losses |= trainer.segmentor_step(batches, update=False)
        grads |= {f"seg.{n}": p.grad.clone() for n, p in trainer.segmentor.named_parameters()}
        results.append((losses, grads))
    (losses_a, grads_a), (losses_b, grads_b) = results
    assert losses_a == pytest.approx(losses_b, rel=1e-5)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 100
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6, msg=name)


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    dataset = _dataset(6)  # 3 batches per epoch: both runs cross epoch boundaries

    straight = _trainer(_config(tmp_path / "a", pretrain=2, alternate=3), dataset)
    straight.pretrain_segmentor()
    straight.train_alternate()

    interrupted = _trainer(_config(tmp_path / "b", pretrain=2, alternate=3), dataset)
    interrupted.pretrain_segmentor()
    interrupted.train_alternate(1)
    checkpoint = tmp_path / "b" / "checkpoint_alternate_1.pt"
    (tmp_path / "b" / "latest.pt").rename(checkpoint)
    interrupted.train_alternate(1)  # progress after the checkpoint that the crash loses (logged, then discarded)

    torch.manual_seed(1234)  # a new process: other initial weights and global RNG state, all replaced by resume
    resumed = _trainer(_config(tmp_path / "b", pretrain=2, alternate=3), dataset, seed=99)
    resumed.resume(checkpoint)
    assert resumed.steps == {"pretrain": 2, "alternate": 1}
    resumed.train_alternate()

    assert resumed.log.rows == straight.log.rows  # identical loss sequences, bit for bit
    assert [r["step"] for r in resumed.log.rows] == [1, 2, 1, 2, 3]
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    for key, value in straight.ema.shadow.items():
        assert torch.equal(value, resumed.ema.shadow[key]), key
    for name, optimizer in straight.optimizers.items():
        state_a, state_b = optimizer.state_dict()["state"], resumed.optimizers[name].state_dict()["state"]
        assert all(torch.equal(state_a[i]["exp_avg"], state_b[i]["exp_avg"]) for i in state_a)
    # The files read as those of the uninterrupted run.
    assert (tmp_path / "b" / "losses.jsonl").read_text() == (tmp_path / "a" / "losses.jsonl").read_text()
    with open(tmp_path / "b" / "losses.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5 and float(rows[-1]["loss_hybrid"]) == pytest.approx(straight.log.rows[-1]["loss_hybrid"])
    assert (tmp_path / "b" / "loss_curves.png").stat().st_size > 0


def test_resume_with_a_longer_run_decays_over_the_new_horizon(tmp_path):
    """A run resumed with more iterations continues its poly decay to the new end (not lr 0 after the old one)."""
    dataset = _dataset(4)
    short = _trainer(_config(tmp_path / "a", pretrain=2, alternate=2), dataset)
    short.pretrain_segmentor()
    short.train_alternate()
    assert short._lr("refiner") == 0.0  # the end of the short schedule
    longer = _trainer(_config(tmp_path / "a", pretrain=4, alternate=6), dataset)
    longer.resume(tmp_path / "a" / "latest.pt")
    assert longer._lr("refiner") == pytest.approx(1e-3 * (1 - 2 / 6) ** 0.9)
    assert longer._lr("pretrain") == pytest.approx(1e-3 * (1 - 2 / 4) ** 0.9)
    rows = longer.train_alternate()
    assert [row["lr_refiner"] for row in rows] == pytest.approx([1e-3 * (1 - i / 6) ** 0.9 for i in range(2, 6)])


def test_amp_bfloat16_on_cpu(tmp_path):
    trainer = _trainer(_config(tmp_path, pretrain=1, alternate=1, amp=True, amp_dtype="bfloat16"), _dataset(4))
    rows = trainer.pretrain_segmentor() + trainer.train_alternate()
    assert len(rows) == 2
    assert all(np.isfinite(v) for row in rows for k, v in row.items() if k.startswith("loss"))
    with pytest.raises(ValueError, match="float16"):
        _trainer(_config(tmp_path, amp=True, amp_dtype="float16"), _dataset(4))


def test_validation_hook_best_checkpoint_and_outputs(tmp_path):
    calls = []
    scores = iter([0.1, 0.5, 0.3])

    def validate(model, phase):
        assert not model.training
        if phase == "alternate":  # the refiner is validated with its EMA weights
            for name, value in model.refiner.state_dict().items():
                assert torch.equal(value, trainer.ema.shadow[name]), name
        calls.append(phase)
        return {"dice": next(scores)}

    config = _config(tmp_path, pretrain=1, alternate=2)
    config.train.eval_interval = 1
    trainer = _trainer(config, _dataset(4), validate_fn=validate)
    trainer.pretrain_segmentor()
    assert not (tmp_path / "best.pt").exists()  # pre-training does not compete for best.pt
    trainer.train_alternate()
    assert calls == ["pretrain", "alternate", "alternate"]
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["best"] == {"value": 0.5, "step": 1} and best["steps"]["alternate"] == 1
    assert load_checkpoint(tmp_path / "latest.pt")["steps"] == {"pretrain": 1, "alternate": 2}
    assert TrainingConfig.load_yaml(tmp_path / "config.yaml") == config
    lines = (tmp_path / "validation.jsonl").read_text().splitlines()
    assert [json.loads(line)["dice"] for line in lines] == [0.1, 0.5, 0.3]


def _ddp_worker(rank: int, world_size: int, port: int, output_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size)
    )
    torch.set_num_threads(1)
    info = distributed.init_distributed(device="cpu")
    try:
        assert (info.rank, info.world_size, distributed.is_main_process()) == (rank, world_size, rank == 0)
        config = _config(output_dir, pretrain=1, alternate=2)
        # Different initial weights per rank: DDP must start every replica from rank 0's.
        trainer = _trainer(config, _dataset(8), seed=rank)
        trainer.pretrain_segmentor()
        trainer.train_alternate()
        torch.save(
            {
                "state": {n: t.detach().clone() for n, t in trainer.model.state_dict().items()},
                "ema": trainer.ema.shadow,
                "rows": trainer.log.rows,
            },
            os.path.join(output_dir, f"rank{rank}.pt"),
        )
    finally:
        distributed.cleanup()


def test_ddp_replicas_stay_identical(tmp_path):
    torch.multiprocessing.spawn(_ddp_worker, args=(2, distributed.find_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert len(ranks[0]["state"]) > 100
    for name, value in ranks[0]["state"].items():  # parameters and BatchNorm statistics
        assert torch.equal(value, ranks[1]["state"][name]), name
    for name, value in ranks[0]["ema"].items():
        assert torch.equal(value, ranks[1]["ema"][name]), name
    assert ranks[0]["rows"] == ranks[1]["rows"] and len(ranks[0]["rows"]) == 3  # losses averaged over ranks
    assert (tmp_path / "latest.pt").exists() and (tmp_path / "losses.csv").exists()  # written by rank 0


def test_without_a_process_group_everything_is_one_process():
    info = distributed.init_distributed(device="cpu")
    assert (info.rank, info.world_size, info.device.type) == (0, 1, "cpu")
    assert distributed.is_main_process() and not distributed.is_distributed()
    module = nn.Linear(1, 1)
    assert distributed.unwrap(module) is module


def test_run_training_end_to_end(tmp_path):
    config = TrainingConfig.from_dict(
        {
            "data": {"image_size": IMAGE_SIZE, "batch_size": 2, "num_workers": 1, "kwargs": {"length": 4}},
            "model": {"segmentor_kwargs": {"base_channels": 8}, "refiner_channels": 32},
            "diffusion": {"sample_steps": 2},
            "train": {"pretrain_iterations": 1, "alternate_iterations": 1, "eval_interval": 0},
            "output_dir": str(tmp_path / "run"),
        }
    )
    output = run_training(config)
    assert output == tmp_path / "run"
    for name in ("latest.pt", "best.pt", "config.yaml", "losses.csv", "losses.jsonl", "loss_curves.png"):
        assert (output / name).is_file(), name
    validations = [json.loads(line) for line in (output / "validation.jsonl").read_text().splitlines()]
    assert [v["phase"] for v in validations] == ["pretrain", "alternate"]
    assert "dice" in validations[-1] and "segmentor_dice" in validations[-1]
    state = load_checkpoint(output / "latest.pt")
    assert state["steps"] == {"pretrain": 1, "alternate": 1} and state["batches_consumed"] == 2
    model = build_model(config, 3, 1)  # the checkpoint loads strictly into a model built from the config
    model.segmentor.load_state_dict(state["segmentor"])
    model.refiner.load_state_dict(state["refiner"])

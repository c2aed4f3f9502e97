"""Per-layer sparsity chosen by a sensitivity scan: the rule, its wiring into the demo recipe, and
that only held-out training images (never test images) decide it."""
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dcm import demo, mnist, zoo  # noqa: E402
from dcm.compress.layers import weight_layers  # noqa: E402
from dcm.compress.sensitivity import GRID, sparsity_from_scan, sparsity_within, threshold_for  # noqa: E402
from dcm.encoder.prune import mask_by_sparsity  # noqa: E402


def test_sparsity_within_takes_the_last_sparsity_before_the_first_failure():
    table = {"a": {0.5: 0.10, 0.9: 0.105, 0.95: 0.13, 0.99: 0.101},  # noisy: 0.99 dips back under
             "b": {0.5: 0.12, 0.9: 0.5},  # fails at once
             "c": {0.5: 0.10, 0.9: 0.11}}  # passes everywhere scanned (exactly at the threshold)
    assert sparsity_within(table, reference=0.10, threshold=0.01) == {"a": 0.9, "b": 0.0, "c": 0.9}


def test_threshold_for_spends_an_overall_budget_where_it_hurts_least():
    table = {"big": {0.5: 0.10, 0.9: 0.11, 0.99: 0.14},  # tolerant
             "small": {0.5: 0.12, 0.9: 0.30, 0.99: 0.60}}  # sensitive
    sizes = {"big": 900, "small": 100}
    t = threshold_for(table, 0.10, sizes, overall=0.85)  # 0.9 * 900 + 0.5 * 100 = 860 of 1000 weights
    assert t == pytest.approx(0.02) and sparsity_within(table, 0.10, t) == {"big": 0.9, "small": 0.5}
    t = threshold_for(table, 0.10, sizes, overall=0.9)  # needs "big" at 99%: a rise of 0.04
    assert t == pytest.approx(0.04) and sparsity_within(table, 0.10, t) == {"big": 0.99, "small": 0.5}
    with pytest.raises(ValueError, match="no threshold"):
        threshold_for(table, 0.10, sizes, overall=0.999)


def _error_on(x, y):
    return lambda m: float((m(x).argmax(1) != y).float().mean())


def test_scan_sparsity_respects_the_threshold_and_is_deterministic():
    (xs, ys), _ = mnist.load()  # sorted by digit: every 20th image is a balanced sample
    x, y = torch.from_numpy(xs[::20]), torch.from_numpy(ys[::20])
    torch.manual_seed(0)
    net = zoo.LeNet300()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(40):  # a model that has learned something (about 15% error), so that pruning can hurt it
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()
    error = _error_on(torch.from_numpy(xs[7::20]), torch.from_numpy(ys[7::20]))  # other images score it
    threshold = 0.02
    chosen, table = sparsity_from_scan(net, error, threshold)
    assert (chosen, table) == sparsity_from_scan(net, error, threshold)  # same model, same answer
    budget, _ = sparsity_from_scan(net, error, overall=0.9)
    sizes = {name: ref.weight.numel() for name, ref in weight_layers(net).items()}
    assert sum(sizes[n] * budget[n] for n in sizes) >= 0.9 * sum(sizes.values())
    assert set(chosen) == set(weight_layers(net)) and set(table["fc1"]) == set(GRID)
    reference = error(net)
    assert len(set(chosen.values())) > 1  # the layers differ in how much they tolerate
    with torch.no_grad():
        for name, ref in weight_layers(net).items():
            saved = ref.weight.clone()
            for s in GRID:  # one layer pruned to each scanned sparsity up to the chosen one: within the threshold
                ref.weight.mul_(torch.from_numpy(mask_by_sparsity(saved.numpy(), s)))
                rise = error(net) - reference
                ref.weight.copy_(saved)
                if s <= chosen[name]:
                    assert rise <= threshold, (name, s)
                else:  # the next sparsity scanned is the one that broke it
                    assert rise > threshold, (name, s)
                    break


def test_demo_scans_held_out_training_images_only(tmp_path, monkeypatch):
    """The scan scores N of the training images, which no training stage sees; every other score
    is the test error the demo reports."""
    recipe = replace(demo.RECIPES["lenet300"], train_images=600, dense_epochs=1, prune_epochs=1, prune_steps=1,
                     quant_epochs=1, sparsity="sensitivity", sensitivity_images=200, sensitivity_threshold=0.05)
    (train_x, _), (test_x, _) = mnist.load()
    trained, scored = [], []
    real_train, real_error = demo._train, demo._torch_error
    monkeypatch.setattr(demo, "_train", lambda model, data, *a, **k: trained.append(data) or real_train(model, data, *a, **k))
    monkeypatch.setattr(demo, "_torch_error", lambda model, data: scored.append(data) or real_error(model, data))
    r = demo.run(recipe, tmp_path, quiet=True, log=lambda line: None)
    images = lambda a: {x.tobytes() for x in a}  # noqa: E731
    assert len(trained) == 3 and all(images(d[0]) == images(trained[0][0]) for d in trained)
    test = images(test_x)
    scans = [d for d in scored if images(d[0]) != test]
    assert scans and all(images(d[0]) == images(scans[0][0]) for d in scans)
    seen, held_out = images(trained[0][0]), images(scans[0][0])
    assert len(seen) == 400 and len(held_out) == 200 and seen | held_out == images(train_x[:600])
    assert set(r["sparsity"]) == set(weight_layers(zoo.LeNet300())) and all(s in GRID or s == 0 for s in r["sparsity"].values())
    assert r["recipe"]["sparsity"] == "sensitivity"
    again = demo.run(recipe, tmp_path / "again", quiet=True, log=lambda line: None)
    assert again["sparsity"] == r["sparsity"] and again["dcm_bytes"] == r["dcm_bytes"]  # deterministic per seed


def test_unknown_sparsity_word_is_refused(tmp_path):
    with pytest.raises(ValueError, match="sensitivity"):
        demo.run(replace(demo.RECIPES["lenet300"], sparsity="sensitive"), tmp_path, quiet=True, log=lambda line: None)

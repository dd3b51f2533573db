"""Latency-aware pruning: the measured table, round_to="auto" and latency-target plans.

Timing is only exercised for the table's shape and serialization; the planners are checked
on synthetic tables with known costs against brute-force references written here.
"""
import itertools
import json
import math
import os

import keras
import numpy as np
import pytest
from keras import layers

import keras_tpp
from keras_tpp import latency
from keras_tpp.latency import GroupLatency, LatencyTable


def small_model(name="small"):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(16, 3, padding="same", name="c1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(16, 3, padding="same", name="c2")(x)
    x = layers.BatchNormalization(name="bn2")(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(8, 1, name="c3")(x)
    x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(4, name="fc")(x), name=name)
    # non-trivial BN statistics, so that exactness is not a property of fresh weights
    rng = np.random.default_rng(1)
    for bn in ("bn1", "bn2"):
        layer = model.get_layer(bn)
        layer.set_weights([rng.uniform(0.5, 1.5, 16), rng.normal(0, 0.1, 16),
                           rng.normal(0, 0.1, 16), rng.uniform(0.5, 1.5, 16)])
    return model


# Synthetic costs: ms of each group's layers at each measured width.
SYNTHETIC = {
    "c1": ([4, 8, 9, 12, 16], [1.0, 2.0, 4.5, 2.6, 3.5]),
    "c2": ([4, 8, 12, 13, 16], [0.8, 1.5, 2.5, 3.9, 3.0]),
    "c3": ([2, 4, 6, 8], [0.2, 0.5, 0.9, 1.0]),
}
SIZES = {"c1": 16, "c2": 16, "c3": 8}


def synthetic_table(model_ms=10.0, costs=SYNTHETIC, model="small"):
    groups = {name: GroupLatency(name=name, size=SIZES[name], producers=[name], layers=[name],
                                 widths=list(ws), ms=list(ms))
              for name, (ws, ms) in costs.items()}
    return LatencyTable(model=model, backend=keras.backend.backend(), batch_size=1,
                        input_shape=[[8, 8, 3]], model_ms=model_ms, groups=groups)


def l1_scores(model, name):
    """Independent reference: each filter's L1 norm divided by the layer's mean (the
    group_l1_scores of a single-producer group)."""
    kernel = keras.ops.convert_to_numpy(model.get_layer(name).kernel)
    scores = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)
    return scores / scores.mean()


def brute_force(model, table, target, max_ratio=0.8):
    """The least removed L1 mass over every combination of measured widths whose predicted
    latency meets the target (None if none does)."""
    names = list(table.groups)
    choices = []
    for name in names:
        entry = table.groups[name]
        smallest = entry.size - min(math.ceil(max_ratio * entry.size - 1e-9), entry.size - 1)
        ws = [w for w in entry.widths if w >= smallest]
        choices.append(ws)
    best = None
    for combo in itertools.product(*choices):
        predicted = table.model_ms - sum(
            table.groups[n].ms[table.groups[n].widths.index(table.groups[n].size)]
            - table.groups[n].ms[table.groups[n].widths.index(w)] for n, w in zip(names, combo))
        if predicted > target * table.model_ms + 1e-9:
            continue
        mass = sum(np.sort(l1_scores(model, n))[:table.groups[n].size - w].sum()
                   for n, w in zip(names, combo))
        if best is None or mass < best[0] - 1e-12:
            best = (mass, dict(zip(names, combo)))
    return best


def removed_mass(model, widths):
    return sum(np.sort(l1_scores(model, n))[:SIZES[n] - w].sum() for n, w in widths.items())


def test_measured_table_shape_and_round_trip(tmp_path):
    model = small_model()
    table = keras_tpp.latency_table(model, widths=(0.5,), runs=2, warmup=1, model_runs=2)
    assert set(table.groups) == {"c1", "c2", "c3"}  # fc reaches the output: not measured
    assert table.batch_size == 1 and table.input_shape == [[8, 8, 3]]
    assert table.backend == keras.backend.backend() and table.model_ms > 0
    assert table.groups["c1"].widths == [8, 16] and table.groups["c3"].widths == [4, 8]
    assert table.groups["c1"].layers == ["c1", "bn1", "c2"]  # producer, follower, consumer
    assert table.groups["c3"].layers == ["c3", "fc"]
    assert all(t > 0 for g in table.groups.values() for t in g.ms)
    path = tmp_path / "table.json"
    table.save(path)
    assert os.listdir(tmp_path) == ["table.json"]  # the temporary file was renamed
    loaded = LatencyTable.load(path)
    assert loaded.get_config() == table.get_config()
    assert LatencyTable.from_json(table.to_json()) == table
    assert json.loads(path.read_text())["groups"][0]["name"] == "c1"
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    with pytest.raises(ValueError, match="corrupt.json.*not a latency table"):
        LatencyTable.load(corrupt)


def test_fitted_table_recovers_slope_and_odd_penalty():
    # ms = 0.5 + 0.1·w + 0.7·[w not a multiple of 8], plus noise that the fit averages out
    rng = np.random.default_rng(0)
    widths = [8, 16, 17, 24, 32, 33, 40, 48, 56, 64]
    exact = [0.5 + 0.1 * w + 0.7 * (w % 8 != 0) for w in widths]
    noisy = {"c1": (widths, list(np.asarray(exact) + rng.normal(0, 0.05, len(widths))))}
    table = synthetic_table(costs=noisy)
    table.groups["c1"].size = 64
    fitted = table.fitted_table()
    assert fitted.fitted and not table.fitted and fitted.model_ms == table.model_ms
    design = np.stack([np.ones(len(widths)), widths, [w % 8 != 0 for w in widths]], axis=1)
    reference = design @ np.linalg.lstsq(design, np.asarray(noisy["c1"][1]), rcond=None)[0]
    np.testing.assert_allclose(fitted.groups["c1"].ms, reference, rtol=1e-10)
    np.testing.assert_allclose(fitted.groups["c1"].ms, exact, atol=0.1)
    assert LatencyTable.from_json(fitted.to_json()) == fitted
    exact_table = synthetic_table(costs={"c1": (widths, exact)})
    np.testing.assert_allclose(exact_table.fitted_table().groups["c1"].ms, exact, atol=1e-12)


def test_default_widths():
    assert latency.default_widths(64) == [8, 16, 24, 32, 33, 40, 48, 49, 56, 64]
    assert latency.default_widths(100) == [16, 32, 48, 49, 64, 73, 80, 96, 100]
    for n in (3, 16, 24, 96, 2048):
        ws = latency.default_widths(n)
        assert ws == sorted(set(ws)) and ws[-1] == n and ws[0] >= 1


@pytest.mark.parametrize("seed", range(25))
def test_choose_widths_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    groups = rng.integers(1, 5)
    savings = [np.concatenate([[0.0], rng.uniform(-1, 5, rng.integers(1, 5))])
               for _ in range(groups)]
    costs = [np.concatenate([[0.0], rng.uniform(0, 10, s.size - 1)]) for s in savings]
    required = float(rng.uniform(0, sum(s.max() for s in savings) * 1.1))
    choice = latency.choose_widths(savings, costs, required)
    feasible = [c for c in itertools.product(*[range(s.size) for s in savings])
                if sum(s[k] for s, k in zip(savings, c)) >= required - 1e-12]
    if not feasible:
        assert choice is None
        return
    best = min(sum(c[k] for c, k in zip(costs, combo)) for combo in feasible)
    assert sum(s[k] for s, k in zip(savings, choice)) >= required - 1e-12
    assert sum(c[k] for c, k in zip(costs, choice)) == pytest.approx(best, abs=1e-9)


@pytest.mark.parametrize("target", [0.95, 0.8, 0.7, 0.62])
def test_latency_target_matches_brute_force(target):
    model = small_model()
    table = synthetic_table()
    widths = latency.latency_widths(model, table, target)
    reference = brute_force(model, table, target)
    full = {n: table.groups[n].size for n in table.groups}
    chosen = {**full, **widths}
    assert table.predict(widths) <= target * table.model_ms + 1e-9
    assert removed_mass(model, chosen) == pytest.approx(reference[0], abs=1e-9)
    # the plan removes exactly the chosen widths' lowest-L1 channels
    plan = keras_tpp.make_plan(model, target_latency=target, latency_table=table)
    graph = keras_tpp.DependencyGraph(model)
    assert latency.plan_widths(graph, plan) == widths
    for name, indices in plan.items():
        expected = np.sort(np.argsort(l1_scores(model, name), kind="stable")
                           [:SIZES[name] - widths[name]])
        np.testing.assert_array_equal(indices, expected)


def test_latency_target_unreachable_and_max_ratio():
    model = small_model()
    table = synthetic_table()
    # the most it can save: c1 16->4 (2.5), c2 16->4 (2.2), c3 8->2 (0.8): 5.5 ms of 10
    with pytest.raises(ValueError, match="not reachable"):
        latency.latency_widths(model, table, 0.4, max_ratio=0.9)
    widths = latency.latency_widths(model, table, 0.45, max_ratio=0.9)
    assert widths == {"c1": 4, "c2": 4, "c3": 2}
    # max_ratio=0.5 keeps at least 8 of 16 and 4 of 8
    widths = latency.latency_widths(model, table, 0.8, max_ratio=0.5)
    assert all(w >= SIZES[n] // 2 for n, w in widths.items())
    assert removed_mass(model, {**SIZES, **widths}) == pytest.approx(
        brute_force(model, table, 0.8, max_ratio=0.5)[0], abs=1e-9)


def test_round_to_auto_picks_the_fastest_measured_width():
    model = small_model()
    table = synthetic_table()
    # ratio 0.3: c1 and c2 keep 16 - ceil(4.8) = 11, c3 keeps 8 - ceil(2.4) = 5.
    # c1: widths >= 11 are 12 (2.6 ms) and 16 (3.5): 12. c2: 12 (2.5), 13 (3.9), 16 (3.0): 12.
    # c3: 6 (0.9), 8 (1.0): 6.
    plan = keras_tpp.make_plan(model, 0.3, round_to="auto", latency_table=table)
    assert {k: len(v) for k, v in plan.items()} == {"c1": 4, "c2": 4, "c3": 2}
    # the fastest measured width above the request may be the full width: nothing removed
    slow = synthetic_table(costs={**SYNTHETIC, "c3": ([2, 4, 6, 8], [0.2, 0.5, 1.4, 1.0])})
    plan = keras_tpp.make_plan(model, 0.3, round_to="auto", latency_table=slow)
    assert "c3" not in plan
    assert latency.fastest_width(table.groups["c1"], 5) == 8  # 4 is below the request
    assert latency.fastest_width(table.groups["c1"], 13) == 16


def test_latency_plan_shrinks_exactly_and_composes():
    model = small_model()
    table = synthetic_table()
    plan = keras_tpp.make_plan(model, target_latency=0.7, latency_table=table)
    masked = keras_tpp.zero_channels(model, plan)
    thin = keras_tpp.shrink(masked, plan)
    x = np.random.default_rng(0).normal(size=(3, 8, 8, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(masked(x, training=False))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(thin(x, training=False)), expected,
                               rtol=1e-5, atol=1e-6)
    # the ratio dict form gives the same plan through make_plan, and prune accepts it
    ratios = keras_tpp.latency_ratios(model, table, 0.7)
    same = keras_tpp.make_plan(model, ratios)
    assert {k: v.tolist() for k, v in same.items()} == {k: v.tolist() for k, v in plan.items()}
    pruned = keras_tpp.prune(model, ratios)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pruned(x, training=False)),
                               expected, rtol=1e-5, atol=1e-6)
    widths = latency.plan_widths(keras_tpp.DependencyGraph(model), plan)
    assert table.predict(widths) <= 0.7 * table.model_ms
    # prepare takes the same ratios: its L1 masks prune exactly the plan's channels
    masks = keras_tpp.get_masks(keras_tpp.prepare(model, ratios, method="l1"))
    assert {k: np.flatnonzero(~m).tolist() for k, m in masks.items() if not m.all()} == {
        k: sorted(v.tolist()) for k, v in plan.items()}


def test_bad_inputs_raise_before_anything_changes():
    model = small_model()
    before = [w.copy() for w in model.get_weights()]
    table = synthetic_table()
    for target in (0, 1.5, -0.2, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="target_latency must be"):
            keras_tpp.make_plan(model, target_latency=target, latency_table=table)
    with pytest.raises(ValueError, match="exactly one of"):
        keras_tpp.make_plan(model, 0.3, target_latency=0.5, latency_table=table)
    with pytest.raises(ValueError, match="need latency_table"):
        keras_tpp.make_plan(model, 0.3, round_to="auto")
    with pytest.raises(ValueError, match="need latency_table"):
        keras_tpp.make_plan(model, target_latency=0.5)
    with pytest.raises(ValueError, match="only used with"):
        keras_tpp.make_plan(model, 0.3, latency_table=table)
    with pytest.raises(ValueError, match="round_to must be"):
        keras_tpp.make_plan(model, 0.3, round_to="fast")
    with pytest.raises(ValueError, match="must be a keras_tpp.LatencyTable"):
        keras_tpp.make_plan(model, 0.3, round_to="auto", latency_table={"c1": 1})
    # a table of another model: group sizes differ
    other = synthetic_table(model="other")
    other.groups["c1"].size = 32
    other.groups["c1"].widths[-1] = 32
    with pytest.raises(ValueError, match="does not fit model 'small'"):
        keras_tpp.make_plan(model, target_latency=0.8, latency_table=other)
    renamed = synthetic_table(model="other")
    renamed.groups["conv9"] = renamed.groups.pop("c3")
    with pytest.raises(ValueError, match="its group 'conv9'.*no such group"):
        keras_tpp.make_plan(model, 0.3, round_to="auto", latency_table=renamed)
    # a group the plan needs but the table lacks
    partial = synthetic_table(costs={k: v for k, v in SYNTHETIC.items() if k != "c3"})
    with pytest.raises(ValueError, match="Group 'c3' .* is not in the latency table"):
        keras_tpp.make_plan(model, 0.3, round_to="auto", latency_table=partial)
    with pytest.raises(ValueError, match="Group 'c3' .* is not in the latency table"):
        keras_tpp.make_plan(model, target_latency=0.8, latency_table=partial, layers=["c3"])
    with pytest.raises(ValueError, match="is not in the latency table"):
        table.group("nope")
    with pytest.raises(KeyError, match="not measured"):
        table.groups["c1"].ms_at(10)
    with pytest.raises(ValueError, match="format"):
        LatencyTable.from_config({**table.get_config(), "format": 99})
    bad = table.get_config()
    bad["groups"][0]["widths"] = [8, 4, 16]
    with pytest.raises(ValueError, match="increasing"):
        LatencyTable.from_config(bad)
    with pytest.raises(ValueError, match="batch_size"):
        keras_tpp.latency_table(model, batch_size=0)
    with pytest.raises(ValueError, match="widths fractions"):
        keras_tpp.latency_table(model, widths=(0.5, 1.5))
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)

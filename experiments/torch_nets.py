"""PyTorch: an MLP (`torch_mlp`) and a small CNN (`torch_cnn`), one report per epoch.

Two families rather than one with an `arch` choice: their architecture parameters differ, so
one family would need a conditional default space (which PBT and several searchers refuse), and
tuning an MLP against a CNN is rarely the question. They share everything but `build`.

Reproducibility by construction: the model is initialised from the trial's seed, and each epoch
reseeds shuffling and dropout from (seed, epoch), so the random stream of epoch e does not
depend on what ran before it. The learning-rate schedule is a pure function of training progress
(see SCHEDULES). A checkpoint (model, optimizer state, epochs done) therefore resumes to exactly
the metrics an uninterrupted run reports, and PBT's new `learning_rate` or `batch_size` takes
effect at once, with the schedule continuing where it was.

Architecture search, lite: depth, width, activation (MLP) and conv layers, filters, kernel size,
pooling (CNN) are ordinary hyperparameters. Each layer can also take its own size, `width_1` ..
`width_4` (MLP) and `filters_1` .. `filters_3` (CNN), made conditional on the depth in the spec
(`width_3: {choice: [...], when: {depth: [3, 4]}}`; see experiments/torch_nas_digits.yaml), so a
searcher that honours conditions samples a layer's size only when the layer exists. A layer without
its own entry takes `width` (every MLP layer) or `filters` doubled per block (CNN), as before, so
existing specs build the same nets. They are not in the default space, which stays flat: PBT and
most searchers refuse a conditional space.

Inputs are standardised with the training rows' mean and std (and a regression target too,
predictions mapped back), so the default ranges suit any tabular data. The CNN reads each row
as a square one-channel image (digits: 64 features -> 8x8).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from orchestrator.families.contract import Family
from orchestrator.families.metrics import needed, score

TRAINING_SPACE = {
    "epochs": 20,
    "learning_rate": {"loguniform": [1e-5, 1e-1]},
    "batch_size": {"choice": [16, 32, 64, 128, 256, 512]},
    "optimizer": {"choice": ["sgd", "momentum", "adam", "adamw", "rmsprop"]},
    "weight_decay": {"loguniform": [1e-6, 1e-2]},
    "lr_schedule": {"choice": ["constant", "step", "exponential", "cosine", "warmup_cosine", "cyclic", "one_cycle"]},
    "grad_clip": {"choice": [0.0, 1.0, 5.0]},  # max gradient norm; 0 = no clipping
    "dropout": {"uniform": [0.0, 0.5]},
    "activation": {"choice": ["relu", "gelu", "tanh"]},
}
MLP_SPACE = {**TRAINING_SPACE, "depth": {"randint": [1, 4]}, "width": {"choice": [32, 64, 128, 256, 512]}}
CNN_SPACE = {
    **TRAINING_SPACE,
    "conv_layers": {"randint": [1, 3]},
    "filters": {"choice": [8, 16, 32, 64]},  # of the first block; each further block doubles them
    "kernel_size": {"choice": [3, 5]},
    "pooling": {"choice": ["max", "avg", "none"]},
    "width": {"choice": [32, 64, 128, 256]},  # the dense layer after the convolutions
}

# Per-layer sizes a spec may add (see the module docstring): layer i's own width / filters.
LAYER_WIDTHS = tuple(f"width_{i}" for i in range(1, 5))
LAYER_FILTERS = tuple(f"filters_{i}" for i in range(1, 4))

# Parameters that change the shapes of the weights: a checkpoint cannot move to other values.
SHAPE_PARAMS = {"mlp": ("depth", "width", *LAYER_WIDTHS),
                "cnn": ("conv_layers", "filters", *LAYER_FILTERS, "kernel_size", "pooling", "width")}


def per_layer_rule(count: str, sizes: tuple[str, ...], default_count: int):
    """The spec rule for per-layer sizes: layer i's size (`sizes[i-1]`) must be sampled only for nets
    that have layer i, i.e. be conditional on `count` >= i whenever `count` can be smaller; a size
    for a layer no net has is refused too. Without it a searcher would sample (and learn from, and
    importance would rank) a width that most nets never used."""
    from orchestrator.errors import Problem

    def check(params) -> list:
        p = params.get(count)
        if p is None:
            values = [default_count]
        elif p.kind in ("constant", "choice", "grid"):
            values = [int(v) for v in p.values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        else:
            values = list(range(int(p.args[0]), int(p.args[1]) + 1))
        if not values:
            return []
        problems = []
        for i, name in enumerate(sizes, start=1):
            size = params.get(name)
            if size is None or size.kind == "constant":
                continue
            having = [v for v in values if v >= i]
            if not having:
                problems.append(Problem(f"space.{name}", f"no net has layer {i}: {count} is at most {max(values)}; "
                                                         f"remove {name} or let {count} reach {i}"))
            elif len(having) < len(values) and not (count in size.when and set(size.when[count]) <= set(having)):
                choice = "" if p is not None and p.kind in ("choice", "grid") else \
                    f" ({count} must then be a choice: {{choice: {values}}})"
                problems.append(Problem(f"space.{name}", f"layer {i} exists only when {count} >= {i}, but {count} "
                                                         f"can be {min(values)}: add `when: {{{count}: {having}}}` so "
                                                         f"that {name} is sampled only for nets that have it{choice}"))
        return problems

    return check


# --- learning-rate schedules: multiplier of the base learning rate at progress p in [0, 1) ------

def _step(p: float, epochs: int) -> float:
    return 0.1 ** math.floor(3 * p)  # x0.1 after a third and after two thirds of training


def _cosine(p: float, epochs: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * p))


def _warmup_cosine(p: float, epochs: int, warmup: float = 0.1) -> float:
    return max(p / warmup, 0.01) if p < warmup else _cosine((p - warmup) / (1 - warmup), epochs)


def _cyclic(p: float, epochs: int, period_epochs: int = 4) -> float:
    # Triangular cycles between 0.1x and 1x, 2 epochs up and 2 down (Smith 2017's CLR).
    phase = (p * epochs / (period_epochs / 2)) % 2
    return 0.1 + 0.9 * (1 - abs(phase - 1))


def _one_cycle(p: float, epochs: int, peak: float = 0.3, div: float = 25.0, final_div: float = 1e4) -> float:
    # torch's OneCycleLR shape: cosine up from lr/25 to lr over 30%, then down to lr/(25*1e4).
    start, end = 1 / div, 1 / (div * final_div)
    if p < peak:
        return start + (1 - start) * (1 - math.cos(math.pi * p / peak)) / 2
    return end + (1 - end) * (1 + math.cos(math.pi * (p - peak) / (1 - peak))) / 2


SCHEDULES: dict[str, Callable[[float, int], float]] = {
    "constant": lambda p, epochs: 1.0,
    "step": _step,
    "exponential": lambda p, epochs: 0.01 ** p,  # to 1% of the base rate by the end
    "cosine": _cosine,
    "warmup_cosine": _warmup_cosine,
    "cyclic": _cyclic,
    "one_cycle": _one_cycle,
}


# --- models -----------------------------------------------------------------------------------

def _activation(name: str):
    import torch.nn as nn

    table = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
    if name not in table:
        raise ValueError(f"activation must be one of {', '.join(table)}, got {name!r}")
    return table[name]()


def layer_widths(config: dict) -> list[int]:
    """Each hidden layer's width: its own `width_<i>` (1-based) where the config has one, else `width`."""
    width = config.get("width", 128)
    return [int(config.get(f"width_{i}", width)) for i in range(1, int(config.get("depth", 2)) + 1)]


def conv_filters(config: dict) -> list[int]:
    """Each conv block's filters: its own `filters_<i>` where the config has one, else `filters`
    doubled per block (16, 32, 64 for filters: 16)."""
    filters = int(config.get("filters", 16))
    layers = int(config.get("conv_layers", 2))
    return [int(config.get(f"filters_{i}", filters * 2 ** (i - 1))) for i in range(1, layers + 1)]


def build_mlp(config: dict, n_in: int, n_out: int):
    import torch.nn as nn

    layers, fan_in = [], n_in
    for width in layer_widths(config):
        layers += [nn.Linear(fan_in, width), _activation(config.get("activation", "relu")),
                   nn.Dropout(float(config.get("dropout", 0.0)))]
        fan_in = width
    layers.append(nn.Linear(fan_in, n_out))
    return nn.Sequential(*layers)


def image_side(n_features: int) -> int:
    side = math.isqrt(n_features)
    if side * side != n_features:
        raise ValueError(f"torch_cnn reads each row as a square one-channel image, but the data has {n_features} "
                         f"features (not a square); use torch_mlp, or data whose features are pixels "
                         f"(digits: 64 = 8x8)")
    return side


def build_cnn(config: dict, n_in: int, n_out: int):
    import torch.nn as nn

    side = image_side(n_in)
    pool = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d, "none": None}[config.get("pooling", "max")]
    kernel = int(config.get("kernel_size", 3))
    act, dropout = config.get("activation", "relu"), float(config.get("dropout", 0.0))
    layers: list = [nn.Unflatten(1, (1, side, side))]
    channels = 1
    for out in conv_filters(config):
        layers += [nn.Conv2d(channels, out, kernel, padding=kernel // 2), _activation(act)]
        if pool is not None and side >= 2:
            layers.append(pool(2))
            side //= 2
        channels = out
    width = int(config.get("width", 64))
    layers += [nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels * side * side, width), _activation(act),
               nn.Dropout(dropout), nn.Linear(width, n_out)]
    return nn.Sequential(*layers)


def make_optimizer(config: dict, params):
    import torch

    name, lr, wd = config.get("optimizer", "adam"), float(config["learning_rate"]), float(config.get("weight_decay", 0))
    table = {
        "sgd": lambda: torch.optim.SGD(params, lr=lr, weight_decay=wd),
        "momentum": lambda: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd),
        "adam": lambda: torch.optim.Adam(params, lr=lr, weight_decay=wd),
        "adamw": lambda: torch.optim.AdamW(params, lr=lr, weight_decay=wd),
        "rmsprop": lambda: torch.optim.RMSprop(params, lr=lr, weight_decay=wd),
    }
    if name not in table:
        raise ValueError(f"optimizer must be one of {', '.join(table)}, got {name!r}")
    return table[name]()


# --- training ---------------------------------------------------------------------------------

def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % 2 ** 63


def _cpu(obj: Any) -> Any:
    """Tensors moved to the CPU (nested), so a checkpoint loads on any device."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def _train(config: dict, data, trial, arch: str, build: Callable) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(trial.cpus)  # never more threads than the CPUs Ray gave the trial
    device = torch.device(trial.device)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)

    classify = data.task == "classification"
    mean, std = data.X_train.mean(axis=0), data.X_train.std(axis=0) + 1e-8
    # torch.tensor copies: arrays from Ray's object store are read-only.
    X_train = torch.tensor((data.X_train - mean) / std, dtype=torch.float32, device=device)
    X_valid = torch.tensor((data.X_valid - mean) / std, dtype=torch.float32, device=device)
    if classify:
        n_out, y_mean, y_std = data.n_classes, 0.0, 1.0
        y_train = torch.tensor(data.y_train, dtype=torch.long, device=device)
    else:
        n_out, y_mean, y_std = 1, float(data.y_train.mean()), float(data.y_train.std() + 1e-8)
        y_train = torch.tensor((data.y_train - y_mean) / y_std, dtype=torch.float32, device=device)
    loss_fn = torch.nn.CrossEntropyLoss() if classify else torch.nn.MSELoss()

    torch.manual_seed(trial.seed)
    model = build(config, X_train.shape[1], n_out).to(device)
    optimizer = make_optimizer(config, model.parameters())
    start = _restore(trial.restore(), config, arch, model, optimizer)

    epochs = int(config.get("epochs", 20))
    batch = int(config.get("batch_size", 64))
    schedule = SCHEDULES.get(config.get("lr_schedule", "constant"))
    if schedule is None:
        raise ValueError(f"lr_schedule must be one of {', '.join(SCHEDULES)}, got {config.get('lr_schedule')!r}")
    base_lr, clip = float(config["learning_rate"]), float(config.get("grad_clip", 0.0))
    n = X_train.shape[0]
    n_batches = math.ceil(n / batch)

    for epoch in range(start, epochs):
        seed = _epoch_seed(trial.seed, epoch)
        torch.manual_seed(seed)  # dropout
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(device)
        model.train()
        for b, idx in enumerate(order.split(batch)):
            lr = base_lr * schedule((epoch + b / n_batches) / epochs, epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            out = model(X_train[idx])
            loss = loss_fn(out if classify else out.squeeze(-1), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()

        pred = _predict(model, X_valid, classify)
        pred = pred if classify else pred * y_std + y_mean
        diverged = not np.isfinite(pred).all()
        if diverged:  # report it as a bad model rather than crash the metrics; then stop
            pred = np.full_like(pred, 1.0 / n_out) if classify else np.full_like(pred, y_mean)
        state = None
        if trial.checkpointing:
            state = {"arch": arch, "shape": {k: config.get(k) for k in SHAPE_PARAMS[arch]},
                     "optimizer_name": config.get("optimizer", "adam"), "epoch": epoch + 1,
                     "model": _cpu(model.state_dict()), "optimizer": _cpu(optimizer.state_dict())}
        names = needed(trial, final=diverged or epoch + 1 == epochs)
        trial.report(score(data.task, data.y_valid, pred, names=names), state=state)
        if diverged:
            return  # nothing to keep: it predicts NaN, and the scores above are a constant's
    # The net and what maps raw rows into it and its output back (orchestrator.model.formats, "torch").
    trial.keep({"net": model, "x_mean": mean, "x_std": std, "y_mean": y_mean, "y_std": y_std})


def _predict(model, X, classify: bool, chunk: int = 4096):
    import numpy as np
    import torch

    model.eval()
    with torch.no_grad():
        outs = [model(X[i:i + chunk]) for i in range(0, X.shape[0], chunk)]
    out = torch.cat(outs)
    out = torch.softmax(out, dim=1) if classify else out.squeeze(-1)
    return np.asarray(out.cpu().numpy(), dtype=np.float64)


def _restore(state: dict | None, config: dict, arch: str, model, optimizer) -> int:
    """Loads a checkpoint into the fresh model; returns the epochs already done."""
    if not state:
        return 0
    shape = {k: config.get(k) for k in SHAPE_PARAMS[arch]}
    if state["arch"] != arch or state["shape"] != shape:
        changed = [k for k in shape if state["shape"].get(k) != shape[k]]
        raise ValueError(f"cannot restore a {state['arch']} checkpoint with {state['shape']} into {shape}: "
                         f"{', '.join(changed) or 'the architecture'} change the weights' shapes; leave them out "
                         f"of scheduler.hyperparam_mutations")
    model.load_state_dict(state["model"])
    if state["optimizer_name"] == config.get("optimizer", "adam"):  # else PBT switched: fresh optimizer state
        # The saved state carries the old hyperparameters (weight decay...); this config's win.
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        optimizer.load_state_dict(state["optimizer"])
        for group, settings in zip(optimizer.param_groups, fresh):
            group.update(settings)
    return int(state["epoch"])


def train_mlp(config, data, trial):
    _train(config, data, trial, "mlp", build_mlp)


def train_cnn(config, data, trial):
    _train(config, data, trial, "cnn", build_cnn)


# params: beyond the default space, train() reads only the per-layer sizes; any other name is a typo.
MLP = Family(name="torch_mlp", train=train_mlp, default_space=MLP_SPACE, iterations_param="epochs", checkpoints=True,
             params=LAYER_WIDTHS, check_space=per_layer_rule("depth", LAYER_WIDTHS, default_count=2),
             model_format="torch", library="torch")
CNN = Family(name="torch_cnn", train=train_cnn, default_space=CNN_SPACE, iterations_param="epochs", checkpoints=True,
             params=LAYER_FILTERS, check_space=per_layer_rule("conv_layers", LAYER_FILTERS, default_count=2),
             model_format="torch", library="torch")

"""Shared loading for the conversion probes (conversion_layer_error.py, conversion_gain_test.py)."""
import torch
import torch.nn as nn

from spikeforge.experiments.common import load_split_tensors
from spikeforge.experiments.cifar_convert import build_model
from spikeforge.train import load_checkpoint


def load_run(run: str, data_dir: str = "../shared/data/cifar10"):
    """A cifar-convert run's trained ANN, its train/held-out split and cifar_methods.py's 2,048 calibration images."""
    payload = load_checkpoint(f"{run}/model.pt", required=("model", "config"))
    cfg = payload["config"]
    train, val, classes = load_split_tensors(cfg["dataset"], data_dir, cfg["val_split"])
    model = build_model(cfg, train[0].shape[1], len(classes), train[0].shape[-1])
    model.load_state_dict(payload["model"])
    model.eval()
    perm = torch.randperm(len(train[1]), generator=torch.Generator().manual_seed(cfg["seed"] + 1))
    return model, train, val, train[0][perm[:256 * 8]]


def relu_outputs(model: nn.Module, x: torch.Tensor):
    """The model's logits on x and every ReLU call's output, in call order (= the converter's neuron order)."""
    acts = []
    hs = [m.register_forward_hook(lambda m, i, o: acts.append(o.detach().clone()))
          for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in hs:
            h.remove()
    return logits, acts

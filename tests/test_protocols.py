"""The evaluation protocols as their originals run them: the DsCo authors' ImageNette / ImageWoof protocol
(kkkkqq/Dataset-Concentration train.py, utils.py, IDC's ResNetAP) and RDED's ImageNet-1k protocol
(LINs-lab/RDED validation/), each setting written here from the original's definition."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dsco.cli import main
from dsco.data import ImageSet
from dsco.data.imagenet import IMAGEWOOF
from dsco.evaluate import evaluate_set, fit, protocol_named


# --- IDC's ResNetAP, written from its definition (train_models/resnet_ap.py) ----------------------------------

class IDCBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn1 = nn.GroupNorm(cout, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.GroupNorm(cout, cout)
        self.stride = stride
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, 1, 0, bias=False), nn.AvgPool2d(stride, stride), nn.GroupNorm(cout, cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        if self.stride != 1:
            out = F.avg_pool2d(out, kernel_size=self.stride, stride=self.stride)
        out = self.bn2(self.conv2(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class IDCResNetAP10(nn.Module):
    """'large' size (224 px): 7x7 stride-1 conv, norm, ReLU, AvgPool 4; [1, 1, 1, 1] blocks; global pool; fc."""

    def __init__(self, nclass):
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 7, 1, 3, bias=False)
        self.bn = nn.GroupNorm(64, 64)
        self.pool = nn.AvgPool2d(4, 4)
        self.layers = nn.Sequential(IDCBlock(64, 64, 1), IDCBlock(64, 128, 2), IDCBlock(128, 256, 2), IDCBlock(256, 512, 2))
        self.fc = nn.Linear(512, nclass)

    def forward(self, x):
        x = self.layers(self.pool(F.relu(self.bn(self.conv(x)))))
        return self.fc(F.avg_pool2d(x, x.shape[-1]).flatten(1))


def test_resnetap10_is_idcs_network():
    from dsco.models.classifiers import create_classifier

    ours = create_classifier("resnetap10", 3, 10, 224)
    ref = IDCResNetAP10(10)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters()) == 4_910_922
    with torch.no_grad():  # the same weights, in definition order, give the same function
        ours_params = list(ours.parameters())
        for p, q in zip(ours_params, ref.parameters()):
            assert p.shape == q.shape
            q.copy_(p)
        x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(ours(x), ref(x), atol=1e-4, rtol=1e-4)
    conv = ours.stem[0]
    assert conv.stride == (1, 1) and conv.kernel_size == (7, 7)
    assert abs(float(conv.weight.detach().std()) - math.sqrt(2 / (7 * 7 * 64))) < 0.01  # IDC's init N(0, 2 / (k^2 out))


# --- the protocols' settings -----------------------------------------------------------------------------------

def test_each_protocol_carries_its_label_type_and_what_it_reports():
    assert protocol_named("imagenet1k").labels == "teacher"  # RDED trains on teacher labels only
    assert protocol_named("imagenet-subset").labels == "hard"
    assert protocol_named("cpu-small").labels == "hard" and protocol_named("cpu-small").report == "last"
    for name in ("imagenet-subset", "imagenet1k"):
        p = protocol_named(name)
        assert p.crop_scale == (0.5, 1.0) and p.normalize == "imagenet" and p.report == "best"
        assert p.cutmix_prob == 1.0 and not p.kd_t2  # KLDivLoss(batchmean) at T 20, no T^2


def test_imagenet1k_batch_epochs_and_learning_rate_are_rdeds():
    p = protocol_named("imagenet1k")
    assert [p.batch_for(1000 * ipc, 1000) for ipc in (1, 10, 50)] == [20, 100, 200]
    assert p.epochs_for(50_000, 1000) == 300
    # LambdaLR(0.5 (1 + cos(pi e / E / 2))), stepped per epoch: 1 at the start, 0.5 at the end
    assert p.lr_factor("half-cosine", 0, 300) == 1.0
    assert p.lr_factor("half-cosine", 150, 300) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert p.lr_factor("half-cosine", 300, 300) == pytest.approx(0.5)


def test_imagenet_subset_schedules_are_the_authors():
    p = protocol_named("imagenet-subset")
    # MultiStepLR(milestones=[2E // 3, 5E // 6], gamma=0.2) for hard labels
    assert [p.lr_factor("multistep", e, 2000) for e in (0, 1332, 1333, 1665, 1666, 1999)] == pytest.approx([1, 1, 0.2, 0.2, 0.04, 0.04])
    assert p.schedule == "multistep" and p.teacher_schedule == "half-cosine"
    # epochs by IPC 1 / <=10 / <=50 / <=200 / more
    assert [p.epochs_for(10 * ipc, 10) for ipc in (1, 10, 50, 100, 300)] == [3000, 2000, 1500, 1000, 500]
    # the authors' loader: the largest batch in [32, 64] that divides the set (else 32), lr scaled by batch / 64
    assert [p.batch_for(10 * ipc, 10) for ipc in (1, 10, 50, 600)] == [32, 50, 50, 60]
    assert p.steps_for(100, 10) == 2000 * 2 and p.steps_for(10, 10) == 3000


def record_lrs(monkeypatch) -> list[list[float]]:
    seen = []
    step = torch.optim.AdamW.step

    def recording(self, *a, **k):
        seen.append([g["lr"] for g in self.param_groups])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    return seen


def tiny_paper_protocol(name: str, epochs: int = 6, **kw):
    from dataclasses import replace

    return replace(protocol_named(name), arch="convnet3", width=8, image_size=16, epochs_by_ipc=((10**9, epochs),), **kw)


def rgb_set(n_per_class: int = 4, size: int = 20) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    return ImageSet(torch.rand(2 * n_per_class, 3, size, size, generator=g), torch.arange(2).repeat(n_per_class), ["n01440764", "n02102040"])


def test_an_epoch_protocol_steps_its_schedule_per_epoch(monkeypatch):
    seen = record_lrs(monkeypatch)
    data = rgb_set()
    p = tiny_paper_protocol("imagenet-subset", batch_divides_set=False, batch_size=4)  # 8 images: 2 steps an epoch
    fit(data, p, seed=0)
    lrs = [g[0] for g in seen]
    expected = [p.lr * p.lr_factor("multistep", e, 6) for e in range(6) for _ in range(2)]
    assert lrs == pytest.approx(expected)


def test_rded_puts_no_weight_decay_on_biases_and_norms(monkeypatch):
    seen = []
    init = torch.optim.AdamW.__init__

    def capture(self, params, *a, **k):
        params = list(params)
        seen.append(params)
        return init(self, params, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "__init__", capture)
    net, _ = fit(rgb_set(), tiny_paper_protocol("imagenet1k", epochs=1, labels="hard"), seed=0)
    decay, rest = seen[0]
    assert decay["weight_decay"] == 0.01 and rest["weight_decay"] == 0.0
    assert all(p.dim() > 1 for p in decay["params"]) and all(p.dim() == 1 for p in rest["params"])
    assert len(decay["params"]) + len(rest["params"]) == len(list(net.parameters()))


def test_paper_protocols_crop_half_the_image_at_least(monkeypatch):
    from torchvision.transforms import v2

    scales = []
    init = v2.RandomResizedCrop.__init__
    monkeypatch.setattr(v2.RandomResizedCrop, "__init__", lambda self, size, **k: scales.append(k.get("scale")) or init(self, size, **k))
    fit(rgb_set(), tiny_paper_protocol("imagenet1k", epochs=1, labels="hard"), seed=0)
    assert scales == [(0.5, 1.0)]


def test_paper_protocols_report_the_best_of_their_late_evaluations_and_keep_the_last():
    data = rgb_set()
    p = tiny_paper_protocol("imagenet-subset", epochs=30, eval_every=10, eval_from=0.5, batch_divides_set=False, batch_size=8)
    calls = []
    fit(data, p, seed=0, evaluate=lambda net: calls.append(1) or 0.5)
    assert len(calls) == 2  # epochs 20 and 30 (from half-way on, every 10)
    r = evaluate_set(data, data, p, runs=2, progress=False)
    assert r["report"] == "best" and r["accs"] == r["best_accs"]
    assert all(b >= last for b, last in zip(r["best_accs"], r["last_accs"]))


def test_a_doped_set_trains_for_its_synthetic_ipcs_epochs():
    from dsco.outputset import schedule_ipc

    doped = {"config": {"ipc": 100, "doping": {"doping_ipc": 500, "budget": None}}}
    assert schedule_ipc(doped) == 100 and schedule_ipc({"config": {"ipc": 10, "doping": {}}}) is None
    assert schedule_ipc({**doped, "doping_guard": {"kept_synthetic": False}}) is None  # the guard left a real subset
    p = protocol_named("imagenet-subset")
    assert p.epochs_for(6000, 10, ipc=100) == 1000 and p.epochs_for(6000, 10) == 500


def test_the_doping_model_follows_the_dataset():
    from dsco.orchestrate import default_doping_protocol

    assert default_doping_protocol("imagewoof") == "imagenet-subset" and default_doping_protocol("mnist5k") == "cpu-small"


def test_a_uint8_set_trains_exactly_as_its_float_copy():
    data = rgb_set()
    as_bytes = ImageSet((data.images * 255).round().to(torch.uint8), data.labels, data.class_names)
    as_float = ImageSet(as_bytes.images.float() / 255, data.labels, data.class_names)
    from dataclasses import replace

    p = replace(protocol_named("cpu-small"), max_steps=3)
    a, b = evaluate_set(as_bytes, as_float, p, runs=1, progress=False), evaluate_set(as_float, as_float, p, runs=1, progress=False)
    assert a["accs"] == b["accs"]


# --- the pipelines end to end on a tiny ImageNet-layout folder -----------------------------------------------

@pytest.fixture
def woof(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("val", 1)):
        for wnid in IMAGEWOOF:
            (tmp_path / "woof" / split / wnid).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "woof" / split / wnid / f"{i}.JPEG")
    return tmp_path / "woof"


@pytest.mark.parametrize("protocol", ["cpu-small", "imagenet-subset", "imagenet1k"])
def test_each_protocol_evaluates_a_set_of_an_imagenet_layout_folder(protocol, woof, tmp_path, capsys):
    from torchvision.models import resnet18

    data = ["--dataset", "imagewoof", "--data-root", str(woof)]
    assert main(["concentrate", "--method", "random", "--ipc", "1", "--out", str(tmp_path / "set"), *data]) == 0
    extra = []
    if protocol == "imagenet1k":  # trains with teacher labels: a (random) ImageNet ResNet-18 labels the batches
        torch.manual_seed(0)
        torch.save(resnet18().state_dict(), tmp_path / "r18.pth")
        extra = ["--teacher", str(tmp_path / "r18.pth")]
    out = tmp_path / "r.json"
    assert main(["evaluate", str(tmp_path / "set"), *data, "--protocol", protocol, "--max-steps", "2", "--runs", "1",
                 "--json", str(out), *extra]) == 0
    r = json.loads(out.read_text())
    assert r["labels"] == ("teacher" if protocol == "imagenet1k" else "hard") and 0 <= r["mean"] <= 1
    assert r["report"] == ("last" if protocol == "cpu-small" else "best")
    assert "top-1" in capsys.readouterr().out


def test_imagenet1k_without_a_teacher_says_so_before_training(woof, tmp_path, capsys):
    data = ["--dataset", "imagewoof", "--data-root", str(woof)]
    assert main(["concentrate", "--method", "random", "--ipc", "1", "--out", str(tmp_path / "set"), *data]) == 0
    assert main(["evaluate", str(tmp_path / "set"), *data, "--protocol", "imagenet1k", "--max-steps", "1"]) == 2
    assert "trains with teacher labels: pass --teacher" in capsys.readouterr().err

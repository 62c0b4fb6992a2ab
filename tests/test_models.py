import pytest
import torch
import torchvision

from simclr_ad import checkpoint, models
from simclr_ad.models import ModelError, build_backbone, infer_arch, init_backbone


@pytest.mark.parametrize("arch,dim", [("resnet18", 512), ("resnet50", 2048), ("densenet121", 1024),
                                      ("mobilenet_v2", 1280)])
def test_backbones_take_one_channel(arch, dim):
    backbone, feature_dim = build_backbone(arch)
    assert feature_dim == dim
    backbone.eval()
    with torch.no_grad():
        assert backbone(torch.zeros(2, 1, 32, 32)).flatten(1).shape == (2, dim)
    assert infer_arch(backbone.state_dict()) == arch


def test_encoder_state_loads_strictly_into_a_fresh_backbone():
    backbone, _ = build_backbone("resnet18")
    fresh, _ = build_backbone("resnet18")
    fresh.load_state_dict(backbone.state_dict(), strict=True)
    reference = torchvision.models.resnet18(weights=None)
    reference.fc = torch.nn.Identity()
    assert set(reference.state_dict()) == set(backbone.state_dict())  # torchvision's keys, no fc


def test_simclr_init_loads_and_only_head_differs(tmp_path):
    torch.manual_seed(0)
    backbone, _ = build_backbone("resnet18")
    checkpoint.save(backbone.state_dict(), tmp_path / "encoder.pt")
    torch.manual_seed(1)
    clf = models.build_classifier("resnet18", 4)
    init_backbone(clf.backbone, "resnet18", "simclr", str(tmp_path / "encoder.pt"))
    for key, value in backbone.state_dict().items():
        assert torch.equal(clf.backbone.state_dict()[key], value)


def test_encoder_of_another_arch_names_both(tmp_path):
    backbone, _ = build_backbone("resnet18")
    checkpoint.save(backbone.state_dict(), tmp_path / "enc.pt")
    clf = models.build_classifier("resnet50", 4)
    with pytest.raises(ModelError, match="resnet18 encoder but the model is resnet50"):
        init_backbone(clf.backbone, "resnet50", "simclr", str(tmp_path / "enc.pt"))


def test_missing_backbone_keys_are_refused(tmp_path):
    backbone, _ = build_backbone("resnet18")
    state = backbone.state_dict()
    state.pop("layer4.1.bn2.weight")
    checkpoint.save(state, tmp_path / "enc.pt")
    clf = models.build_classifier("resnet18", 4)
    with pytest.raises(ModelError, match="1 missing key"):
        init_backbone(clf.backbone, "resnet18", str(tmp_path / "enc.pt"))


def test_imagenet_offline_names_the_file(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    backbone, _ = build_backbone("resnet18")
    with pytest.raises(ModelError, match=r"not cached at .*resnet18-f37072fd\.pth"):
        init_backbone(backbone, "resnet18", "imagenet")


def test_imagenet_from_cache_folds_rgb_stem(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    rgb = torchvision.models.resnet18(weights=None)
    path = models.imagenet_cache_file("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(rgb.state_dict(), path)
    backbone, _ = build_backbone("resnet18")
    init_backbone(backbone, "resnet18", "imagenet")
    assert torch.allclose(backbone.conv1.weight, rgb.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(backbone.layer1[0].conv1.weight, rgb.layer1[0].conv1.weight)


def test_simclr_without_encoder_is_an_error():
    backbone, _ = build_backbone("resnet18")
    with pytest.raises(ModelError, match="needs --encoder"):
        init_backbone(backbone, "resnet18", "simclr", None)

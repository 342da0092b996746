from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from nst_nodes.vgg import (
    CAFFE,
    LAYER_INDEX,
    LAYER_NAMES,
    PREPROCESSINGS,
    TORCHVISION,
    build_vgg19,
    caffe_weights_path,
    layer_shape,
    layer_stride,
    load_vgg19,
    read_quantized_caffe,
)

# torchvision.models.vgg19().features: convolutions, poolings, and a ReLU after every convolution.
TORCHVISION_CONV_INDICES = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
TORCHVISION_POOL_INDICES = [4, 9, 18, 27, 36]


def test_layer_names_follow_torchvision_feature_indices() -> None:
    network = build_vgg19()
    assert len(network) == len(LAYER_NAMES) == 37
    assert [i for i, m in enumerate(network) if isinstance(m, nn.Conv2d)] == TORCHVISION_CONV_INDICES
    assert [i for i, m in enumerate(network) if isinstance(m, nn.MaxPool2d)] == TORCHVISION_POOL_INDICES
    named = {
        "conv1_1": 0,
        "relu1_1": 1,
        "pool1": 4,
        "conv2_1": 5,
        "conv3_4": 16,
        "pool3": 18,
        "conv4_1": 19,
        "relu4_1": 20,
        "conv4_2": 21,
        "relu4_2": 22,
        "conv5_1": 28,
        "relu5_1": 29,
        "relu5_4": 35,
        "pool5": 36,
    }
    assert {name: LAYER_INDEX[name] for name in named} == named
    assert isinstance(build_vgg19("avg")[4], nn.AvgPool2d)


def torchvision_like_checkpoint() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    state = {f"features.{k}": torch.randn(v.shape, generator=generator) for k, v in build_vgg19().state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # full-model checkpoints carry this too
    return state


@pytest.mark.parametrize(("height", "width"), [(40, 48), (37, 83)])
def test_layer_shape_is_the_shape_of_each_layers_features(height: int, width: int) -> None:
    model = load_vgg19("caffe")
    with torch.no_grad():
        features = model.features(torch.rand(1, 3, height, width), LAYER_NAMES)
    assert all(features[name].shape[1:] == layer_shape(name, height, width) for name in LAYER_NAMES)
    assert [layer_stride(name) for name in ("relu1_1", "pool1", "relu2_1", "relu4_2", "pool4")] == [1, 2, 2, 8, 16]


def test_an_image_too_small_for_a_pooling_layer_is_refused_before_the_network_runs() -> None:
    from nst_nodes.nodes.network import check_large_enough

    smallest = torch.rand(1, 3, 4, 4)  # pool2's one row and column
    check_large_enough("image", smallest, ["pool2"])
    assert load_vgg19("caffe").features(smallest, ["pool2"])["pool2"].shape[-2:] == (1, 1)
    with pytest.raises(ValueError, match="too small for layer pool2, which needs at least 4x4 px"):
        check_large_enough("image", torch.rand(1, 3, 3, 8), ["pool2"])


def test_torchvision_layout_state_dict_loads_through_a_path(tmp_path: Path) -> None:
    checkpoint = torchvision_like_checkpoint()
    path = tmp_path / "vgg19.pth"
    torch.save(checkpoint, path)
    model = load_vgg19(str(path))
    assert torch.equal(model.network[21].weight, checkpoint["features.21.weight"])
    assert model.preprocessing.name == "torchvision"
    assert model.identity.startswith("file:")
    assert load_vgg19(str(path), preprocessing="caffe").preprocessing is CAFFE


def test_torchvision_weights_come_from_the_torch_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = torchvision_like_checkpoint()
    (tmp_path / "checkpoints").mkdir()
    torch.save(checkpoint, tmp_path / "checkpoints" / "vgg19-dcbb9e9d.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    model = load_vgg19("torchvision")
    assert torch.equal(model.network[0].bias, checkpoint["features.0.bias"])
    assert model.preprocessing.name == "torchvision"


def test_quantized_caffe_weights_load_safely_with_the_right_shapes() -> None:
    raw = torch.load(caffe_weights_path(), map_location="cpu", weights_only=True)
    assert raw["block1_conv1_W_q"].dtype == torch.uint8
    state = read_quantized_caffe(caffe_weights_path())
    expected = build_vgg19().state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert state[key].shape == value.shape and state[key].dtype == torch.float32
    assert len(torch.unique(state["21.weight"])) <= 256  # de-quantized from an 8-bit code book
    assert state["0.weight"].abs().max() > 0.1


def test_model_is_frozen_and_cut_at_the_deepest_requested_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    from nst_nodes import kernels

    model = load_vgg19("caffe")
    assert not any(p.requires_grad for p in model.network.parameters())
    convolutions: list[int] = []
    convolve = kernels.frozen_conv3x3
    monkeypatch.setattr(kernels, "frozen_conv3x3", lambda x, conv: convolutions.append(conv) or convolve(x, conv))
    out = model.features(torch.zeros(1, 3, 32, 32), ["relu1_1", "conv2_1", "relu2_1"])
    assert list(out) == ["relu1_1", "conv2_1", "relu2_1"]
    assert convolutions == [model.network[LAYER_INDEX[name]] for name in ("conv1_1", "conv1_2", "conv2_1")]
    assert (out["conv2_1"] < 0).any(), "a requested conv output must not be overwritten by its ReLU"


def test_a_model_moved_under_a_hosts_inference_mode_keeps_weights_autograd_can_use() -> None:
    """ComfyUI runs nodes under torch.inference_mode(); Optimize Image moves the model to the host's device
    there. A move to the meta device makes new tensors as a move to CUDA does, with no GPU."""
    with torch.inference_mode():
        model = load_vgg19("caffe").to("meta")
    assert not any(parameter.is_inference() for parameter in model.network.parameters())


@pytest.mark.parametrize("name", sorted(PREPROCESSINGS))
def test_normalize_and_denormalize_are_inverses(name: str) -> None:
    preprocessing = PREPROCESSINGS[name]
    image = torch.rand(1, 5, 7, 3)
    network_input = preprocessing.normalize(image)
    assert network_input.shape == (1, 3, 5, 7)
    assert torch.allclose(preprocessing.denormalize(network_input), image, atol=1e-5)


def test_caffe_preprocessing_is_bgr_0_255_minus_mean() -> None:
    red = torch.tensor([1.0, 0.0, 0.0]).reshape(1, 1, 1, 3)
    pixel = CAFFE.normalize(red).flatten().tolist()
    assert pixel == pytest.approx([-103.939, -116.779, 255.0 - 123.68])


@pytest.mark.parametrize("path", ["winograd", "direct", "channels_last", "auto"])
def test_every_convolution_path_matches_torchs_autograd_in_loss_and_gradient(
    path: str, monkeypatch: pytest.MonkeyPatch, device: torch.device
) -> None:
    from nst_nodes.losses import gram_matrix

    if device.type != "cpu" and path != "auto":
        pytest.skip("NST_CONV's kernels are the CPU's: cuDNN runs every convolution on CUDA")
    monkeypatch.setenv("NST_CONV", path)
    model = load_vgg19("caffe").to(device)
    layers = ["relu1_1", "conv2_1", "relu3_1", "relu4_2", "relu5_1"]
    x = CAFFE.normalize(torch.rand(1, 40, 56, 3, generator=torch.Generator().manual_seed(1)).to(device))

    def plain_features(image: torch.Tensor) -> dict[str, torch.Tensor]:
        found, deepest = {}, max(LAYER_NAMES.index(name) for name in layers)
        for index, module in enumerate(model.network[: deepest + 1]):
            image = module(image)
            if LAYER_NAMES[index] in layers:
                found[LAYER_NAMES[index]] = image
        return found

    results = []
    for features in (plain_features, lambda image: model.features(image, layers)):
        image = x.clone().requires_grad_(True)
        loss = sum(torch.sum(gram_matrix(v) ** 2) for v in features(image).values())
        loss.backward()
        results.append((loss.detach(), image.grad))
    (plain_loss, plain_grad), (loss, grad) = results
    assert torch.allclose(loss, plain_loss, rtol=1e-4)
    assert torch.allclose(grad, plain_grad, rtol=1e-3, atol=1e-3 * plain_grad.abs().max().item())


def test_a_bf16_pass_is_close_to_fp32_in_loss_and_gradient(device: torch.device) -> None:
    from nst_nodes.losses import gram_matrix
    from nst_nodes.optimize import native_bf16

    if device.type == "cuda" and not native_bf16(device):
        pytest.skip("this GPU has no native bf16 (compute capability below 8)")
    model = load_vgg19("caffe").to(device)
    layers = ["relu1_1", "relu3_1", "relu4_2", "relu5_1"]
    x = CAFFE.normalize(torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(4)).to(device))
    results = []
    for reduced in (None, torch.bfloat16):
        image = x.clone().requires_grad_(True)
        features = model.features(image, layers, reduced=reduced)
        assert all(value.dtype == (reduced or torch.float32) for value in features.values())
        loss = sum(torch.sum(gram_matrix(value) ** 2) for value in features.values())
        loss.backward()
        results.append((loss.detach(), image.grad))
    (loss32, grad32), (loss16, grad16) = results
    assert loss16 == pytest.approx(loss32.item(), rel=0.02)
    assert torch.nn.functional.cosine_similarity(grad16.flatten(), grad32.flatten(), dim=0) > 0.98


def test_lean_relu_and_max_pool_give_torchs_values_and_gradients(device: torch.device) -> None:
    from nst_nodes import autograd_ops

    # odd: pooling drops a row and a column
    x = torch.randn(1, 4, 11, 15, generator=torch.Generator().manual_seed(2)).to(device)
    upstream = torch.randn(1, 4, 5, 7, generator=torch.Generator().manual_seed(3)).to(device)
    results = []
    for relu, pool in (
        (lambda t: torch.relu(t), lambda t: torch.nn.functional.max_pool2d(t, 2, 2)),
        (lambda t: autograd_ops.relu(t, keep_output=False, inplace=False), autograd_ops.max_pool_2x2),
        (lambda t: autograd_ops.relu(t * 1, keep_output=True, inplace=True), autograd_ops.max_pool_2x2),
    ):
        leaf = x.clone().requires_grad_(True)
        out = pool(relu(leaf))
        (out * upstream).sum().backward()
        results.append((out.detach(), leaf.grad))
    for out, grad in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(grad, results[0][1])


@pytest.mark.parametrize("weighted", [False, True])
def test_lean_gram_gives_autograds_value_and_gradient(weighted: bool, device: torch.device) -> None:
    """One matrix product for the gradient instead of autograd's two; in bf16 the Gram still sums in fp32."""
    from nst_nodes import autograd_ops

    generator = torch.Generator().manual_seed(4)
    flat = torch.rand(6, 40, generator=generator).to(device)
    weights = torch.rand(40, generator=generator).to(device) if weighted else None
    upstream = torch.randn(6, 6, generator=generator).to(device)  # not symmetric: both halves of dG must count
    reference = flat.clone().requires_grad_(True)
    expected = ((reference if weights is None else reference * weights) @ reference.t()) * 0.25
    (expected * upstream).sum().backward()
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        leaf = flat.to(dtype).detach().clone().requires_grad_(True)
        gram = autograd_ops.gram(leaf, weights, 0.25)
        (gram * upstream).sum().backward()
        assert gram.dtype == torch.float32 and leaf.grad.dtype == dtype
        exact_inputs = leaf.detach().float()  # the Gram of bf16 values is summed in fp32: only the inputs round
        exact = ((exact_inputs if weights is None else exact_inputs * weights) @ exact_inputs.t()) * 0.25
        assert torch.allclose(gram, exact, rtol=1e-5)
        assert torch.allclose(gram, expected.detach(), rtol=tolerance)
        assert torch.allclose(
            leaf.grad.float(), reference.grad, rtol=tolerance, atol=tolerance * reference.grad.abs().max()
        )


@pytest.mark.parametrize("height", [29, 32, 37])
def test_winograd_bands_match_one_convolution(height: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from nst_nodes import winograd

    x = torch.randn(1, 5, height, 23, generator=torch.Generator().manual_seed(height))
    weight = torch.randn(6, 5, 3, 3, generator=torch.Generator().manual_seed(0)) * 0.2
    bias = torch.randn(6, generator=torch.Generator().manual_seed(1))
    assert torch.backends.nnpack.is_available()  # also initializes NNPACK
    whole = torch.nn.functional.conv2d(x, weight, bias, padding=1)
    monkeypatch.setattr(winograd, "BAND_ELEMENTS", 6 * 23 * 4)  # bands of 4 rows, the last one shorter
    assert torch.allclose(winograd.convolve(x, weight, bias), whole, atol=1e-4)


def test_bounds_are_the_network_values_of_black_and_white() -> None:
    for preprocessing in (CAFFE, TORCHVISION):
        lower, upper = preprocessing.bounds(torch.zeros(()))
        corners = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1).expand(2, 1, 1, 3)
        assert torch.allclose(torch.cat([lower, upper]), preprocessing.normalize(corners))
        assert lower.shape == (1, 3, 1, 1) and bool((lower < upper).all())

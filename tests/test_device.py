"""The CPU's precision for the distillation's U-Net calls: bf16 autocast where asked, or where AMX makes it pay."""
import pytest
import torch

from threed import device as device_module
from threed.device import cpu_autocast


@pytest.mark.parametrize("precision, has_amx, expected", [
    ("bf16", False, torch.bfloat16), ("fp32", True, torch.float32),
    ("auto", True, torch.bfloat16), ("auto", False, torch.float32),
])
def test_cpu_precision_picks_bf16_autocast_where_asked_or_where_amx_makes_it_pay(monkeypatch, precision, has_amx, expected):
    monkeypatch.setattr(device_module, "cpu_has_amx", lambda: has_amx)
    with cpu_autocast(torch.device("cpu"), precision):
        product = torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4))
    assert product.dtype == expected


def test_cuda_networks_are_never_autocast_here():
    context = cpu_autocast(torch.device("cuda"), "bf16")
    with context:
        assert torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4)).dtype == torch.float32
